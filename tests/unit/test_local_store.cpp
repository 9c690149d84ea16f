#include "support/test_support.hpp"

#include <kiln/nar/nar.hpp>
#include <kiln/store/local_store.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// Import a small input-addressed object.
StorePath
import(LocalStore& store, const std::string& name, const std::string& contents,
       const std::set<StorePath>& refs)
{
  return test::add_test_object(store, name, contents, refs);
}

} // namespace

TEST_CASE("store add is content-addressed exactly as nix-store --add", "[store]")
{
  TempDir dir;
  test::write_file(dir / "hello.txt", "hello\n");
  LocalStore store({dir / "store", "/nix/store"});
  auto path = store.add_path(dir / "hello.txt");
  CHECK(store.print(path) == "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");

  auto info = store.query_path_info(path);
  REQUIRE(info);
  CHECK(info->nar_size == 120);
  CHECK(info->nar_hash.to_string(HashFormat::nix32, false) ==
        "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw");
  REQUIRE(info->ca);
  CHECK(info->ca->to_string() == "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw");
  CHECK(info->references.empty());
  CHECK(info->registration_time > 0);

  // The object on disk: read-only, at <root>/store/<base>.
  auto physical = store.physical_path(path);
  CHECK(physical == fs::absolute(dir / "store" / "store" / path.base()));
  CHECK(test::run({"cat", physical.string()}).out == "hello\n");
  struct stat st;
  REQUIRE(::lstat(physical.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0444);

  SECTION("adding again is a no-op giving the same path")
  {
    CHECK(store.add_path(dir / "hello.txt") == path);
    CHECK(store.valid_paths().size() == 1);
  }
  SECTION("--name changes the name and the hash")
  {
    AddOptions options;
    options.name = "greeting";
    auto named = store.add_path(dir / "hello.txt", options);
    CHECK(named.name() == "greeting");
    CHECK(named.hash_part() != path.hash_part());
  }
  SECTION("a name a store path cannot have is refused, suggesting --name")
  {
    test::write_file(dir / "has space", "x");
    CHECK_THROWS_WITH(store.add_path(dir / "has space"), Catch::Contains("--name"));
  }
}

TEST_CASE("store add with the path known ahead copies once, and refuses a tree that is not it",
          "[store]")
{
  TempDir dir;
  fs::create_directories(dir / "src" / "sub");
  test::write_file(dir / "src" / "lib.rs", "pub fn f() {}\n");
  test::write_file(dir / "src" / "sub" / "mod.rs", "// mod\n");
  // The path computed elsewhere (as the cargo frontend does, from digests it
  // remembers): the one a plain add gives.
  StorePath expected = [&] {
    LocalStore scratch({dir / "scratch"});
    return scratch.add_path(dir / "src");
  }();
  LocalStore store({dir / "store"});
  AddOptions known;
  known.expected = expected;
  SECTION("the tree it was computed from: added, the same as a plain add")
  {
    CHECK(store.add_path(dir / "src", known) == expected);
    REQUIRE(store.is_valid(expected));
    auto info = store.query_path_info(expected);
    REQUIRE(info);
    LocalStore scratch({dir / "scratch"});
    CHECK(info->nar_hash == scratch.query_path_info(expected)->nar_hash);
    CHECK(info->ca->to_string() == scratch.query_path_info(expected)->ca->to_string());
  }
  SECTION("a tree changed since: refused by name, nothing added, nothing left in tmp")
  {
    test::write_file(dir / "src" / "lib.rs", "pub fn g() {}\n");
    CHECK_THROWS_WITH(store.add_path(dir / "src", known),
                      Catch::Contains((dir / "src").string()) &&
                        Catch::Contains(store.print(expected)) && Catch::Contains("changed"));
    CHECK_FALSE(store.is_valid(expected));
    CHECK(store.valid_paths().empty());
    CHECK(fs::is_empty(dir / "store" / "tmp"));
    CHECK_FALSE(fs::exists(store.physical_path(expected)));
  }
}

TEST_CASE("a store opened with another store directory is refused", "[store]")
{
  TempDir dir;
  {
    LocalStore store({dir.path(), "/kiln/store"});
  }
  CHECK_THROWS_WITH((LocalStore({dir.path(), "/other/store"})),
                    Catch::Contains("made for store directory '/kiln/store'"));
}

TEST_CASE("add_nar verifies hash, size and references and leaves nothing on failure", "[store]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  auto a = import(store, "a", "A", {});
  auto b = import(store, "b", "B", {a});
  CHECK(store.query_path_info(b)->references == std::set<StorePath>{a});
  CHECK(store.referrers(a) == std::set<StorePath>{b});
  CHECK(store.closure({b}) == std::set<StorePath>{a, b});

  test::write_file(dir / "f", "payload");
  std::string nar = test::nar_of(dir / "f");
  StorePath path("00000000000000000000000000000000-bad");
  PathInfo info(path);
  info.nar_hash = hash_string(HashAlgo::sha256, nar);
  info.nar_size = nar.size();

  SECTION("wrong hash")
  {
    info.nar_hash = hash_string(HashAlgo::sha256, "something else");
    StringSource in(nar);
    CHECK_THROWS_WITH(store.add_nar(info, in), Catch::Contains("NAR hash mismatch"));
  }
  SECTION("wrong size")
  {
    info.nar_size += 8;
    StringSource in(nar);
    CHECK_THROWS_WITH(store.add_nar(info, in), Catch::Contains("NAR size mismatch"));
  }
  SECTION("a corrupt archive")
  {
    std::string broken = nar;
    broken[broken.size() - 17] = 1; // the padding after the contents
    info.nar_hash = hash_string(HashAlgo::sha256, broken);
    StringSource in(broken);
    CHECK_THROWS_AS(store.add_nar(info, in), Error);
  }
  SECTION("a reference that is not valid")
  {
    info.references = {StorePath("11111111111111111111111111111111-missing")};
    StringSource in(nar);
    CHECK_THROWS_WITH(store.add_nar(info, in), Catch::Contains("is not valid"));
  }
  SECTION("a content address that does not match the path")
  {
    info.ca = ContentAddress{ContentAddress::Method::recursive, info.nar_hash};
    StringSource in(nar);
    CHECK_THROWS_WITH(store.add_nar(info, in), Catch::Contains("does not match its content address"));
  }
  CHECK_FALSE(store.is_valid(path));
  CHECK_FALSE(fs::exists(store.physical_path(path)));
  CHECK(fs::is_empty(dir / "s" / "tmp"));
  CHECK(store.verify({}).ok());
}

TEST_CASE("prepared paths are made valid together, references first, or none of them", "[store]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  auto prepare = [&](const std::string& name, const std::string& contents,
                     const std::set<StorePath>& refs) {
    test::write_file(dir / name, contents);
    std::string nar = test::nar_of(dir / name);
    PathInfo info(StorePath(std::string(32, name[0]) + "-" + name));
    info.nar_hash = hash_string(HashAlgo::sha256, nar);
    info.nar_size = nar.size();
    info.references = refs;
    StringSource in(nar);
    return store.prepare_nar(info, in);
  };
  StorePath a("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a");
  StorePath b("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b");
  StorePath c("cccccccccccccccccccccccccccccccc-c");

  SECTION("a batch whose later member refers to an earlier one")
  {
    auto pa = prepare("a", "A", {});
    auto pb = prepare("b", "B", {a});
    auto pc = prepare("c", "C", {});
    store.commit({pa.get(), pb.get(), pc.get()});
    CHECK(store.is_valid(a));
    CHECK(store.is_valid(c));
    CHECK(store.query_path_info(b)->references == std::set<StorePath>{a});
    CHECK(read_file(store.physical_path(b)) == "B");
  }
  SECTION("a reference neither valid nor in the batch: nothing is made valid")
  {
    auto pb = prepare("b", "B", {a});
    auto pc = prepare("c", "C", {});
    CHECK_THROWS_WITH(store.commit({pc.get(), pb.get()}), Catch::Contains("is not valid"));
    CHECK_FALSE(store.is_valid(b));
    CHECK_FALSE(store.is_valid(c));
    // The objects are still there to commit once the reference is.
    auto pa = prepare("a", "A", {});
    store.commit({pa.get(), pb.get(), pc.get()});
    CHECK(store.is_valid(b));
  }
  CHECK(store.verify({}).ok());
}

TEST_CASE("garbage collection keeps closures of roots and nothing else", "[store][gc]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  auto lib = import(store, "lib", "L", {});
  auto app = import(store, "app", "P", {lib});
  auto junk = import(store, "junk", "J", {});
  auto junk_user = import(store, "junk-user", "U", {junk});
  test::write_file(dir / "src", "rooted source");
  auto rooted = store.add_path(dir / "src", {std::nullopt, dir / "result", {}, std::nullopt});
  store.add_root(store.root() / "gcroots" / "app", app);

  SECTION("roots are found: direct links and indirect ones")
  {
    auto roots = store.find_roots();
    std::set<StorePath> kept;
    for (const auto& [link, path] : roots) {
      kept.insert(path);
    }
    CHECK(kept == std::set<StorePath>{app, rooted});
  }
  SECTION("a dry run deletes nothing")
  {
    GcOptions options;
    options.dry_run = true;
    auto result = store.collect_garbage(options);
    CHECK(result.deleted.size() == 2);
    CHECK(store.is_valid(junk));
  }
  SECTION("a real run deletes the unreachable paths, referrers first")
  {
    auto result = store.collect_garbage({});
    REQUIRE(result.deleted.size() == 2);
    CHECK(result.deleted[0] == junk_user);
    CHECK(result.deleted[1] == junk);
    CHECK(result.bytes_freed > 0);
    CHECK(store.is_valid(app));
    CHECK(store.is_valid(lib));
    CHECK(store.is_valid(rooted));
    CHECK_FALSE(store.is_valid(junk));
    CHECK_FALSE(fs::exists(store.physical_path(junk)));
    CHECK(store.verify({}).ok());
  }
  SECTION("removing an indirect root's link lets its path go")
  {
    fs::remove(dir / "result");
    store.collect_garbage({});
    CHECK_FALSE(store.is_valid(rooted));
    CHECK(store.is_valid(app));
  }
  SECTION("--root files and links keep paths alive for one run")
  {
    test::write_file(dir / "roots.txt", "# kept\n" + store.print(junk_user) + "\n");
    GcOptions options;
    options.extra_roots = {dir / "roots.txt"};
    auto result = store.collect_garbage(options);
    CHECK(result.deleted.empty());
    test::write_file(dir / "bad-roots.txt", "/not/a/store/path\n");
    options.extra_roots = {dir / "bad-roots.txt"};
    CHECK_THROWS_WITH(store.collect_garbage(options), Catch::Contains("bad-roots.txt:1"));
  }
  SECTION("--max-freed stops early, without breaking a closure")
  {
    GcOptions options;
    options.max_freed = 1;
    auto result = store.collect_garbage(options);
    REQUIRE(result.deleted.size() == 1);
    CHECK(result.deleted[0] == junk_user);
    CHECK(store.is_valid(junk));
    CHECK(store.verify({}).ok());
  }
  SECTION("debris of crashed additions is removed")
  {
    fs::create_directories(store.root() / "store" / "22222222222222222222222222222222-stray");
    fs::create_directories(store.root() / "tmp" / "add-1-2-3");
    auto before = store.verify({});
    CHECK(before.ok());
    REQUIRE(before.problems.size() == 1);
    CHECK(before.problems[0].kind == VerifyProblem::Kind::stray);
    auto result = store.collect_garbage({});
    CHECK(result.strays_removed == 1);
    CHECK(fs::is_empty(store.root() / "tmp"));
    CHECK(store.verify({}).problems.empty());
  }
}

TEST_CASE("verify finds corruption, missing paths and bad permissions", "[store][verify]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  test::write_file(dir / "tree" / "file", "original");
  test::write_file(dir / "tree" / "tool", "#!/bin/sh\n", true);
  auto path = store.add_path(dir / "tree");
  auto user = import(store, "user", "U", {path});
  auto file = store.physical_path(path) / "file";
  CHECK(store.verify({}).ok());

  SECTION("changed contents")
  {
    fs::permissions(store.physical_path(path), fs::perms::owner_write, fs::perm_options::add);
    fs::permissions(file, fs::perms::owner_write, fs::perm_options::add);
    test::write_file(file, "tampered");
    auto result = store.verify({});
    CHECK_FALSE(result.ok());
    REQUIRE_FALSE(result.problems.empty());
    CHECK(result.problems[0].kind == VerifyProblem::Kind::corrupt);
    CHECK_THAT(result.problems[0].detail, Catch::Contains("contents changed"));

    VerifyOptions remove;
    remove.remove_corrupt = true;
    auto removed = store.verify(remove);
    CHECK(removed.ok());
    CHECK_FALSE(store.is_valid(path));
    CHECK_FALSE(store.is_valid(user)); // it referenced the corrupt path
    CHECK(store.verify({}).problems.empty());
  }
  SECTION("a missing path")
  {
    delete_path(store.physical_path(path));
    auto result = store.verify({});
    CHECK_FALSE(result.ok());
    CHECK(result.problems[0].kind == VerifyProblem::Kind::missing);
  }
  SECTION("writable files are reported and repaired")
  {
    fs::permissions(file, fs::perms::owner_write, fs::perm_options::add);
    auto result = store.verify({});
    CHECK_FALSE(result.ok());
    CHECK(result.problems[0].kind == VerifyProblem::Kind::wrong_metadata);
    VerifyOptions repair;
    repair.repair = true;
    CHECK(store.verify(repair).ok());
    CHECK(store.verify({}).problems.empty());
  }
}

TEST_CASE("verify with remove-corrupt removes a corrupt path with two levels of referrers, and the rest",
          "[store][verify]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  // base <- middle <- top (and top <- app): removing base breaks them all.
  // Names sort so that the database is asked to drop a path before its
  // referrers, which a foreign key refuses unless references go first.
  auto base = import(store, "a-base", "B", {});
  auto middle = import(store, "b-middle", "M", {base});
  auto top = import(store, "c-top", "T", {middle, base});
  auto app = import(store, "d-app", "A", {top});
  auto other = import(store, "e-other", "O", {});      // corrupt too, no referrers
  auto healthy = import(store, "f-healthy", "H", {});  // untouched
  auto corrupt = [&](const StorePath& path, const std::string& text) {
    fs::permissions(store.physical_path(path), fs::perms::owner_write, fs::perm_options::add);
    test::write_file(store.physical_path(path), text);
  };
  corrupt(base, "tampered");
  corrupt(other, "tampered too");

  VerifyOptions remove;
  remove.remove_corrupt = true;
  auto result = store.verify(remove);
  CHECK(result.ok());
  std::map<std::string, VerifyProblem::Kind> reported;
  for (const auto& p : result.problems) {
    INFO(p.path << ": " << p.detail);
    CHECK(p.fixed);
    reported[p.path] = p.kind;
  }
  CHECK(reported == std::map<std::string, VerifyProblem::Kind>{
                      {store.print(base), VerifyProblem::Kind::corrupt},
                      {store.print(middle), VerifyProblem::Kind::dependent},
                      {store.print(top), VerifyProblem::Kind::dependent},
                      {store.print(app), VerifyProblem::Kind::dependent},
                      {store.print(other), VerifyProblem::Kind::corrupt}});
  for (const auto& gone : {base, middle, top, app, other}) {
    CHECK_FALSE(store.is_valid(gone));
    CHECK_FALSE(fs::exists(fs::symlink_status(store.physical_path(gone))));
  }
  CHECK(store.is_valid(healthy));
  CHECK(store.verify({}).problems.empty());
  CHECK(test::run({"sqlite3", (dir / "s" / "db" / "db.sqlite").string(), "PRAGMA integrity_check"})
          .out == "ok\n");
}

TEST_CASE("resolve accepts logical paths, base names, physical paths and links", "[store]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  test::write_file(dir / "x" / "bin" / "tool", "t", true);
  auto path = store.add_path(dir / "x", {std::nullopt, dir / "link", {}, std::nullopt});
  CHECK(store.resolve(store.print(path)) == path);
  CHECK(store.resolve(store.print(path) + "/bin/tool") == path);
  CHECK(store.resolve(path.base()) == path);
  CHECK(store.resolve(store.physical_path(path).string()) == path);
  CHECK(store.resolve((dir / "link").string()) == path);
  CHECK_THROWS_WITH(store.resolve("/usr/bin"), Catch::Contains("is not a store path"));
}

TEST_CASE("register_output finds the references a build's files hold, wherever they lie",
          "[store]")
{
  TempDir dir;
  LocalStore store({dir / "store", "/kiln/store"});
  std::map<std::string, StorePath> path;
  for (const char* name : {"inside-a-run", "at-the-end", "in-a-link", "cut-short", "absent"}) {
    path.emplace(name, import(store, name, name, {}));
  }
  auto hash = [&](const char* name) { return std::string(path.at(name).hash_part()); };
  fs::path built = dir / "store" / "tmp" / "built";
  fs::create_directories(built / "lib");
  // Inside a longer run of nix32 characters, as in a mangled symbol.
  test::write_file(built / "lib" / "a.so", std::string(5000, '\0') + "abc" + hash("inside-a-run") +
                                              "xyz" + std::string(3, '\x7f'));
  // The very last bytes of a file bigger than any read buffer, so that the
  // hash straddles the chunks the NAR is scanned in.
  std::string big = test::random_bytes(3 * 1024 * 1024 + 17, 3);
  test::write_file(built / "big.bin", big + hash("at-the-end"));
  fs::create_symlink("/kiln/store/" + path.at("in-a-link").base() + "/x", built / "link");
  // 31 characters of a hash are no reference.
  test::write_file(built / "short.txt", "/kiln/store/" + hash("cut-short").substr(0, 31) + "-");
  std::set<StorePath> candidates;
  for (const auto& [name, p] : path) {
    candidates.insert(p);
  }
  StorePath out("0123456789abcdfghijklmnpqrsvwxyz-out");
  auto info = store.register_output(out, built, candidates, std::nullopt, "namespaces");
  CHECK(info.references == std::set<StorePath>{path.at("inside-a-run"), path.at("at-the-end"),
                                                path.at("in-a-link")});
}

namespace {

// A text object of `size` bytes referencing `refs`, "used" now (a root of
// this process), and a pause so that later uses are later.
StorePath
used_text(LocalStore& store, const std::string& name, size_t size, const std::set<StorePath>& refs)
{
  std::string contents(size, 'x');
  for (const auto& r : refs) {
    contents += store.print(r) + "\n";
  }
  return store.add_text(name, contents, refs);
}

void
use_now(LocalStore& store, const std::set<StorePath>& paths)
{
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  store.add_temp_roots(paths);
  store.flush_uses();
}

} // namespace

TEST_CASE("root lists keep a project's units from gc while the file exists", "[store][gc]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  auto dep = used_text(store, "dep", 100, {});
  auto bin = used_text(store, "bin", 100, {dep});
  auto other = used_text(store, "other", 100, {});
  store.add_root_list(dir / "project" / "target" / "kiln" / "roots" / "build-debug", {bin});
  auto listed = store.find_root_lists();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].second == bin);
  CHECK(listed[0].first == dir / "project" / "target" / "kiln" / "roots" / "build-debug");

  auto result = store.collect_garbage({});
  CHECK(result.deleted == std::vector<StorePath>{other});
  CHECK(store.is_valid(bin));
  CHECK(store.is_valid(dep));

  // The project's target folder goes: so does what it kept.
  fs::remove_all(dir / "project" / "target");
  store.collect_garbage({});
  CHECK_FALSE(store.is_valid(bin));
  CHECK_FALSE(store.is_valid(dep));
  CHECK(store.find_root_lists().empty());
}

TEST_CASE("the size cap evicts the least recently used first, keeps the most recent project whole, "
          "and never what a link roots",
          "[store][gc]")
{
  TempDir dir;
  LocalStore store({dir / "s"});
  auto shared = used_text(store, "shared", 2000, {});
  auto a_dep = used_text(store, "a-dep", 20000, {shared});
  auto a_bin = used_text(store, "a-bin", 20000, {a_dep});
  auto b_dep = used_text(store, "b-dep", 20000, {shared});
  auto b_bin = used_text(store, "b-bin", 20000, {b_dep});
  auto garbage = used_text(store, "garbage", 20000, {});
  auto linked = used_text(store, "linked", 20000, {});
  store.add_root(dir / "result", linked);
  store.add_root_list(dir / "a" / "roots", {a_bin, a_dep});
  store.add_root_list(dir / "b" / "roots", {b_bin, b_dep});
  // B was used last week, A and the garbage just now: A is the most recent.
  use_now(store, {shared, b_dep, b_bin});
  use_now(store, {garbage});
  use_now(store, {shared, a_dep, a_bin});

  uint64_t a_size = test::closure_nar_size(store, {a_bin});
  uint64_t linked_size = test::closure_nar_size(store, {linked});
  uint64_t total = store.stats().nar_bytes;
  REQUIRE(total > a_size + linked_size);

  SECTION("a store under the cap loses nothing")
  {
    GcOptions options;
    options.max_size = total;
    CHECK(store.collect_garbage(options).deleted.empty());
  }
  SECTION("just over: what no root keeps goes first, and nothing more")
  {
    GcOptions options;
    options.max_size = total - 100;
    auto result = store.collect_garbage(options);
    CHECK(result.deleted == std::vector<StorePath>{garbage});
    CHECK(store.is_valid(b_bin));
  }
  SECTION("a cap smaller than both projects keeps the most recently used one whole")
  {
    GcOptions options;
    options.max_size = a_size + linked_size;
    auto result = store.collect_garbage(options);
    CHECK(store.stats().nar_bytes <= a_size + linked_size);
    CHECK_FALSE(store.is_valid(garbage));
    CHECK_FALSE(store.is_valid(b_bin));
    CHECK_FALSE(store.is_valid(b_dep));
    for (const auto& p : {a_bin, a_dep, shared, linked}) {
      CHECK(store.is_valid(p));
    }
    // Referrers went before what they reference: b-bin before b-dep.
    auto pos = [&](const StorePath& p) {
      return std::find(result.deleted.begin(), result.deleted.end(), p) - result.deleted.begin();
    };
    CHECK(pos(b_bin) < pos(b_dep));
    CHECK(store.verify({}).ok());
  }
  SECTION("a cap of one byte keeps only what links root")
  {
    GcOptions options;
    options.max_size = 1;
    store.collect_garbage(options);
    CHECK(store.is_valid(linked));
    CHECK(store.stats().paths == 1);
  }
}
