// kiln test against cargo test: the same tests run and pass or fail; passing
// results are cached and substituted, failures never; after an edit only
// what depends on it runs again.
#include "support/test_support.hpp"

#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <set>
#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A workspace with what `cargo test` has to deal with: lib unit tests, a
// doctest, a bin with unit tests, an integration test that runs the bin
// (CARGO_BIN_EXE_*) and reads the package's files, a dev-dependency that
// turns on a feature the build does not have, CARGO_TARGET_TMPDIR.
fs::path
make_workspace(const TempDir& dir)
{
  fs::path ws = dir / "ws";
  test::write_file(ws / "Cargo.toml", "[workspace]\nresolver = \"2\"\nmembers = [\"core\", \"cli\", \"shared\"]\n");
  test::write_file(ws / "shared" / "Cargo.toml",
                   "[package]\nname = \"shared\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"
                   "[features]\nextra = []\n");
  test::write_file(ws / "shared" / "src" / "lib.rs",
                   "pub fn mode() -> &'static str { if cfg!(feature = \"extra\") { \"extra\" } else { \"plain\" } }\n");
  test::write_file(ws / "core" / "Cargo.toml",
                   "[package]\nname = \"core-lib\"\nversion = \"0.2.0\"\nedition = \"2021\"\n"
                   "[lib]\nname = \"corelib\"\n"
                   "[dependencies]\nshared = { path = \"../shared\" }\n"
                   "[dev-dependencies]\nshared = { path = \"../shared\", features = [\"extra\"] }\n");
  test::write_file(ws / "core" / "data.txt", "forty-two\n");
  test::write_file(ws / "core" / "src" / "lib.rs", R"(
/// Adds one.
///
/// ```
/// assert_eq!(corelib::add_one(41), 42);
/// ```
pub fn add_one(x: u32) -> u32 { x + 1 }

pub fn shared_mode() -> &'static str { shared::mode() }

#[cfg(test)]
mod tests {
    #[test]
    fn adds() { assert_eq!(super::add_one(1), 2); }
    #[test]
    fn dev_dependency_features_count_in_tests() { assert_eq!(super::shared_mode(), "extra"); }
    #[test]
    fn reads_package_files() {
        assert_eq!(std::fs::read_to_string("data.txt").unwrap(), "forty-two\n");
    }
    #[test]
    fn fails_when_asked() {
        assert!(!std::path::Path::new("FAIL").exists(), "FAIL exists");
    }
}
)");
  test::write_file(ws / "cli" / "Cargo.toml",
                   "[package]\nname = \"cli\"\nversion = \"0.3.0\"\nedition = \"2021\"\n"
                   "[dependencies]\ncore-lib = { path = \"../core\" }\n");
  test::write_file(ws / "cli" / "src" / "main.rs", R"(
fn main() { println!("{} {}", corelib::add_one(1), corelib::shared_mode()); }
#[test]
fn in_the_bin() { assert_eq!(corelib::add_one(2), 3); }
)");
  test::write_file(ws / "cli" / "tests" / "run.rs", R"(
#[test]
fn runs_the_binary() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cli")).output().unwrap();
    // cargo test unifies the dev-dependency features into the bin too.
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "2 extra\n");
}
#[test]
fn writes_to_the_target_tmpdir() {
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scratch");
    std::fs::write(&file, "x").unwrap();
    assert!(file.exists());
}
#[test]
#[ignore]
fn ignored_one() {}
)");
  test::RunOptions options;
  options.cwd = ws;
  REQUIRE(test::run({"cargo", "generate-lockfile", "--offline"}, options).status == 0);
  return ws;
}

// "test tests::adds ... ok" lines, and the "test result" counts.
std::multiset<std::string>
test_lines(const std::string& out)
{
  std::multiset<std::string> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("test ") && line.find(" ... ") != std::string::npos) {
      lines.insert(line);
    } else if (line.starts_with("test result:")) {
      lines.insert(line.substr(0, line.find("; finished")));
    }
  }
  return lines;
}

std::vector<json>
json_lines(const std::string& text)
{
  // With --json, stdout holds JSON lines only (the harnesses' reports go to
  // stderr), so that a script can read it.
  std::vector<json> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    INFO(line);
    REQUIRE(json::accept(line));
    out.push_back(json::parse(line));
  }
  return out;
}

} // namespace

TEST_CASE("kiln test runs what cargo test runs: results are cached, failures are not",
          "[cargo][test]")
{
  TempDir dir;
  fs::path ws = make_workspace(dir);
  test::RunOptions in_ws;
  in_ws.cwd = ws;
  in_ws.env["CARGO_TARGET_DIR"] = (dir / "cargo-target").string();
  auto cargo = test::run({"cargo", "test", "--workspace"}, in_ws);
  INFO(cargo.err);
  REQUIRE(cargo.status == 0);

  std::string a = (dir / "a").string(), cache = "file://" + (dir / "cache").string();
  test::kiln({"key", "generate", "k", "--secret-file", (dir / "sk").string()});
  auto pub = test::output_of(test::kiln({"key", "public", (dir / "sk").string()}), "key");
  test::RunOptions kiln_in_ws;
  kiln_in_ws.cwd = ws;
  auto kiln = [&](std::vector<std::string> args) { return test::kiln(args, kiln_in_ws); };
  auto first = kiln({"--store", a, "--secret-key-file", (dir / "sk").string(), "test",
                     "--workspace", "--push-to", cache});
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK(test_lines(first.out) == test_lines(cargo.out));
  CHECK(test_lines(first.out).count("test tests::dev_dependency_features_count_in_tests ... ok") == 1);

  // Again: nothing compiled, nothing run, every result from the store.
  auto again = kiln({"--store", a, "test", "--workspace", "--json"});
  REQUIRE(again.status == 0);
  for (const auto& u : json_lines(again.out)) {
    CHECK(u["status"] != "built");
  }
  CHECK_THAT(again.err, Catch::Contains("passed (6 cached), 0 failed"));

  // A fresh store with the cache: nothing compiled or run either.
  auto fresh = kiln({"--store", (dir / "b").string(), "--substituters", cache,
                     "--trusted-public-keys", pub, "test", "--workspace", "--json"});
  INFO(fresh.err);
  REQUIRE(fresh.status == 0);
  size_t cached_runs = 0;
  for (const auto& u : json_lines(fresh.out)) {
    CHECK(u["status"] != "built");
    cached_runs += u["kind"] == "test-run" && u["cached"] == true;
  }
  CHECK(cached_runs == 4);
  CHECK(test_lines(fresh.err) == test_lines(cargo.out));

  // An edit to the bin: only its units and the tests that use it run.
  test::write_file(ws / "cli" / "src" / "main.rs",
                   read_file(ws / "cli" / "src" / "main.rs") + "// edited\n");
  auto edited = kiln({"--store", a, "test", "--workspace", "--json"});
  REQUIRE(edited.status == 0);
  std::set<std::string> built;
  for (const auto& u : json_lines(edited.out)) {
    if (u["status"] == "built") {
      built.insert(u["name"].get<std::string>());
    }
  }
  CHECK(built == std::set<std::string>{"cli"});

  // A failing test: reported, exit 101 as cargo's, not kept as a pass.
  test::write_file(ws / "core" / "FAIL", "");
  auto failing = kiln({"--store", a, "test", "-p", "core-lib", "--lib", "--json"});
  CHECK(failing.status == 101);
  CHECK(test_lines(failing.out + failing.err).count("test tests::fails_when_asked ... FAILED") ==
        1);   // reported once, not again as a failed build step
  CHECK_THAT(failing.err, Catch::Contains("error: test failed, to rerun pass `-p core-lib --lib`"));
  for (const auto& u : json_lines(failing.out)) {
    if (u["kind"] == "test-run") {
      CHECK(u["status"] == "failed");
      CHECK(kiln({"--store", a, "path-info", u["path"]}).status != 0);
    }
  }
  auto cargo_failing = test::run({"cargo", "test", "-p", "core-lib", "--lib"}, in_ws);
  CHECK(cargo_failing.status == 101);
  CHECK(test_lines(failing.err) == test_lines(cargo_failing.out));
  fs::remove(ws / "core" / "FAIL");

  // Harness arguments, --rerun, --no-run.
  auto filtered = kiln({"--store", a, "test", "-p", "core-lib", "--lib", "--", "adds"});
  CHECK(test_lines(filtered.out) ==
        test_lines(test::run({"cargo", "test", "-p", "core-lib", "--lib", "--", "adds"}, in_ws).out));
  auto rerun = kiln({"--store", a, "test", "-p", "core-lib", "--lib", "--rerun"});
  CHECK_THAT(rerun.err, Catch::Contains("(0 cached)"));
  auto no_run = kiln({"--store", a, "test", "--workspace", "--no-run"});
  CHECK(no_run.status == 0);
  CHECK(no_run.out.find("test result") == std::string::npos);
}

TEST_CASE("kiln run builds one binary and runs it with the arguments after --, as cargo run",
          "[cargo][test]")
{
  TempDir dir;
  fs::path ws = make_workspace(dir);
  test::RunOptions in_ws;
  in_ws.cwd = ws;
  auto r = test::kiln({"--store", (dir / "s").string(), "run", "-q", "-p", "cli"}, in_ws);
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(r.out.ends_with("2 plain\n"));
  // Its exit status is the program's.
  test::write_file(ws / "cli" / "src" / "main.rs",
                   "fn main() { let a: Vec<String> = std::env::args().skip(1).collect(); "
                   "println!(\"{}\", a.join(\"|\")); std::process::exit(7); }\n");
  r = test::kiln({"--store", (dir / "s").string(), "run", "-q", "--bin", "cli", "--", "x y", "-z"}, in_ws);
  CHECK(r.status == 7);
  CHECK(r.out.ends_with("x y|-z\n"));
  // No such binary: cargo's answer, as a usage error.
  r = test::kiln({"--store", (dir / "s").string(), "run", "--bin", "nosuch"}, in_ws);
  CHECK(r.status == 2);
  CHECK_THAT(r.err, Catch::Contains("nosuch"));
}
