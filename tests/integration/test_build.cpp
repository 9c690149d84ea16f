// kiln build: a kiln.yaml becomes derivations, built in the sandbox,
// registered with their references, linked as GC roots, substituted from a
// trusted cache when one has them.
#include "support/test_support.hpp"

#include <kiln/buildfile/buildfile.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

const char* const k_project = test::k_two_step_project;

std::map<std::string, nlohmann::json>
json_lines(const std::string& out)
{
  std::map<std::string, nlohmann::json> by_name;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line);
    by_name[j["name"]] = j;
  }
  return by_name;
}

} // namespace

TEST_CASE("kiln build builds a kiln.yaml, then finds everything present", "[build]")
{
  TempDir dir;
  test::write_file(dir / "kiln.yaml", k_project);
  test::write_file(dir / "src" / "main.c", "int main(void) { return 0; }\n");
  std::string store = (dir / "store").string();
  test::RunOptions in_dir;
  in_dir.cwd = dir.path();

  auto first = test::kiln({"--store", store, "build", "--json"}, in_dir);
  INFO(first.err);
  REQUIRE(first.status == 0);
  auto built = json_lines(first.out);
  REQUIRE(built.size() == 2);
  CHECK(built["app"]["status"] == "built");
  CHECK(built["header"]["status"] == "built");
  std::string app = built["app"]["path"];
  std::string header = built["header"]["path"];

  // result links are GC roots; the output refers to the header it used.
  CHECK(fs::is_symlink(dir / "result-app"));
  CHECK(test::run({"cat", (dir / "result-app" / "mode").string()}).out == "release\n");
  auto info = nlohmann::json::parse(test::kiln({"--store", store, "path-info", "--json", app}).out);
  CHECK(info[0]["references"] == nlohmann::json::array({header}));
  CHECK(info[0]["deriver"] == built["app"]["drv"]);
  CHECK(info[0].contains("buildMode"));
  CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);
  CHECK(test::kiln({"--store", store, "log", app}).status == 0);

  auto second = test::kiln({"--store", store, "build", "--json"}, in_dir);
  REQUIRE(second.status == 0);
  auto again = json_lines(second.out);
  CHECK(again["app"]["status"] == "present");
  CHECK(again["app"]["path"] == app);

  SECTION("a change to the environment changes the path, and why-rebuild says why")
  {
    std::string changed = k_project;
    changed.replace(changed.find("MODE: release"), 13, "MODE: debug");
    test::write_file(dir / "kiln.yaml", changed);
    auto third = test::kiln({"--store", store, "build", "--json", "app"}, in_dir);
    REQUIRE(third.status == 0);
    auto rebuilt = json_lines(third.out);
    CHECK(rebuilt["app"]["status"] == "built");
    CHECK(rebuilt["header"]["status"] == "present");
    CHECK(rebuilt["app"]["path"] != app);
    auto why = test::kiln({"--store", store, "why-rebuild", built["app"]["drv"],
                           rebuilt["app"]["drv"]});
    CHECK_THAT(why.out, Catch::Contains("environment MODE: \"release\" → \"debug\""));
  }
  SECTION("garbage collection keeps what result links reach")
  {
    fs::remove(dir / "result-header");
    CHECK(test::kiln({"--store", store, "gc"}).status == 0);
    CHECK(test::kiln({"--store", store, "path-info", app, header}).status == 0);
  }
}

TEST_CASE("a failing build exits 1 with the log's tail, keeps nothing", "[build]")
{
  TempDir dir;
  test::write_file(dir / "kiln.yaml", R"(derivations:
  broken:
    builder: /bin/sh
    tools: [/bin/sh]
    args: ["-c", "echo compiling; echo 'error: expected ;' >&2; exit 3"]
  fine:
    builder: /bin/sh
    tools: [/bin/sh]
    args: ["-c", "echo ok > $out"]
  after:
    builder: /bin/sh
    tools: [/bin/sh]
    deps: [broken]
    args: ["-c", "echo > $out"]
)");
  std::string store = (dir / "store").string();
  test::RunOptions in_dir;
  in_dir.cwd = dir.path();
  auto r = test::kiln({"--store", store, "build", "--keep-going", "--json"}, in_dir);
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("error: expected ;") && Catch::Contains("kiln log"));
  auto results = json_lines(r.out);
  CHECK(results["broken"]["status"] == "failed");
  CHECK(results["fine"]["status"] == "built");
  CHECK(results["after"]["status"] == "skipped");
  CHECK(test::kiln({"--store", store, "path-info", results["broken"]["path"]}).status == 1);
  auto log = test::kiln({"--store", store, "log", results["broken"]["drv"]});
  CHECK_THAT(log.out, Catch::Contains("compiling"));
}

TEST_CASE("a trusted cache's outputs are substituted, not built", "[build][cache]")
{
  TempDir dir;
  test::write_file(dir / "kiln.yaml", k_project);
  test::write_file(dir / "src" / "main.c", "int main(void) { return 0; }\n");
  test::RunOptions in_dir;
  in_dir.cwd = dir.path();
  std::string a = (dir / "a").string();
  std::string b = (dir / "b").string();
  std::string cache = "file://" + (dir / "cache").string();
  auto pub = test::output_of(
    test::kiln({"key", "generate", "ci-1", "--secret-file", (dir / "sk").string()}), "key");
  auto built = json_lines(test::kiln({"--store", a, "build", "--json"}, in_dir).out);
  REQUIRE(built["app"]["status"] == "built");
  REQUIRE(test::kiln({"--store", a, "--secret-key-file", (dir / "sk").string(), "push", cache,
                      built["app"]["path"], built["header"]["path"]})
            .status == 0);

  auto r = test::kiln({"--store", b, "--substituters", cache, "--trusted-public-keys", pub,
                       "build", "--json", "app"},
                      in_dir);
  INFO(r.err);
  REQUIRE(r.status == 0);
  auto results = json_lines(r.out);
  CHECK(results["app"]["status"] == "substituted");
  CHECK(results["app"]["path"] == built["app"]["path"]);
  // The header came along as a reference of app, not as a build step.
  CHECK_FALSE(results.count("header"));
  CHECK(test::kiln({"--store", b, "path-info", built["header"]["path"]}).status == 0);

  // Untrusted: built locally instead.
  auto c = test::kiln({"--store", (dir / "c").string(), "--substituters", cache, "build", "--json",
                       "app"},
                      in_dir);
  REQUIRE(c.status == 0);
  CHECK(json_lines(c.out)["app"]["status"] == "built");
}

TEST_CASE("a kiln.yaml build pushes with --push-to, honours store: and store-dir:, links each entry",
          "[build][cache]")
{
  TempDir dir;
  fs::path store = dir / "project-store";
  std::string project = k_project;
  project += "store: " + store.string() + "\nstore-dir: /kiln/other\n";
  test::write_file(dir / "kiln.yaml", project);
  test::write_file(dir / "src" / "main.c", "int main(void) { return 0; }\n");
  test::RunOptions in_dir;
  in_dir.cwd = dir.path();
  in_dir.unset_env = {"KILN_STORE", "KILN_STORE_DIR"};
  std::string cache = "file://" + (dir / "cache").string();
  test::kiln({"key", "generate", "ci-1", "--secret-file", (dir / "sk").string()});

  auto r = test::kiln({"--secret-key-file", (dir / "sk").string(), "build", "--json", "--push-to",
                       cache, "app"},
                      in_dir);
  INFO(r.err);
  REQUIRE(r.status == 0);
  auto built = json_lines(r.out);
  std::string app = built["app"]["path"];
  // The file's store and store directory were used.
  CHECK(app.starts_with("/kiln/other/"));
  CHECK(fs::exists(store / "store" / fs::path(app).filename()));
  // One entry built alone: `result` and its own `result-app`.
  CHECK(fs::is_symlink(dir / "result"));
  CHECK(fs::is_symlink(dir / "result-app"));
  // Both built paths are in the cache, signed.
  CHECK_THAT(r.err, Catch::Contains("Pushed 2 paths to " + cache));
  for (const auto& name : {"app", "header"}) {
    std::string base = fs::path(built[name]["path"].get<std::string>()).filename().string();
    fs::path narinfo = dir / "cache" / (base.substr(0, 32) + ".narinfo");
    REQUIRE(fs::exists(narinfo));
    CHECK_THAT(read_file(narinfo), Catch::Contains("Sig: ci-1:"));
  }
}

TEST_CASE("build file errors name file, line and column", "[build][buildfile]")
{
  TempDir dir;
  auto error_of = [&](const std::string& text) {
    test::write_file(dir / "kiln.yaml", text);
    try {
      load_build_file(dir / "kiln.yaml");
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK_THAT(error_of("derivations:\n  a:\n    builder: /bin/sh\n    bulder: x\n"),
             Catch::Contains("kiln.yaml:4:5") && Catch::Contains("unknown key 'bulder'"));
  CHECK_THAT(error_of("derivations:\n  a:\n    args: []\n"),
             Catch::Contains("kiln.yaml:3:5") && Catch::Contains("lacks a builder"));
  CHECK_THAT(error_of("derivations:\n  a:\n    builder: /bin/sh\n    deps: [b]\n"),
             Catch::Contains("depends on 'b'"));
  CHECK_THAT(error_of("derivations:\n  a:\n    builder: /bin/sh\n    deps: [b]\n"
                      "  b:\n    builder: /bin/sh\n    deps: [a]\n"),
             Catch::Contains("dependency cycle") && Catch::Contains("a → b → a"));
  CHECK_THAT(error_of("derivations:\n  a:\n    builder: /bin/sh\n    args: \"-c\"\n"),
             Catch::Contains("kiln.yaml:4:11") && Catch::Contains("list of strings"));
  CHECK_THAT(error_of("derivatons:\n  a: {}\n"), Catch::Contains("unknown key 'derivatons'"));
  CHECK_THAT(error_of("derivations: [\n"), Catch::Contains("kiln.yaml:"));
  CHECK_THAT(error_of("derivations:\n  a:\n    builder: /bin/sh\n    tools: [sh]\n"),
             Catch::Contains("absolute path"));
}

TEST_CASE("the bundled C example builds hermetically with the system compiler", "[build][example]")
{
  REQUIRE(test::have_program("gcc-12"));
  TempDir dir;
  test::RunOptions in_dir;
  in_dir.cwd = dir.path();
  auto r = test::kiln({"--store", (dir / "store").string(), "build", "-f",
                       std::string(KILN_SOURCE_DIR) + "/examples/c-hello/kiln.yaml", "--json"},
                      in_dir);
  INFO(r.err);
  REQUIRE(r.status == 0);
  auto results = json_lines(r.out);
  CHECK(results["hello"]["status"] == "built");
  auto hello = test::run({(dir / "result-hello" / "bin" / "hello").string()});
  CHECK(hello.out == "hello from a header kiln generated\n");
}
