#include "support/test_support.hpp"

#include <kiln/cache/compression.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

using namespace kiln;

namespace {

std::string
compress(const std::string& method, const std::string& data)
{
  StringSink out;
  auto sink = make_compression_sink(method, out);
  // Feed in uneven pieces, as a NAR writer would.
  for (size_t pos = 0; pos < data.size(); pos += 7919) {
    sink->write(std::string_view(data).substr(pos, 7919));
  }
  sink->finish();
  return out.s;
}

std::string
decompress(const std::string& method, const std::string& data)
{
  StringSource in(data);
  auto source = make_decompression_source(method, in);
  std::string out;
  char buf[4096];
  while (size_t n = source->read(buf, sizeof buf)) {
    out.append(buf, n);
  }
  return out;
}

} // namespace

TEST_CASE("compression round-trips for every method kiln writes", "[compression]")
{
  std::string data = test::random_bytes(300000, 1) + std::string(500000, 'a');
  for (std::string method : {"none", "zstd", "xz", "gzip", "bzip2"}) {
    INFO(method);
    std::string packed = compress(method, data);
    if (method != "none") {
      CHECK(packed.size() < data.size());
    }
    CHECK(decompress(method, packed) == data);
  }
}

TEST_CASE("what the standard tools compress, kiln reads, and the other way round",
          "[compression]")
{
  test::TempDir dir;
  std::string data = test::random_bytes(100000, 2) + std::string(100000, 'z');
  test::write_file(dir / "data", data);
  struct Tool
  {
    std::string method;
    std::string program;
  };
  for (const auto& tool : {Tool{"xz", "xz"}, Tool{"gzip", "gzip"}, Tool{"bzip2", "bzip2"},
                           Tool{"zstd", "zstd"}}) {
    if (!test::have_program(tool.program)) {
      continue; // zstd's CLI is optional; libarchive's reader is what matters
    }
    INFO(tool.program);
    test::RunOptions in;
    in.stdin_file = dir / "data";
    auto packed = test::run({tool.program, "-c"}, in);
    REQUIRE(packed.status == 0);
    CHECK(decompress(tool.method, packed.out) == data);

    test::write_file(dir / "packed", compress(tool.method, data));
    test::RunOptions back;
    back.stdin_file = dir / "packed";
    auto unpacked = test::run({tool.program, "-dc"}, back);
    REQUIRE(unpacked.status == 0);
    CHECK(unpacked.out == data);
  }
}

TEST_CASE("corrupt compressed data is an error, not garbage", "[compression]")
{
  std::string packed = compress("xz", test::random_bytes(50000, 3));
  packed[packed.size() / 2] ^= 0x55;
  CHECK_THROWS_AS(decompress("xz", packed), FormatError);
  CHECK_THROWS_AS(make_compression_sink("rar", *std::make_unique<StringSink>()), UsageError);
}
