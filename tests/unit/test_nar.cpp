#include "support/test_support.hpp"

#include <kiln/hash/hash.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

using namespace kiln;
using test::TempDir;

namespace {

// Writes NAR tokens by hand, to craft archives that break the rules.
class NarBuilder
{
public:
  NarBuilder&
  num(uint64_t n)
  {
    for (int i = 0; i < 8; ++i) {
      bytes.push_back(static_cast<char>(n >> (8 * i) & 0xff));
    }
    return *this;
  }
  NarBuilder&
  str(std::string_view s, char pad = '\0')
  {
    num(s.size());
    bytes.append(s);
    bytes.append((8 - s.size() % 8) % 8, pad);
    return *this;
  }
  NarBuilder&
  tokens(std::initializer_list<std::string_view> list)
  {
    for (auto s : list) {
      str(s);
    }
    return *this;
  }
  NarBuilder&
  file_entry(std::string_view name, std::string_view contents = "x")
  {
    tokens({"entry", "(", "name"});
    str(name);
    tokens({"node", "(", "type", "regular", "contents"});
    str(contents);
    return tokens({")", ")"});
  }
  std::string bytes;
};

NarBuilder
dir_start()
{
  NarBuilder b;
  b.tokens({"nix-archive-1", "(", "type", "directory"});
  return b;
}

std::string
nar_of(const std::filesystem::path& path)
{
  StringSink sink;
  dump_path(path, sink);
  return sink.s;
}

// Parse `nar` into a sink that discards events; return the error message.
std::string
parse_error(const std::string& nar)
{
  struct Discard : FsObjectSink
  {
    void create_directory(const std::string&) override
    {
    }
    void end_directory(const std::string&) override
    {
    }
    void begin_regular_file(const std::string&, bool, uint64_t) override
    {
    }
    void file_data(std::string_view) override
    {
    }
    void end_regular_file() override
    {
    }
    void create_symlink(const std::string&, const std::string&) override
    {
    }
  } discard;
  StringSource in(nar);
  try {
    parse_nar(in, discard);
  } catch (const FormatError& e) {
    CHECK(e.has_offset());
    return e.what();
  }
  FAIL("the archive was accepted");
  return {};
}

mode_t
mode_of(const std::filesystem::path& p)
{
  struct stat st;
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

} // namespace

TEST_CASE("a single file serialises to exactly Nix's bytes", "[nar]")
{
  TempDir dir;
  test::write_file(dir / "hello.txt", "hello\n");
  std::string nar = nar_of(dir / "hello.txt");
  NarBuilder expected;
  expected.tokens({"nix-archive-1", "(", "type", "regular", "contents", "hello\n", ")"});
  CHECK(nar == expected.bytes);
  CHECK(nar.size() == 120);
  CHECK(hash_string(HashAlgo::sha256, nar).to_string(HashFormat::base16, false) ==
        "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13");
}

TEST_CASE("a folder with an executable and a symlink matches Nix's hash", "[nar]")
{
  TempDir dir;
  test::write_file(dir / "d" / "bin" / "hello", "#!/bin/sh\necho hi\n", true);
  std::filesystem::create_symlink("bin", dir / "d" / "lib");
  std::string nar = nar_of(dir / "d");
  CHECK(nar.size() == 696);
  CHECK(hash_string(HashAlgo::sha256, nar).to_string(HashFormat::nix32, false) ==
        "12hc9c68fqvm7wfdx9gzaz6dyxwz7jlrijx4kqhihd8lz98cvkb2");
}

TEST_CASE("dump, restore and dump again gives the same bytes, and restored metadata is canonical",
          "[nar]")
{
  TempDir dir;
  auto src = dir / "src";
  test::write_file(src / "a" / "b" / "c.txt", test::random_bytes(100000, 1));
  test::write_file(src / "run.sh", "#!/bin/sh\n", true);
  test::write_file(src / "empty", "");
  std::filesystem::create_directories(src / "empty-dir");
  std::filesystem::create_symlink("a/b/c.txt", src / "link");
  std::filesystem::create_symlink("/nonexistent/target", src / "dangling");
  // Byte order, not locale order: "B" < "_" < "a".
  test::write_file(src / "B", "1");
  test::write_file(src / "_", "2");

  std::string nar = nar_of(src);
  StringSource in(nar);
  restore_nar(in, dir / "out");
  CHECK(nar_of(dir / "out") == nar);

  CHECK(mode_of(dir / "out") == 0555);
  CHECK(mode_of(dir / "out" / "a" / "b") == 0555);
  CHECK(mode_of(dir / "out" / "a" / "b" / "c.txt") == 0444);
  CHECK(mode_of(dir / "out" / "run.sh") == 0555);
  struct stat st;
  REQUIRE(::lstat((dir / "out" / "run.sh").c_str(), &st) == 0);
  CHECK(st.st_mtime == 1);
  CHECK(std::filesystem::read_symlink(dir / "out" / "dangling") == "/nonexistent/target");
}

TEST_CASE("restoring refuses an existing target and leaves nothing behind on failure", "[nar]")
{
  TempDir dir;
  std::filesystem::create_directories(dir / "exists");
  test::write_file(dir / "exists" / "keep", "precious");
  NarBuilder b = dir_start();
  b.file_entry("a");
  b.tokens({")"});
  StringSource in(b.bytes);
  CHECK_THROWS_WITH(restore_nar(in, dir / "exists"), Catch::Contains("already exists"));
  CHECK(std::filesystem::exists(dir / "exists" / "keep"));

  NarBuilder bad = dir_start();
  bad.file_entry("b").file_entry("a"); // out of order
  bad.tokens({")"});
  StringSource bad_in(bad.bytes);
  CHECK_THROWS_AS(restore_nar(bad_in, dir / "new"), FormatError);
  CHECK_FALSE(std::filesystem::exists(dir / "new"));
}

TEST_CASE("the parser rejects every malformed archive, naming what and where", "[nar]")
{
  SECTION("bad magic")
  {
    NarBuilder b;
    b.tokens({"nix-archive-2", "(", "type", "regular", "contents", "", ")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("bad magic") && Catch::Contains("offset 0"));
  }
  SECTION("not a NAR at all")
  {
    CHECK_THAT(parse_error("hello, world"), Catch::Contains("invalid NAR"));
  }
  SECTION("non-zero padding")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1", "(", "type", "regular", "contents"});
    b.str("abc", 'X');
    b.tokens({")"});
    // The padding starts right after the 3 content bytes.
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("non-zero padding") &&
                                       Catch::Contains("offset " + std::to_string(b.bytes.size() - 16 - 5)));
  }
  SECTION("entry names that are not allowed")
  {
    for (std::string name : {std::string(""), std::string("."), std::string(".."),
                             std::string("a/b"), std::string("a\0b", 3)}) {
      NarBuilder b = dir_start();
      b.file_entry(name);
      b.tokens({")"});
      INFO("name: " << name);
      CHECK_THAT(parse_error(b.bytes), Catch::Contains("name") && Catch::Contains("offset 128"));
    }
  }
  SECTION("unsorted entries")
  {
    NarBuilder b = dir_start();
    b.file_entry("b").file_entry("a");
    b.tokens({")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("out of order"));
  }
  SECTION("duplicate entries")
  {
    NarBuilder b = dir_start();
    b.file_entry("a").file_entry("a");
    b.tokens({")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("duplicate entry 'a'"));
  }
  SECTION("an over-long name")
  {
    NarBuilder b = dir_start();
    b.file_entry(std::string(256, 'n'));
    b.tokens({")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("entry name is 256 bytes long"));
  }
  SECTION("an over-long symlink target")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1", "(", "type", "symlink", "target"});
    b.str(std::string(4096, 't'));
    b.tokens({")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("symlink target is 4096 bytes long"));
  }
  SECTION("an empty symlink target")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1", "(", "type", "symlink", "target", "", ")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("empty symlink target"));
  }
  SECTION("nesting deeper than 256")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1"});
    for (int i = 0; i < 258; ++i) {
      b.tokens({"(", "type", "directory", "entry", "(", "name", "d", "node"});
    }
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("nested more than 256"));
  }
  SECTION("trailing garbage")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1", "(", "type", "regular", "contents", "x", ")"});
    size_t end = b.bytes.size();
    b.bytes += "garbage!";
    CHECK_THAT(parse_error(b.bytes),
               Catch::Contains("trailing data") && Catch::Contains("offset " + std::to_string(end)));
  }
  SECTION("truncated archives, cut anywhere")
  {
    NarBuilder b = dir_start();
    b.file_entry("a", "some contents");
    b.tokens({")"});
    for (size_t cut = 0; cut < b.bytes.size(); cut += 5) {
      INFO("cut at " << cut);
      CHECK_THAT(parse_error(b.bytes.substr(0, cut)), Catch::Contains("invalid NAR"));
    }
  }
  SECTION("a non-empty executable marker, and executable after contents")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1", "(", "type", "regular", "executable", "yes", "contents", "", ")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("executable marker must be empty"));
    NarBuilder c;
    c.tokens({"nix-archive-1", "(", "type", "regular", "contents", "", "executable", "", ")"});
    CHECK_THAT(parse_error(c.bytes), Catch::Contains("expected tag ')'"));
  }
  SECTION("an unknown node type")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1", "(", "type", "fifo", ")"});
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("unknown node type 'fifo'"));
  }
  SECTION("a huge length field is refused before anything is allocated")
  {
    NarBuilder b;
    b.tokens({"nix-archive-1", "(", "type", "directory", "entry", "(", "name"});
    b.num(uint64_t(1) << 62);
    CHECK_THAT(parse_error(b.bytes), Catch::Contains("entry name is"));
  }
}

TEST_CASE("restore cannot be tricked into writing outside its target", "[nar]")
{
  TempDir dir;
  auto outside = dir / "outside";
  std::filesystem::create_directories(outside);

  SECTION("a symlink followed by an entry of the same name")
  {
    // link -> ../outside, then "link" again as a folder: a naive restorer
    // would write through the symlink.
    NarBuilder b = dir_start();
    b.tokens({"entry", "(", "name", "link", "node", "(", "type", "symlink", "target"});
    b.str(outside.string());
    b.tokens({")", ")"});
    b.tokens({"entry", "(", "name", "link", "node", "(", "type", "directory"});
    b.file_entry("pwned");
    b.tokens({")", ")", ")"});
    StringSource in(b.bytes);
    CHECK_THROWS_AS(restore_nar(in, dir / "target"), FormatError);
    CHECK(std::filesystem::is_empty(outside));
    CHECK_FALSE(std::filesystem::exists(dir / "target"));
  }
  SECTION("names with path components")
  {
    NarBuilder b = dir_start();
    b.file_entry("../outside/pwned");
    b.tokens({")"});
    StringSource in(b.bytes);
    CHECK_THROWS_AS(restore_nar(in, dir / "target"), FormatError);
    CHECK(std::filesystem::is_empty(outside));
  }
  SECTION("symlinks pointing outside are stored as links, never followed")
  {
    NarBuilder b = dir_start();
    b.tokens({"entry", "(", "name", "escape", "node", "(", "type", "symlink", "target"});
    b.str("../../../../../../etc/passwd");
    b.tokens({")", ")", ")"});
    StringSource in(b.bytes);
    restore_nar(in, dir / "target");
    CHECK(std::filesystem::is_symlink(dir / "target" / "escape"));
    CHECK(std::filesystem::is_empty(outside));
  }
}

TEST_CASE("unsupported file types are refused with their name", "[nar]")
{
  TempDir dir;
  std::filesystem::create_directories(dir / "d");
  REQUIRE(::mkfifo((dir / "d" / "pipe").c_str(), 0644) == 0);
  StringSink sink;
  CHECK_THROWS_WITH(dump_path(dir / "d", sink), Catch::Contains("pipe") && Catch::Contains("fifo"));
}

TEST_CASE("memory stays bounded for a large archive", "[nar][slow]")
{
  // `kiln nar dump` and `kiln nar restore` of a 1 MiB and a 256 MiB file:
  // peak memory must not grow with the archive.
  TempDir dir;
  std::string chunk = test::random_bytes(1 << 20, 3);
  auto measure = [&](const std::string& name, int mebibytes) {
    {
      FILE* f = std::fopen((dir / name).c_str(), "wb");
      REQUIRE(f);
      for (int i = 0; i < mebibytes; ++i) {
        std::fwrite(chunk.data(), 1, chunk.size(), f);
      }
      std::fclose(f);
    }
    test::RunOptions to_file;
    to_file.stdout_file = dir / (name + ".nar");
    auto dumped = test::kiln({"nar", "dump", (dir / name).string()}, to_file);
    REQUIRE(dumped.status == 0);
    CHECK(std::filesystem::file_size(dir / (name + ".nar")) ==
          (uint64_t(mebibytes) << 20) + 112);
    test::RunOptions from_file;
    from_file.stdin_file = dir / (name + ".nar");
    auto restored = test::kiln({"nar", "restore", (dir / (name + ".out")).string()}, from_file);
    INFO(restored.err);
    REQUIRE(restored.status == 0);
    CHECK(std::filesystem::file_size(dir / (name + ".out")) == (uint64_t(mebibytes) << 20));
    std::filesystem::remove(dir / (name + ".nar"));
    return std::make_pair(dumped.max_rss_kib, restored.max_rss_kib);
  };
  auto small = measure("small", 1);
  auto big = measure("big", 256);
  INFO("dump RSS " << small.first << " -> " << big.first << " KiB, restore RSS " << small.second
                   << " -> " << big.second << " KiB");
  CHECK(big.first - small.first < 8 * 1024);
  CHECK(big.second - small.second < 8 * 1024);
#ifndef __SANITIZE_ADDRESS__
  CHECK(big.first < 32 * 1024);
  CHECK(big.second < 32 * 1024);
#endif
}
