// One conformance suite for every binary-cache backend (a folder through
// file://, and the same folder served over HTTP by Debian's nginx with
// WebDAV PUT), then substitution and push behaviour, trust, and tampering.
#include "support/test_support.hpp"

#include <kiln/cache/cache_client.hpp>
#include <kiln/cache/compression.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// A cache folder and a way to reach it.
struct CacheFixture
{
  explicit CacheFixture(const std::string& kind) : kind(kind)
  {
    fs::create_directories(dir.path() / "cache");
    if (kind == "http") {
      nginx = std::make_unique<test::Nginx>(dir.path() / "cache");
      url = nginx->url();
    } else {
      url = "file://" + (dir.path() / "cache").string();
    }
  }
  fs::path
  folder() const
  {
    return dir.path() / "cache";
  }

  std::string kind;
  TempDir dir;
  std::unique_ptr<test::Nginx> nginx;
  std::string url;
};

std::unique_ptr<CacheClient>
client_for(const std::string& url, const LocalStore& store, NegativeCache* negative = nullptr)
{
  return std::make_unique<CacheClient>(open_binary_cache(url), store.store_dir(), negative);
}

// Rewrite a narinfo in the cache folder (e.g. to tamper with it).
void
edit_narinfo(const fs::path& folder, const StorePath& path,
             const std::function<void(NarInfo&)>& change)
{
  auto file = folder / (std::string(path.hash_part()) + ".narinfo");
  auto narinfo = NarInfo::parse(read_file(file), StoreDir(), file.string());
  change(narinfo);
  write_file_atomic(file, narinfo.to_string(StoreDir()));
}

} // namespace

TEST_CASE("every backend stores, lists and streams files alike", "[cache][conformance]")
{
  auto kind = GENERATE(as<std::string>{}, "file", "http");
  CacheFixture cache(kind);
  INFO(kind << " " << cache.url);
  auto backend = open_binary_cache(cache.url);

  CHECK_FALSE(backend->file_exists("nix-cache-info"));
  CHECK_FALSE(backend->get_file("nix-cache-info").has_value());
  backend->upsert_file("nix-cache-info", "StoreDir: /kiln/store\n", "text/x-nix-cache-info");
  CHECK(backend->file_exists("nix-cache-info"));
  CHECK(backend->get_file("nix-cache-info") == "StoreDir: /kiln/store\n");

  TempDir tmp;
  std::string big = test::random_bytes(3 << 20, 9);
  test::write_file(tmp / "big", big);
  backend->upsert_file_from("nar/big.nar", tmp / "big", "application/x-nix-nar");
  StringSink streamed;
  CHECK(backend->get_file("nar/big.nar", streamed));
  CHECK(streamed.s == big);
  StringSink nothing;
  CHECK_FALSE(backend->get_file("nar/absent.nar", nothing));
  CHECK(nothing.s.empty());

  // Replacing a file is atomic for readers and takes effect.
  backend->upsert_file("nix-cache-info", "StoreDir: /kiln/store\nPriority: 10\n", "text/plain");
  CHECK(backend->get_file("nix-cache-info")->find("Priority: 10") != std::string::npos);

  for (std::string bad : {"../escape", "/etc/passwd", "nar/../../x", "a//b", "nar/./x", "a\\b"}) {
    INFO(bad);
    CHECK_THROWS_AS(backend->get_file(bad), FormatError);
    CHECK_THROWS_AS(backend->upsert_file(bad, "x", "text/plain"), FormatError);
  }
}

TEST_CASE("reading a file cache never creates it", "[cache][conformance]")
{
  TempDir dir;
  auto cache = open_binary_cache("file://" + (dir / "absent" / "cache").string());
  CHECK_FALSE(cache->get_file("nix-cache-info").has_value());
  CHECK_FALSE(cache->file_exists("nar/x.nar"));
  CHECK_FALSE(fs::exists(dir / "absent"));
}

TEST_CASE("push then substitute moves whole closures, verified", "[cache][substitute]")
{
  auto kind = GENERATE(as<std::string>{}, "file", "http");
  CacheFixture cache(kind);
  INFO(kind);
  TempDir dir;
  LocalStore a({dir / "a"});
  LocalStore b({dir / "b"});
  auto key = SecretKey::generate("team-1");
  TrustPolicy trust({key.public_key().to_string()}, 1);

  auto lib = test::add_test_object(a, "lib", test::random_bytes(200000, 1));
  auto tool = test::add_test_object(a, "tool", "tool", {lib});
  auto app = test::add_test_object(a, "app", "app", {lib, tool});

  auto up = client_for(cache.url, a);
  PushOptions push_options;
  push_options.key = &key;
  auto pushed = push(a, *up, {app}, push_options);
  CHECK(pushed.uploaded.size() == 3);
  CHECK(pushed.bytes_uploaded > 0);
  // The local paths now carry the signature too.
  CHECK(a.query_path_info(app)->signatures.size() == 1);

  SECTION("pushing again uploads nothing")
  {
    auto again = push(a, *up, {app}, push_options);
    CHECK(again.uploaded.empty());
    CHECK(again.already_present.size() == 3);
  }
  SECTION("the whole closure arrives and verifies")
  {
    auto down = client_for(cache.url, b);
    auto result = substitute(b, {down.get()}, trust, {app});
    CHECK(result.failed.empty());
    CHECK(result.fetched.size() == 3);
    CHECK(b.closure({app}) == std::set<StorePath>{lib, tool, app});
    CHECK(b.query_path_info(app)->nar_hash == a.query_path_info(app)->nar_hash);
    CHECK(b.verify({}).problems.empty());
    auto again = substitute(b, {down.get()}, trust, {app});
    CHECK(again.fetched.empty());
    CHECK(again.already_valid.size() == 1);
  }
  SECTION("without a trusted signature nothing is taken")
  {
    auto down = client_for(cache.url, b);
    auto stranger = SecretKey::generate("stranger-1");
    auto result = substitute(b, {down.get()}, TrustPolicy({stranger.public_key().to_string()}, 1),
                             {app});
    CHECK(result.fetched.empty());
    REQUIRE(result.failed.count(app));
    CHECK_THAT(result.failed[app], Catch::Contains("team-1 (untrusted key)"));
    CHECK(b.valid_paths().empty());
  }
}

TEST_CASE("tampered caches are refused and leave the store unchanged", "[cache][tamper]")
{
  CacheFixture cache("file");
  TempDir dir;
  LocalStore a({dir / "a"});
  LocalStore b({dir / "b"});
  auto key = SecretKey::generate("team-1");
  TrustPolicy trust({key.public_key().to_string()}, 1);
  auto dep = test::add_test_object(a, "dep", test::random_bytes(100000, 5));
  auto top = test::add_test_object(a, "top", test::random_bytes(100000, 6), {dep});
  auto up = client_for(cache.url, a);
  PushOptions options;
  options.key = &key;
  options.compression = "none";
  push(a, *up, {top}, options);
  auto down = client_for(cache.url, b);
  auto nar_file = [&](const StorePath& p) {
    auto narinfo = NarInfo::parse(
      read_file(cache.folder() / (std::string(p.hash_part()) + ".narinfo")), StoreDir(), "x");
    return cache.folder() / narinfo.url;
  };
  auto resign = [&](NarInfo& n) {
    n.info.signatures = {key.sign(path_fingerprint(StoreDir(), n.info)).to_string()};
  };
  auto expect_refused = [&](const StorePath& p, const std::string& reason) {
    auto result = substitute(b, {down.get()}, trust, {p});
    CHECK(result.fetched.size() <= 1);
    REQUIRE(result.failed.count(p));
    CHECK_THAT(result.failed[p], Catch::Contains(reason));
    CHECK_FALSE(b.is_valid(p));
    CHECK(fs::is_empty(dir / "b" / "tmp"));
    CHECK(b.verify({}).ok());
  };

  SECTION("a flipped byte in the NAR")
  {
    auto file = nar_file(dep);
    std::string nar = read_file(file);
    nar[nar.size() / 2] ^= 1;
    write_file_atomic(file, nar);
    expect_refused(dep, "hash mismatch");
    // And the error names the cache and the path.
    auto result = substitute(b, {down.get()}, trust, {dep});
    CHECK_THAT(result.failed[dep], Catch::Contains(cache.url) && Catch::Contains(dep.base()));
    // What needs it cannot come either.
    auto upper = substitute(b, {down.get()}, trust, {top});
    CHECK(upper.failed.count(top));
    CHECK_FALSE(b.is_valid(top));
  }
  SECTION("a NAR far larger than its NarSize (an inflating cache) is cut off at NarSize")
  {
    TempDir big;
    test::write_file(big / "f", std::string(64 << 20, '\0'));
    write_file_atomic(nar_file(dep), test::nar_of(big / "f"));
    edit_narinfo(cache.folder(), dep, [&](NarInfo& n) {
      n.file_size.reset(); // only NarSize bounds it
      n.file_hash.reset();
      resign(n);
    });
    expect_refused(dep, "NAR is larger than the 100112 bytes it should have");
  }
  SECTION("a truncated NAR")
  {
    auto file = nar_file(dep);
    std::string nar = read_file(file);
    write_file_atomic(file, nar.substr(0, nar.size() - 100));
    expect_refused(dep, "truncated");
  }
  SECTION("a NarSize that lies, even when properly signed")
  {
    edit_narinfo(cache.folder(), dep, [&](NarInfo& n) {
      n.info.nar_size += 8;
      resign(n);
    });
    expect_refused(dep, "size mismatch");
  }
  SECTION("a bad signature")
  {
    edit_narinfo(cache.folder(), dep, [&](NarInfo& n) {
      auto other = SecretKey::generate("team-1"); // same name, different key
      n.info.signatures = {other.sign(path_fingerprint(StoreDir(), n.info)).to_string()};
    });
    expect_refused(dep, "INVALID signature");
  }
  SECTION("no signature")
  {
    edit_narinfo(cache.folder(), dep, [&](NarInfo& n) { n.info.signatures.clear(); });
    expect_refused(dep, "signatures: none");
  }
  SECTION("a reference missing from the cache")
  {
    fs::remove(cache.folder() / (std::string(dep.hash_part()) + ".narinfo"));
    auto result = substitute(b, {down.get()}, trust, {top});
    CHECK(result.failed.count(dep));
    CHECK_THAT(result.failed[top], Catch::Contains("could not be substituted"));
    CHECK(b.valid_paths().empty());
  }
  SECTION("a NAR that tries to escape its folder")
  {
    // A signed narinfo whose NAR has an entry named "..": hash and size
    // match, the signature is good, and still it must not be restored.
    std::string evil;
    auto str = [&](std::string_view s) {
      uint64_t n = s.size();
      for (int i = 0; i < 8; ++i) {
        evil.push_back(static_cast<char>(n >> (8 * i) & 0xff));
      }
      evil.append(s);
      evil.append((8 - s.size() % 8) % 8, '\0');
    };
    for (auto t : {"nix-archive-1", "(", "type", "directory", "entry", "(", "name", "..", "node",
                   "(", "type", "regular", "contents", "pwned", ")", ")", ")"}) {
      str(t);
    }
    write_file_atomic(nar_file(dep), evil);
    edit_narinfo(cache.folder(), dep, [&](NarInfo& n) {
      n.info.nar_hash = hash_string(HashAlgo::sha256, evil);
      n.info.nar_size = evil.size();
      resign(n);
    });
    expect_refused(dep, "not allowed");
    CHECK_FALSE(fs::exists(dir / "pwned"));
  }
}

TEST_CASE("k-of-n trust: two independent builders must agree", "[cache][substitute]")
{
  CacheFixture cache("file");
  TempDir dir;
  LocalStore a({dir / "a"});
  LocalStore b({dir / "b"});
  auto ci = SecretKey::generate("ci-1");
  auto laptop = SecretKey::generate("laptop-1");
  TrustPolicy both({ci.public_key().to_string(), laptop.public_key().to_string()}, 2);
  auto p = test::add_test_object(a, "crate", "compiled");
  auto up = client_for(cache.url, a);
  PushOptions options;
  options.key = &ci;
  push(a, *up, {p}, options);
  auto down = client_for(cache.url, b);
  CHECK(substitute(b, {down.get()}, both, {p}).failed.count(p));
  // The second builder adds its signature to the same narinfo.
  edit_narinfo(cache.folder(), p, [&](NarInfo& n) {
    n.info.signatures.insert(laptop.sign(path_fingerprint(StoreDir(), n.info)).to_string());
  });
  auto result = substitute(b, {down.get()}, both, {p});
  CHECK(result.failed.empty());
  CHECK(b.is_valid(p));
}

TEST_CASE("several caches: all asked at once, failures fall back", "[cache][substitute]")
{
  CacheFixture good("file");
  CacheFixture bad("file");
  TempDir dir;
  LocalStore a({dir / "a"});
  LocalStore b({dir / "b"});
  auto key = SecretKey::generate("k-1");
  TrustPolicy trust({key.public_key().to_string()}, 1);
  auto p = test::add_test_object(a, "thing", test::random_bytes(10000, 7));
  PushOptions options;
  options.key = &key;
  push(a, *client_for(good.url, a), {p}, options);
  push(a, *client_for(bad.url, a), {p}, options);
  // The preferred cache (lower priority number) serves a broken NAR.
  write_file_atomic(bad.folder() / "nix-cache-info", "StoreDir: /kiln/store\nPriority: 1\n");
  for (const auto& e : fs::directory_iterator(bad.folder() / "nar")) {
    write_file_atomic(e.path(), "garbage");
  }
  auto preferred = client_for(bad.url, b);
  auto fallback = client_for(good.url, b);
  auto unreachable = client_for("http://127.0.0.1:" + std::to_string(test::free_port()), b);
  // What each cache could not give is said by the cache, once.
  std::vector<std::string> log;
  for (auto* c : {unreachable.get(), preferred.get(), fallback.get()}) {
    c->set_reporter([&](const std::string& line) { log.push_back(line); });
  }
  auto result = substitute(b, {unreachable.get(), preferred.get(), fallback.get()}, trust, {p});
  CHECK(result.failed.empty());
  CHECK(b.is_valid(p));
  CHECK(unreachable->disabled());
  for (auto* c : {unreachable.get(), preferred.get(), fallback.get()}) {
    c->report();
  }
  REQUIRE(log.size() == 2);
  CHECK_THAT(log[0], Catch::StartsWith("warning: cache http://127.0.0.1:") &&
                       Catch::Contains("disabled for the rest of this run"));
  CHECK(log[1] == "warning: cache " + bad.url + ": 1 path whose NAR failed verification; not using it");
}

TEST_CASE("'not in this cache' is remembered briefly, and --refresh ignores it",
          "[cache][substitute]")
{
  CacheFixture cache("file");
  TempDir dir;
  LocalStore a({dir / "a"});
  LocalStore b({dir / "b"});
  auto key = SecretKey::generate("k-1");
  TrustPolicy trust({key.public_key().to_string()}, 1);
  auto p = test::add_test_object(a, "late", "arrives later");
  NegativeCache negative(dir / "negative", std::chrono::seconds(300));
  auto down = client_for(cache.url, b, &negative);
  CHECK(substitute(b, {down.get()}, trust, {p}).failed.count(p));

  PushOptions options;
  options.key = &key;
  push(a, *client_for(cache.url, a), {p}, options);
  CHECK(substitute(b, {down.get()}, trust, {p}).failed.count(p)); // still remembered
  SubstituteOptions refresh;
  refresh.refresh = true;
  CHECK(substitute(b, {down.get()}, trust, {p}, refresh).failed.empty());

  NegativeCache no_memory(dir / "negative2", std::chrono::seconds(0));
  auto other = test::add_test_object(a, "other", "x");
  auto fresh = client_for(cache.url, b, &no_memory);
  CHECK(substitute(b, {fresh.get()}, trust, {other}).failed.count(other));
  push(a, *client_for(cache.url, a), {other}, options);
  CHECK(substitute(b, {fresh.get()}, trust, {other}).failed.empty());
}

TEST_CASE("kiln copy and push on the command line", "[cache][cli]")
{
  CacheFixture cache("http");
  TempDir dir;
  auto store_a = (dir / "a").string();
  auto store_b = (dir / "b").string();
  auto pub = test::output_of(
    test::kiln({"key", "generate", "cli-1", "--secret-file", (dir / "sk").string()}), "keygen");
  CHECK(test::kiln({"key", "generate", "cli-1", "--secret-file", (dir / "sk").string()}).status ==
        1); // never overwrites a key
  CHECK(test::output_of(test::kiln({"key", "public", (dir / "sk").string()}), "pub") == pub);
  auto mode = fs::status(dir / "sk").permissions() & fs::perms::all;
  CHECK((mode == (fs::perms::owner_read | fs::perms::owner_write)));

  test::write_file(dir / "src" / "main.rs", "fn main() {}\n");
  auto path = test::output_of(test::kiln({"--store", store_a, "store", "add", (dir / "src").string()}),
                              "add");
  test::RunOptions with_key;
  with_key.env = {{"KILN_SECRET_KEY_FILE", (dir / "sk").string()}};
  auto pushed = test::kiln({"--store", store_a, "push", cache.url, path}, with_key);
  INFO(pushed.err);
  REQUIRE(pushed.status == 0);
  CHECK_THAT(pushed.err, Catch::Contains("pushed 1 paths"));

  auto copied = test::kiln(
    {"--store", store_b, "--trusted-public-keys", pub, "copy", "--from", cache.url, path});
  INFO(copied.err);
  CHECK(copied.status == 0);
  CHECK(test::kiln({"--store", store_b, "path-info", path}).status == 0);

  // Several paths after one --from: all are copied, none taken for a cache.
  test::write_file(dir / "more" / "a", "a");
  test::write_file(dir / "other" / "b", "b");
  auto p1 = test::output_of(
    test::kiln({"--store", store_a, "store", "add", (dir / "more").string()}), "add");
  auto p2 = test::output_of(
    test::kiln({"--store", store_a, "store", "add", (dir / "other").string()}), "add");
  REQUIRE(test::kiln({"--store", store_a, "push", cache.url, p1, p2}, with_key).status == 0);
  auto both = test::kiln(
    {"--store", store_b, "--trusted-public-keys", pub, "copy", "--from", cache.url, p1, p2});
  INFO(both.err);
  CHECK(both.status == 0);
  CHECK(test::kiln({"--store", store_b, "path-info", p1, p2}).status == 0);

  auto missing = test::kiln({"--store", store_b, "--trusted-public-keys", pub, "copy", "--from",
                             cache.url, "/kiln/store/00000000000000000000000000000000-nope"});
  CHECK(missing.status == 1);
  CHECK_THAT(missing.err, Catch::Contains("no binary cache has it"));
}
