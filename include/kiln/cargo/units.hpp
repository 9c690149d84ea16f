// Units as derivations: each planned unit becomes a .drv whose builder is
// kiln's own "builtin:rust-unit" — rustc run with the flags and environment
// cargo would give it (a compile), or a build script run and its directives
// recorded (a run). The derivation's hash is closed over the sources (their
// NAR hash), the toolchain's identity, the target, features, profile,
// RUSTFLAGS and the output paths of the units it uses; `-C metadata` derives
// from the same inputs.
#pragma once

#include <kiln/build/build.hpp>
#include <kiln/cargo/plan.hpp>
#include <kiln/store/local_store.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::cargo {

inline constexpr const char* k_rust_unit_builder = "builtin:rust-unit";
// The environment variable that carries a unit's build instructions (JSON).
inline constexpr const char* k_unit_env = "__kiln_unit";
// The file a build-script run leaves in its output: the parsed directives.
inline constexpr const char* k_directives_file = "kiln-build-script.json";

struct UnitDerivation
{
  StorePath drv;
  StorePath out;
  // The unit's main product inside `out`: "bin/my-app", "libfoo-<m>.rlib",
  // "libfoo-<m>.so", "build-script-build", or "out" (a run's OUT_DIR).
  std::string product;
  // A guess at how long building it takes, relative to other units (for
  // the scheduler: the longest chains of work start first).
  double cost = 1;
};

// A source tree the derivations name by its content hash, copied into the
// store only when something is actually built from it.
struct SourceTree
{
  std::filesystem::path root;
  PathFilter filter;
  std::string name;
  uint64_t size = 0; // of its NAR
};

// The plan's derivations, computed but not yet written: a unit that is
// present or substituted never needs its .drv or its sources in the store.
struct InstantiatedPlan
{
  std::vector<UnitDerivation> units;       // one per Plan::units entry
  std::map<StorePath, Derivation> derivations;
  std::map<StorePath, SourceTree> sources;

  // A reader for the build graph: these derivations, else the store's.
  DrvReader reader(const LocalStore& store) const;
  // Before `drv` is built: write the sources it compiles into the store, and
  // the .drv itself if its input derivations are there (built here, not
  // substituted). Throws if a source changed meanwhile.
  // Safe to call from several threads (two units may share sources).
  void materialize(LocalStore& store, const StorePath& drv) const;

private:
  std::shared_ptr<std::mutex> m_materializing = std::make_shared<std::mutex>();
};

// Compute every unit's derivation. Source trees are hashed (not copied) and
// then remembered by their files' metadata in the store's var/ folder, so a
// no-op does not read them again.
InstantiatedPlan instantiate_plan(LocalStore& store, const Workspace& ws, const Plan& plan,
                                  const Toolchain& toolchain, const PlanOptions& options);

// A planned unit's name as cargo prints it: "serde v1.0.152",
// "my-app v0.1.0 (bin \"my-app\")", "libc v0.2.139 (build-script)".
std::string describe(const Unit& unit);

// The plan's units as a build frontend: their derivations, the builtin
// builder "builtin:rust-unit", their sources written before each build,
// costs, and pipelining as cargo does it (a library compiled to an rlib
// starts on the .rmeta of the libraries it uses).
class UnitFrontend : public Frontend
{
public:
  UnitFrontend(LocalStore& store, const Plan& plan, const InstantiatedPlan& units,
               const Toolchain& toolchain, unsigned jobs);

  const Derivation* derivation(const StorePath& drv) const override;
  // Runs kiln-rust-unit (or, without it, this kiln executable as
  // `kiln __rust-unit`) in the sandbox with the toolchain visible.
  void builtin_builder(const Derivation& drv, BuildSpec& spec) const override;
  void prepare(const StorePath& drv) const override;
  double cost(const StorePath& drv) const override;
  bool may_start_early(const StorePath& dependent, const StorePath& input) const override;
  std::string describe(const StorePath& drv) const override;

  // The plan's index of the unit `drv` builds, if it is one.
  std::optional<size_t> unit_of(const StorePath& drv) const;

private:
  LocalStore& m_store;
  const Plan& m_plan;
  const InstantiatedPlan& m_units;
  const Toolchain& m_toolchain;
  unsigned m_jobs;
  std::map<StorePath, size_t> m_unit_of;
  std::filesystem::path m_self;     // this executable
  std::filesystem::path m_helper;   // kiln-rust-unit, if found
};

// The in-sandbox half: reads the unit from the environment, runs rustc or
// the build script, writes the outputs. Returns the exit status.
int run_rust_unit();

// A name as cargo puts it into an environment variable's name: upper case,
// '-' → '_' (CARGO_FEATURE_*, CARGO_CFG_*, DEP_<links>_<key>).
std::string envify(std::string name);

// Parse a build script's stdout into the directives file's JSON text;
// `error` gets the first `cargo::error=` message, if any.
std::string parse_build_script_output(const std::string& stdout_text, std::string& error,
                                      std::vector<std::string>& warnings);

} // namespace kiln::cargo
