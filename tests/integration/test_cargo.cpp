// The Cargo frontend against the real cargo: kiln plans cargo's units and runs
// rustc as cargo does on every example; what kiln builds behaves as cargo's build; builds
// are reproducible across folders and stores; a cache makes a fresh store's
// build compile nothing, and an edit compiles only the edited crate.
#include "support/cargo_oracle.hpp"
#include "support/test_support.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <kiln/sandbox/sandbox.hpp>
#include <kiln/util/io.hpp>

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <set>
#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;
using json = nlohmann::json;

using test::kiln_in;

namespace {

const fs::path k_examples = fs::path(KILN_SOURCE_DIR) / "examples";

// A copy of an example (its sources only), so that builds leave nothing in
// the checkout.
fs::path
copy_example(const TempDir& dir, const std::string& name, const std::string& as = "")
{
  fs::path to = dir / (as.empty() ? name : as);
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(k_examples / name)) {
    std::string n = entry.path().filename().string();
    if (n == "target" || n == "result" || n.starts_with("result-")) {
      continue;
    }
    fs::copy(entry.path(), to / n, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  }
  return to;
}

// A program of that name in `bin`, first on PATH for the runs that put it
// there, that writes down each time it is run (its arguments), then runs the
// real one. calls() gives what was written since it was last asked.
class LoggingWrapper
{
public:
  LoggingWrapper(const fs::path& bin, const std::string& program)
    : m_log(bin.parent_path() / (program + "-calls"))
  {
    fs::path real = test::output_of(test::run({"sh", "-c", "command -v " + program}),
                                    "the path of " + program);
    test::write_file(bin / program,
                     "#!/bin/sh\necho \"$*\" >>'" + m_log.string() + "'\nexec '" + real.string() +
                       "' \"$@\"\n",
                     true);
  }
  std::string
  calls() const
  {
    std::error_code ec;
    std::string text = fs::exists(m_log, ec) ? read_file(m_log) : "";
    fs::remove(m_log, ec);
    return text;
  }

private:
  fs::path m_log;
};

std::vector<json>
json_lines(const std::string& text)
{
  std::vector<json> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) {
      out.push_back(json::parse(line));
    }
  }
  return out;
}

std::map<std::string, json>
units_by_path(const std::string& json_text)
{
  std::map<std::string, json> out;
  for (auto& j : json_lines(json_text)) {
    out[j["path"].get<std::string>()] = j;
  }
  return out;
}


// Clean units only, as a CI build or --push-to makes them: a local build
// compiles workspace members incrementally, and rustc's incremental output
// is not the same bytes from one session to the next (it never leaves the
// machine; see test_cargo_incremental.cpp).
const std::map<std::string, std::string> k_clean = {{"CARGO_INCREMENTAL", "0"}};

} // namespace

TEST_CASE("cargo frontend: kiln plans what cargo plans, and runs rustc as cargo -v does",
          "[cargo]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  auto r1 = copy_example(dir, "cargo-resolver1");
  // kiln's plan is cargo's own unit graph.
  test::RunOptions in_ws;
  in_ws.cwd = ws;
  in_ws.env["RUSTC_BOOTSTRAP"] = "1";
  auto cargo_graph =
    json::parse(test::output_of(test::run({"cargo", "build", "--unit-graph", "-Z", "unstable-options",
                                           "--release"},
                                          in_ws),
                                "cargo --unit-graph"));
  auto kiln_graph = json::parse(test::output_of(
    kiln_in(ws, {"--store", (dir / "s").string(), "build", "--unit-graph", "--release"}),
    "kiln --unit-graph"));
  CHECK(kiln_graph == cargo_graph);

  // Every rustc command line the same (paths and hashes aside), under the
  // flags users give: resolver 2 with every kind of unit, optional
  // dependencies switched on from the command line, test targets.
  // (Configuration, profiles and --target are tried in test_cargo_config.)
  for (const auto& flags : std::vector<std::vector<std::string>>{
         {"-p", "mylib", "--all-features"},
         {"--features", "toolkit/legacy"},
         {"--all-targets"}}) {
    auto run = test::build_with_both(ws, flags, dir.path());
    test::check_same_rustc_lines(run, json(flags).dump());
  }
  // Resolver 1: one unified feature set.
  test::check_same_rustc_lines(test::build_with_both(r1, {}, dir.path()), "resolver 1");

  // A custom profile with per-package and build-override settings.
  auto custom = copy_example(dir, "cargo-workspace", "custom-profile");
  {
    std::ofstream manifest(custom / "Cargo.toml", std::ios::app);
    manifest << "\n[profile.fast]\ninherits = \"release\"\nopt-level = 1\ncodegen-units = 4\n"
                "debug = 1\nlto = \"thin\"\n[profile.fast.package.helper]\nopt-level = 2\n"
                "[profile.fast.build-override]\nopt-level = 1\n"
                "[profile.dev.package.\"*\"]\nopt-level = \"s\"\n";
  }
  test::check_same_rustc_lines(test::build_with_both(custom, {"--profile", "fast"}, dir.path()),
                               "profile fast");
}

TEST_CASE("cargo frontend: bad input is a clear error", "[cargo]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  std::string store = (dir / "store").string();
  auto r = kiln_in(ws, {"--store", store, "build", "-p", "nosuchpkg"});
  CHECK(r.status == 2);
  CHECK(r.err.find("nosuchpkg") != std::string::npos);
  r = kiln_in(ws, {"--store", store, "build", "--bin", "nosuchbin"});
  CHECK(r.status == 2);
  CHECK(r.err.find("nosuchbin") != std::string::npos);
  r = kiln_in(ws, {"--store", store, "build", "--profile", "nosuchprofile"});
  CHECK(r.status == 2);
  CHECK(r.err.find("nosuchprofile") != std::string::npos);

  // A compile error shows rustc's diagnostics, naming file and line.
  test::write_file(ws / "helper" / "src" / "lib.rs", "pub fn broken() -> u32 { \"text\" }\n");
  r = kiln_in(ws, {"--store", store, "build", "-p", "helper"});
  CHECK(r.status == 1);
  INFO(r.err);
  CHECK(r.err.find("error[E0308]") != std::string::npos);
  CHECK(r.err.find("src/lib.rs:1") != std::string::npos);
  CHECK(r.err.find("helper v0.3.1") != std::string::npos);
}

TEST_CASE("cargo frontend: the example workspace builds and behaves as cargo's build",
          "[cargo]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  std::string store = (dir / "store").string();
  auto r = kiln_in(ws, {"--store", store, "build", "--json"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  auto units = json_lines(r.out);
  CHECK(units.size() == 14);
  for (const auto& u : units) {
    CHECK(u["status"] == "built");
    CHECK(u.contains("name"));
    CHECK(u.contains("version"));
    CHECK(u.contains("kind"));
  }
  // Binaries linked like cargo's layout, and what they print is what the
  // binaries cargo built printed (expected/ was made with cargo build).
  for (const std::string bin : {"my-app", "toolkit"}) {
    fs::path exe = ws / "target" / "kiln" / "debug" / bin;
    REQUIRE(fs::exists(exe));
    auto run = test::run({exe.string()});
    CHECK(run.status == 0);
    CHECK(run.out == read_file(ws / "expected" / (bin + ".txt")));
  }
  CHECK(fs::is_symlink(ws / "result"));

  // Nothing changed: a no-op; everything present.
  r = kiln_in(ws, {"--store", store, "build", "--json"});
  REQUIRE(r.status == 0);
  for (const auto& u : json_lines(r.out)) {
    CHECK(u["status"] == "present");
  }
}

TEST_CASE("cargo frontend: a cache it cannot use is named with the reason, not skipped silently",
          "[cargo][signatures]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  test::kiln({"key", "generate", "old-ci", "--secret-file", (dir / "old.sk").string()});
  test::kiln({"key", "generate", "new-ci", "--secret-file", (dir / "new.sk").string()});
  auto new_key = test::output_of(test::kiln({"key", "public", (dir / "new.sk").string()}), "key");
  std::string cache = "file://" + (dir / "cache").string();
  auto filled = kiln_in(ws, {"--store", (dir / "a").string(), "--secret-key-file",
                             (dir / "old.sk").string(), "build", "-p", "toolkit", "--push-to",
                             cache});
  INFO(filled.err);
  REQUIRE(filled.status == 0);

  // A runner that trusts only another key: it builds, and says why once.
  fs::remove_all(ws / "target");
  auto r = kiln_in(ws, {"--store", (dir / "b").string(), "--substituters", cache,
                        "--trusted-public-keys", new_key, "build", "-p", "toolkit", "--json"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.err, Catch::Contains("warning: cache " + cache + ": ") &&
                      Catch::Contains("signed only by old-ci"));
  size_t warnings = 0;
  for (size_t at = r.err.find("warning: cache "); at != std::string::npos;
       at = r.err.find("warning: cache ", at + 1)) {
    ++warnings;
  }
  CHECK(warnings == 1);
  for (const auto& u : json_lines(r.out)) {
    CHECK(u["status"] == "built");
  }

  // A cache nobody answers at: named, with the failure, and left alone for the run.
  auto port = test::free_port();
  std::string gone = "http://127.0.0.1:" + std::to_string(port) + "/main";
  auto down = kiln_in(ws, {"--store", (dir / "c").string(), "--substituters", gone,
                           "--trusted-public-keys", new_key, "build", "-p", "toolkit"});
  INFO(down.err);
  REQUIRE(down.status == 0);
  CHECK_THAT(down.err, Catch::Contains("warning: cache " + gone) &&
                         Catch::Contains("127.0.0.1:" + std::to_string(port)));
}

TEST_CASE("cargo frontend: outputs are the same bytes in another folder and store", "[cargo]")
{
  TempDir dir;
  auto a = copy_example(dir, "cargo-workspace", "one/place");
  auto b = copy_example(dir, "cargo-workspace", "some/other/folder");
  // One build at a time, and two with pipelining: what is built must not
  // depend on when it started.
  auto ra = kiln_in(a, {"--store", (dir / "store-a").string(), "build", "--json", "--release", "-j", "1"});
  auto rb = kiln_in(b, {"--store", (dir / "store-b").string(), "build", "--json", "--release", "-j", "2"});
  INFO(ra.err << rb.err);
  REQUIRE(ra.status == 0);
  REQUIRE(rb.status == 0);
  auto ua = units_by_path(ra.out);
  auto ub = units_by_path(rb.out);
  REQUIRE(ua.size() == 15);
  for (const auto& [path, unit] : ua) {
    INFO(path);
    REQUIRE(ub.count(path) == 1);
    std::string base = fs::path(path).filename().string();
    CHECK(test::nar_of(dir / "store-a" / "store" / base) ==
          test::nar_of(dir / "store-b" / "store" / base));
  }
}

namespace {

// A workspace where a library (`mid`) depends on a library whose code
// generation takes a while (`slow`), and the binary's build script checks
// the jobserver it is given.
fs::path
write_pipeline_project(const fs::path& root)
{
  test::write_file(root / "Cargo.toml", R"([workspace]
members = ["slow", "mid", "app", "ffi"]
resolver = "2"

# One codegen unit: slow's rustc then asks the jobserver for no more threads,
# and a token is free for mid as soon as slow's metadata is written.
[profile.dev.package.slow]
codegen-units = 1
)");
  test::write_file(root / "slow" / "Cargo.toml",
                   "[package]\nname = \"slow\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
  std::string code;
  for (int i = 0; i < 1500; ++i) {
    std::string n = std::to_string(i);
    code += "pub fn f" + n + "(x: u64) -> u64 { let mut y = x; for i in 0.." +
            std::to_string(i % 50 + 3) + " { y = y.wrapping_mul(31).wrapping_add(i ^ " + n +
            "); if y % 7 == " + std::to_string(i % 7) + " { y ^= " + n + "; } } y }\n";
  }
  code += "pub fn total(x: u64) -> u64 { f0(x) ^ f1499(x) }\n";
  test::write_file(root / "slow" / "src" / "lib.rs", code);
  test::write_file(root / "mid" / "Cargo.toml", R"([package]
name = "mid"
version = "0.1.0"
edition = "2021"

[dependencies]
slow = { path = "../slow" }
)");
  test::write_file(root / "app" / "build.rs", R"(// The jobserver must reach build scripts, as cargo's does.
fn main() {
    let flags = std::env::var("CARGO_MAKEFLAGS").expect("CARGO_MAKEFLAGS is not set");
    let auth = flags.split("--jobserver-auth=").nth(1).expect("no jobserver in CARGO_MAKEFLAGS");
    if let Some(fifo) = auth.strip_prefix("fifo:") {
        std::fs::OpenOptions::new().read(true).write(true).open(fifo.trim())
            .expect("cannot open the jobserver fifo");
    }
    println!("cargo:rustc-env=APP_JOBSERVER=ok");
}
)");
  test::write_file(root / "mid" / "src" / "lib.rs",
                   "pub fn mid(x: u64) -> u64 { slow::total(x) + 1 }\n");
  test::write_file(root / "app" / "Cargo.toml", R"([package]
name = "app"
version = "0.1.0"
edition = "2021"

[dependencies]
mid = { path = "../mid" }
)");
  // A C library: its product is the .so, not an rlib.
  test::write_file(root / "ffi" / "Cargo.toml", R"([package]
name = "ffi"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]
)");
  test::write_file(root / "ffi" / "src" / "lib.rs",
                   "#[no_mangle]\npub extern \"C\" fn ffi_answer() -> i32 { 42 }\n");
  test::write_file(root / "app" / "src" / "main.rs",
                   "fn main() { println!(\"{} {}\", mid::mid(42), env!(\"APP_JOBSERVER\")); }\n");
  return root;
}

} // namespace

TEST_CASE("cargo frontend: a library starts on its dependency's metadata, with one jobserver",
          "[cargo]")
{
  TempDir dir;
  fs::path project = write_pipeline_project(dir / "pipe");
  test::RunOptions in_project;
  in_project.cwd = project;
  REQUIRE(test::run({"cargo", "generate-lockfile", "--offline"}, in_project).status == 0);

  // Three jobs: slow and app's build script take two at the start; with only
  // those, mid (ready at slow's metadata) would wait for the build script's
  // compile, which on a loaded machine can outlast slow's code generation.
  auto piped = kiln_in(project, {"--store", (dir / "store-a").string(), "build", "--json", "-j", "3"});
  INFO(piped.err << piped.out);
  REQUIRE(piped.status == 0);
  std::map<std::string, json> unit;
  for (const auto& u : json_lines(piped.out)) {
    unit[u["name"].get<std::string>() + " " + u["kind"].get<std::string>()] = u;
    CHECK(u["status"] == "built");
  }
  REQUIRE(unit.count("slow lib"));
  REQUIRE(unit.count("mid lib"));
  // mid began while slow was still generating code: on slow's .rmeta.
  double slow_end = unit["slow lib"]["start"].get<double>() + unit["slow lib"]["seconds"].get<double>();
  CHECK(unit["mid lib"]["start"].get<double>() < slow_end);
  // The binary links against the finished libraries; the build script saw
  // the jobserver, and rustc had no complaint about it.
  auto ran = test::run({(project / "target" / "kiln" / "debug" / "app").string()});
  CHECK(ran.out == "7142015112664355051 ok\n");
  CHECK_THAT(piped.err, !Catch::Contains("jobserver"));
  for (const auto& entry : fs::directory_iterator(dir / "store-a" / "logs")) {
    INFO(entry.path());
    CHECK_THAT(read_file(entry.path()), !Catch::Contains("jobserver"));
  }

  // --link-libs links a cdylib's .so, with its C symbol.
  auto libs = kiln_in(project, {"--store", (dir / "store-a").string(), "build", "-p", "ffi",
                                "--link-libs"});
  INFO(libs.err);
  REQUIRE(libs.status == 0);
  fs::path so;
  for (const auto& entry : fs::directory_iterator(project / "target" / "kiln" / "debug")) {
    if (entry.path().filename().string().starts_with("libffi-") &&
        entry.path().extension() == ".so") {
      so = entry.path();
    }
  }
  REQUIRE_FALSE(so.empty());
  CHECK(read_file(so).starts_with("\x7f" "ELF"));
  CHECK_THAT(test::run({"nm", "-D", so.string()}).out, Catch::Contains("ffi_answer"));

  // Without pipelining (one job): the same outputs, byte for byte.
  auto clean_piped = kiln_in(project, {"--store", (dir / "store-c").string(), "build", "--json",
                                       "-j", "2"}, k_clean);
  INFO(clean_piped.err);
  REQUIRE(clean_piped.status == 0);
  auto serial = kiln_in(project, {"--store", (dir / "store-b").string(), "build", "--json", "-j", "1"},
                        k_clean);
  INFO(serial.err);
  REQUIRE(serial.status == 0);
  CHECK(units_by_path(serial.out).size() == 6);
  for (const auto& [path, u] : units_by_path(serial.out)) {
    INFO(path);
    std::string base = fs::path(path).filename().string();
    CHECK(test::nar_of(dir / "store-c" / "store" / base) == test::nar_of(dir / "store-b" / "store" / base));
  }
}

TEST_CASE("cargo frontend: rustc's allocator gets huge pages, a build script's run does not",
          "[cargo]")
{
  if (detect_sandbox_support() != SandboxMode::namespaces) {
    test::skip("namespaces are unavailable here: kiln's sandbox has no /etc of its own to test");
    return;
  }
  // What each sees of /etc/malloc.conf, where jemalloc (rustc's allocator)
  // reads its options: a proc macro runs inside rustc, a build script runs
  // on its own.
  TempDir dir;
  fs::path root = dir / "conf";
  std::string read_conf = "std::fs::read_link(\"/etc/malloc.conf\").map(|p| p.display().to_string())"
                          ".unwrap_or_else(|_| \"none\".to_string())";
  test::write_file(root / "Cargo.toml", "[workspace]\nmembers = [\"macros\", \"app\"]\nresolver = \"2\"\n");
  test::write_file(root / "macros" / "Cargo.toml",
                   "[package]\nname = \"macros\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n"
                   "[lib]\nproc-macro = true\n");
  test::write_file(root / "macros" / "src" / "lib.rs",
                   "use proc_macro::TokenStream;\n#[proc_macro]\npub fn conf(_: TokenStream) -> "
                   "TokenStream {\n    format!(\"{:?}\", " + read_conf + ").parse().unwrap()\n}\n");
  test::write_file(root / "app" / "Cargo.toml",
                   "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n"
                   "[dependencies]\nmacros = { path = \"../macros\" }\n");
  test::write_file(root / "app" / "build.rs",
                   "fn main() { println!(\"cargo:rustc-env=RUN_CONF={}\", " + read_conf + "); }\n");
  test::write_file(root / "app" / "src" / "main.rs",
                   "fn main() { println!(\"compile: {}, build script: {}\", macros::conf!(), "
                   "env!(\"RUN_CONF\")); }\n");
  test::RunOptions in_project;
  in_project.cwd = root;
  REQUIRE(test::run({"cargo", "generate-lockfile", "--offline"}, in_project).status == 0);
  auto built = kiln_in(root, {"--store", (dir / "store").string(), "build"});
  INFO(built.err);
  REQUIRE(built.status == 0);
  auto ran = test::run({(root / "target" / "kiln" / "debug" / "app").string()});
  CHECK(ran.out == "compile: thp:always,metadata_thp:always, build script: none\n");
}

TEST_CASE("cargo frontend: real crates build, behave as cargo's binary, and come back from a "
          "cache without compiling",
          "[cargo][slow]")
{
  TempDir dir;
  auto app = copy_example(dir, "rust-app", "app");
  std::string store_a = (dir / "store-a").string();

  // cargo's own binary, to compare behaviour with.
  test::RunOptions in_app;
  in_app.cwd = app;
  in_app.env["CARGO_TARGET_DIR"] = (dir / "cargo-target").string();
  auto cargo_build = test::run({"cargo", "build", "--offline", "--locked", "-v"}, in_app);
  INFO(cargo_build.err);
  REQUIRE(cargo_build.status == 0);
  fs::path cargo_bin = dir / "cargo-target" / "debug" / "logsum";

  // Built as a CI job builds for its cache: clean units (a local build's
  // incremental ones would never leave the machine).
  auto cold = kiln_in(app, {"--store", store_a, "build", "--json", "-j", "2", "-v", "--locked"},
                      k_clean);
  INFO(cold.err);
  REQUIRE(cold.status == 0);
  // The same rustc command lines as cargo's (paths and hashes aside).
  test::check_same_rustc_lines({cargo_build, cold, {}, {}}, "examples/rust-app");
  auto cold_units = json_lines(cold.out);
  CHECK(cold_units.size() == 74);
  fs::path kiln_bin = app / "target" / "kiln" / "debug" / "logsum";
  REQUIRE(fs::exists(kiln_bin));
  for (const auto& args : std::vector<std::vector<std::string>>{
         {"sample.txt"},
         {"sample.txt", "-n", "3", "--pretty"},
         {"sample.txt", "--grep", "error", "--min-len", "6"},
         {"--help"},
         {"no-such-file.txt"}}) {
    std::vector<std::string> with_cargo = {cargo_bin.string()}, with_kiln = {kiln_bin.string()};
    with_cargo.insert(with_cargo.end(), args.begin(), args.end());
    with_kiln.insert(with_kiln.end(), args.begin(), args.end());
    auto want = test::run(with_cargo, in_app);
    auto got = test::run(with_kiln, in_app);
    INFO(json(args).dump());
    CHECK(got.status == want.status);
    CHECK(got.out == want.out);
    CHECK(got.err == want.err);
  }

  // Push everything to a kiln serve cache.
  test::kiln({"key", "generate", "ci-1", "--secret-file", (dir / "ci.sk").string()});
  std::string pub = test::output_of(
    test::kiln({"key", "public", (dir / "ci.sk").string()}), "key public");
  test::write_file(dir / "server.yaml", "caches:\n"
                                        "  main:\n"
                                        "    path: main\n"
                                        "    trusted-keys: [\"" + pub + "\"]\n"
                                        "tokens:\n"
                                        "  - token: ci-write-token\n"
                                        "    caches: [main]\n"
                                        "    scopes: [read, write]\n");
  test::KilnServe server(dir / "server.yaml", dir / "serve.log");
  std::string cache = server.url + "/main";
  std::vector<std::string> push = {"--store", store_a, "--secret-key-file",
                                   (dir / "ci.sk").string(), "--token", "ci-write-token",
                                   "push", cache};
  for (const auto& u : cold_units) {
    push.push_back(u["path"]);
  }
  auto pushed = test::kiln(push);
  INFO(pushed.err);
  REQUIRE(pushed.status == 0);

  // A fresh store, as a CI runner has it: nothing is compiled.
  std::string store_b = (dir / "store-b").string();
  std::vector<std::string> use_cache = {"--store", store_b, "--substituters", cache,
                                        "--trusted-public-keys", pub};
  auto with_cache = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = use_cache;
    args.insert(args.end(), {"build", "--json", "-j", "2"});
    args.insert(args.end(), extra.begin(), extra.end());
    return kiln_in(app, args);
  };
  fs::remove_all(app / "target");
  auto warm = with_cache({});
  INFO(warm.err);
  REQUIRE(warm.status == 0);
  size_t substituted = 0;
  for (const auto& u : json_lines(warm.out)) {
    CHECK(u["status"] != "built");
    substituted += u["status"] == "substituted";
  }
  CHECK(substituted >= 1);
  // The binary is the very one built in store A.
  std::string bin_path;
  for (const auto& u : cold_units) {
    CHECK(u["status"] == "built");
    if (u["kind"] == "bin") {
      bin_path = u["path"];
    }
  }
  CHECK(read_file(kiln_bin) ==
        read_file(dir / "store-a" / "store" / fs::path(bin_path).filename() / "bin" / "logsum"));

  // Edit the top crate only: only it is compiled.
  {
    std::ofstream main(app / "src" / "main.rs", std::ios::app);
    main << "\n// an edit that changes nothing but the source\n";
  }
  auto edited = with_cache({});
  INFO(edited.err);
  REQUIRE(edited.status == 0);
  std::vector<std::string> built;
  for (const auto& u : json_lines(edited.out)) {
    if (u["status"] == "built") {
      built.push_back(u["name"].get<std::string>() + " " + u["kind"].get<std::string>());
    }
  }
  CHECK(built == std::vector<std::string>{"rust-app bin"});
  auto again = test::run({kiln_bin.string(), "sample.txt"}, in_app);
  CHECK(again.out == read_file(app / "sample.expected.json"));
  // Only the compiled crate's sources were copied into the store, and no
  // .drv: its inputs' .drvs are not there (they were substituted).
  std::vector<std::string> sources, drvs;
  for (const auto& entry : fs::directory_iterator(fs::path(store_b) / "store")) {
    std::string name = entry.path().filename().string();
    if (name.ends_with("-src")) {
      sources.push_back(name.substr(33));
    } else if (name.ends_with(".drv")) {
      drvs.push_back(name.substr(33));
    }
  }
  CHECK(sources == std::vector<std::string>{"rust-app-0.1.0-src"});
  CHECK(drvs.empty());
}

TEST_CASE("cargo frontend: --message-format json gives cargo's messages, also for fresh units",
          "[cargo]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  // A warning to report.
  test::write_file(ws / "winonly" / "src" / "lib.rs",
                   "pub fn unused() { let never_used = 1; }\n");
  auto message_set = [](const std::string& out) {
    std::multiset<std::string> set;
    bool finished = false;
    for (const auto& m : json_lines(out)) {
      std::string reason = m["reason"];
      if (reason == "compiler-artifact") {
        set.insert(reason + " " + m["package_id"].get<std::string>() + " " +
                   m["target"]["name"].get<std::string>() + " " + m["target"]["kind"].dump() + " " +
                   m["features"].dump() + " " + m["profile"].dump() + " " +
                   (m["executable"].is_null() ? "lib" : "exe"));
      } else if (reason == "build-script-executed") {
        set.insert(reason + " " + m["package_id"].get<std::string>() + " " + m["cfgs"].dump() +
                   " " + m["linked_libs"].dump());
      } else if (reason == "compiler-message") {
        set.insert(reason + " " + m["package_id"].get<std::string>() + " " +
                   m["message"]["message"].get<std::string>());
      } else if (reason == "build-finished") {
        finished = m["success"].get<bool>();
      }
    }
    CHECK(finished);
    return set;
  };
  test::RunOptions in_ws;
  in_ws.cwd = ws;
  in_ws.env["CARGO_TARGET_DIR"] = (dir / "cargo-target").string();
  auto cargo = test::run({"cargo", "build", "--message-format", "json"}, in_ws);
  REQUIRE(cargo.status == 0);
  std::string store = (dir / "store").string();
  auto first = kiln_in(ws, {"--store", store, "build", "-q", "--message-format", "json"});
  INFO(first.err);
  REQUIRE(first.status == 0);
  auto want = message_set(cargo.out);
  CHECK(message_set(first.out) == want);
  CHECK(want.count("compiler-message path+file://" + ws.string() +
                   "/winonly#0.1.0 unused variable: `never_used`") == 1);
  // Every file named exists; the binaries are executables.
  for (const auto& m : json_lines(first.out)) {
    if (m["reason"] == "compiler-artifact") {
      for (const auto& f : m["filenames"]) {
        CHECK(fs::exists(f.get<std::string>()));
      }
      CHECK(m["fresh"] == false);
    }
  }
  // Nothing to build: the same messages, fresh, diagnostics replayed.
  auto again = kiln_in(ws, {"--store", store, "build", "-q", "--message-format", "json"});
  REQUIRE(again.status == 0);
  CHECK(message_set(again.out) == want);
  for (const auto& m : json_lines(again.out)) {
    if (m["reason"] == "compiler-artifact") {
      CHECK(m["fresh"] == true);
    }
  }
  // json-render-diagnostics: the warning on stderr as rustc renders it.
  auto rendered = kiln_in(ws, {"--store", store, "build", "--message-format", "json-render-diagnostics"});
  CHECK_THAT(rendered.err, Catch::Contains("warning: unused variable: `never_used`"));
  CHECK(rendered.out.find("compiler-message") == std::string::npos);
  // Human output replays the warning of a fresh unit too.
  auto human = kiln_in(ws, {"--store", store, "build"});
  CHECK_THAT(human.err, Catch::Contains("warning: unused variable: `never_used`"));
}

TEST_CASE("cargo frontend: --explain and why-rebuild name the input that changed", "[cargo]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  std::string store = (dir / "store").string();
  auto first = kiln_in(ws, {"--store", store, "build", "--json", "-q"});
  REQUIRE(first.status == 0);
  auto unchanged = kiln_in(ws, {"--store", store, "build", "--explain", "mysys"});
  INFO(unchanged.err);
  REQUIRE(unchanged.status == 0);
  CHECK_THAT(unchanged.out, Catch::Contains("(in the store)") &&
                              Catch::Contains("same inputs as in the last build"));

  // An edit: mysys's sources change, and what uses mysys sees another output.
  test::write_file(ws / "mysys" / "src" / "extra.rs", "// more\n");
  auto edited = kiln_in(ws, {"--store", store, "build", "--explain", "mysys"});
  CHECK_THAT(edited.out, Catch::Contains("(not in the store)") && Catch::Contains("changed: source:"));
  auto user = kiln_in(ws, {"--store", store, "build", "--explain", "mylib"});
  CHECK_THAT(user.out, Catch::Contains("changed: externs.mysys.output:"));

  auto second = kiln_in(ws, {"--store", store, "build", "--json", "-q"});
  REQUIRE(second.status == 0);
  auto drv_of = [](const std::string& out, const std::string& name, const std::string& kind) {
    for (const auto& u : json_lines(out)) {
      if (u["name"] == name && u["kind"] == kind) {
        return u["drv"].get<std::string>();
      }
    }
    return std::string();
  };
  auto why = test::kiln({"--store", store, "why-rebuild", drv_of(first.out, "mysys", "lib"),
                         drv_of(second.out, "mysys", "lib")});
  INFO(why.out);
  CHECK_THAT(why.out, Catch::Contains("environment __kiln_inputs.source:"));
  CHECK(why.out.find("__kiln_unit") == std::string::npos);
}

namespace {

// Sets a file's access and modification times, in days before now.
void
age_file(const fs::path& file, double atime_days, double mtime_days)
{
  auto at = [](double days) {
    return timespec{::time(nullptr) - static_cast<time_t>(days * 86400), 0};
  };
  timespec times[2] = {at(atime_days), at(mtime_days)};
  REQUIRE(::utimensat(AT_FDCWD, file.c_str(), times, 0) == 0);
}

} // namespace

TEST_CASE("cargo frontend: the cache folder forgets what no build used for 30 days, checked "
          "once a day", "[cargo]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  fs::path cache = dir / "cache" / "cargo";
  test::RunOptions opts;
  opts.cwd = ws;
  opts.env = {{"KILN_CACHE_DIR", (dir / "cache").string()}};
  auto plan = [&] {
    auto r = test::kiln({"--store", (dir / "store").string(), "build", "--unit-graph"}, opts);
    INFO(r.err);
    REQUIRE(r.status == 0);
  };
  // Another project's answer unused for 40 days; one written 40 days ago
  // but read 2 days ago; a temporary file a crashed write left; the
  // user's own file, which is not kiln's to delete.
  for (const char* name : {"query-0123.json", "cfg-4567", "source-digest-89ab.json.tmp.12.34",
                           "notes.txt"}) {
    test::write_file(cache / name, "{}");
  }
  age_file(cache / "query-0123.json", 40, 40);
  age_file(cache / "cfg-4567", 2, 40);
  age_file(cache / "source-digest-89ab.json.tmp.12.34", 2, 2);
  age_file(cache / "notes.txt", 400, 400);

  plan();
  CHECK(!fs::exists(cache / "query-0123.json"));
  CHECK(fs::exists(cache / "cfg-4567"));
  CHECK(!fs::exists(cache / "source-digest-89ab.json.tmp.12.34"));
  CHECK(fs::exists(cache / "notes.txt"));
  CHECK(fs::exists(cache / "last-trim"));

  // What a build reads is marked as used, even where the file system does
  // not record reads or an archive keeps modification times only: this
  // project's answers, aged by hand, are used again.
  std::vector<fs::path> answers;
  for (const auto& entry : fs::directory_iterator(cache)) {
    if (entry.path().filename().string().rfind("query-", 0) == 0) {
      answers.push_back(entry.path());
      age_file(entry.path(), 29, 29);
    }
  }
  REQUIRE(answers.size() == 2); // cargo metadata's, and the unit graph's
  // Within a day of the last trim: nothing is looked at.
  test::write_file(cache / "query-cdef.json", "{}");
  age_file(cache / "query-cdef.json", 40, 40);
  plan();
  CHECK(fs::exists(cache / "query-cdef.json"));
  for (const auto& answer : answers) {
    struct stat st;
    REQUIRE(::stat(answer.c_str(), &st) == 0);
    CHECK(st.st_atime > ::time(nullptr) - 3600);
    CHECK(st.st_mtime > ::time(nullptr) - 3600); // (what an archive of the folder keeps)
  }
  // A day later, the next build trims again.
  age_file(cache / "last-trim", 2, 2);
  plan();
  CHECK(!fs::exists(cache / "query-cdef.json"));
  for (const auto& answer : answers) {
    CHECK(fs::exists(answer));
  }
}

TEST_CASE("cargo frontend: a fresh store reuses what the cache folder learned, and an edited "
          "manifest asks cargo again", "[cargo]")
{
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  // cargo, and rustc (asked to locate the toolchain), written down.
  LoggingWrapper cargo(dir / "bin", "cargo");
  LoggingWrapper rustc(dir / "bin", "rustc");
  test::RunOptions opts;
  opts.cwd = ws;
  opts.env = {{"PATH", (dir / "bin").string() + ":" + std::getenv("PATH")},
              {"KILN_CACHE_DIR", (dir / "cache").string()}};
  auto plan = [&](const std::string& store) {
    auto r = test::kiln({"--store", (dir / store).string(), "build", "--unit-graph"}, opts);
    INFO(r.err);
    REQUIRE(r.status == 0);
    return r.out;
  };
  auto calls = [&] { return cargo.calls(); };

  // What kiln before 2026-12 kept in one file a kind (every tree ever seen,
  // read whole by each build; the one toolchain found) is removed.
  for (const char* legacy : {"source-digests.json", "toolchain-digests.json", "toolchain.json"}) {
    test::write_file(dir / "cache" / "cargo" / legacy, "{}");
  }
  std::string first = plan("store-a");
  CHECK_THAT(calls(), Catch::Contains("metadata") && Catch::Contains("--unit-graph"));
  for (const char* legacy : {"source-digests.json", "toolchain-digests.json", "toolchain.json"}) {
    CHECK(!fs::exists(dir / "cache" / "cargo" / legacy));
  }
  // What was learned lives in the cache folder, not in the store: the
  // digests of the toolchain's parts, a file each.
  auto count = [](const fs::path& folder, const std::string& prefix) {
    size_t n = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(folder, ec)) {
      n += entry.path().filename().string().rfind(prefix, 0) == 0;
    }
    return n;
  };
  CHECK(count(dir / "cache" / "cargo", "toolchain-digest-") > 3);
  CHECK(count(dir / "store-a" / "var" / "cargo", "toolchain-digest-") == 0);

  // Another, empty store: cargo is not asked again, and the plan is the same.
  CHECK(plan("store-b") == first);
  CHECK(calls().empty());

  // The toolchain found is remembered for each PATH (rustup's proxy changes
  // it for `cargo kiln`): a second one does not make the first one's stale.
  auto toolchain_lookups = [&] { return rustc.calls(); };
  toolchain_lookups();
  test::RunOptions other_path = opts;
  other_path.env["PATH"] = (dir / "bin").string() + ":" + (dir / "bin").string() + ":" +
                           std::getenv("PATH");
  {
    auto r = test::kiln({"--store", (dir / "store-b").string(), "build", "--unit-graph"},
                        other_path);
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK(r.out == first);
  }
  CHECK_THAT(toolchain_lookups(), Catch::Contains("sysroot"));
  CHECK(plan("store-b") == first);
  CHECK(toolchain_lookups().empty());

  // An edited manifest (only a comment): the answers are cargo's again.
  std::ofstream(ws / "mylib" / "Cargo.toml", std::ios::app) << "# edited\n";
  CHECK(plan("store-c") == first);
  CHECK_THAT(calls(), Catch::Contains("metadata"));
}

namespace {

// The diagnostics' headlines ("warning: unneeded `return` statement"),
// without the counts cargo and rustc add.
std::multiset<std::string>
lint_headlines(const std::string& err)
{
  std::multiset<std::string> out;
  std::istringstream lines(err);
  for (std::string line; std::getline(lines, line);) {
    bool headline = line.starts_with("warning: ") || line.starts_with("error: ") ||
                    line.starts_with("error[");
    if (headline && line.find("generated") == std::string::npos &&
        line.find("emitted") == std::string::npos && line.find("aborting") == std::string::npos &&
        line.find("could not compile") == std::string::npos &&
        line.find("waiting for other jobs") == std::string::npos) {
      out.insert(line);
    }
  }
  return out;
}

} // namespace

TEST_CASE("cargo frontend: kiln clippy lints as cargo clippy, also from a cache", "[cargo][clippy]")
{
  if (!test::have_program("clippy-driver") && !fs::exists(fs::path(test::output_of(
                                                test::run({"rustc", "--print", "sysroot"}), "sysroot")) /
                                              "bin" / "clippy-driver")) {
    test::skip("clippy is not installed");
    return;
  }
  TempDir dir;
  auto ws = copy_example(dir, "cargo-workspace");
  test::write_file(ws / "winonly" / "src" / "lib.rs",
                   "pub fn f(x: u32) -> u32 { return x + 1; }\n"
                   "pub fn g(a: u32, b: u32, c: u32) -> u32 { a + b + c }\n");
  // cargo clippy lints every compile of a member, not only its check: a
  // build script, and a proc-macro compiled for the host.
  {
    std::ofstream build_rs(ws / "mylib" / "build.rs", std::ios::app);
    build_rs << "\n#[allow(dead_code)]\nfn counted(v: &[u32]) -> usize { v.iter().count() }\n";
    std::ofstream macro_rs(ws / "mymacro" / "src" / "lib.rs", std::ios::app);
    macro_rs << "\n#[allow(dead_code)]\nfn length(v: &Vec<u32>) -> usize { v.len() }\n";
  }
  // The workspace's clippy.toml, above the member: it counts.
  test::write_file(ws / "clippy.toml", "too-many-arguments-threshold = 2\n");
  test::RunOptions in_ws;
  in_ws.cwd = ws;
  in_ws.env["CARGO_TARGET_DIR"] = (dir / "cargo-target").string();
  auto cargo_warn = test::run({"cargo", "clippy"}, in_ws);
  auto cargo_deny = test::run({"cargo", "clippy", "--", "-D", "warnings"}, in_ws);
  REQUIRE(cargo_warn.status == 0);
  REQUIRE(cargo_deny.status == 101);
  auto want = lint_headlines(cargo_warn.err);
  CHECK(want.count("warning: unneeded `return` statement") == 1);
  CHECK(want.count("warning: this function has too many arguments (3/2)") == 1);
  // (mymacro's lint once: cargo shows a diagnostic that its compile and its
  // check both emit once)
  CHECK(want.count("warning: called `.iter().count()` on a `slice`") == 1);
  CHECK(want.count("warning: writing `&Vec` instead of `&[_]` involves a new object where a "
                   "slice will do") == 1);

  std::string a = (dir / "a").string(), cache = "file://" + (dir / "cache").string();
  test::kiln({"key", "generate", "k", "--secret-file", (dir / "sk").string()});
  auto pub = test::output_of(test::kiln({"key", "public", (dir / "sk").string()}), "key");
  auto warn = kiln_in(ws, {"--store", a, "--secret-key-file", (dir / "sk").string(), "clippy",
                           "--push-to", cache});
  INFO(warn.err);
  CHECK(warn.status == 0);
  CHECK(lint_headlines(warn.err) == want);
  auto deny = kiln_in(ws, {"--store", a, "clippy", "--", "-D", "warnings"});
  CHECK(deny.status == 101);
  UNSCOPED_INFO("cargo said: " << cargo_deny.err);
  // Several units fail: which ones report before the build stops depends on
  // timing, for cargo as for kiln. Each error must be one of the lints.
  for (const auto* err : {&deny.err, &cargo_deny.err}) {
    auto errors = lint_headlines(*err);
    CHECK(!errors.empty());
    for (const auto& e : errors) {
      INFO(e);
      CHECK((e.starts_with("error: ") && want.count("warning: " + e.substr(7)) == 1));
    }
  }

  // From a cache, in a fresh store: nothing linted again, the warnings shown again.
  auto fresh = kiln_in(ws, {"--store", (dir / "b").string(), "--substituters", cache,
                            "--trusted-public-keys", pub, "clippy", "--json"});
  INFO(fresh.err);
  CHECK(fresh.status == 0);
  CHECK(lint_headlines(fresh.err) == want);
  for (const auto& u : json_lines(fresh.out)) {
    CHECK(u["status"] != "built");
  }

  // Through clippy-driver exactly what cargo runs through it, the same lines.
  auto run = test::build_with_both(ws, {}, dir.path(), {}, "clippy");
  test::check_same_rustc_lines(run, "clippy");
  auto through_clippy = [&](const std::string& crate, const std::string& crate_type) {
    auto lines = test::rustc_lines(run.kiln.err);
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) {
      return l.starts_with("clippy-driver rustc --crate-name " + crate + " ") &&
             l.find(" --crate-type " + crate_type + " ") != std::string::npos &&
             l.find(" --emit=link") != std::string::npos;
    });
  };
  CHECK(through_clippy("build_script_build", "bin"));
  CHECK(through_clippy("mymacro", "proc-macro"));
}
