// Planning: the units cargo would build for a workspace — per package,
// target, mode, platform and profile, with the features cargo's resolver
// (v1 or v2) enables for that very unit — and the edges between them.
#pragma once

#include <kiln/cargo/workspace.hpp>

#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// The profile settings of one unit, resolved (what rustc flags follow from).
struct Profile
{
  std::string name = "dev";       // "dev", "release", or a custom profile
  std::string dir_name = "debug"; // its folder under target/
  // The built-in profile it comes down from: "debug" (dev, test) or
  // "release" (release, bench) — a build script's PROFILE.
  std::string root = "debug";
  std::string opt_level = "0";
  std::string debuginfo = "2";    // "0" = none
  bool debug_assertions = true;
  bool overflow_checks = true;
  std::string lto = "false";
  std::string panic = "unwind";
  std::optional<int> codegen_units;
  std::string strip = "none";
  bool rpath = false;

  bool operator==(const Profile&) const = default;
  auto operator<=>(const Profile&) const = default;
};

enum class UnitMode { build, run_custom_build };

struct UnitDep
{
  size_t unit;                    // index into Plan::units
  std::string extern_name;        // for --extern (libraries)
};

struct Unit
{
  const CargoPackage* package = nullptr;
  const CargoTarget* target = nullptr;
  UnitMode mode = UnitMode::build;
  // Compiled for the host (proc-macros, build scripts and what they use);
  // only differs from the target platform with --target.
  bool for_host = false;
  // Runs on the host: for_host units, and every build-script compile (whose
  // features are still those of the library it serves).
  bool host_platform = false;
  std::string triple;             // the platform it is compiled for
  std::vector<std::string> features; // sorted
  Profile profile;
  std::vector<UnitDep> deps;
  bool is_root = false;           // requested on the command line

  std::string kind_name() const;  // "lib", "proc-macro", "bin", "build-script", "run-build-script"
};

struct PlanOptions
{
  std::vector<std::string> packages;   // -p (empty: default members)
  bool workspace = false;              // --workspace: every member
  std::vector<std::string> bins;       // --bin (empty: every bin of the selected packages)
  bool lib_only = false;               // --lib
  std::vector<std::string> features;   // --features ("a,b" split; "pkg/feat" for deps)
  bool all_features = false;
  bool no_default_features = false;
  std::string profile = "dev";         // --profile / --release
  std::optional<std::string> target;   // --target triple (none: the host)
  std::vector<std::string> rustflags;  // RUSTFLAGS
};

struct Plan
{
  std::vector<Unit> units;        // dependencies before dependents
  std::vector<size_t> roots;
  std::string host;
  bool cross = false;             // --target given
};

// Plan the build; errors (an unknown package, profile or feature) are
// UsageError or CargoError naming it.
Plan plan_build(const Workspace& ws, const Toolchain& toolchain, const PlanOptions& options);

} // namespace kiln::cargo
