// kiln cache gc: least recently used paths leave a cache folder, whole
// closures stay, NAR files go with their narinfos (unless shared).
#include "support/test_support.hpp"

#include <kiln/cache/cache_client.hpp>
#include <kiln/cache/cache_gc.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>

#include <random>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;
using Clock = std::chrono::system_clock;

namespace {

// A store and a file:// cache folder, with paths pushed into it.
struct CacheWithPaths
{
  TempDir dir;
  LocalStore store{{dir / "store"}};
  fs::path folder = dir / "cache";
  SecretKey key = SecretKey::generate("gc-test-1");

  StorePath
  add(const std::string& name, const std::string& contents, const std::set<StorePath>& refs = {})
  {
    auto path = test::add_test_object(store, name, contents, refs);
    CacheClient client(open_binary_cache("file://" + folder.string()), store.store_dir());
    PushOptions options;
    options.key = &key;
    push(store, client, {path}, options);
    return path;
  }

  fs::path
  narinfo_file(const StorePath& path) const
  {
    return folder / (std::string(path.hash_part()) + ".narinfo");
  }

  fs::path
  nar_file(const StorePath& path) const
  {
    auto file = narinfo_file(path);
    return folder / NarInfo::parse(read_file(file), StoreDir(), file.string()).url;
  }

  bool
  has(const StorePath& path) const
  {
    return fs::exists(narinfo_file(path));
  }

  // Make the narinfo and NAR of `path` look last used `days` ago.
  void
  used_days_ago(const StorePath& path, double days) const
  {
    auto t = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(days * 86400));
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
    struct timespec times[2] = {{secs, 0}, {secs, 0}};
    for (const auto& f : {nar_file(path), narinfo_file(path)}) {
      REQUIRE(::utimensat(AT_FDCWD, f.c_str(), times, 0) == 0);
    }
  }

  // Every narinfo's references and NAR are in the folder.
  void
  check_closed() const
  {
    for (const auto& e : fs::directory_iterator(folder)) {
      if (e.path().extension() != ".narinfo") {
        continue;
      }
      auto narinfo = NarInfo::parse(read_file(e.path()), StoreDir(), e.path().string());
      INFO(e.path().string());
      CHECK(fs::exists(folder / narinfo.url));
      for (const auto& ref : narinfo.info.references) {
        CHECK(has(ref));
      }
    }
  }

  std::vector<std::string>
  deleted_names(const CacheGcResult& result) const
  {
    std::vector<std::string> out;
    for (const auto& d : result.deleted) {
      out.emplace_back(d.path.name());
    }
    return out;
  }
};

CacheGcOptions
keep_days(int days)
{
  CacheGcOptions o;
  o.keep_for = std::chrono::hours(24 * days);
  return o;
}

} // namespace

TEST_CASE("cache gc drops paths unused for --keep-days, never a reference of a kept one",
          "[cache-gc]")
{
  CacheWithPaths c;
  auto base = c.add("base", "base");
  auto lib = c.add("lib", test::random_bytes(50000, 1), {base});
  auto app = c.add("app", "app", {lib});
  auto old = c.add("old", test::random_bytes(20000, 2));
  // Two paths with the same contents share one NAR file.
  auto twin_a = c.add("twin", "same bytes");
  auto twin_b = c.add("twin-b", "same bytes");
  REQUIRE(c.nar_file(twin_a) == c.nar_file(twin_b));
  // (Reading a narinfo counts as a use: find the NAR files first.)
  auto old_nar = c.nar_file(old);
  c.used_days_ago(twin_b, 2);
  for (const auto& p : {base, lib, old, twin_a}) {   // twin_a's NAR is twin_b's
    c.used_days_ago(p, 30);
  }
  c.used_days_ago(app, 1);

  SECTION("a dry run says what would go and touches nothing")
  {
    auto options = keep_days(7);
    options.dry_run = true;
    auto result = collect_cache_garbage(c.folder, options);
    CHECK(result.deleted.size() == 2);
    CHECK(c.has(old));
    CHECK(fs::exists(old_nar));
  }

  SECTION("what app needs stays, however old; a shared NAR stays with its other user")
  {
    auto result = collect_cache_garbage(c.folder, keep_days(7));
    auto names = c.deleted_names(result);
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"old", "twin"});
    CHECK_FALSE(c.has(old));
    CHECK_FALSE(fs::exists(old_nar));
    CHECK_FALSE(c.has(twin_a));
    CHECK(c.has(twin_b));
    CHECK(fs::exists(c.nar_file(twin_b)));
    CHECK(c.has(base));
    CHECK(c.has(lib));
    CHECK(result.kept.size() == 4);
    c.check_closed();
    // Freed: two narinfos and one NAR (the shared one stayed).
    CHECK(result.bytes_freed > 20000);
    CHECK(result.bytes_freed < 30000);

    // What is left still substitutes, closure and all.
    TempDir fresh;
    LocalStore other({fresh / "s"});
    CacheClient client(open_binary_cache("file://" + c.folder.string()), other.store_dir());
    TrustPolicy trust({c.key.public_key().to_string()}, 1);
    auto pulled = substitute(other, {&client}, trust, {app, twin_b});
    CHECK(pulled.failed.empty());
    CHECK(other.is_valid(base));

    // That download was a use of app, lib and base. Once they are old
    // again, the whole closure goes, referrers first.
    for (const auto& p : {app, lib, base}) {
      c.used_days_ago(p, 10);
    }
    auto second = collect_cache_garbage(c.folder, keep_days(7));
    CHECK(c.deleted_names(second) == std::vector<std::string>{"app", "lib", "base"});
    CHECK(c.has(twin_b));
    c.check_closed();
  }
}

TEST_CASE("cache gc --max-size drops the least recently used until the folder fits",
          "[cache-gc]")
{
  CacheWithPaths c;
  // A random DAG of 40 paths of random sizes and last uses.
  std::mt19937 rng(7);
  std::vector<StorePath> paths;
  for (int i = 0; i < 40; ++i) {
    std::set<StorePath> refs;
    for (int k = 0; k < 3 && !paths.empty(); ++k) {
      if (rng() % 2) {
        refs.insert(paths[rng() % paths.size()]);
      }
    }
    paths.push_back(
      c.add("p" + std::to_string(i), test::random_bytes(1000 + rng() % 30000, rng()), refs));
  }
  for (const auto& p : paths) {
    c.used_days_ago(p, static_cast<double>(rng() % 1000) / 10.0);
  }
  auto before = collect_cache_garbage(c.folder, [] {
    CacheGcOptions o;
    o.max_size = UINT64_MAX;
    return o;
  }());
  REQUIRE(before.deleted.empty());
  REQUIRE(before.kept.size() == 40);

  uint64_t limit = GENERATE(0.9, 0.5, 0.1) * before.bytes_kept;
  INFO("limit " << limit << " of " << before.bytes_kept);
  CacheGcOptions options;
  options.max_size = limit;
  auto result = collect_cache_garbage(c.folder, options);
  CHECK(result.bytes_kept <= limit);
  CHECK(result.bytes_kept + result.bytes_freed == before.bytes_kept);
  CHECK(result.deleted.size() + result.kept.size() == 40);
  c.check_closed();
  // Least recently used first: nothing deleted was used later than anything kept.
  for (const auto& d : result.deleted) {
    for (const auto& k : result.kept) {
      CHECK(d.last_used <= k.last_used);
    }
  }
  // It stopped as soon as the folder fit: the last one dropped was needed.
  REQUIRE_FALSE(result.deleted.empty());
  CHECK(result.bytes_kept + result.deleted.back().bytes > limit);
}

TEST_CASE("cache gc removes old orphaned files, never an upload in flight", "[cache-gc]")
{
  CacheWithPaths c;
  auto kept = c.add("kept", "kept");
  test::write_file(c.folder / "nar" / "0orphan.nar.zst", "left by an interrupted push");
  test::write_file(c.folder / "nar" / "1fresh.nar.zst", "being uploaded right now");
  test::write_file(c.folder / "abc.narinfo.tmp.12.34", "debris");
  struct timespec old_times[2] = {{::time(nullptr) - 3 * 86400, 0}, {::time(nullptr) - 3 * 86400, 0}};
  ::utimensat(AT_FDCWD, (c.folder / "nar" / "0orphan.nar.zst").c_str(), old_times, 0);
  ::utimensat(AT_FDCWD, (c.folder / "abc.narinfo.tmp.12.34").c_str(), old_times, 0);

  auto result = collect_cache_garbage(c.folder, keep_days(7));
  CHECK(result.deleted.empty());
  auto orphans = result.orphans_removed;
  std::sort(orphans.begin(), orphans.end());
  CHECK(orphans == std::vector<std::string>{"abc.narinfo.tmp.12.34", "nar/0orphan.nar.zst"});
  CHECK_FALSE(fs::exists(c.folder / "nar" / "0orphan.nar.zst"));
  CHECK(fs::exists(c.folder / "nar" / "1fresh.nar.zst"));
  CHECK(c.has(kept));
  CHECK(fs::exists(c.nar_file(kept)));
}

TEST_CASE("cache gc counts reads as uses, and its own reads not", "[cache-gc]")
{
  CacheWithPaths c;
  auto path = c.add("read-later", test::random_bytes(10000, 3));
  c.used_days_ago(path, 30);
  struct stat before;
  REQUIRE(::stat(c.narinfo_file(path).c_str(), &before) == 0);

  // The collector reads every narinfo, without marking it as accessed.
  auto options = keep_days(7);
  options.dry_run = true;
  CHECK(collect_cache_garbage(c.folder, options).deleted.size() == 1);
  struct stat after;
  REQUIRE(::stat(c.narinfo_file(path).c_str(), &after) == 0);
  CHECK(after.st_atim.tv_sec == before.st_atim.tv_sec);

  // A client downloading it (file:// reads, as a web server's would) is a use.
  TempDir fresh;
  LocalStore other({fresh / "s"});
  CacheClient client(open_binary_cache("file://" + c.folder.string()), other.store_dir());
  TrustPolicy trust({c.key.public_key().to_string()}, 1);
  REQUIRE(substitute(other, {&client}, trust, {path}).failed.empty());
  REQUIRE(::stat(c.nar_file(path).c_str(), &after) == 0);
  if (after.st_atim.tv_sec == before.st_atim.tv_sec) {
    test::skip("this file system does not record access times (noatime): the rest did not run");
    return;
  }
  CHECK(collect_cache_garbage(c.folder, keep_days(7)).deleted.empty());
  CHECK(c.has(path));
}

TEST_CASE("kiln cache gc on the command line", "[cache-gc][cli]")
{
  CacheWithPaths c;
  auto gone = c.add("gone", test::random_bytes(5000, 4));
  auto stays = c.add("stays", "stays");
  c.used_days_ago(gone, 40);
  std::string url = "file://" + c.folder.string();

  auto dry = test::kiln({"cache", "gc", url, "--keep-days", "30", "--dry-run"});
  INFO(dry.err);
  CHECK(dry.status == 0);
  CHECK_THAT(dry.out, Catch::Contains("would delete /kiln/store/") && Catch::Contains("-gone ("));
  CHECK(c.has(gone));

  auto json = test::kiln({"cache", "gc", c.folder.string(), "--keep-days", "30", "--json"});
  INFO(json.err);
  REQUIRE(json.status == 0);
  auto j = nlohmann::json::parse(json.out);
  REQUIRE(j["deleted"].size() == 1);
  CHECK(j["deleted"][0]["path"] == c.store.print(gone));
  CHECK(j["bytesFreed"].get<uint64_t>() > 5000);
  CHECK(j["kept"] == 1);
  CHECK_FALSE(c.has(gone));
  CHECK(c.has(stays));

  auto sized = test::kiln({"cache", "gc", url, "--max-size", "0"});
  CHECK(sized.status == 0);
  CHECK_FALSE(c.has(stays));
  CHECK_THAT(sized.err, Catch::Contains("deleted 1 paths"));

  TempDir empty;
  for (std::vector<std::string> bad :
       {std::vector<std::string>{"cache", "gc", url},
        {"cache", "gc", "http://127.0.0.1:1/cache", "--keep-days", "1"},
        {"cache", "gc", empty.path().string(), "--keep-days", "1"},
        {"cache", "gc", url, "--max-size", "lots"}}) {
    auto r = test::kiln(bad);
    INFO(bad[2] << ": " << r.err);
    CHECK(r.status == 2);
    CHECK_THAT(r.err, Catch::StartsWith("kiln: error: "));
  }
}
