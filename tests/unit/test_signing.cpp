#include "support/test_support.hpp"

#include <kiln/cache/narinfo.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

using namespace kiln;

namespace {

const char* const k_nixos_key = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

// Real narinfos from cache.nixos.org (nix-binary-cache.md §5.2, §7.3).
const char* const k_hello =
  "StorePath: /nix/store/w9yy7v61ipb5rx6i35zq1mvc2iqfmps1-hello-2.10\n"
  "URL: nar/15zk4zszw9lgkdkkwy7w11m5vag11n5dhv2i6hj308qpxczvdddx.nar.xz\n"
  "Compression: xz\n"
  "FileHash: sha256:15zk4zszw9lgkdkkwy7w11m5vag11n5dhv2i6hj308qpxczvdddx\n"
  "FileSize: 41232\n"
  "NarHash: sha256:1mi14cqk363wv368ffiiy01knardmnlyphi6h9xv6dkjz44hk30i\n"
  "NarSize: 205968\n"
  "References: 9df65igwjmf2wbw0gbrrgair6piqjgmi-glibc-2.31 "
  "w9yy7v61ipb5rx6i35zq1mvc2iqfmps1-hello-2.10\n"
  "Sig: cache.nixos.org-1:uP5KU8MCmyRnKGlN5oEv6xWJBI5EO/Pf5aFztZuLSz8BpCcZ1fdBnJkVXhBAlxkdm/"
  "CemsgQskhwvyd2yghTAg==\n";

const char* const k_curl =
  "StorePath: /nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin\n"
  "URL: nar/05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56.nar.xz\n"
  "Compression: xz\n"
  "FileHash: sha256:05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56\n"
  "FileSize: 68852\n"
  "NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0\n"
  "NarSize: 196040\n"
  "References: 0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0 "
  "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115 j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12 "
  "yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n\n"
  "Deriver: 5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv\n"
  "Sig: cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3"
  "HPVWRdD1hkeKZBQ==\n";

} // namespace

TEST_CASE("real cache.nixos.org narinfos parse, re-print and verify", "[signing][narinfo]")
{
  StoreDir nix("/nix/store");
  TrustPolicy policy({k_nixos_key}, 1);

  auto hello = NarInfo::parse(k_hello, nix, "hello.narinfo");
  CHECK(path_fingerprint(nix, hello.info) ==
        "1;/nix/store/w9yy7v61ipb5rx6i35zq1mvc2iqfmps1-hello-2.10;"
        "sha256:1mi14cqk363wv368ffiiy01knardmnlyphi6h9xv6dkjz44hk30i;205968;"
        "/nix/store/9df65igwjmf2wbw0gbrrgair6piqjgmi-glibc-2.31,"
        "/nix/store/w9yy7v61ipb5rx6i35zq1mvc2iqfmps1-hello-2.10");
  CHECK(policy.accepts(path_fingerprint(nix, hello.info), hello.info.signatures));
  CHECK(hello.to_string(nix) == k_hello);

  auto curl = NarInfo::parse(k_curl, nix, "curl.narinfo");
  CHECK(curl.info.deriver->name() == "curl-7.82.0.drv");
  CHECK(curl.info.references.size() == 4);
  CHECK(policy.accepts(path_fingerprint(nix, curl.info), curl.info.signatures));
  CHECK(curl.to_string(nix) == k_curl);

  SECTION("any change to a signed field breaks the signature")
  {
    auto altered = curl;
    altered.info.nar_size += 1;
    CHECK_FALSE(policy.accepts(path_fingerprint(nix, altered.info), altered.info.signatures));
    altered = curl;
    altered.info.references.erase(altered.info.references.begin());
    CHECK_FALSE(policy.accepts(path_fingerprint(nix, altered.info), altered.info.signatures));
  }
  SECTION("URL, compression and file hash are not signed")
  {
    auto moved = curl;
    moved.url = "nar/elsewhere.nar";
    moved.compression = "none";
    CHECK(policy.accepts(path_fingerprint(nix, moved.info), moved.info.signatures));
  }
  SECTION("an untrusted key or a fabricated signature is not enough")
  {
    auto other = SecretKey::generate("other-1");
    TrustPolicy other_policy({other.public_key().to_string()}, 1);
    CHECK_FALSE(other_policy.accepts(path_fingerprint(nix, curl.info), curl.info.signatures));
    auto forged = curl;
    forged.info.signatures = {other.sign(path_fingerprint(nix, curl.info)).to_string()};
    forged.info.signatures = {"cache.nixos.org-1:" + forged.info.signatures.begin()->substr(8)};
    CHECK_FALSE(policy.accepts(path_fingerprint(nix, forged.info), forged.info.signatures));
    CHECK_THAT(policy.explain(path_fingerprint(nix, forged.info), forged.info.signatures),
               Catch::Contains("INVALID signature"));
  }
}

TEST_CASE("keys round-trip and sign in Nix's format", "[signing]")
{
  auto secret = SecretKey::generate("kiln-test-1");
  auto text = secret.to_string();
  CHECK(text.starts_with("kiln-test-1:"));
  auto again = SecretKey::parse(text);
  CHECK(again.public_key().to_string() == secret.public_key().to_string());
  auto sig = secret.sign("hello");
  CHECK(sig.to_string().starts_with("kiln-test-1:"));
  CHECK(Signature::parse(sig.to_string()).sig == sig.sig);
  CHECK(secret.public_key().verify("hello", sig));
  CHECK_FALSE(secret.public_key().verify("hellO", sig));
}

TEST_CASE("secret keys never appear in error messages", "[signing]")
{
  auto secret = SecretKey::generate("k");
  std::string text = secret.to_string();
  std::string truncated = text.substr(0, text.size() - 8);
  try {
    SecretKey::parse(truncated);
    FAIL("a truncated key was accepted");
  } catch (const FormatError& e) {
    std::string message = e.what();
    CHECK_THAT(message, Catch::Contains("not valid"));
    CHECK(message.find(truncated.substr(2)) == std::string::npos);
  }
  CHECK_THROWS_WITH(SecretKey::parse("no-colon-here"), !Catch::Contains("no-colon-here"));
  CHECK_THROWS_AS(PublicKey::parse("k:AAAA"), FormatError);
  CHECK_THROWS_AS(Signature::parse("k:AAAA"), FormatError);
}

TEST_CASE("k-of-n: signatures of distinct trusted keys are counted", "[signing]")
{
  auto a = SecretKey::generate("builder-a");
  auto b = SecretKey::generate("builder-b");
  auto c = SecretKey::generate("builder-c");
  TrustPolicy two_of_three(
    {a.public_key().to_string(), b.public_key().to_string(), c.public_key().to_string()}, 2);
  std::string fp = "1;/kiln/store/x;sha256:abc;1;";
  std::set<std::string> one = {a.sign(fp).to_string()};
  std::set<std::string> same_twice = {a.sign(fp).to_string(), a.sign(fp).to_string()};
  std::set<std::string> two = {a.sign(fp).to_string(), c.sign(fp).to_string()};
  CHECK(two_of_three.count_valid(fp, one) == 1);
  CHECK_FALSE(two_of_three.accepts(fp, one));
  CHECK_FALSE(two_of_three.accepts(fp, same_twice));
  CHECK(two_of_three.accepts(fp, two));
  auto stranger = SecretKey::generate("stranger");
  CHECK_FALSE(two_of_three.accepts(fp, {a.sign(fp).to_string(), stranger.sign(fp).to_string()}));
}

TEST_CASE("the narinfo parser checks every field and names the line", "[narinfo]")
{
  StoreDir dir("/kiln/store");
  std::string good = "StorePath: /kiln/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo\n"
                     "URL: nar/x.nar\n"
                     "Compression: none\n"
                     "NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n"
                     "NarSize: 120\n"
                     "References: \n"
                     "System: x86_64-linux\n"
                     "FutureKey: whatever\n";
  auto parsed = NarInfo::parse(good, dir, "x.narinfo");
  CHECK(parsed.info.references.empty());
  CHECK(parsed.compression == "none");

  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = good;
    auto pos = text.find(from);
    REQUIRE(pos != std::string::npos);
    text.replace(pos, from.size(), to);
    return text;
  };
  auto error = [&](const std::string& text) {
    try {
      NarInfo::parse(text, dir, "x.narinfo");
    } catch (const FormatError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK_THAT(error(with("NarSize: 120", "NarSize: 0")), Catch::Contains("x.narinfo:5"));
  CHECK_THAT(error(with("NarSize: 120", "NarSize: 12x")), Catch::Contains("not a whole number"));
  CHECK_THAT(error(with("NarSize: 120\n", "")), Catch::Contains("NarSize is missing"));
  CHECK_THAT(error(with("URL: nar/x.nar\n", "")), Catch::Contains("URL is missing"));
  CHECK_THAT(error(with("StorePath: /kiln/store", "StorePath: /nix/store")),
             Catch::Contains("x.narinfo:1") && Catch::Contains("not in the store directory"));
  CHECK_THAT(error(with("Compression: none", "Compression: rar")),
             Catch::Contains("x.narinfo:3") && Catch::Contains("unknown compression"));
  CHECK_THAT(error(with("sha256:1b8m", "sha256:zb8m")), Catch::Contains("x.narinfo:4"));
  CHECK_THAT(error(with("References: ", "References: not-a-path")), Catch::Contains("x.narinfo:6"));
  CHECK_THAT(error(good + "Sig: k:AAAA\n"), Catch::Contains("x.narinfo:9"));
  CHECK_THAT(error(good + "NarSize: 120\n"), Catch::Contains("appears twice"));
  CHECK_THAT(error(good + "URL: no-newline"), Catch::Contains("lacks a newline"));
  CHECK_THAT(error(good + "garbage line\n"), Catch::Contains("expected 'Key: value'"));
  // An absent Compression means bzip2, as in Nix.
  CHECK(NarInfo::parse(with("Compression: none\n", ""), dir, "x").compression == "bzip2");
}
