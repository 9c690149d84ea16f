#include "support/test_support.hpp"

#include <kiln/hash/hash.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

using namespace kiln;

TEST_CASE("sha256 of 'abc' in every text form (Nix's vectors)", "[hash]")
{
  Hash h = hash_string(HashAlgo::sha256, "abc");
  CHECK(h.to_string(HashFormat::base16, false) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(h.to_string(HashFormat::nix32, true) ==
        "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s");
  CHECK(h.to_string(HashFormat::base64, false) == "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
  CHECK(h.to_string(HashFormat::sri, false) ==
        "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
}

TEST_CASE("nix32 of a sha1 digest (Nix's vector)", "[hash]")
{
  Hash h = Hash::parse_unprefixed("800d59cfcd3c05e900cb4e214be48f6b886a08df", HashAlgo::sha1);
  CHECK(h.to_string(HashFormat::nix32, false) == "vw46m23bizj4n8afrc0fj19wrp7mj3c0");
  CHECK(Hash::parse_unprefixed("vw46m23bizj4n8afrc0fj19wrp7mj3c0", HashAlgo::sha1) == h);
}

TEST_CASE("parsing infers the encoding from the length", "[hash]")
{
  Hash h = hash_string(HashAlgo::sha256, "abc");
  for (auto format : {HashFormat::base16, HashFormat::nix32, HashFormat::base64}) {
    CHECK(Hash::parse_unprefixed(h.to_string(format, false), HashAlgo::sha256) == h);
    CHECK(Hash::parse_prefixed(h.to_string(format, true)) == h);
    CHECK(Hash::parse_any(h.to_string(format, false), HashAlgo::sha256) == h);
  }
  CHECK(Hash::parse_prefixed(h.to_string(HashFormat::sri, true)) == h);
  CHECK(Hash::parse_any(h.to_string(HashFormat::sri, true), std::nullopt) == h);
}

TEST_CASE("malformed hashes are rejected with a clear message", "[hash]")
{
  CHECK_THROWS_WITH(Hash::parse_unprefixed("abc", HashAlgo::sha256),
                    Catch::Contains("wrong length"));
  CHECK_THROWS_WITH(Hash::parse_prefixed("md7:00"), Catch::Contains("unknown hash algorithm"));
  CHECK_THROWS_WITH(Hash::parse_any("1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
                                    std::nullopt),
                    Catch::Contains("prefix"));
  // 'e', 'o', 'u' and 't' are not in the nix32 alphabet.
  CHECK_THROWS_WITH(
    Hash::parse_unprefixed("1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5e", HashAlgo::sha256),
    Catch::Contains("invalid character 'e'"));
  CHECK_THROWS_AS(Hash::parse_unprefixed(std::string(64, 'g'), HashAlgo::sha256), FormatError);
  CHECK_THROWS_AS(Hash::parse_prefixed("sha256-!!!"), FormatError);
}

TEST_CASE("non-canonical nix32 is rejected", "[hash]")
{
  // 52 digits carry 260 bits; the top 4 must be zero for a 256-bit digest,
  // so the first digit may only be '0' or '1'.
  std::string canonical = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
  REQUIRE_NOTHROW(nix32_decode(canonical, 32));
  std::string non_canonical = canonical;
  non_canonical[0] = 'z';
  CHECK_THROWS_WITH(nix32_decode(non_canonical, 32), Catch::Contains("not canonical"));
  non_canonical[0] = '2';
  CHECK_THROWS_WITH(nix32_decode(non_canonical, 32), Catch::Contains("not canonical"));
}

TEST_CASE("encodings round-trip for every length", "[hash]")
{
  for (size_t size = 1; size <= 64; ++size) {
    std::string data = test::random_bytes(size, size);
    std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(data.data()), size);
    auto nix32 = nix32_encode(bytes);
    CHECK(nix32.size() == nix32_encoded_length(size));
    auto back = nix32_decode(nix32, size);
    CHECK(std::equal(back.begin(), back.end(), bytes.begin(), bytes.end()));
    auto b64 = base64_decode(base64_encode(bytes));
    CHECK(std::equal(b64.begin(), b64.end(), bytes.begin(), bytes.end()));
    auto hex = base16_decode(base16_encode(bytes));
    CHECK(std::equal(hex.begin(), hex.end(), bytes.begin(), bytes.end()));
  }
}

TEST_CASE("compress_hash XOR-folds to 160 bits as Nix does", "[hash]")
{
  std::vector<uint8_t> input(32);
  for (size_t i = 0; i < 32; ++i) {
    input[i] = static_cast<uint8_t>(i + 1);
  }
  auto folded = compress_hash(input, 20);
  REQUIRE(folded.size() == 20);
  for (size_t i = 0; i < 20; ++i) {
    uint8_t expected = static_cast<uint8_t>(i + 1);
    if (i < 12) {
      expected ^= static_cast<uint8_t>(i + 20 + 1);
    }
    CHECK(folded[i] == expected);
  }
}

TEST_CASE("streaming hashing equals one-shot hashing, however the input is cut", "[hash]")
{
  std::string data = test::random_bytes(1 << 20, 7);
  Hash whole = hash_string(HashAlgo::sha256, data);
  HashSink sink;
  size_t pos = 0;
  size_t step = 1;
  while (pos < data.size()) {
    size_t n = std::min(step, data.size() - pos);
    sink.write(std::string_view(data).substr(pos, n));
    pos += n;
    step = step * 3 + 1;
  }
  CHECK(sink.bytes_written() == data.size());
  CHECK(sink.finish() == whole);
}

namespace {

// A source that never ends, counting what was asked of it.
class EndlessSource : public Source
{
public:
  size_t
  read(char* buf, size_t len) override
  {
    std::fill_n(buf, len, 'x');
    served += len;
    return len;
  }
  uint64_t served = 0;
};

} // namespace

TEST_CASE("the validating reader hashes, counts and verifies what passes through it", "[hash]")
{
  StringSource in("hello world");
  ValidatingSource checked(in, HashAlgo::sha256, 11);
  char buf[4];
  std::string got;
  while (size_t n = checked.read(buf, sizeof buf)) {
    got.append(buf, n);
  }
  CHECK(got == "hello world");
  CHECK(checked.count() == 11);
  CHECK_NOTHROW(checked.verify(11, hash_string(HashAlgo::sha256, "hello world")));

  StringSource in2("hello world");
  ValidatingSource wrong(in2, HashAlgo::sha256);
  wrong.drain();
  CHECK_THROWS_WITH(wrong.verify(11, hash_string(HashAlgo::sha256, "hello")),
                    Catch::Contains("NAR hash mismatch"));
  StringSource in3("hello");
  ValidatingSource short_one(in3, HashAlgo::sha256);
  short_one.drain();
  CHECK_THROWS_WITH(short_one.verify(11, hash_string(HashAlgo::sha256, "hello")),
                    Catch::Contains("NAR size mismatch: expected 11 bytes, got 5"));
}

TEST_CASE("the validating reader stops an endless stream one byte past its limit", "[hash]")
{
  EndlessSource endless;
  ValidatingSource capped(endless, HashAlgo::sha256, 1000, "body");
  CHECK_THROWS_WITH(capped.drain(), Catch::Contains("body is larger than the 1000 bytes"));
  // It never asked for more than the limit and one byte: nothing large was
  // buffered or written on the way.
  CHECK(endless.served == 1001);
}
