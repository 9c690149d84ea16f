// A Cargo build as a library call: load a project as cargo sees it from a
// folder (configuration, toolchain, workspace, and cargo's own plan for a
// command), then realise its units — present, substituted or built — with
// the build module. The CLI only parses flags and renders what happens.
//
//   CargoRequest request{.command = CargoCommand::build, .cwd = dir, ...};
//   auto project = CargoProject::load(store, request);
//   CargoBuild build = build_project(store, *project, options, observer);
#pragma once

#include <kiln/build/build.hpp>
#include <kiln/cargo/build_config.hpp>
#include <kiln/cargo/config.hpp>
#include <kiln/cargo/plan.hpp>
#include <kiln/cargo/toolchain.hpp>
#include <kiln/cargo/units.hpp>
#include <kiln/cargo/workspace.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

enum class CargoCommand { build, check, test, clippy, run };
const char* to_string(CargoCommand command);

struct CargoRequest
{
  CargoCommand command = CargoCommand::build;
  // Where cargo would run: configuration is discovered from here.
  std::filesystem::path cwd;
  // cargo's own flags for the command, passed to `cargo <command>
  // --unit-graph` as given (-p, --features, --lib, --target, --release,
  // --manifest-path, --locked, --config, ...).
  std::vector<std::string> cargo_args;
  // The flags among them that `cargo metadata` takes too.
  std::vector<std::string> metadata_args;
  // The values of --config, for kiln's own reading of the configuration.
  std::vector<std::string> config_args;
  // --offline or --frozen given (net.offline in the configuration counts too).
  bool offline = false;
  // `check` with --tests, --benches or --all-targets.
  bool checks_tests = false;
  // `clippy`: the arguments after `--` (-D warnings, -W clippy::pedantic).
  std::vector<std::string> clippy_args;
  bool clippy_no_deps = false;            // lint the selected packages only
  // `test`: the harnesses' arguments (after `--`), compile only (--no-run),
  // and a nonce when every test is to run again (--rerun).
  std::vector<std::string> test_args;
  bool no_run = false;
  std::string rerun;
  // The caller's environment as cargo would see it.
  Environment env;
  // Cap every package's lints (--cap-lints allow, no [lints] flags), path
  // packages too: `kiln install` builds a registry crate from a copy, as
  // cargo install builds it from the registry.
  bool cap_lints = false;
  // Compile incrementally what cargo would (workspace and path packages in
  // the dev and test profiles, unless CARGO_INCREMENTAL or build.incremental
  // say no) and must be compiled here anyway (no clean unit in the store or
  // a cache), with sessions kept in target/kiln/incremental. Only for builds
  // whose outputs stay on this machine: not for --push-to, --check or
  // kiln install, which build clean units.
  bool incremental = false;
};

class CargoProject
{
public:
  // Load and plan. `cache_dir` remembers cargo's answers, digests and the
  // toolchain between runs, by everything they depend on (so it may be shared
  // by every store of the user); `state_dir`, the store's own, what this
  // store's builds learned (build scripts' host reads, the last builds). Anything kiln
  // would build differently from cargo is a CargoError naming it; harmless
  // differences are in warnings().
  static std::unique_ptr<CargoProject> load(const CargoRequest& request,
                                            const std::filesystem::path& state_dir,
                                            const std::filesystem::path& cache_dir);

  const CargoRequest& request() const { return m_request; }
  const CargoConfig& config() const { return *m_config; }
  const BuildConfig& build_config() const { return *m_build_config; }
  const Toolchain& toolchain() const { return *m_toolchain; }
  const Workspace& workspace() const { return m_workspace; }
  const Plan& plan() const { return m_plan; }
  const std::vector<std::string>& warnings() const { return m_warnings; }
  const std::filesystem::path& state_dir() const { return m_state_dir; }
  const std::filesystem::path& cache_dir() const { return m_cache_dir; }

  // Every unit's inputs and derivation (sources hashed, nothing written);
  // `incremental` picks the units compiled incrementally (none if unset);
  // `clean`, this project's plan instantiated without, saves work (see
  // InstantiateContext::clean).
  InstantiatedPlan instantiate(LocalStore& store,
                               std::function<bool(size_t unit)> incremental = {},
                               const InstantiatedPlan* clean = nullptr) const;

private:
  CargoProject() = default;
  CargoRequest m_request;
  std::filesystem::path m_state_dir;
  std::filesystem::path m_cache_dir;
  std::unique_ptr<CargoConfig> m_config;
  std::unique_ptr<BuildConfig> m_build_config;
  std::unique_ptr<Toolchain> m_toolchain;
  Workspace m_workspace;
  Plan m_plan;
  std::vector<std::string> m_warnings;
};

// What a build tells the one watching it, besides the build module's events.
class CargoObserver : public BuildObserver
{
public:
  // The units and their derivations, before anything is realised.
  virtual void planned(const Plan& plan, const InstantiatedPlan& units);
  // Something the one watching should know (one line).
  virtual void note(const std::string& text);
};

struct CargoBuild
{
  InstantiatedPlan units;
  // The root units' derivations, and every compile of a local package
  // (whose warnings are shown again when it is fresh).
  std::vector<StorePath> roots;
  BuildResult result;
  // Did every root unit end present, substituted or built?
  bool succeeded() const;
};

// The plan's units as a build with `options` realises them: clean, except,
// when the request allows it (CargoRequest::incremental), the units it must
// compile here, which are compiled incrementally. Asks the caches of
// `options` which clean units they have.
InstantiatedPlan instantiate_for_build(LocalStore& store, const CargoProject& project,
                                       const BuildOptions& options);

// Realise the plan's roots (and what they need).
CargoBuild build_project(LocalStore& store, const CargoProject& project,
                         const BuildOptions& options, CargoObserver& observer);

// --push-drvs: write the .drv of every unit of `build` (and the sources
// they compile) into the store, inputs first, so that the derivations can
// be pushed with their closures. Returns them.
std::vector<StorePath> write_unit_derivations(LocalStore& store, const CargoBuild& build);

// `kiln build --check`: build every unit of `build` (a finished build of
// `project`) once more and compare its output with the one in the store
// (check_derivations). Units are realised first where they are not (the
// inputs of substituted ones), silently.
CheckResult check_units(LocalStore& store, const CargoProject& project, const CargoBuild& build,
                        const BuildOptions& options, const CheckOptions& check);

// Remember each unit's inputs as this build planned them (in the project's
// state), for explain_units.
void record_build(const CargoProject& project, const InstantiatedPlan& units);

// Why the units of package `spec` ("name", "name@version") are (or are
// not) built: whether their output is in the store, and what changed in
// their inputs since the last recorded build — field by field. Throws
// UsageError if no unit matches.
std::vector<std::string> explain_units(const CargoProject& project, const InstantiatedPlan& units,
                                       const LocalStore& store, const std::string& spec);

} // namespace kiln::cargo
