// Differential tests against the real cargo on real graphs: Debian's
// packaged binary crates (hexyl in the default suite; bat, cbindgen,
// bindgen, pleaser, sniffglue and cargo, and a workspace of -sys crates,
// with `tests/cargo-differential`)
// built by cargo and by kiln — the same rustc command lines, and binaries
// that behave the same.
#include "support/cargo_oracle.hpp"
#include "support/test_support.hpp"

#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path k_registry = "/usr/share/cargo/registry";

const char* const k_debian_source = "[source.crates-io]\nreplace-with = \"debian\"\n"
                                    "[source.debian]\ndirectory = \"/usr/share/cargo/registry\"\n"
                                    "[net]\noffline = true\n";

// The manifest without its dev-dependency tables (Debian does not package
// every crate's test dependencies, and a build needs none).
std::string
without_dev_dependencies(const std::string& manifest)
{
  std::string out;
  bool skipping = false;
  std::istringstream lines(manifest);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("[")) {
      skipping = line.find("dev-dependencies") != std::string::npos;
    }
    if (!skipping) {
      out += line + "\n";
    }
  }
  return out;
}

// A packaged crate as a project of its own, building against Debian's
// registry, its Cargo.lock made by cargo.
std::optional<fs::path>
debian_crate(const TempDir& dir, const std::string& name_version)
{
  if (!fs::exists(k_registry / name_version)) {
    test::skip(name_version + " is not installed (apt: librust-" +
               name_version.substr(0, name_version.rfind('-')) + "-dev)");
    return std::nullopt;
  }
  fs::path to = dir / name_version;
  fs::copy(k_registry / name_version, to, fs::copy_options::recursive);
  test::run({"chmod", "-R", "u+w", to.string()});
  fs::remove(to / ".cargo-checksum.json");
  test::write_file(to / "Cargo.toml", without_dev_dependencies(read_file(to / "Cargo.toml")));
  test::write_file(to / ".cargo" / "config.toml", k_debian_source);
  test::RunOptions options;
  options.cwd = to;
  auto lock = test::run({"cargo", "generate-lockfile"}, options);
  INFO(lock.err);
  REQUIRE(lock.status == 0);
  return to;
}

// Each command run with cargo's binary and with kiln's prints the same.
void
check_same_behaviour(const fs::path& cargo_bin, const fs::path& kiln_bin,
                     const std::vector<std::vector<std::string>>& commands, const fs::path& cwd)
{
  test::RunOptions options;
  options.cwd = cwd;
  for (const auto& args : commands) {
    std::vector<std::string> a = {cargo_bin.string()}, b = {kiln_bin.string()};
    a.insert(a.end(), args.begin(), args.end());
    b.insert(b.end(), args.begin(), args.end());
    auto want = test::run(a, options), got = test::run(b, options);
    INFO(cargo_bin.filename().string() << " " << args.size() << " args");
    CHECK(got.status == want.status);
    CHECK(got.out == want.out);
    CHECK(got.err == want.err);
  }
}

void
differential(const std::string& crate, const std::string& bin,
             const std::vector<std::vector<std::string>>& commands,
             const std::vector<std::string>& flags = {})
{
  TempDir dir;
  auto project = debian_crate(dir, crate);
  if (!project) {
    return;
  }
  auto run = test::build_with_both(*project, flags, dir.path());
  test::check_same_rustc_lines(run, crate);
  check_same_behaviour(run.cargo_target_dir / "debug" / bin,
                       *project / "target" / "kiln" / "debug" / bin, commands, *project);
}

} // namespace

TEST_CASE("differential: hexyl (Debian's package) builds and behaves as cargo's", "[cargo][slow]")
{
  differential("hexyl-0.8.0", "hexyl",
               {{"--version"}, {"--help"}, {"-n", "64", "Cargo.toml"}, {"--no-squeezing", "LICENSE-MIT"}});
}

TEST_CASE("differential: bat", "[.differential]")
{
  differential("bat-0.22.1", "bat",
               {{"--version"}, {"--list-languages"}, {"--plain", "--color=always", "README.md"},
                {"--style=numbers", "--language=rust", "Cargo.toml"}});
}

TEST_CASE("differential: cbindgen", "[.differential]")
{
  differential("cbindgen-0.24.3", "cbindgen", {{"--version"}, {"--help"}});
}

TEST_CASE("differential: bindgen", "[.differential]")
{
  TempDir scratch;
  test::write_file(scratch / "h.h", "struct point { int x; double y; };\nint area(struct point* p);\n");
  differential("bindgen-0.60.1", "bindgen",
               {{"--version"}, {(scratch / "h.h").string(), "--no-layout-tests"}});
}

// Three more of Debian's binary crates: a library with two binaries, a
// packet sniffer on libpcap (pcap-sys, seccomp), and cargo itself (146
// packages, with the -sys crates of libgit2, curl, libssh2, openssl and
// zlib).
TEST_CASE("differential: pleaser", "[.differential]")
{
  differential("pleaser-0.5.3", "please", {{"--help"}});
}

TEST_CASE("differential: sniffglue", "[.differential]")
{
  differential("sniffglue-0.15.0", "sniffglue", {{"--version"}, {"--help"}});
}

TEST_CASE("differential: cargo", "[.differential]")
{
  differential("cargo-0.66.0", "cargo", {{"--version"}, {"--list"}});
}

TEST_CASE("differential: a workspace of -sys crates, proc-macros and differing features",
          "[.differential]")
{
  TempDir dir;
  for (const char* needed : {"rusqlite-0.28.0", "openssl-sys-0.9.80", "zstd-sys-2.0.1"}) {
    if (!fs::exists(k_registry / needed)) {
      test::skip(std::string(needed) + " is not installed");
      return;
    }
  }
  fs::path ws = dir / "sys";
  test::write_file(ws / ".cargo" / "config.toml", k_debian_source);
  test::write_file(ws / "Cargo.toml",
                   "[workspace]\nresolver = \"2\"\nmembers = [\"db\", \"tool\"]\n"
                   "[profile.dev.package.\"*\"]\nopt-level = 1\n"
                   "[profile.release.package.db]\nopt-level = \"s\"\n");
  test::write_file(ws / "db" / "Cargo.toml",
                   "[package]\nname = \"db\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"
                   "[dependencies]\nrusqlite = \"0.28\"\nopenssl-sys = \"0.9\"\n"
                   "zstd-sys = \"2\"\n"
                   "serde = { version = \"1\", features = [\"derive\"] }\n"
                   "[build-dependencies]\nserde = { version = \"1\", default-features = false }\n"
                   "[dev-dependencies]\nserde_json = \"1\"\n");
  test::write_file(ws / "db" / "build.rs", "fn main() { println!(\"cargo::rustc-env=DB_BUILT=yes\"); }\n");
  test::write_file(ws / "db" / "src" / "lib.rs", R"(
pub fn report() -> String {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let n: i64 = conn.query_row("select 6 * 7", [], |r| r.get(0)).unwrap();
    let ssl = unsafe { openssl_sys::OpenSSL_version_num() } != 0;
    let zstd = unsafe { zstd_sys::ZSTD_versionNumber() } != 0;
    format!("sqlite says {n}, openssl linked {ssl}, zstd linked {zstd}, built {}", env!("DB_BUILT"))
}
#[derive(serde::Serialize)]
pub struct Row { pub id: u32 }
)");
  test::write_file(ws / "tool" / "Cargo.toml",
                   "[package]\nname = \"tool\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"
                   "[dependencies]\ndb = { path = \"../db\" }\nclap = { version = \"4\", features = [\"derive\"] }\n");
  test::write_file(ws / "tool" / "src" / "main.rs", R"(
use clap::Parser;
#[derive(Parser)]
struct Args { #[arg(long, default_value_t = 1)] times: u32 }
fn main() {
    let args = Args::parse();
    for _ in 0..args.times { println!("{}", db::report()); }
}
)");
  test::RunOptions options;
  options.cwd = ws;
  REQUIRE(test::run({"cargo", "generate-lockfile"}, options).status == 0);
  for (const auto& flags : std::vector<std::vector<std::string>>{{}, {"--release"}}) {
    auto run = test::build_with_both(ws, flags, dir.path());
    test::check_same_rustc_lines(run, "-sys workspace");
    std::string profile = flags.empty() ? "debug" : "release";
    check_same_behaviour(run.cargo_target_dir / profile / "tool",
                         ws / "target" / "kiln" / profile / "tool", {{"--times", "2"}, {"--help"}}, ws);
  }
}

// cargo check and cargo clippy on a big graph: every compile of the
// package (its build script too) through clippy-driver, as cargo does.
TEST_CASE("differential: cargo checked and linted", "[.differential]")
{
  TempDir dir;
  auto project = debian_crate(dir, "cargo-0.66.0");
  if (!project) {
    return;
  }
  fs::path sysroot = test::output_of(test::run({"rustc", "--print", "sysroot"}), "sysroot");
  if (!fs::exists(sysroot / "bin" / "clippy-driver")) {
    test::skip("clippy is not installed");
    return;
  }
  for (std::string command : {"check", "clippy"}) {
    auto run = test::build_with_both(*project, {}, dir.path(), {}, command);
    test::check_same_rustc_lines(run, command);
  }
}
