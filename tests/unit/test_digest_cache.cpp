// The cache folder's digests of source trees: one small file a tree, so
// that a build reads only the trees it uses and builds saving at once keep
// each other's entries.
#include <kiln/cargo/digest_cache.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/util/io.hpp>

#include "support/test_support.hpp"

#include <catch2/catch.hpp>

#include <vector>

using namespace kiln;
using namespace kiln::cargo;
namespace fs = std::filesystem;

namespace {

// The NAR hash of `root`, computed here, not remembered.
Hash
nar_hash_of(const fs::path& root)
{
  HashSink sink;
  dump_path(root, sink);
  return sink.finish();
}

size_t
files_with_prefix(const fs::path& folder, const std::string& prefix)
{
  size_t n = 0;
  for (const auto& entry : fs::directory_iterator(folder)) {
    n += entry.path().filename().string().rfind(prefix, 0) == 0;
  }
  return n;
}

} // namespace

TEST_CASE("a tree's digest is remembered in a file of its own, read only when asked for",
          "[cargo][digests]")
{
  test::TempDir dir;
  fs::path cache = dir / "cache";
  test::write_file(dir / "a" / "lib.rs", "pub fn a() {}\n");
  test::write_file(dir / "b" / "lib.rs", "pub fn b() {}\n");

  {
    DigestCache first(cache, "source-digest-");
    CHECK(first.digest(dir / "a").nar_hash == nar_hash_of(dir / "a"));
    CHECK(first.digest(dir / "b").nar_hash == nar_hash_of(dir / "b"));
    CHECK(first.trees_hashed() == 2);
    CHECK(first.digest(dir / "a").nar_hash == nar_hash_of(dir / "a"));
    CHECK(first.trees_hashed() == 2); // known in memory
    first.save();
  }
  CHECK(files_with_prefix(cache, "source-digest-") == 2);
  // Another instance (another build) asked for both trees: the right digests, and how many
  // trees it had to read.
  auto trees_read_by_next_build = [&] {
    DigestCache next(cache, "source-digest-");
    CHECK(next.digest(dir / "a").nar_hash == nar_hash_of(dir / "a"));
    CHECK(next.digest(dir / "b").nar_hash == nar_hash_of(dir / "b"));
    return next.trees_hashed();
  };

  SECTION("another instance (another build) reads none of the unchanged trees again")
  {
    CHECK(trees_read_by_next_build() == 0);
  }
  SECTION("a changed tree is read again, and only it")
  {
    test::write_file(dir / "a" / "lib.rs", "pub fn a() { let _ = 1; }\n");
    CHECK(trees_read_by_next_build() == 1);
  }
  SECTION("the same tree under another filter is another entry")
  {
    test::write_file(dir / "a" / "notes.txt", "left out\n");
    DigestCache second(cache, "source-digest-");
    PathFilter only_rs = [](const std::string& rel) { return rel == "lib.rs"; };
    TreeDigest filtered = second.digest(dir / "a", only_rs, "only lib.rs");
    CHECK(second.trees_hashed() == 1);
    CHECK(filtered.nar_hash != nar_hash_of(dir / "a"));
    fs::remove(dir / "a" / "notes.txt");
    CHECK(filtered.nar_hash == nar_hash_of(dir / "a"));
  }
  SECTION("a damaged or foreign entry is read as missing: the tree is hashed again")
  {
    // One cut short, the other a whole entry of another tree.
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(cache)) {
      files.push_back(entry.path());
    }
    REQUIRE(files.size() == 2);
    std::string whole = read_file(files[0]);
    test::write_file(files[0], whole.substr(0, whole.size() / 2));
    test::write_file(files[1], whole);
    CHECK(trees_read_by_next_build() == 2);
  }
}

TEST_CASE("two builds saving digests at once keep each other's", "[cargo][digests]")
{
  test::TempDir dir;
  fs::path cache = dir / "cache";
  test::write_file(dir / "a" / "lib.rs", "pub fn a() {}\n");
  test::write_file(dir / "b" / "lib.rs", "pub fn b() {}\n");

  // Both start before either saves, as two builds running side by side.
  DigestCache one(cache, "source-digest-");
  DigestCache other(cache, "source-digest-");
  one.digest(dir / "a");
  other.digest(dir / "b");
  one.save();
  other.save(); // (with one file for all trees, this dropped a's entry)

  DigestCache later(cache, "source-digest-");
  later.digest(dir / "a");
  later.digest(dir / "b");
  CHECK(later.trees_hashed() == 0);
}
