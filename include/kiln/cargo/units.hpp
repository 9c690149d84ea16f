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
};

// Add every unit's sources and derivation to the store; one entry per
// Plan::units entry. Source trees are hashed once and then remembered by
// their files' metadata (in the store's var/ folder) so a no-op stays fast.
std::vector<UnitDerivation> instantiate_plan(LocalStore& store, const Workspace& ws,
                                             const Plan& plan, const Toolchain& toolchain,
                                             const PlanOptions& options);

// The builtin builder for the build module: runs this very kiln executable
// (`kiln __rust-unit`) in the sandbox with the toolchain visible.
BuiltinBuilder rust_unit_builder(const Toolchain& toolchain, unsigned jobs);

// The in-sandbox half: reads the unit from the environment, runs rustc or
// the build script, writes the outputs. Returns the exit status.
int run_rust_unit();

// Parse a build script's stdout into the directives file's JSON text;
// `error` gets the first `cargo::error=` message, if any.
std::string parse_build_script_output(const std::string& stdout_text, std::string& error,
                                      std::vector<std::string>& warnings);

} // namespace kiln::cargo
