// The plan: the units cargo would compile (or run) for a command, taken
// from cargo itself — `cargo <command> --unit-graph` — so that which units
// exist, with which features, profile settings, platform and edges, is
// exactly cargo's. kiln reads every field it uses and refuses a graph it
// does not understand (another format version, a mode or profile setting
// it cannot build).
#pragma once

#include <kiln/cargo/workspace.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

// The settings of one unit's profile, as cargo resolved them.
struct Profile
{
  std::string name = "dev";       // "dev", "release", "test", "bench", or a custom profile
  std::string dir_name = "debug"; // its folder under target/
  // The built-in profile it comes down from: "debug" or "release" (a build
  // script's PROFILE).
  std::string root = "debug";
  std::string opt_level = "0";
  std::string debuginfo = "2";    // "0" none, "1", "2", "line-tables-only", "line-directives-only"
  std::optional<std::string> split_debuginfo;
  bool debug_assertions = true;
  bool overflow_checks = true;
  std::string lto = "false";      // "false", "true", "thin", "fat", "off"
  std::string panic = "unwind";
  std::optional<int> codegen_units;
  std::string strip = "none";     // "none", "debuginfo", "symbols"
  bool rpath = false;

  bool operator==(const Profile&) const = default;
};

enum class UnitMode { build, check, check_test, test, doctest, run_custom_build };
// As cargo's unit graph prints it ("check" for check_test too).
const char* to_string(UnitMode mode);

// How the unit takes part in link-time optimisation (cargo's lto.rs).
enum class LtoRole { run, off, only_bitcode, object_and_bitcode, only_object };

struct UnitDep
{
  size_t unit;                    // index into Plan::units
  std::string extern_name;        // for --extern (libraries)
};

struct Unit
{
  const CargoPackage* package = nullptr;
  CargoTarget target;
  UnitMode mode = UnitMode::build;
  // cargo's compile kind: unset for the host kind (every unit without
  // --target; build scripts, proc-macros and what they use with it).
  std::optional<std::string> platform;
  std::string triple;             // the triple compiled for: `platform` or the host's
  std::vector<std::string> features;
  Profile profile;
  std::vector<UnitDep> deps;
  bool is_root = false;           // asked for on the command line
  LtoRole lto = LtoRole::only_object;
  // cargo would compile it incrementally: its profile says so and it is a
  // path package (cargo's profiles.rs; CARGO_INCREMENTAL and
  // build.incremental are applied already).
  bool incremental = false;

  // "lib", "proc-macro", "bin", "build-script", "run-build-script",
  // "example", "test", "bench"
  std::string kind_name() const;
  bool host_kind() const { return !platform.has_value(); }
  // A library compiled to an rlib (and so to an .rmeta first).
  bool compiles_to_rlib() const;
  // Does it read only its libraries' metadata (cargo's pipelining: an rlib
  // compiled from other rlibs)?
  bool reads_metadata_only() const;
};

struct Plan
{
  std::vector<Unit> units;        // dependencies before dependents
  std::vector<size_t> roots;
  std::string host;
  bool cross = false;             // --target (or build.target) given
  std::string unit_graph;         // cargo's JSON, as it printed it
};

// What the plan needs to know about the command beyond the graph.
struct PlanContext
{
  std::string host;
  // `check --tests`, `--benches`, `--all-targets`: a root lib or bin check
  // unit without a twin is checked as a test (cargo's unit graph prints
  // both as "check").
  bool checks_tests = false;
  // The built-in profile a custom profile comes down from ("debug" or
  // "release"), by profile name.
  std::function<std::string(const std::string& profile)> profile_root;
};

// Read cargo's `--unit-graph` output. Packages are looked up in `ws` by
// their id; errors (an unknown format, mode or setting) are CargoError.
Plan parse_unit_graph(const std::string& unit_graph, const Workspace& ws, const PlanContext& context);

} // namespace kiln::cargo
