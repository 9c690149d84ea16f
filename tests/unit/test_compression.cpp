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

TEST_CASE("zstd: concatenated frames, interleaved streams, and a stream after a failed one",
          "[compression]")
{
  std::string a = test::random_bytes(70000, 4) + std::string(300000, 'x');
  std::string b = std::string(200000, 'y') + test::random_bytes(90000, 5);
  std::string packed_a = compress("zstd", a);
  std::string packed_b = compress("zstd", b);

  // The zstd tool writes one frame per input file when they are concatenated.
  CHECK(decompress("zstd", packed_a + packed_b) == a + b);

  // Two streams read in turns: each keeps its own decompression state.
  StringSource in_a(packed_a);
  StringSource in_b(packed_b);
  auto source_a = make_decompression_source("zstd", in_a);
  auto source_b = make_decompression_source("zstd", in_b);
  std::string out_a;
  std::string out_b;
  char buf[1000];
  for (bool more = true; more;) {
    size_t n_a = source_a->read(buf, sizeof buf);
    out_a.append(buf, n_a);
    size_t n_b = source_b->read(buf, sizeof buf);
    out_b.append(buf, n_b);
    more = n_a > 0 || n_b > 0;
  }
  CHECK(out_a == a);
  CHECK(out_b == b);

  // A stream that fails half-way (cut short; zstd without a checksum cannot
  // see a flipped byte, the NAR's hash does) leaves its decompression state
  // mid-frame: the next stream, which may reuse it, is read whole.
  CHECK_THROWS_AS(decompress("zstd", packed_a.substr(0, packed_a.size() / 2)), FormatError);
  CHECK(decompress("zstd", packed_b) == b);
  std::string bad_magic = packed_b;
  bad_magic[0] ^= 0x55;
  CHECK_THROWS_AS(decompress("zstd", bad_magic), FormatError);
  CHECK(decompress("zstd", packed_a) == a);

  // An empty file holds nothing, as libarchive read it.
  CHECK(decompress("zstd", "").empty());
}

TEST_CASE("zstd: a stream cut short, or one asking for more than a 128 MiB window, is refused",
          "[compression]")
{
  std::string data = test::random_bytes(100000, 6);
  std::string packed = compress("zstd", data);
  try {
    decompress("zstd", packed.substr(0, packed.size() - 10));
    FAIL("a truncated stream was read whole");
  } catch (const FormatError& e) {
    CHECK_THAT(e.what(), Catch::Contains("ends in the middle of a frame"));
  }

  // A frame of one empty last block, its header naming the window: 2^27
  // bytes (zstd --long=27) is read, 2^28 is refused before any is allocated.
  auto frame = [](unsigned window_log) {
    std::string f("\x28\xb5\x2f\xfd", 4);
    f += '\0';                                               // no size, no checksum
    f += static_cast<char>((window_log - 10) << 3);          // window descriptor
    f += std::string("\x01\x00\x00", 3);                     // last block, raw, empty
    return f;
  };
  CHECK(decompress("zstd", frame(27)).empty());
  try {
    decompress("zstd", frame(28));
    FAIL("a 256 MiB window was accepted");
  } catch (const FormatError& e) {
    CHECK_THAT(e.what(), Catch::Contains("corrupt zstd data"));
  }
  // What the zstd tool writes with --long=28 (a real frame, not a crafted
  // one) is refused the same way.
  if (test::have_program("zstd")) {
    test::RunOptions in;
    in.stdin_data = test::random_bytes(1000, 7);
    auto long_window = test::run({"zstd", "--long=28", "-c"}, in);
    REQUIRE(long_window.status == 0);
    CHECK_THROWS_AS(decompress("zstd", long_window.out), FormatError);
  }
  // What a narinfo calls zstd is read as zstd, not as whatever it looks like.
  CHECK_THROWS_AS(decompress("zstd", compress("xz", data)), FormatError);
  CHECK_THROWS_AS(decompress("zstd", data), FormatError);
}
