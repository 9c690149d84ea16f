// Reproducibility checks: `kiln build --check` builds every derivation
// again and compares, NAR for NAR (kiln.yaml and Cargo builds); `kiln cache
// check` re-derives what a cache holds from the derivations pushed beside
// the outputs (--push-drvs). The examples are reproducible; a derivation
// that writes a timestamp and random bytes is caught by both.
#include "support/test_support.hpp"

#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <regex>
#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const fs::path k_examples = fs::path(KILN_SOURCE_DIR) / "examples";

// The two-step project, and a step that is not reproducible on purpose:
// a timestamp, and random bytes after a fixed header in a binary file.
std::string
project_with_stamp()
{
  return std::string(test::k_two_step_project) + R"(  stamp:
    builder: /bin/sh
    tools: [/bin/sh, /bin/busybox]
    deps: [header]
    args: ["-c", "busybox mkdir $out && busybox echo fixed > $out/same.txt && { busybox date +%s; busybox cat /proc/uptime; } > $out/stamp && { busybox printf 'HEADER\n'; busybox head -c 64 /dev/urandom; } > $out/data.bin"]
)";
}

std::map<std::string, json>
json_lines(const std::string& out)
{
  std::map<std::string, json> by_name;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) {
      auto j = json::parse(line);
      by_name[j["name"]] = j;
    }
  }
  return by_name;
}

// The differences listed for the first output of a --check JSON line, by file.
std::map<std::string, std::string>
differences(const json& line)
{
  std::map<std::string, std::string> out;
  for (const auto& d : line["outputs"][0].value("differences", json::array())) {
    out[d["file"]] = d["what"];
  }
  return out;
}

struct Project
{
  TempDir dir;
  test::RunOptions in_dir;
  Project()
  {
    test::write_file(dir / "kiln.yaml", project_with_stamp());
    test::write_file(dir / "src" / "main.c", "int main(void) { return 0; }\n");
    in_dir.cwd = dir.path();
  }
  std::string store(const std::string& name = "store") const { return (dir / name).string(); }
};

} // namespace

TEST_CASE("kiln build --check: the same twice says so, a timestamp is caught and its files named",
          "[build][check]")
{
  Project p;
  auto r = test::kiln({"--store", p.store(), "build", "--check", "--json"}, p.in_dir);
  INFO(r.err);
  CHECK(r.status == 1);
  auto lines = json_lines(r.out);
  REQUIRE(lines.size() == 3);
  CHECK(lines["header"]["status"] == "built");
  CHECK(lines["header"]["check"] == "reproducible");
  CHECK(lines["app"]["check"] == "reproducible");
  CHECK(lines["app"]["outputs"][0]["same"] == true);
  REQUIRE(lines["stamp"]["check"] == "differs");
  auto diff = differences(lines["stamp"]);
  CHECK(diff.count("same.txt") == 0);
  CHECK_THAT(diff["stamp"], Catch::StartsWith("contents differ from byte"));
  // The binary file: the first differing byte is after its fixed header.
  std::smatch m;
  REQUIRE(std::regex_search(diff["data.bin"], m, std::regex(R"(from byte (\d+) \(both 71 bytes\))")));
  CHECK(std::stoi(m[1]) >= 7);
  // The second build is kept beside the output, not valid.
  std::string kept = lines["stamp"]["outputs"][0]["kept"];
  CHECK(kept.ends_with("-check"));
  CHECK(fs::exists(fs::path(kept) / "stamp"));
  CHECK(read_file(fs::path(kept) / "same.txt") == "fixed\n");
  CHECK(test::kiln({"--store", p.store(), "path-info", lines["stamp"]["path"]}).status == 0);
  CHECK_THAT(r.err, Catch::Contains("stamp is not reproducible") &&
                      Catch::Contains(lines["stamp"]["drv"].get<std::string>()) &&
                      Catch::Contains("checked 3 derivations: 2 reproducible, 1 not reproducible"));

  SECTION("the reproducible ones alone pass, present in the store")
  {
    auto again = test::kiln({"--store", p.store(), "build", "--check", "app"}, p.in_dir);
    INFO(again.err);
    CHECK(again.status == 0);
    CHECK_THAT(again.err, Catch::Contains("checked 2 derivations: 2 reproducible"));
  }
  SECTION("the kept rebuild is debris to the garbage collector")
  {
    CHECK(test::kiln({"--store", p.store(), "gc"}).status == 0);
    CHECK_FALSE(fs::exists(kept));
  }
}

TEST_CASE("kiln build --check on substituted outputs, and kiln cache check re-derives a cache's paths",
          "[build][check][caches]")
{
  Project p;
  auto key = test::kiln({"key", "generate", "ci-1", "--secret-file", (p.dir / "ci.sk").string()});
  REQUIRE(key.status == 0);
  std::string pub = test::output_of(key, "key generate");
  std::string cache = "file://" + (p.dir / "cache").string();
  auto pushed = test::kiln({"--store", p.store(), "--secret-key-file", (p.dir / "ci.sk").string(),
                            "build", "--json", "--push-to", cache, "--push-drvs"},
                           p.in_dir);
  INFO(pushed.err);
  REQUIRE(pushed.status == 0);
  auto built = json_lines(pushed.out);
  // The .drv files are in the cache beside the outputs.
  std::string drv = built["stamp"]["drv"];
  std::string drv_base = fs::path(drv).filename().string();
  CHECK(fs::exists(p.dir / "cache" / (drv_base.substr(0, 32) + ".narinfo")));

  SECTION("a fresh store substitutes, then builds again and compares")
  {
    auto r = test::kiln({"--store", p.store("store2"), "--substituters", cache,
                         "--trusted-public-keys", pub, "build", "--check", "--json", "app"},
                        p.in_dir);
    INFO(r.err);
    CHECK(r.status == 0);
    auto lines = json_lines(r.out);
    CHECK(lines["app"]["status"] == "substituted");
    CHECK(lines["app"]["check"] == "reproducible");
  }
  SECTION("kiln cache check: two reproducible, one not, its files named")
  {
    auto r = test::kiln({"--store", p.store("store3"), "cache", "check", cache, "--json"});
    INFO(r.err);
    CHECK(r.status == 1);
    auto report = json::parse(r.out);
    CHECK(report["reproducible"] == 2);
    CHECK(report["differ"] == 1);
    CHECK(report["unchecked"] == 0);
    for (const auto& path : report["paths"]) {
      bool is_stamp = path["path"] == built["stamp"]["path"];
      CHECK(path["status"] == (is_stamp ? "differs" : "reproducible"));
      if (is_stamp) {
        std::set<std::string> files;
        for (const auto& d : path["differences"]) {
          files.insert(d["file"]);
        }
        CHECK(files == std::set<std::string>{"data.bin", "stamp"});
        CHECK(path["drv"] == drv);
      }
    }
    auto one = test::kiln({"--store", p.store("store3"), "cache", "check", cache,
                           built["app"]["path"]});
    INFO(one.err);
    CHECK(one.status == 0);
    CHECK_THAT(one.out, Catch::Contains(built["app"]["path"].get<std::string>() + ": reproducible"));
    auto sample = test::kiln({"--store", p.store("store3"), "cache", "check", cache, "--sample", "1",
                              "--json"});
    CHECK(json::parse(sample.out)["paths"].size() == 1);
  }
  SECTION("a path pushed without its derivation cannot be checked, and the report says why")
  {
    std::string bare = "file://" + (p.dir / "bare").string();
    REQUIRE(test::kiln({"--store", p.store(), "push", bare, built["app"]["path"]}).status == 0);
    auto r = test::kiln({"--store", p.store("store4"), "cache", "check", bare, "--json"});
    INFO(r.err);
    CHECK(r.status == 0);
    auto report = json::parse(r.out);
    CHECK(report["unchecked"] == 2);
    CHECK_THAT(report["paths"][0]["reason"].get<std::string>(), Catch::Contains("--push-drvs"));
  }
}

TEST_CASE("the examples are reproducible: c-hello and a Cargo workspace, also from a cache",
          "[build][check][cargo]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  test::RunOptions in_hello;
  fs::copy(k_examples / "c-hello", dir / "c-hello", fs::copy_options::recursive);
  in_hello.cwd = dir / "c-hello";
  auto hello = test::kiln({"--store", store, "build", "--check"}, in_hello);
  INFO(hello.err);
  CHECK(hello.status == 0);
  CHECK_THAT(hello.err, Catch::Contains("checked 2 derivations: 2 reproducible"));

  // A Cargo workspace with every kind of unit: lib, bin, proc-macro, build
  // scripts (compiled and run).
  fs::copy(k_examples / "cargo-workspace", dir / "ws", fs::copy_options::recursive);
  test::RunOptions in_ws;
  in_ws.cwd = dir / "ws";
  std::string cache = "file://" + (dir / "cache").string();
  auto ws = test::kiln({"--store", store, "build", "--check", "--push-to", cache, "--push-drvs"},
                       in_ws);
  INFO(ws.err);
  CHECK(ws.status == 0);
  CHECK_THAT(ws.err, Catch::Contains("reproducible") && !Catch::Contains("not reproducible"));

  // From another store: every unit the cache holds, built again from its
  // derivation alone.
  auto check = test::kiln({"--store", (dir / "store2").string(), "cache", "check", cache, "--json"});
  INFO(check.err);
  CHECK(check.status == 0);
  auto report = json::parse(check.out);
  CHECK(report["differ"] == 0);
  CHECK(report["failed"] == 0);
  CHECK(report["unchecked"] == 0);
  CHECK(report["reproducible"].get<int>() >= 5);
}

TEST_CASE("the demo app (examples/rust-app, 74 units on Debian's crates) is reproducible",
          "[.differential][check]")
{
  TempDir dir;
  fs::create_directories(dir / "app");
  for (const auto& entry : fs::directory_iterator(k_examples / "rust-app")) {
    std::string n = entry.path().filename().string();
    if (n != "target" && n != "result" && !n.starts_with("result-")) {
      fs::copy(entry.path(), dir / "app" / n, fs::copy_options::recursive);
    }
  }
  test::RunOptions in_app;
  in_app.cwd = dir / "app";
  auto r = test::kiln({"--store", (dir / "store").string(), "build", "--check", "--json"}, in_app);
  INFO(r.err);
  CHECK(r.status == 0);
  size_t checked = 0;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    auto j = json::parse(line);
    if (j.contains("check")) {
      CHECK(j["check"] == "reproducible");
      ++checked;
    }
  }
  CHECK(checked >= 70);
}
