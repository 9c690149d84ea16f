// Cargo's configuration, as kiln reads it, against the real cargo: rustflags
// from config files at several levels, $CARGO_HOME, CARGO_BUILD_RUSTFLAGS,
// RUSTFLAGS, --config and target.'cfg(..)' tables (which also switch on
// cfg-gated dependencies); [env]; profile keys from the manifest, config
// files and CARGO_PROFILE_* variables; custom profiles; --release;
// --target. For each, kiln runs the rustc command lines cargo -v runs and
// its binary prints what cargo's prints.
#include "support/cargo_oracle.hpp"
#include "support/test_support.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

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

fs::path
cargo_binary(const test::OracleRun& run, const std::string& dir)
{
  return run.cargo_target_dir / dir / "app";
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
  test::RunOptions in_proj;
  in_proj.cwd = proj;
  in_proj.env["CARGO_HOME"] = (dir / "home").string();
  std::string store = (dir / "store").string();
  auto build = [&](std::vector<std::string> extra, std::map<std::string, std::string> env = {}) {
    test::RunOptions options = in_proj;
    options.env.insert(env.begin(), env.end());
    std::vector<std::string> args = {"--store", store, "build"};
    args.insert(args.end(), extra.begin(), extra.end());
    return test::kiln(args, options);
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
  CHECK_THAT(r.err, Catch::Contains("warning: ignoring build.rustc-wrapper = 'sccache'") &&
                      Catch::Contains("CARGO_INCREMENTAL"));
}
