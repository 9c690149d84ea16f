// Binary caches between kiln and the real Nix (Debian's nix-bin 2.8), both
// ways: Nix substitutes what kiln pushed and signed, kiln substitutes what
// Nix built, signed and copied. Nix runs with a chroot store
// (local?root=DIR&store=/kiln/store) and its state and caches in a
// temporary folder.
#include "support/test_support.hpp"

#include <kiln/cache/cache_client.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// A chain of three derivations built by Nix: pkg-c → pkg-b → pkg-a, with
// Debian's static busybox as the builder (the chroot store has no /bin/sh).
std::string
build_chain(const test::PrivateNix& nix)
{
  auto bb = nix.dir() / "bb";
  fs::create_directories(bb);
  fs::copy_file("/bin/busybox", bb / "busybox");
  fs::create_symlink("busybox", bb / "sh");
  test::write_file(nix.dir() / "chain.nix", R"(
let
  bb = ./bb;
  mk = name: deps: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/sh";
    args = [ "-c" "${bb}/busybox echo ${name} > $out; for d in ${toString deps}; do ${bb}/busybox echo $d >> $out; done" ];
  };
  a = mk "pkg-a" [];
  b = mk "pkg-b" [ a ];
in mk "pkg-c" [ a b ]
)");
  return test::output_of(
    nix.run({"nix-build", "--store", nix.store(), "chain.nix", "--no-out-link"}), "nix-build");
}

} // namespace

TEST_CASE("Nix substitutes from a cache kiln pushed to, and checks kiln's signatures",
          "[nix][interop][cache]")
{
  auto kind = GENERATE(as<std::string>{}, "file", "http");
  auto compression = GENERATE(as<std::string>{}, "zstd", "xz", "none");
  INFO(kind << " " << compression);
  TempDir dir;
  fs::create_directories(dir / "cache");
  std::unique_ptr<test::Nginx> nginx;
  std::string url = "file://" + (dir / "cache").string();
  if (kind == "http") {
    nginx = std::make_unique<test::Nginx>(dir / "cache");
    url = nginx->url();
  }

  LocalStore store({dir / "kiln"});
  auto a = test::add_test_object(store, "crate-a", test::random_bytes(50000, 1));
  auto b = test::add_test_object(store, "crate-b", "b", {a});
  auto top = test::add_test_object(store, "app", "app", {a, b});
  auto key = SecretKey::generate("kiln-ci-1");
  CacheClient cache(open_binary_cache(url), store.store_dir());
  PushOptions options;
  options.key = &key;
  options.compression = compression;
  push(store, cache, {top}, options);

  test::PrivateNix nix;
  auto copied = nix.run({"nix", "copy", "--from", url + "?store=/kiln/store", "--store",
                         nix.store(), "--option", "trusted-public-keys",
                         key.public_key().to_string(), store.print(top)});
  INFO(copied.err);
  REQUIRE(copied.status == 0);
  auto verified = nix.run({"nix", "store", "verify", "--store", nix.store(), "-r",
                           store.print(top), "--option", "trusted-public-keys",
                           key.public_key().to_string()});
  INFO(verified.err);
  CHECK(verified.status == 0);
  auto info = nix.run({"nix", "path-info", "--store", nix.store(), "--json", "-r", store.print(top)});
  REQUIRE(info.status == 0);
  auto j = nlohmann::json::parse(info.out);
  CHECK(j.size() == 3);
  for (const auto& entry : j) {
    auto ours = store.query_path_info(store.store_dir().parse(entry["path"].get<std::string>()));
    REQUIRE(ours);
    CHECK(entry["narHash"] == ours->nar_hash.to_string(HashFormat::sri, true));
    CHECK(entry["narSize"] == ours->nar_size);
  }

  SECTION("a key Nix does not trust is refused")
  {
    test::PrivateNix other;
    auto stranger = SecretKey::generate("stranger-1");
    auto refused = other.run({"nix", "copy", "--from", url + "?store=/kiln/store", "--store",
                              other.store(), "--option", "trusted-public-keys",
                              stranger.public_key().to_string(), store.print(top)});
    CHECK(refused.status != 0);
    CHECK_THAT(refused.err, Catch::Contains("lacks a valid signature"));
  }
}

TEST_CASE("kiln substitutes what Nix built, signed and copied to a cache",
          "[nix][interop][cache]")
{
  test::PrivateNix nix;
  std::string top = build_chain(nix);
  REQUIRE_THAT(top, Catch::StartsWith("/kiln/store/") && Catch::EndsWith("-pkg-c"));
  REQUIRE(nix.run({"nix-store", "--generate-binary-cache-key", "nix-builder-1", "sk", "pk"}).status ==
          0);
  std::string pub = read_file(nix.dir() / "pk");
  // Nix builds once (a few seconds); each compression is a separate cache.
  for (std::string compression : {"xz", "zstd", "none"}) {
    INFO(compression);
    auto cache_dir = nix.dir() / ("cache-" + compression);
    auto to = nix.run({"nix", "copy", "--store", nix.store(), "--to",
                       "file://" + cache_dir.string() + "?store=/kiln/store&compression=" +
                         compression + "&secret-key=" + (nix.dir() / "sk").string(),
                       top});
    INFO(to.err);
    REQUIRE(to.status == 0);

    TempDir dir;
    auto store = (dir / "kiln").string();
    auto url = "file://" + cache_dir.string();
    auto pulled =
      test::kiln({"--store", store, "--trusted-public-keys", pub, "copy", "--from", url, top});
    INFO(pulled.err);
    REQUIRE(pulled.status == 0);
    CHECK_THAT(pulled.err, Catch::Contains("fetched 3 paths"));
    CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);

    // Same NAR hashes, references and deriver as Nix has.
    auto theirs = nlohmann::json::parse(
      nix.run({"nix", "path-info", "--store", nix.store(), "--json", "-r", top}).out);
    auto ours = nlohmann::json::parse(
      test::kiln({"--store", store, "path-info", "--json", "--closure", top}).out);
    REQUIRE(theirs.size() == 3);
    REQUIRE(ours.size() == 3);
    std::map<std::string, nlohmann::json> by_path;
    for (const auto& e : ours) {
      by_path[e["path"]] = e;
    }
    for (const auto& e : theirs) {
      auto& mine = by_path[e["path"]];
      CHECK(mine["narHash"] == e["narHash"]);
      CHECK(mine["references"] == e["references"]);
      CHECK(mine["deriver"] == e["deriver"]);
      CHECK(mine["signatures"].size() == 1);
    }

    if (compression == "xz") {
      // Without Nix's key, nothing is taken.
      TempDir other;
      auto refused = test::kiln({"--store", (other / "kiln").string(), "copy", "--from", url, top});
      CHECK(refused.status == 1);
      CHECK_THAT(refused.err, Catch::Contains("nix-builder-1 (untrusted key)"));
    }
  }
}
