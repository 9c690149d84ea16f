// Units as derivations: each planned unit's inputs (kiln/cargo/inputs.hpp)
// are gathered from the plan, the workspace, the toolchain and cargo's
// configuration; its derivation follows from them. And the frontend that
// lets the build module realise them: the builtin builder
// "builtin:rust-unit", sources written before a build, costs, pipelining.
#pragma once

#include <kiln/build/build.hpp>
#include <kiln/cargo/build_config.hpp>
#include <kiln/cargo/inputs.hpp>
#include <kiln/cargo/plan.hpp>
#include <kiln/cargo/toolchain.hpp>
#include <kiln/cargo/unit_builder.hpp>
#include <kiln/store/local_store.hpp>

#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

// A source tree the derivations name by its content hash, copied into the
// store only when something is actually built from it.
struct SourceTree
{
  std::filesystem::path root;
  PathFilter filter;
  std::string name;
  uint64_t size = 0; // of its NAR
};

struct InstantiatedUnit
{
  UnitInputs inputs;
  StorePath drv;
  StorePath out;
  std::string product;    // see UnitDerivation::product
  // A guess at how long building it takes, relative to other units (for
  // the scheduler: the longest chains of work start first).
  double cost = 1;
  // Compiled incrementally, or built from such a unit: its output is this
  // machine's alone (never looked up in a cache, never pushed).
  bool local_only = false;
};

// The plan's derivations, computed but not yet written: a unit that is
// present or substituted never needs its .drv or its sources in the store.
struct InstantiatedPlan
{
  std::vector<InstantiatedUnit> units;      // one per Plan::units entry
  // `kiln test`: a run of each test harness the plan compiles as a root
  // (its derivation's output is the harness's report), and which unit's
  // harness each runs.
  std::vector<InstantiatedUnit> test_runs;
  std::vector<size_t> test_run_of;
  std::map<StorePath, Derivation> derivations;
  std::map<StorePath, SourceTree> sources;

  // Before `drv` is built: write the sources it compiles into the store, and
  // the .drv itself if its input derivations are there (built here, not
  // substituted). Throws if a source changed meanwhile. Thread-safe.
  void materialize(LocalStore& store, const StorePath& drv) const;

private:
  std::shared_ptr<std::mutex> m_materializing = std::make_shared<std::mutex>();
};

// What unit inputs are gathered from.
struct InstantiateContext
{
  const Workspace& ws;
  const Plan& plan;
  const Toolchain& toolchain;
  const BuildConfig& config;
  // Where source digests are remembered between runs.
  std::filesystem::path digest_dir;
  // clippy-driver by content, for `kiln clippy` (every compile of a
  // workspace member runs through it, with these arguments); empty
  // otherwise.
  std::string clippy{};
  std::vector<std::string> clippy_args{};
  bool clippy_selected_only = false;      // --no-deps: only the packages asked for
  // Fills in what a build-script run of the package reads of the host
  // (UnitInputs::host_env, host_files); unset: nothing.
  std::function<void(const CargoPackage& package, UnitInputs& run)> host_inputs{};
  // `kiln test`: run the test harnesses, with these arguments (and, when
  // set, a nonce that makes every run new: --rerun).
  bool run_tests = false;
  std::vector<std::string> test_args{};
  std::string rerun{};
  // Every package's lints capped, as for registry packages (kiln install).
  bool cap_lints = false;
  // Which units to compile incrementally, by index (null: none); only
  // those cargo would (may_compile_incrementally) ever are.
  std::function<bool(size_t unit)> incremental{};
  // This plan instantiated with nothing incremental, moments before: its
  // source digests are used, and every unit that is not local-only here is
  // taken from it whole (it is made from nothing that differs).
  const InstantiatedPlan* clean = nullptr;
};

// Would cargo compile the unit incrementally (its profile says so, it is a
// path package), and is it rustc compiling a crate (not a build-script run,
// not rustdoc)?
bool may_compile_incrementally(const Unit& unit);

// Which of the plan's units are local-only when those `incremental` picks
// are compiled incrementally: they, and every unit built from one.
std::vector<char> local_only_units(const Plan& plan,
                                   const std::function<bool(size_t unit)>& incremental);

// The folder (under target/kiln/incremental) where such a unit keeps its
// session: named by what the unit is (package, version, target, mode,
// profile, platform), so the same across edits and feature changes (rustc
// keeps a session per crate identity inside).
std::string session_name(const Unit& unit);

// Compute every unit's inputs and derivation. Source trees are hashed (not
// copied), remembered by their files' metadata.
InstantiatedPlan instantiate_plan(LocalStore& store, const InstantiateContext& context);

// A unit as cargo names it in its progress: "serde v1.0.152",
// "my-app v0.1.0 (bin \"my-app\")", "libc v0.2.139 (build-script)".
std::string describe(const Unit& unit);

// The plan's units as a build frontend.
class UnitFrontend : public Frontend
{
public:
  // `sessions`: where units that may compile incrementally keep their
  // sessions, one folder each (session_name); empty: none kept (not a
  // local build).
  UnitFrontend(LocalStore& store, const Plan& plan, const InstantiatedPlan& units,
               const Toolchain& toolchain, unsigned jobs, const Environment* env = nullptr,
               std::filesystem::path sessions = {});

  const Derivation* derivation(const StorePath& drv) const override;
  // Runs kiln-rust-unit (or, without it, this kiln executable as
  // `kiln __rust-unit`) in the sandbox with the toolchain visible.
  void builtin_builder(const Derivation& drv, BuildSpec& spec) const override;
  // The first unit planned to be built starts learning what the build steps'
  // tools need (the loader's list for rustup's cargo proxy) beside the
  // steps before it; a build that only fetches never pays for it.
  void build_planned(const StorePath& drv) const override;
  void prepare(const StorePath& drv) const override;
  double cost(const StorePath& drv) const override;
  // A library compiled to an rlib starts on the .rmeta of the libraries it
  // uses, as cargo does.
  bool may_start_early(const StorePath& dependent, const StorePath& input) const override;
  std::string describe(const StorePath& drv) const override;
  // Not a build-script run seen reading more of the host than its identity
  // holds, nor anything built on one: such an output is this machine's.
  bool may_push(const StorePath& drv) const override;
  // Compiled incrementally, or built from such a unit.
  bool local_only(const StorePath& drv) const override;

  // The plan's index of the unit `drv` builds, if it is one.
  std::optional<size_t> unit_of(const StorePath& drv) const;
  // The index in InstantiatedPlan::test_runs of the test run `drv` is.
  std::optional<size_t> test_run_of(const StorePath& drv) const;

private:
  LocalStore& m_store;
  const Plan& m_plan;
  const InstantiatedPlan& m_units;
  const Toolchain& m_toolchain;
  unsigned m_jobs;
  const Environment* m_env;
  std::filesystem::path m_sessions;
  std::map<StorePath, size_t> m_unit_of;
  std::map<StorePath, size_t> m_test_run_of;
  mutable std::once_flag m_tools_once;
  mutable std::future<void> m_tools_looked_at; // joined at destruction
  std::filesystem::path m_self;     // this executable
  std::filesystem::path m_helper;   // kiln-rust-unit, if found
  mutable std::mutex m_push_mutex;
  mutable std::map<size_t, bool> m_pushable;
};

// Cargo units known only by their .drv files (kiln cache check): the
// builder "builtin:rust-unit" with this machine's toolchain, the unit's
// inputs read from the derivation. A unit built with another toolchain
// (compiler, standard library, linker, by content) cannot be built here.
class DrvUnitFrontend : public Frontend
{
public:
  DrvUnitFrontend(const LocalStore& store, const Toolchain& toolchain, unsigned jobs);
  void builtin_builder(const Derivation& drv, BuildSpec& spec) const override;
  // Why `drv` (a Cargo unit) cannot be built the same way here; nullopt if
  // it can (or is not a Cargo unit).
  std::optional<std::string> cannot_build(const Derivation& drv) const;

private:
  const LocalStore& m_store;
  const Toolchain& m_toolchain;
  unsigned m_jobs;
  std::filesystem::path m_self;
  std::filesystem::path m_helper;
};

// Does a build-script run's output (its directives) show reads of the host
// beyond what its inputs name (host_files, host_env)? The reads, if so.
std::vector<std::string> unrecorded_host_reads(const UnitInputs& run,
                                               const std::filesystem::path& output,
                                               const std::string& store_dir,
                                               const Environment& env);

} // namespace kiln::cargo
