#include "targets.hpp"

#include <kiln/buildfile/buildfile.hpp>
#include <kiln/cache/binary_cache.hpp>
#include <kiln/cache/narinfo.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/server/server.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <unistd.h>

#include <filesystem>

namespace kiln::fuzz {

namespace {

std::string_view
text_of(const uint8_t* data, size_t size)
{
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `parse`, taking a kiln::Error as the refusal it is meant to be.
template <typename F>
void
expect_error_or_success(F parse)
{
  try {
    parse();
  } catch (const Error&) {
  }
}

// The file parsers read a path: the bytes go to a file of this process's own.
std::filesystem::path
scratch_file(const std::string& name, std::string_view content)
{
  auto dir = std::filesystem::temp_directory_path() /
             ("kiln-fuzz-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / name;
  write_file_atomic(path, content);
  return path;
}

void
fuzz_nar(const uint8_t* data, size_t size)
{
  expect_error_or_success([&] {
    StringSource in(text_of(data, size));
    NullFsObjectSink sink;
    parse_nar(in, sink, /*require_eof=*/true);
  });
}

void
fuzz_narinfo(const uint8_t* data, size_t size)
{
  expect_error_or_success([&] {
    auto info = NarInfo::parse(text_of(data, size), StoreDir(), "fuzz.narinfo");
    // What parses must print and parse back the same.
    auto again = NarInfo::parse(info.to_string(StoreDir()), StoreDir(), "again");
    if (again.to_string(StoreDir()) != info.to_string(StoreDir())) {
      __builtin_trap();
    }
  });
}

void
fuzz_cache_info(const uint8_t* data, size_t size)
{
  expect_error_or_success([&] { CacheInfo::parse(text_of(data, size), "nix-cache-info"); });
}

void
fuzz_drv(const uint8_t* data, size_t size)
{
  expect_error_or_success([&] { Derivation::parse(text_of(data, size), StoreDir(), "fuzz"); });
}

void
fuzz_kiln_yaml(const uint8_t* data, size_t size)
{
  auto file = scratch_file("kiln.yaml", text_of(data, size));
  expect_error_or_success([&] { load_build_file(file); });
}

void
fuzz_server_config(const uint8_t* data, size_t size)
{
  auto file = scratch_file("server.yaml", text_of(data, size));
  expect_error_or_success([&] { load_server_config(file, "/kiln/store"); });
}

void
fuzz_request_path(const uint8_t* data, size_t size)
{
  expect_error_or_success([&] { check_cache_key(std::string(text_of(data, size))); });
}

} // namespace

const std::vector<Target>&
targets()
{
  static const std::vector<Target> all = {
    {"nar", fuzz_nar},
    {"narinfo", fuzz_narinfo},
    {"nix-cache-info", fuzz_cache_info},
    {"drv", fuzz_drv},
    {"kiln-yaml", fuzz_kiln_yaml},
    {"server-config", fuzz_server_config},
    {"request-path", fuzz_request_path},
  };
  return all;
}

} // namespace kiln::fuzz
