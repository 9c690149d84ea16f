// The edit loop: a local build compiles workspace members incrementally, as
// cargo does, with a session rustc really reuses; those outputs stay on the
// machine (never pushed, never looked up in a cache), and a clean unit that
// can be had is always taken instead.
#include "support/test_support.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <kiln/cargo/project.hpp>
#include <kiln/cargo/units.hpp>
#include <kiln/store/local_store.hpp>
#include <kiln/util/io.hpp>

#include <sys/stat.h>

#include <regex>
#include <set>
#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;
using json = nlohmann::json;

using test::kiln_in;

namespace {

// A copy of examples/rust-app in `dir`, without its target folder.
fs::path
copy_rust_app(const TempDir& dir)
{
  fs::path app = dir / "rust-app";
  fs::copy(fs::path(KILN_SOURCE_DIR) / "examples" / "rust-app", app,
           fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  fs::remove_all(app / "target");
  return app;
}

// `kiln build` in `root`, offline, as a request to the cargo frontend.
cargo::CargoRequest
offline_build(const fs::path& root)
{
  cargo::CargoRequest request;
  request.cwd = root;
  request.offline = true;
  request.cargo_args = {"--offline"};
  request.metadata_args = {"--offline"};
  request.env = cargo::current_environment();
  return request;
}

// A workspace of a library of three modules (so that rustc splits it into
// several codegen units) and a binary that prints what it says.
fs::path
write_project(const fs::path& root)
{
  test::write_file(root / "Cargo.toml", "[workspace]\nmembers = [\"greet\", \"app\"]\nresolver = \"2\"\n");
  test::write_file(root / "greet" / "Cargo.toml",
                   "[package]\nname = \"greet\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
  test::write_file(root / "greet" / "src" / "lib.rs",
                   "pub mod a;\npub mod b;\npub mod c;\n"
                   "pub fn greeting() -> String { format!(\"{} {} {}\", a::word(), b::word(), c::word()) }\n");
  for (const char* m : {"a", "b", "c"}) {
    std::string body = "pub fn word() -> String {\n"
                       "    let v: Vec<u64> = (1..20).map(|x| x * x).collect();\n"
                       "    format!(\"" + std::string(m) + "{}\", v.iter().sum::<u64>())\n}\n"
                       "pub fn extra(n: u64) -> u64 { (0..n).fold(0, |s, x| s ^ x.rotate_left(3)) }\n";
    test::write_file(root / "greet" / "src" / (std::string(m) + ".rs"), body);
  }
  test::write_file(root / "app" / "Cargo.toml",
                   "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n"
                   "[dependencies]\ngreet = { path = \"../greet\" }\n");
  test::write_file(root / "app" / "src" / "main.rs",
                   "fn main() { println!(\"{}\", greet::greeting()); }\n");
  test::RunOptions in_root;
  in_root.cwd = root;
  REQUIRE(test::run({"cargo", "generate-lockfile", "--offline"}, in_root).status == 0);
  return root;
}


// From -v output (cargo's or kiln's): each crate's rustc command line.
std::map<std::string, std::string>
rustc_lines(const std::string& err)
{
  std::map<std::string, std::string> out;
  std::istringstream lines(err);
  static const std::regex crate("--crate-name ([a-z_]+) ");
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (line.find("Running `") != std::string::npos && std::regex_search(line, m, crate)) {
      out[m[1]] = line;
    }
  }
  return out;
}

std::set<std::string>
incremental_crates(const std::string& err)
{
  std::set<std::string> out;
  for (const auto& [name, line] : rustc_lines(err)) {
    if (line.find("-C incremental=") != std::string::npos) {
      out.insert(name);
    }
  }
  return out;
}

std::string
metadata_of(const std::string& line)
{
  std::smatch m;
  REQUIRE(std::regex_search(line, m, std::regex("-C metadata=([0-9a-f]+)")));
  return m[1];
}

// Each unit of `kiln build --json`, by "name kind".
std::map<std::string, json>
units(const std::string& out)
{
  std::map<std::string, json> by_name;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) {
      json u = json::parse(line);
      by_name[u["name"].get<std::string>() + " " + u["kind"].get<std::string>()] = u;
    }
  }
  return by_name;
}

bool
local_only(const std::string& store, const std::string& path)
{
  auto r = test::kiln({"--store", store, "path-info", "--json", path});
  REQUIRE(r.status == 0);
  return json::parse(r.out).at(0).value("localOnly", false);
}

// The inode of every object file rustc keeps in the sessions under `dir`:
// reused codegen units keep theirs from one session to the next.
std::set<uint64_t>
object_inodes(const fs::path& dir)
{
  std::set<uint64_t> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().extension() == ".o") {
      struct stat st;
      REQUIRE(::stat(e.path().c_str(), &st) == 0);
      out.insert(st.st_ino);
    }
  }
  return out;
}

// The object files of the newest session under a unit's session folder.
std::set<uint64_t>
newest_session_inodes(const fs::path& unit_sessions)
{
  fs::path newest;
  auto newest_time = fs::file_time_type::min();
  for (const auto& crate : fs::directory_iterator(unit_sessions)) {
    for (const auto& s : fs::directory_iterator(crate.path())) {
      if (s.is_directory() && s.last_write_time() > newest_time) {
        newest = s.path();
        newest_time = s.last_write_time();
      }
    }
  }
  REQUIRE_FALSE(newest.empty());
  return object_inodes(newest);
}

} // namespace

TEST_CASE("the edit loop: members compile incrementally as under cargo, reuse their session, "
          "and never leave the machine",
          "[cargo][incremental]")
{
  TempDir dir;
  fs::path ws = write_project(dir / "ws");
  std::string store = (dir / "store").string();
  fs::path bin = ws / "target" / "kiln" / "debug" / "app";

  // The oracle: which crates cargo compiles incrementally.
  test::RunOptions in_ws;
  in_ws.cwd = ws;
  in_ws.env["CARGO_TARGET_DIR"] = (dir / "cargo-target").string();
  auto cargo = test::run({"cargo", "build", "-v", "--offline"}, in_ws);
  INFO(cargo.err);
  REQUIRE(cargo.status == 0);
  REQUIRE(incremental_crates(cargo.err) == std::set<std::string>{"app", "greet"});

  // The first compile in this target folder is clean, as on a CI runner
  // (faster than an incremental one from nothing, and pushable); it makes
  // each unit's session folder.
  auto first = kiln_in(ws, {"--store", store, "build", "-v", "--json", "-j", "2"});
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK(incremental_crates(first.err).empty());
  CHECK_FALSE(local_only(store, units(first.out)["app bin"]["path"]));
  fs::path sessions = ws / "target" / "kiln" / "incremental";
  size_t session_folders = 0;
  fs::path greet_sessions;
  for (const auto& e : fs::directory_iterator(sessions)) {
    ++session_folders;
    CHECK(fs::is_empty(e.path()));
    if (e.path().filename().string().starts_with("greet-")) {
      greet_sessions = e.path();
    }
  }
  CHECK(session_folders == 2);
  REQUIRE_FALSE(greet_sessions.empty());

  // From the next compile on, the crates cargo compiles incrementally are.
  test::write_file(ws / "greet" / "src" / "lib.rs",
                   read_file(ws / "greet" / "src" / "lib.rs") + "// an edit\n");
  auto second = kiln_in(ws, {"--store", store, "build", "-v", "--json", "-j", "2"});
  INFO(second.err);
  REQUIRE(second.status == 0);
  CHECK(incremental_crates(second.err) == incremental_crates(cargo.err));
  auto before = rustc_lines(second.err);
  auto built = units(second.out);
  REQUIRE(built.count("greet lib"));
  REQUIRE(built.count("app bin"));
  CHECK(local_only(store, built["greet lib"]["path"]));
  CHECK(local_only(store, built["app bin"]["path"]));
  CHECK(test::run({bin.string()}).out == "a2470 b2470 c2470\n");
  auto objects_before = object_inodes(greet_sessions);
  CHECK(objects_before.size() >= 2);

  SECTION("an edit keeps the crate's identity and its session: rustc reuses what did not change")
  {
    std::string a = read_file(ws / "greet" / "src" / "a.rs");
    a.replace(a.find("\"a{}\""), 5, "\"A{}\"");
    test::write_file(ws / "greet" / "src" / "a.rs", a);
    auto edited = kiln_in(ws, {"--store", store, "build", "-v", "--json", "-j", "2"});
    INFO(edited.err);
    REQUIRE(edited.status == 0);
    auto after = rustc_lines(edited.err);
    REQUIRE(after.count("greet"));
    REQUIRE(after.count("app"));
    // The same -C metadata (so the same crate to rustc) and session.
    CHECK(metadata_of(after["greet"]) == metadata_of(before["greet"]));
    CHECK(metadata_of(after["app"]) == metadata_of(before["app"]));
    auto again = units(edited.out);
    CHECK(again["greet lib"]["path"] != built["greet lib"]["path"]);
    CHECK(again["greet lib"]["status"] == "built");
    CHECK(test::run({bin.string()}).out == "A2470 b2470 c2470\n");
    // --explain plans as the build does: the incremental unit, present.
    auto explained = kiln_in(ws, {"--store", store, "build", "--explain", "greet"});
    INFO(explained.out);
    CHECK_THAT(explained.out, Catch::Contains(again["greet lib"]["path"].get<std::string>() +
                                              " (in the store)") &&
                                Catch::Contains("same inputs as in the last build"));
    // Codegen units of the modules not edited were taken from the last
    // session: their object files are the same files. Only the namespaces
    // sandbox puts the build folder at the same path each time.
    auto info = test::kiln({"--store", store, "path-info", "--json", again["greet lib"]["path"]});
    if (json::parse(info.out).at(0).value("buildMode", "") != "namespaces") {
      WARN("SKIPPED: rustc's session reuse needs the namespaces sandbox (this build ran without)");
    } else {
      auto reused = newest_session_inodes(greet_sessions);
      size_t kept = 0;
      for (auto inode : reused) {
        kept += objects_before.count(inode);
      }
      CHECK(kept >= 1);
      CHECK(kept < reused.size());
    }
  }

  SECTION("local-only outputs are refused by push; --push-to builds and pushes clean units, "
          "which a fresh store then takes instead of compiling")
  {
    std::string cache = "file://" + (dir / "cache").string();
    auto refused = test::kiln({"--store", store, "push", cache, built["app bin"]["path"]});
    CHECK(refused.status != 0);
    CHECK_THAT(refused.err, Catch::Contains(built["app bin"]["path"].get<std::string>()) &&
                              Catch::Contains("built for this machine only"));

    test::kiln({"key", "generate", "dev-1", "--secret-file", (dir / "k.sk").string()});
    std::string pub = test::output_of(test::kiln({"key", "public", (dir / "k.sk").string()}),
                                      "key public");
    auto pushed = kiln_in(ws, {"--store", store, "--secret-key-file", (dir / "k.sk").string(),
                               "build", "-v", "--json", "--push-to", cache});
    INFO(pushed.err);
    REQUIRE(pushed.status == 0);
    CHECK(incremental_crates(pushed.err).empty());
    auto clean = units(pushed.out);
    CHECK(clean["app bin"]["path"] != built["app bin"]["path"]);
    CHECK_FALSE(local_only(store, clean["app bin"]["path"]));
    CHECK_FALSE(local_only(store, clean["greet lib"]["path"]));

    // A fresh store beside a cache served over HTTP: the clean binary is
    // taken, nothing compiled.
    test::KilnServe serve(std::vector<std::string>{(dir / "cache").string()}, dir / "serve.log");
    std::string fresh = (dir / "store-2").string();
    std::vector<std::string> with_cache = {"--store", fresh, "--substituters", serve.url,
                                           "--trusted-public-keys", pub};
    fs::remove_all(ws / "target");
    auto args = with_cache;
    args.insert(args.end(), {"build", "--json"});
    auto warm = kiln_in(ws, args);
    INFO(warm.err);
    REQUIRE(warm.status == 0);
    auto taken = units(warm.out);
    CHECK(taken["app bin"]["status"] == "substituted");
    CHECK(taken["app bin"]["path"] == clean["app bin"]["path"]);
    CHECK_FALSE(fs::exists(ws / "target" / "kiln" / "incremental"));

    // The binary edited: it alone is compiled, on the clean library from the
    // cache; clean the first time in this fresh target folder, incrementally
    // the next, and then its output is never asked of the cache.
    test::write_file(ws / "app" / "src" / "main.rs",
                     "fn main() { println!(\"({})\", greet::greeting()); }\n");
    auto once = kiln_in(ws, args);
    INFO(once.err);
    REQUIRE(once.status == 0);
    CHECK(units(once.out)["app bin"]["status"] == "built");
    CHECK_FALSE(local_only(fresh, units(once.out)["app bin"]["path"]));
    test::write_file(ws / "app" / "src" / "main.rs",
                     "fn main() { println!(\"[{}]\", greet::greeting()); }\n");
    auto edited = kiln_in(ws, args);
    INFO(edited.err);
    REQUIRE(edited.status == 0);
    auto now = units(edited.out);
    CHECK(now["app bin"]["status"] == "built");
    CHECK(now["greet lib"]["status"] != "built");
    CHECK(now["greet lib"]["path"] == clean["greet lib"]["path"]);
    CHECK(local_only(fresh, now["app bin"]["path"]));
    CHECK_FALSE(local_only(fresh, now["greet lib"]["path"]));
    CHECK(test::run({bin.string()}).out == "[a2470 b2470 c2470]\n");
    std::string app_hash = fs::path(now["app bin"]["path"].get<std::string>()).filename().string().substr(0, 32);
    CHECK_THAT(serve.log(), Catch::Contains(".narinfo"));
    CHECK_THAT(serve.log(), !Catch::Contains(app_hash));
  }

  SECTION("CARGO_INCREMENTAL=0 builds clean units, as cargo does")
  {
    auto r = kiln_in(ws, {"--store", store, "build", "-v", "--json"}, {{"CARGO_INCREMENTAL", "0"}});
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK(incremental_crates(r.err).empty());
    auto clean = units(r.out);
    CHECK(clean["app bin"]["status"] == "built");
    CHECK_FALSE(local_only(store, clean["app bin"]["path"]));
  }
}

// The incremental plan is made from the clean one: the units that are not
// local-only are taken from it whole, the rest made again. That must give
// exactly the plan made from scratch, on a graph with build scripts and
// registry crates (examples/rust-app) and on one where a library member's
// being incremental makes its dependent local-only.
TEST_CASE("an incremental plan made from the clean one is the plan made from scratch",
          "[cargo][incremental]")
{
  if (!test::have_program("cargo")) {
    test::skip("needs cargo");
    return;
  }
  TempDir dir;
  LocalStore store({dir / "store"});
  fs::path app = copy_rust_app(dir);
  fs::path ws = write_project(dir / "ws");
  for (const fs::path& root : {app, ws}) {
    INFO(root);
    cargo::CargoRequest request = offline_build(root);
    request.incremental = true;
    auto project = cargo::CargoProject::load(request, dir / "state", dir / "cache");
    const auto& units = project->plan().units;
    auto members = [&](size_t i) {
      return cargo::may_compile_incrementally(units[i]) && units[i].package->is_member;
    };
    auto clean = project->instantiate(store);
    auto scratch = project->instantiate(store, members);
    auto reused = project->instantiate(store, members, &clean);
    REQUIRE(scratch.units.size() == units.size());
    REQUIRE(reused.units.size() == units.size());
    size_t local = 0, incremental = 0, changed = 0;
    for (size_t i = 0; i < units.size(); ++i) {
      INFO(cargo::describe(units[i]));
      CHECK(reused.units[i].drv == scratch.units[i].drv);
      CHECK(reused.units[i].out == scratch.units[i].out);
      CHECK(reused.units[i].product == scratch.units[i].product);
      CHECK(reused.units[i].local_only == scratch.units[i].local_only);
      CHECK(cargo::inputs_to_json(reused.units[i].inputs) ==
            cargo::inputs_to_json(scratch.units[i].inputs));
      local += scratch.units[i].local_only;
      incremental += scratch.units[i].inputs.incremental;
      changed += scratch.units[i].drv != clean.units[i].drv;
    }
    // The case is the one meant: some units differ from the clean plan.
    CHECK(incremental >= 1);
    CHECK(changed == local);
    CHECK(local >= (root == ws ? 2u : 1u));
    std::set<StorePath> scratch_drvs, reused_drvs, scratch_srcs, reused_srcs;
    for (const auto& [p, d] : scratch.derivations) scratch_drvs.insert(p);
    for (const auto& [p, d] : reused.derivations) reused_drvs.insert(p);
    for (const auto& [p, t] : scratch.sources) scratch_srcs.insert(p);
    for (const auto& [p, t] : reused.sources) reused_srcs.insert(p);
    CHECK(reused_drvs == scratch_drvs);
    CHECK(reused_srcs == scratch_srcs);
  }
}

// rustc loads a proc-macro whole and does not resolve the proc-macro's own
// crates, and cargo keeps its build scripts' link paths to the host: a unit
// that uses serde_derive needs serde_derive, not syn. Were syn an input, a
// fresh runner building the edited top crate would fetch it for nothing.
TEST_CASE("a crate's inputs are its proc-macros, not what they were built from", "[cargo]")
{
  if (!test::have_program("cargo")) {
    test::skip("needs cargo");
    return;
  }
  TempDir dir;
  LocalStore store({dir / "store"});
  auto project =
    cargo::CargoProject::load(offline_build(copy_rust_app(dir)), dir / "state", dir / "cache");
  const auto& units = project->plan().units;
  auto plan = project->instantiate(store);
  auto find = [&](const std::string& package, bool proc_macro) -> const cargo::InstantiatedUnit& {
    for (size_t i = 0; i < units.size(); ++i) {
      if (units[i].package->name == package && units[i].mode == cargo::UnitMode::build &&
          units[i].target.is_proc_macro() == proc_macro && !units[i].target.is_custom_build()) {
        return plan.units[i];
      }
    }
    FAIL("no unit of " << package);
    throw std::logic_error("unreachable");
  };
  const auto& logsum = find("rust-app", false);
  const auto& serde = find("serde", false);
  const auto& serde_derive = find("serde_derive", true);
  const auto& syn = find("syn", false);
  auto inputs_of = [&](const cargo::InstantiatedUnit& u) {
    return plan.derivations.at(u.drv).input_drvs;
  };
  auto dirs = [](const cargo::InstantiatedUnit& u) {
    return std::set<std::string>(u.inputs.library_closure.begin(), u.inputs.library_closure.end());
  };
  auto printed = [&](const cargo::InstantiatedUnit& u) { return store.store_dir().print(u.out); };
  // The proc-macro itself is built from syn, and is an input of what uses it.
  CHECK(inputs_of(serde_derive).count(syn.drv) == 1);
  CHECK(dirs(serde_derive).count(printed(syn)) == 1);
  CHECK(inputs_of(serde).count(serde_derive.drv) == 1);
  CHECK(dirs(logsum).count(printed(serde_derive)) == 1);
  // What the proc-macro was built from is not, all the way up.
  for (const auto* u : {&serde, &logsum}) {
    CHECK(inputs_of(*u).count(syn.drv) == 0);
    CHECK(dirs(*u).count(printed(syn)) == 0);
  }
}
