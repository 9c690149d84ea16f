// Cargo's configuration, as kiln reads it, against the real cargo: rustflags
// from config files at several levels, $CARGO_HOME, CARGO_BUILD_RUSTFLAGS,
// RUSTFLAGS, --config and target.'cfg(..)' tables (which also switch on
// cfg-gated dependencies); [env]; profile keys from the manifest, config
// files and CARGO_PROFILE_* variables; custom profiles; --release;
// --target. For each, kiln runs the rustc command lines cargo -v runs and
// its binary prints what cargo's prints.
#include "support/cargo_oracle.hpp"
#include "support/test_support.hpp"

#include <kiln/cargo/toolchain.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// parent/.cargo/config.toml, parent/proj/{.cargo/config.toml, Cargo.toml,
// app, lib1, cfgdep}, and a $CARGO_HOME with a config of its own.
fs::path
make_project(const TempDir& dir)
{
  fs::path parent = dir / "parent";
  fs::path proj = parent / "proj";
  test::write_file(dir / "home" / "config.toml", "[build]\nrustflags = [\"--cfg\", \"from_home\"]\n");
  test::write_file(parent / ".cargo" / "config.toml",
                   "[build]\nrustflags = [\"--cfg\", \"from_parent\"]\n"
                   "[profile.dev]\nopt-level = 1\n");
  test::write_file(proj / ".cargo" / "config.toml",
                   "[build]\nrustflags = [\"--cfg\", \"from_proj\"]\n"
                   "[env]\nMY_VAR = \"from_config\"\n"
                   "MY_REL = { value = \"rel/dir\", relative = true }\n"
                   "MY_FORCED = { value = \"forced\", force = true }\n"
                   "[profile.fast]\ninherits = \"release\"\nopt-level = 2\ncodegen-units = 2\n");
  test::write_file(proj / "Cargo.toml", "[workspace]\nresolver = \"2\"\nmembers = [\"app\", \"lib1\", \"cfgdep\"]\n"
                                        "[profile.dev]\ndebug = \"line-tables-only\"\n"
                                        "[profile.release]\nstrip = true\n");
  test::write_file(proj / "app" / "Cargo.toml",
                   "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"
                   "[dependencies]\nlib1 = { path = \"../lib1\" }\n"
                   "[target.'cfg(myflag)'.dependencies]\ncfgdep = { path = \"../cfgdep\" }\n"
                   "[lints.rust]\nunsafe_code = \"forbid\"\n");
  test::write_file(proj / "app" / "src" / "main.rs", R"(fn main() {
    println!("from_home={} from_parent={} from_proj={} env_build={} rustflags_env={} myflag={} cli={} from_cfg_table={}",
             cfg!(from_home), cfg!(from_parent), cfg!(from_proj), cfg!(env_build),
             cfg!(rustflags_env), cfg!(myflag), cfg!(cli), cfg!(from_cfg_table));
    println!("MY_VAR={} MY_REL={} MY_FORCED={}", env!("MY_VAR"), env!("MY_REL"), env!("MY_FORCED"));
    println!("debug_assertions={}", cfg!(debug_assertions));
    let overflowed = std::panic::catch_unwind(|| {
        let x: u8 = std::hint::black_box(255);
        x + 1
    }).is_err();
    println!("overflow_checks={}", overflowed);
    #[cfg(myflag)]
    println!("cfgdep: {}", cfgdep::hello());
    println!("lib1: {}", lib1::answer());
}
)");
  test::write_file(proj / "lib1" / "Cargo.toml",
                   "[package]\nname = \"lib1\"\nversion = \"0.2.0\"\nedition = \"2021\"\n");
  test::write_file(proj / "lib1" / "src" / "lib.rs",
                   "pub fn answer() -> u32 { if cfg!(debug_assertions) { 1 } else { 2 } }\n");
  test::write_file(proj / "cfgdep" / "Cargo.toml",
                   "[package]\nname = \"cfgdep\"\nversion = \"0.3.0\"\nedition = \"2021\"\n");
  test::write_file(proj / "cfgdep" / "src" / "lib.rs", "pub fn hello() -> &'static str { \"here\" }\n");
  return proj;
}

std::vector<nlohmann::json>
json_lines_of(const std::string& text)
{
  std::vector<nlohmann::json> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.front() == '{') {
      out.push_back(nlohmann::json::parse(line));
    }
  }
  return out;
}

fs::path
cargo_binary(const test::OracleRun& run, const std::string& dir)
{
  return run.cargo_target_dir / dir / "app";
}

// `kiln --store STORE build ARGS` in `proj`, with `env` and the test's own
// $CARGO_HOME (dir/home).
test::RunResult
kiln_build(const TempDir& dir, const fs::path& proj, const std::string& store,
           const std::vector<std::string>& args, const std::map<std::string, std::string>& env)
{
  test::RunOptions options;
  options.cwd = proj;
  options.env = env;
  options.env["CARGO_HOME"] = (dir / "home").string();
  std::vector<std::string> argv = {"--store", store, "build"};
  argv.insert(argv.end(), args.begin(), args.end());
  return test::kiln(argv, options);
}

// The store folder (under the store at `store`) of the bin unit a `--json`
// build printed.
fs::path
bin_output(const fs::path& store, const test::RunResult& r)
{
  for (const auto& unit : json_lines_of(r.out)) {
    if (unit.value("kind", "") == "bin") {
      return store / "store" / fs::path(unit.at("path").get<std::string>()).filename();
    }
  }
  FAIL("no bin unit in: " << r.out);
  return fs::path();
}

} // namespace

TEST_CASE("cargo configuration: rustflags, [env], profiles and cfg-gated dependencies as cargo reads them",
          "[cargo][config]")
{
  TempDir dir;
  fs::path proj = make_project(dir);
  std::map<std::string, std::string> env = {{"CARGO_HOME", (dir / "home").string()},
                                            {"MY_FORCED", "from_shell"}};
  struct Case
  {
    std::string what;
    std::vector<std::string> flags;
    std::map<std::string, std::string> env;
    std::string products;   // where cargo puts the binary, under its target folder
  };
  std::vector<Case> cases = {
    {"config files at three levels", {}, {}, "debug"},
    {"CARGO_BUILD_RUSTFLAGS adds", {}, {{"CARGO_BUILD_RUSTFLAGS", "--cfg env_build"}}, "debug"},
    {"--config adds, and switches on a cfg-gated dependency",
     {"--config", "build.rustflags=[\"--cfg\",\"myflag\"]"}, {}, "debug"},
    {"RUSTFLAGS wins over every config", {}, {{"RUSTFLAGS", "--cfg rustflags_env --cfg myflag"}}, "debug"},
    {"a target.'cfg(..)' table wins over build.rustflags",
     {"--config", "target.'cfg(unix)'.rustflags=[\"--cfg\",\"from_cfg_table\"]"}, {}, "debug"},
    {"profile keys from the environment and --config",
     {"--config", "profile.dev.overflow-checks=false"},
     {{"CARGO_PROFILE_DEV_OPT_LEVEL", "2"}, {"CARGO_PROFILE_DEV_DEBUG_ASSERTIONS", "false"}},
     "debug"},
    {"--release with LTO and one codegen unit", {"--release"},
     {{"CARGO_PROFILE_RELEASE_LTO", "thin"}, {"CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"}}, "release"},
    {"a custom profile from a config file", {"--profile", "fast"}, {}, "fast"},
    {"--target: host units get no rustflags", {"--target", "x86_64-unknown-linux-gnu"}, {},
     "x86_64-unknown-linux-gnu/debug"},
  };
  for (const auto& c : cases) {
    auto case_env = env;
    case_env.insert(c.env.begin(), c.env.end());
    auto run = test::build_with_both(proj, c.flags, dir.path(), case_env);
    test::check_same_rustc_lines(run, c.what);
    std::string kiln_dir = c.products.substr(c.products.rfind('/') + 1);
    auto want = test::run({cargo_binary(run, c.products).string()});
    auto got = test::run({(proj / "target" / "kiln" / kiln_dir / "app").string()});
    INFO(c.what);
    CHECK(want.status == 0);
    CHECK(got.out == want.out);
  }
}

TEST_CASE("cargo configuration: what kiln does not honour is refused by name", "[cargo][config]")
{
  TempDir dir;
  fs::path proj = make_project(dir);
  std::string store = (dir / "store").string();
  auto build = [&](std::vector<std::string> extra, std::map<std::string, std::string> env = {}) {
    return kiln_build(dir, proj, store, extra, env);
  };
  auto r = build({"--config", "unstable.build-std=[\"std\"]"});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("unstable") && Catch::Contains("--config"));
  r = build({"--config", "target.x86_64-unknown-linux-gnu.foo.rustc-link-lib=[\"foo\"]"});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("target.x86_64-unknown-linux-gnu.foo") &&
                      Catch::Contains("build-script overrides"));
  r = build({}, {{"RUSTC_WRAPPER", "/usr/bin/env"}});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("RUSTC_WRAPPER"));
  r = build({}, {{"RUSTC_BOOTSTRAP", "1"}});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("RUSTC_BOOTSTRAP"));
  r = build({"-Z", "build-std"});
  CHECK(r.status == 2);
  CHECK_THAT(r.err, Catch::Contains("-Z build-std"));
  // Merging an array with a string is cargo's error too.
  r = build({"--config", "build.rustflags=\"--cfg x\""});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("build.rustflags") || Catch::Contains("`rustflags`"));
  // Harmless ones: a warning naming them, and the build goes on.
  r = build({}, {{"RUSTC_WRAPPER", "sccache"}, {"CARGO_INCREMENTAL", "1"}});
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK_THAT(r.err, Catch::Contains("warning: ignoring build.rustc-wrapper = 'sccache'"));
  // Honoured now (cargo's plan says which units are incremental): no warning.
  CHECK_THAT(r.err, !Catch::Contains("CARGO_INCREMENTAL"));
}

namespace {

// A copy of the running toolchain's sysroot that rustc accepts as its own:
// rustc and its libraries hard-linked (rustc finds its sysroot from where
// librustc_driver really is), the standard library symlinked, except one
// small file of it, copied — and changed by one byte when `changed`.
fs::path
fake_toolchain(const fs::path& where, bool changed)
{
  fs::path real = test::output_of(test::run({"rustc", "--print", "sysroot"}), "rustc --print sysroot");
  fs::create_directories(where / "bin");
  fs::create_hard_link(real / "bin" / "rustc", where / "bin" / "rustc");
  fs::create_directories(where / "lib");
  for (const auto& entry : fs::directory_iterator(real / "lib")) {
    if (entry.is_regular_file() && !entry.is_symlink()) {
      fs::create_hard_link(entry.path(), where / "lib" / entry.path().filename());
    } else if (entry.is_symlink()) {
      fs::copy_symlink(entry.path(), where / "lib" / entry.path().filename());
    }
  }
  std::string host;
  for (const auto& entry : fs::directory_iterator(real / "lib" / "rustlib")) {
    if (entry.is_directory() && fs::exists(entry.path() / "lib")) {
      host = entry.path().filename();
    }
  }
  fs::path from = real / "lib" / "rustlib" / host, to = where / "lib" / "rustlib" / host;
  std::optional<fs::path> smallest;
  for (const auto& entry : fs::recursive_directory_iterator(from)) {
    fs::path rel = entry.path().lexically_relative(from);
    if (entry.is_directory() && !entry.is_symlink()) {
      fs::create_directories(to / rel);
    } else {
      fs::create_directories((to / rel).parent_path());
      fs::create_symlink(entry.path(), to / rel);
      if (rel.string().ends_with(".rmeta") && rel.string().find("profiler_builtins") != std::string::npos) {
        smallest = rel;
      }
    }
  }
  REQUIRE(smallest);
  fs::remove(to / *smallest);
  std::string bytes = read_file(from / *smallest);
  if (changed) {
    bytes.back() ^= 1;
  }
  test::write_file(to / *smallest, bytes);
  return where / "bin" / "rustc";
}

std::string
explained_path(const fs::path& proj, const fs::path& store, const std::map<std::string, std::string>& env)
{
  test::RunOptions options;
  options.cwd = proj;
  options.env = env;
  auto r = test::kiln({"--store", store.string(), "build", "--explain", "lib1"}, options);
  INFO(r.err);
  REQUIRE(r.status == 0);
  auto at = r.out.find("/kiln/store/");
  REQUIRE(at != std::string::npos);
  return r.out.substr(at, r.out.find(' ', at) - at);
}

} // namespace

TEST_CASE("the toolchain by content: one changed byte in its standard library changes the outputs",
          "[cargo][config]")
{
  TempDir dir;
  fs::path sysroot = test::output_of(test::run({"rustc", "--print", "sysroot"}), "sysroot");
  std::error_code ec;
  fs::create_hard_link(sysroot / "bin" / "rustc", dir / "probe", ec);
  if (ec) {
    test::skip("the toolchain and $TMPDIR are on different file systems (no hard links): " +
               ec.message());
    return;
  }
  fs::path proj = make_project(dir);
  std::map<std::string, std::string> env = {{"CARGO_HOME", (dir / "home").string()}};
  std::string real = explained_path(proj, dir / "store", env);
  auto with = [&](const fs::path& rustc) {
    auto e = env;
    e["RUSTC"] = rustc.string();
    return explained_path(proj, dir / "store", e);
  };
  std::string a = with(fake_toolchain(dir / "tc-a", false));
  std::string a_again = with(fake_toolchain(dir / "tc-a2", false));
  std::string b = with(fake_toolchain(dir / "tc-b", true));
  CHECK(a == a_again);   // the same bytes wherever they are: the same outputs
  CHECK(a != b);         // one byte apart: never the same output
  CHECK(real != a);
}

TEST_CASE("offline with dependencies not downloaded: say to run cargo fetch", "[cargo][config]")
{
  TempDir dir;
  test::write_file(dir / "p" / "Cargo.toml", "[package]\nname = \"p\"\nversion = \"0.1.0\"\n"
                                             "edition = \"2021\"\n[dependencies]\nitoa = \"1\"\n");
  test::write_file(dir / "p" / "src" / "main.rs", "fn main() {}\n");
  test::RunOptions options;
  options.cwd = dir / "p";
  options.env["CARGO_HOME"] = (dir / "empty-home").string();
  auto r = test::kiln({"--store", (dir / "store").string(), "build", "--offline"}, options);
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("cargo fetch") && Catch::Contains("offline"));
  // One line, not cargo's page of advice.
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') <= 2);
}

TEST_CASE("what a build script reads of the host is part of its identity: a changed pkg-config "
          "answer is a different output, never shared by mistake",
          "[cargo][config]")
{
  TempDir dir;
  fs::path pc = dir / "pkgconfig";
  auto write_pc = [&](const std::string& version) {
    test::write_file(pc / "foo.pc", "Name: foo\nDescription: test\nVersion: " + version +
                                      "\nCflags: -DFOO\nLibs:\n");
  };
  write_pc("1.0");
  fs::path proj = dir / "p";
  test::write_file(proj / "Cargo.toml",
                   "[package]\nname = \"p\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
  test::write_file(proj / "build.rs", R"(fn main() {
    let out = std::process::Command::new("pkg-config").args(["--modversion", "foo"]).output().unwrap();
    println!("cargo::rustc-env=FOO_VERSION={}", String::from_utf8(out.stdout).unwrap().trim());
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_PATH");
}
)");
  test::write_file(proj / "src" / "main.rs", "fn main() { println!(\"foo {}\", env!(\"FOO_VERSION\")); }\n");
  test::RunOptions options;
  options.cwd = proj;
  options.env["PKG_CONFIG_PATH"] = pc.string();
  std::string cache = "file://" + (dir / "cache").string();
  auto kiln_build = [&](const fs::path& store, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--store", store.string(), "--secret-key-file",
                                     (dir / "sk").string(), "build", "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = test::kiln(args, options);
    INFO(r.err);
    REQUIRE(r.status == 0);
    return r;
  };
  auto bin_path = [&](const test::RunResult& r) {
    for (const auto& line : json_lines_of(r.out)) {
      if (line["kind"] == "bin") {
        return line["path"].get<std::string>();
      }
    }
    return std::string();
  };
  std::string pub = test::output_of(
    test::kiln({"key", "generate", "ci-1", "--secret-file", (dir / "sk").string()}), "key");
  auto first = kiln_build(dir / "a", {"--push-to", cache});
  CHECK_THAT(first.err, Catch::Contains("the build script of p 0.1.0 reads more of this machine"));
  CHECK(test::run({(proj / "target" / "kiln" / "debug" / "p").string()}).out == "foo 1.0\n");
  auto cargo = test::run({"cargo", "run", "-q"}, options);
  CHECK(cargo.out == "foo 1.0\n");
  std::string v1 = bin_path(first);

  // Nothing changed: nothing run again.
  auto again = kiln_build(dir / "a");
  CHECK(again.err.find("Running") == std::string::npos);
  CHECK(bin_path(again) == v1);

  // Another store with the same host, from the cache: what it learns leads
  // it to the outputs the first one pushed; what was made before the first
  // knew what it read never reached the cache.
  auto fresh = kiln_build(dir / "b", {"--substituters", cache, "--trusted-public-keys", pub});
  CHECK(bin_path(fresh) == v1);
  size_t substituted = 0;
  for (const auto& line : json_lines_of(fresh.out)) {
    substituted += line["status"] == "substituted";
    // The run made before kiln knew what it read: built here, not taken.
    if (line["kind"] == "run-build-script") {
      CHECK(line["status"] != "substituted");
    }
  }
  CHECK(substituted > 0);

  // The pkg-config answer changes: another output, as cargo would build.
  write_pc("2.0");
  auto changed = kiln_build(dir / "a");
  CHECK(bin_path(changed) != v1);
  CHECK(test::run({(proj / "target" / "kiln" / "debug" / "p").string()}).out == "foo 2.0\n");
}

TEST_CASE("a variable a build script looks up is an input, declared or not: the caller's value "
          "reaches it, as under cargo",
          "[cargo][config]")
{
  TempDir dir;
  fs::path proj = dir / "p";
  test::write_file(proj / "Cargo.toml",
                   "[package]\nname = \"p\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
  // No rerun-if-env-changed: cargo gives the script the caller's whole
  // environment all the same.
  test::write_file(proj / "build.rs", R"(fn main() {
    let mode = std::env::var("P_BUILD_MODE").unwrap_or_else(|_| "unset".to_string());
    let _ = std::env::var_os("TERM");
    // (Rust's first failing metadata call probes statx with a null path,
    // which the trace passes on.)
    assert!(!std::path::Path::new("no-such-file").exists());
    println!("cargo::rustc-env=P_MODE={mode}");
}
)");
  test::write_file(proj / "src" / "main.rs", "fn main() { println!(\"{}\", env!(\"P_MODE\")); }\n");
  std::string main_store = (dir / "store").string();
  auto build = [&](const std::map<std::string, std::string>& env,
                   const std::string& store) {
    test::RunOptions options;
    options.cwd = proj;
    options.env = env;
    auto r = test::kiln({"--store", store, "build"}, options);
    INFO(r.err);
    REQUIRE(r.status == 0);
    return r;
  };
  auto printed = [&] { return test::run({(proj / "target" / "kiln" / "debug" / "p").string()}).out; };
  const std::string learned = "the build script of p 0.1.0 reads more of this machine";

  // Unset for the caller as in kiln's run: the same output, nothing to run
  // again (the store remembers the look-up).
  auto unset = build({{"TERM", "xterm-256color"}}, main_store);
  CHECK(unset.err.find(learned) == std::string::npos);
  CHECK(printed() == "unset\n");

  // Set by the caller: the variable is known, so its value is in the run's
  // identity from the start: another output, made with it.
  auto set = build({{"P_BUILD_MODE", "fast"}, {"TERM", "xterm-256color"}}, main_store);
  CHECK(set.err.find(learned) == std::string::npos);
  CHECK(printed() == "fast\n");
  // A store that has not seen the script yet: its first run did not have the
  // value, so it runs again with it.
  auto fresh = build({{"P_BUILD_MODE", "fast"}}, (dir / "fresh-store").string());
  CHECK_THAT(fresh.err, Catch::Contains(learned));
  CHECK(printed() == "fast\n");
  test::RunOptions with_cargo;
  with_cargo.cwd = proj;
  with_cargo.env = {{"P_BUILD_MODE", "fast"}};
  CHECK(test::run({"cargo", "run", "-q"}, with_cargo).out == "fast\n");

  // Another value: another output; and the terminal is not an input (the
  // script looked TERM up too): changing it runs nothing again.
  auto other = build({{"P_BUILD_MODE", "small"}, {"TERM", "dumb"}}, main_store);
  CHECK(other.err.find(learned) == std::string::npos);
  CHECK(printed() == "small\n");
  auto back = build({{"P_BUILD_MODE", "fast"}, {"TERM", "vt100"}}, main_store);
  CHECK(back.err.find("Running") == std::string::npos);
  CHECK(back.err.find("Compiling") == std::string::npos);
  CHECK(printed() == "fast\n");
}

TEST_CASE("rust-toolchain.toml picks the toolchain for kiln as for cargo, and --timings writes a report",
          "[cargo][config]")
{
  auto toolchains = test::run({"rustup", "toolchain", "list"});
  if (toolchains.status != 0 || toolchains.out.find("nightly") == std::string::npos) {
    test::skip("no nightly toolchain installed with rustup: rust-toolchain.toml not tested");
    return;
  }
  TempDir dir;
  fs::path proj = dir / "p";
  test::write_file(proj / "Cargo.toml", "[package]\nname = \"p\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
  test::write_file(proj / "src" / "main.rs", "fn main() {}\n");
  test::write_file(proj / "rust-toolchain.toml", "[toolchain]\nchannel = \"nightly\"\n");
  test::RunOptions options;
  options.cwd = proj;
  auto r = test::kiln({"--store", (dir / "store").string(), "build", "-v", "--timings"}, options);
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.err, Catch::Contains("toolchains/nightly"));
  CHECK(r.err.find("toolchains/stable") == std::string::npos);
  CHECK(fs::exists(proj / "target" / "kiln-timings" / "kiln-timing.html"));
  CHECK_THAT(r.err, Catch::Contains("Timing report saved to"));
}

TEST_CASE("cargo configuration: with target-cpu=native, the processor that compiles is an input "
          "of each unit the flag applies to", "[cargo][config]")
{
  TempDir dir;
  fs::path proj = make_project(dir);
  std::string store = (dir / "store").string();
  // lib1's derivation, as a build with these variables makes it.
  auto lib1_drv = [&](std::map<std::string, std::string> env) {
    auto r = kiln_build(dir, proj, store, {"-p", "lib1", "--json"}, env);
    INFO(r.err);
    REQUIRE(r.status == 0);
    for (const auto& unit : json_lines_of(r.out)) {
      if (unit.value("name", "") == "lib1" && unit.value("kind", "") == "lib") {
        std::string drv = unit.at("drv");
        return read_file(dir / "store" / "store" / fs::path(drv).filename());
      }
    }
    FAIL("no lib1 unit in: " << r.out);
    return std::string();
  };
  std::string plain = lib1_drv({{"RUSTFLAGS", "--cfg plain"}});
  CHECK(plain.find("host_cpu") == std::string::npos);
  std::string cpu = cargo::this_cpu_identity();
  for (const char* flags : {"-C target-cpu=native", "-Ctarget-cpu=native --cfg x",
                            "--codegen=target-cpu=native"}) {
    INFO(flags);
    std::string native = lib1_drv({{"RUSTFLAGS", flags}});
    CHECK_THAT(native, Catch::Contains("host_cpu") && Catch::Contains(cpu));
  }
  // Another processor name in the flags is only a flag.
  CHECK(lib1_drv({{"RUSTFLAGS", "-C target-cpu=x86-64-v2"}}).find("host_cpu") ==
        std::string::npos);
}

TEST_CASE("cargo configuration: a crate that reads the caller's environment at compile time is "
          "refused by name, unless [env] gives the value", "[cargo][config]")
{
  TempDir dir;
  fs::path proj = dir / "envtag";
  test::write_file(proj / "Cargo.toml",
                   "[package]\nname = \"envtag\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"
                   "[dependencies]\nenvlib = { path = \"envlib\" }\n");
  test::write_file(proj / "src" / "main.rs",
                   "fn main() { println!(\"{} {:?}\", env!(\"CARGO_PKG_NAME\"), "
                   "option_env!(\"KILN_TEST_BUILD_TAG\")); envlib::f(); }\n");
  // A library that reads one too: what it read is compiled into the binary.
  test::write_file(proj / "envlib" / "Cargo.toml",
                   "[package]\nname = \"envlib\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
  test::write_file(proj / "envlib" / "src" / "lib.rs",
                   "pub fn f() { if let Some(v) = option_env!(\"KILN_TEST_LIB_TAG\") { "
                   "println!(\"lib {v}\"); } }\n");
  std::string store = (dir / "store").string();
  auto build = [&](std::map<std::string, std::string> env) {
    return kiln_build(dir, proj, store, {"--json"}, env);
  };
  auto output_of_build = [&](const test::RunResult& r) { return bin_output(dir / "store", r); };

  // Unset for the caller too: what cargo builds. The output keeps what was
  // read beyond what cargo sets, its library's reads too, and no dep-info
  // file.
  auto r = build({});
  INFO(r.err);
  REQUIRE(r.status == 0);
  fs::path out = output_of_build(r);
  CHECK(test::output_of(test::run({(out / "bin" / "envtag").string()}), "envtag") ==
        "envtag None");
  auto reads = nlohmann::json::parse(read_file(out / "kiln-env-reads.json"));
  CHECK(reads ==
        nlohmann::json::parse(R"({"KILN_TEST_BUILD_TAG": null, "KILN_TEST_LIB_TAG": null})"));
  for (const auto& entry : fs::recursive_directory_iterator(out)) {
    CHECK(entry.path().extension() != ".d");
  }

  // Set for the caller: cargo's binary would say "v1"; the output in the
  // store is refused, and so is a new build.
  r = build({{"KILN_TEST_BUILD_TAG", "v1"}});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("envtag 0.1.0") && Catch::Contains("KILN_TEST_BUILD_TAG=v1") &&
                      Catch::Contains("KILN_TEST_BUILD_TAG unset") && Catch::Contains("[env]"));
  r = build({{"KILN_TEST_LIB_TAG", "v2"}});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("envlib 0.1.0") && Catch::Contains("KILN_TEST_LIB_TAG=v2"));

  // Given by [env]: passed, part of the unit's identity, no refusal; the
  // caller's value wins over it, as with cargo.
  test::write_file(proj / ".cargo" / "config.toml", "[env]\nKILN_TEST_BUILD_TAG = \"from-config\"\n");
  r = build({});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(test::output_of(test::run({(output_of_build(r) / "bin" / "envtag").string()}), "envtag") ==
        "envtag Some(\"from-config\")");
  r = build({{"KILN_TEST_BUILD_TAG", "v1"}});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(test::output_of(test::run({(output_of_build(r) / "bin" / "envtag").string()}), "envtag") ==
        "envtag Some(\"v1\")");
}

TEST_CASE("cargo configuration: a proc-macro that looks up the caller's environment while it "
          "expands is refused by name, unless [env] gives the value", "[cargo][config]")
{
  TempDir dir;
  fs::path proj = dir / "pmenv";
  test::write_file(proj / "Cargo.toml",
                   "[package]\nname = \"pmenv\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"
                   "[dependencies]\nmodemacro = { path = \"modemacro\" }\n");
  test::write_file(proj / "src" / "main.rs",
                   "fn main() { println!(\"{}\", modemacro::build_mode!()); }\n");
  // std::env::var, not proc_macro's tracked_env: rustc's dep-info does not
  // list it, and cargo gives rustc the caller's whole environment.
  test::write_file(proj / "modemacro" / "Cargo.toml",
                   "[package]\nname = \"modemacro\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"
                   "[lib]\nproc-macro = true\n");
  test::write_file(proj / "modemacro" / "src" / "lib.rs", R"(use proc_macro::TokenStream;
#[proc_macro]
pub fn build_mode(_: TokenStream) -> TokenStream {
    let _ = std::env::var_os("TERM");
    let mode = std::env::var("PM_BUILD_MODE").unwrap_or_else(|_| "unset".to_string());
    format!("{mode:?}").parse().unwrap()
}
)");
  std::string store = (dir / "store").string();
  auto build = [&](std::map<std::string, std::string> env) {
    return kiln_build(dir, proj, store, {"--json"}, env);
  };
  auto printed = [&](const test::RunResult& r) {
    return test::run({(bin_output(dir / "store", r) / "bin" / "pmenv").string()}).out;
  };

  // Unset for the caller too: what cargo builds; a terminal is not an input.
  auto r = build({{"TERM", "xterm-256color"}});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(printed(r) == "unset\n");

  // Set for the caller: cargo's binary says "fast"; kiln's output is refused.
  test::RunOptions with_cargo;
  with_cargo.cwd = proj;
  with_cargo.env = {{"PM_BUILD_MODE", "fast"}, {"CARGO_HOME", (dir / "home").string()}};
  CHECK(test::run({"cargo", "run", "-q"}, with_cargo).out == "fast\n");
  r = build({{"PM_BUILD_MODE", "fast"}});
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("pmenv 0.1.0") && Catch::Contains("PM_BUILD_MODE=fast") &&
                      Catch::Contains("[env]"));

  // Given by [env]: the macro sees it.
  test::write_file(proj / ".cargo" / "config.toml", "[env]\nPM_BUILD_MODE = \"small\"\n");
  r = build({});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(printed(r) == "small\n");
}
