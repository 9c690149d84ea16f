// kiln install: cargo install through kiln. A small directory registry
// (a binary crate with a published Cargo.lock that pins an older version of
// its dependency) for the semantics: newest compatible versions, --locked,
// features, --bin, --root, --force, --list, uninstall, GC roots, a second
// store that compiles nothing. And Debian's packaged binary crates (hexyl
// in the suite; cbindgen and bat with tests/cargo-differential) installed
// by kiln and by `cargo install`: the binaries behave the same.
#include "support/test_support.hpp"

#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const fs::path k_debian_registry = "/usr/share/cargo/registry";
const char* const k_checksum = "{\"files\":{},\"package\":"
                               "\"0000000000000000000000000000000000000000000000000000000000000000\"}";

std::string
directory_source(const fs::path& registry)
{
  return "[source.crates-io]\nreplace-with = \"local\"\n[source.local]\ndirectory = \"" +
         registry.string() + "\"\n[net]\noffline = true\n";
}

// A directory registry: depa 1.0.0 and 1.0.1, and tinybin 0.1.0 (two
// binaries, a feature) whose published Cargo.lock pins depa 1.0.0.
void
make_registry(const fs::path& reg)
{
  for (const char* v : {"1.0.0", "1.0.1"}) {
    fs::path d = reg / (std::string("depa-") + v);
    test::write_file(d / "Cargo.toml", std::string("[package]\nname = \"depa\"\nversion = \"") + v +
                                         "\"\nedition = \"2021\"\n");
    test::write_file(d / "src" / "lib.rs", std::string("pub const VERSION: &str = \"") + v + "\";\n");
    test::write_file(d / ".cargo-checksum.json", k_checksum);
  }
  fs::path t = reg / "tinybin-0.1.0";
  test::write_file(t / "Cargo.toml", R"([package]
name = "tinybin"
version = "0.1.0"
edition = "2021"

[dependencies]
depa = "1.0"

[features]
loud = []

[profile.release]
debug-assertions = true
)");
  test::write_file(t / "src" / "main.rs", R"(fn main() {
    let text = format!("tinybin {} depa {} assertions {}", env!("CARGO_PKG_VERSION"), depa::VERSION,
                       cfg!(debug_assertions));
    if cfg!(feature = "loud") { println!("{}", text.to_uppercase()) } else { println!("{}", text) }
}
)");
  test::write_file(t / "src" / "bin" / "tinyother.rs", "fn main() { println!(\"other\"); }\n");
  test::write_file(t / "Cargo.lock", R"(version = 3

[[package]]
name = "depa"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "0000000000000000000000000000000000000000000000000000000000000000"

[[package]]
name = "tinybin"
version = "0.1.0"
dependencies = [
 "depa",
]
)");
  test::write_file(t / ".cargo-checksum.json", k_checksum);
}

struct Setup
{
  TempDir dir;
  fs::path home = dir / "home";
  test::RunOptions env;

  explicit Setup(const fs::path& registry = {})
  {
    fs::path reg = registry;
    if (reg.empty()) {
      reg = dir / "registry";
      make_registry(reg);
    }
    test::write_file(home / "config.toml", directory_source(reg));
    env.env["CARGO_HOME"] = home.string();
    env.cwd = dir.path();
  }
  std::string store(const std::string& name = "store") const { return (dir / name).string(); }
  test::RunResult
  kiln(std::vector<std::string> args, const std::string& store_name = "store") const
  {
    args.insert(args.begin(), {"--store", store(store_name)});
    return test::kiln(args, env);
  }
  std::string
  run(const fs::path& program, const std::vector<std::string>& args = {}) const
  {
    std::vector<std::string> argv = {program.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::output_of(test::run(argv, env), program.filename().string());
  }
};

// How many units of a --json report were compiled here.
size_t
compiled(const std::string& json_lines)
{
  size_t n = 0;
  std::istringstream lines(json_lines);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && json::parse(line)["status"] == "built") {
      ++n;
    }
  }
  return n;
}

} // namespace

TEST_CASE("kiln install: newest versions, --locked, --list, reinstall, uninstall, GC roots",
          "[install][cargo]")
{
  Setup s;
  auto r = s.kiln({"install", "tinybin", "--json"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(compiled(r.out) == 3);   // depa, and the two binaries
  CHECK_THAT(r.err, Catch::Contains("Installed package `tinybin v0.1.0` (executables `tinybin`, "
                                    "`tinyother`)"));
  fs::path bin = s.home / "bin";
  // Links into the store: the release profile of the crate's own manifest.
  CHECK(fs::is_symlink(bin / "tinybin"));
  CHECK_THAT(fs::read_symlink(bin / "tinybin").string(), Catch::StartsWith(s.store()));
  CHECK(s.run(bin / "tinybin") == "tinybin 0.1.0 depa 1.0.1 assertions true");
  CHECK(s.run(bin / "tinyother") == "other");
  CHECK(s.kiln({"install", "--list"}).out == "tinybin v0.1.0:\n    tinybin\n    tinyother\n");

  SECTION("installed already: nothing is done")
  {
    auto again = s.kiln({"install", "tinybin"});
    CHECK(again.status == 0);
    CHECK_THAT(again.err, Catch::Contains("Ignored package `tinybin v0.1.0` is already installed"));
  }
  SECTION("--locked: the versions of the crate's Cargo.lock; --force reinstalls")
  {
    auto locked = s.kiln({"install", "tinybin@0.1.0", "--locked"});
    INFO(locked.err);
    CHECK(locked.status == 0);
    CHECK_THAT(locked.err, Catch::Contains("Replacing " + (bin / "tinybin").string()));
    CHECK(s.run(bin / "tinybin") == "tinybin 0.1.0 depa 1.0.0 assertions true");
    auto forced = s.kiln({"install", "tinybin", "--force"});
    CHECK(forced.status == 0);
    CHECK(s.run(bin / "tinybin") == "tinybin 0.1.0 depa 1.0.1 assertions true");
  }
  SECTION("each install is a GC root until it is uninstalled")
  {
    std::string out = fs::read_symlink(bin / "tinybin").parent_path().parent_path().string();
    REQUIRE(s.kiln({"gc"}).status == 0);
    CHECK(s.run(bin / "tinybin") == "tinybin 0.1.0 depa 1.0.1 assertions true");
    auto un = s.kiln({"uninstall", "tinybin"});
    CHECK(un.status == 0);
    CHECK_THAT(un.err, Catch::Contains("Removing " + (bin / "tinybin").string()));
    CHECK_FALSE(fs::exists(fs::symlink_status(bin / "tinybin")));
    CHECK(s.kiln({"install", "--list"}).out.empty());
    REQUIRE(s.kiln({"gc"}).status == 0);
    CHECK_FALSE(fs::exists(out));
    CHECK(s.kiln({"uninstall", "tinybin"}).status == 1);
  }
}

TEST_CASE("kiln install: --features, --bin, --root, --force, --path, and cargo install's binary",
          "[install][cargo]")
{
  Setup s;
  fs::path root = s.dir / "root";
  auto r = s.kiln({"install", "tinybin", "--features", "loud", "--bin", "tinybin", "--root",
                   root.string()});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(s.run(root / "bin" / "tinybin") == "TINYBIN 0.1.0 DEPA 1.0.1 ASSERTIONS TRUE");
  CHECK_FALSE(fs::exists(root / "bin" / "tinyother"));
  CHECK_FALSE(fs::exists(s.home / "bin"));

  // A binary kiln did not put there is in the way.
  test::write_file(root / "bin" / "tinyother", "#!/bin/sh\necho mine\n", true);
  auto blocked = s.kiln({"install", "tinybin", "--root", root.string()});
  CHECK(blocked.status == 1);
  CHECK_THAT(blocked.err, Catch::Contains("binary `tinyother` already exists in destination") &&
                            Catch::Contains("--force"));
  CHECK(s.run(root / "bin" / "tinyother") == "mine");
  auto forced = s.kiln({"install", "tinybin", "--root", root.string(), "--force"});
  INFO(forced.err);
  CHECK(forced.status == 0);
  CHECK(s.run(root / "bin" / "tinyother") == "other");
  CHECK(s.run(root / "bin" / "tinybin") == "tinybin 0.1.0 depa 1.0.1 assertions true");

  // cargo install's binary prints the same.
  auto cargo = test::run({"cargo", "install", "tinybin", "--root", (s.dir / "cargo").string()}, s.env);
  INFO(cargo.err);
  REQUIRE(cargo.status == 0);
  CHECK(s.run(s.dir / "cargo" / "bin" / "tinybin") == s.run(root / "bin" / "tinybin"));

  // --path: the package in a folder, its path in the record.
  fs::path local = s.dir / "local";
  test::write_file(local / "Cargo.toml",
                   "[package]\nname = \"localtool\"\nversion = \"0.2.0\"\nedition = \"2021\"\n");
  test::write_file(local / "src" / "main.rs", "fn main() { println!(\"local {}\", cfg!(debug_assertions)); }\n");
  auto path = s.kiln({"install", "--path", local.string(), "--root", root.string()});
  INFO(path.err);
  CHECK(path.status == 0);
  CHECK(s.run(root / "bin" / "localtool") == "local false");
  CHECK_THAT(s.kiln({"install", "--list", "--root", root.string()}).out,
             Catch::Contains("localtool v0.2.0 (" + local.string() + "):\n    localtool\n"));
}

TEST_CASE("kiln install: a second store with the same cache compiles nothing", "[install][cargo][caches]")
{
  Setup s;
  auto key = test::kiln({"key", "generate", "ci-1", "--secret-file", (s.dir / "ci.sk").string()});
  REQUIRE(key.status == 0);
  std::string pub = test::output_of(key, "key generate");
  std::string cache = "file://" + (s.dir / "cache").string();
  auto first = s.kiln({"--secret-key-file", (s.dir / "ci.sk").string(), "install", "tinybin",
                       "--push-to", cache, "--json"});
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK(compiled(first.out) == 3);
  fs::path root = s.dir / "root2";
  auto second = s.kiln({"--substituters", cache, "--trusted-public-keys", pub, "install", "tinybin",
                        "--root", root.string(), "--json"},
                       "store2");
  INFO(second.err);
  REQUIRE(second.status == 0);
  CHECK(compiled(second.out) == 0);
  CHECK(s.run(root / "bin" / "tinybin") == "tinybin 0.1.0 depa 1.0.1 assertions true");
}

namespace {

// Install `crate` from Debian's registry with cargo install and with kiln
// (pushing to a cache), then with kiln into a fresh store from that cache
// (nothing compiled); each command prints the same with every binary.
void
install_differential(const std::string& crate, const std::string& name_version,
                     const std::vector<std::vector<std::string>>& commands)
{
  if (!fs::exists(k_debian_registry / name_version)) {
    test::skip(name_version + " is not installed (apt: librust-" + crate + "-dev)");
    return;
  }
  Setup s(k_debian_registry);
  auto key = test::kiln({"key", "generate", "ci-1", "--secret-file", (s.dir / "ci.sk").string()});
  REQUIRE(key.status == 0);
  std::string pub = test::output_of(key, "key generate");
  std::string cache = "file://" + (s.dir / "cache").string();
  auto first = s.kiln({"--secret-key-file", (s.dir / "ci.sk").string(), "install", crate,
                       "--push-to", cache, "--json"});
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK(compiled(first.out) > 0);
  fs::path root = s.dir / "root2";
  auto second = s.kiln({"--substituters", cache, "--trusted-public-keys", pub, "install", crate,
                        "--root", root.string(), "--json"},
                       "store2");
  INFO(second.err);
  REQUIRE(second.status == 0);
  CHECK(compiled(second.out) == 0);

  auto cargo = test::run({"cargo", "install", crate, "--root", (s.dir / "cargo").string()}, s.env);
  INFO(cargo.err);
  REQUIRE(cargo.status == 0);
  test::RunOptions in_crate = s.env;
  in_crate.cwd = k_debian_registry / name_version;
  for (const auto& args : commands) {
    std::vector<std::string> a = {(s.dir / "cargo" / "bin" / crate).string()};
    std::vector<std::string> b = {(s.home / "bin" / crate).string()};
    std::vector<std::string> c = {(root / "bin" / crate).string()};
    for (auto* v : {&a, &b, &c}) {
      v->insert(v->end(), args.begin(), args.end());
    }
    auto want = test::run(a, in_crate), got = test::run(b, in_crate), fetched = test::run(c, in_crate);
    INFO(crate << " with " << args.size() << " arguments");
    CHECK(got.status == want.status);
    CHECK(got.out == want.out);
    CHECK(got.err == want.err);
    CHECK(fetched.out == want.out);
  }
}

} // namespace

TEST_CASE("kiln install hexyl (Debian's package) behaves as cargo install's", "[install][cargo][slow]")
{
  install_differential("hexyl", "hexyl-0.8.0",
                       {{"--version"}, {"-n", "64", "Cargo.toml"}, {"--no-squeezing", "LICENSE-MIT"}});
}

TEST_CASE("kiln install cbindgen behaves as cargo install's", "[.differential][install]")
{
  install_differential("cbindgen", "cbindgen-0.24.3", {{"--version"}, {"--help"}});
}

TEST_CASE("kiln install bat behaves as cargo install's", "[.differential][install]")
{
  install_differential("bat", "bat-0.22.1",
                       {{"--version"},
                        {"--list-languages"},
                        {"--plain", "--color=always", "README.md"},
                        {"--style=numbers", "--color=always", "--language=rust", "Cargo.toml"}});
}
