// A store that keeps itself: a Cargo project's units stay through `kiln gc`
// while its target/kiln/ exists, and max-store-size evicts the least
// recently used project first. Real cargo builds, real kiln processes.
#include "support/test_support.hpp"

#include <kiln/store/local_store.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

fs::path
copy_workspace(const fs::path& to)
{
  fs::copy(fs::path(KILN_SOURCE_DIR) / "examples" / "cargo-workspace", to,
           fs::copy_options::recursive);
  fs::remove_all(to / "target");
  fs::remove(to / "result");
  return to;
}

// The output paths of a `kiln build --json` that are in the store.
std::set<std::string>
unit_outputs(const std::string& json_lines)
{
  std::set<std::string> paths;
  std::istringstream lines(json_lines);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') {
      continue;
    }
    auto j = nlohmann::json::parse(line);
    if (j.contains("path") && j.value("status", "") != "not-needed") {
      paths.insert(j["path"].get<std::string>());
    }
  }
  return paths;
}

} // namespace

TEST_CASE("a cargo project's units stay through kiln gc while its target/kiln exists, and the "
          "size cap evicts the least recently used project",
          "[cargo][gc]")
{
  if (!test::have_program("cargo") || !test::have_program("rustc")) {
    test::skip("cargo and rustc are needed for a Cargo build");
    return;
  }
  TempDir dir;
  std::string store_arg = (dir / "store").string();
  fs::path one = copy_workspace(dir / "one");
  fs::path two = copy_workspace(dir / "two");
  // The second project's library differs: its unit and its dependents are
  // its own, the rest is shared.
  {
    std::ofstream(two / "mylib" / "src" / "lib.rs", std::ios::app) << "\npub fn two() {}\n";
  }

  auto built_one = test::kiln({"--store", store_arg, "build", "-j", "2", "--json"}, test::in_dir(one));
  INFO(built_one.err);
  REQUIRE(built_one.status == 0);
  auto units_one = unit_outputs(built_one.out);
  REQUIRE(units_one.size() >= 5);

  SECTION("kiln gc keeps every unit of the build, not only the binaries")
  {
    auto gc = test::kiln({"--store", store_arg, "gc"});
    REQUIRE(gc.status == 0);
    for (const auto& p : units_one) {
      INFO(p);
      CHECK(test::kiln({"--store", store_arg, "path-info", p}).status == 0);
    }
    auto roots = test::kiln({"--store", store_arg, "gc", "--print-roots"});
    CHECK_THAT(roots.out, Catch::Contains((one / "target" / "kiln" / "roots" / "build-debug").string() +
                                          " -> ") &&
                            Catch::Contains("(root list)"));
    auto info = test::kiln({"--store", store_arg, "store", "info", "--json"});
    REQUIRE(info.status == 0);
    auto j = nlohmann::json::parse(info.out);
    REQUIRE(j["projects"].size() == 1);
    CHECK(j["projects"][0]["rootList"] == (one / "target" / "kiln" / "roots" / "build-debug").string());
    CHECK(j["projects"][0]["narSize"].get<uint64_t>() > 0);
    CHECK(j["narSize"].get<uint64_t>() >= j["projects"][0]["narSize"].get<uint64_t>());

    // cargo clean: the units are garbage.
    fs::remove_all(one / "target");
    fs::remove(one / "result");
    REQUIRE(test::kiln({"--store", store_arg, "gc"}).status == 0);
    size_t left = 0;
    for (const auto& p : units_one) {
      left += test::kiln({"--store", store_arg, "path-info", p}).status == 0;
    }
    CHECK(left == 0);
  }

  SECTION("a cap smaller than both projects keeps the most recently used one whole")
  {
    auto built_two = test::kiln({"--store", store_arg, "build", "-j", "2", "--json"}, test::in_dir(two));
    INFO(built_two.err);
    REQUIRE(built_two.status == 0);
    auto units_two = unit_outputs(built_two.out);
    uint64_t cap = 0;
    {
      LocalStore store({dir / "store"});
      std::set<StorePath> kept;   // the second project's units and every linked root
      for (const auto& p : units_two) {
        kept.insert(store.resolve(p));
      }
      for (const auto& [link, path] : store.find_roots()) {
        kept.insert(path);
      }
      cap = test::closure_nar_size(store, kept);
      REQUIRE(cap < store.stats().nar_bytes);
    }
    // A no-op build of the second project: it is now the most recently used.
    auto again = test::kiln({"--store", store_arg, "--max-store-size", std::to_string(cap), "build",
                             "-j", "2"},
                            test::in_dir(two));
    INFO(again.err);
    REQUIRE(again.status == 0);
    CHECK_THAT(again.err, Catch::Contains("over max-store-size") && Catch::Contains("evicted"));
    for (const auto& p : units_two) {
      INFO(p);
      CHECK(test::kiln({"--store", store_arg, "path-info", p}).status == 0);
    }
    size_t evicted = 0;
    for (const auto& p : units_one) {
      evicted += test::kiln({"--store", store_arg, "path-info", p}).status != 0;
    }
    CHECK(evicted > 0);
    auto info = nlohmann::json::parse(test::kiln({"--store", store_arg, "store", "info", "--json"}).out);
    CHECK(info["narSize"].get<uint64_t>() <= cap);
    // The first project's binary is linked: it still runs.
    CHECK(test::run({(one / "result").string() + "/bin/my-app"}).status == 0);
    CHECK(test::kiln({"--store", store_arg, "store", "verify"}).status == 0);
  }
}
