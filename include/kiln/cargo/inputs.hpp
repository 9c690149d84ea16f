// What enters a unit's derivation, by name. A unit's output path is a hash
// of its UnitInputs and nothing else: the same inputs give the same path on
// any machine, in any folder, at any time, at any -j; a change to any field
// gives another path. The derivation carries the inputs (as JSON, in
// `__kiln_inputs`) and the builder's instructions derived from them (in
// `__kiln_unit`), so that `kiln why-rebuild` and `--explain` can name what
// changed between two builds of a unit.
#pragma once

#include <kiln/cargo/plan.hpp>
#include <kiln/derivation/derivation.hpp>

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

// The environment variable carrying a unit's inputs (JSON).
inline constexpr const char* k_inputs_env = "__kiln_inputs";
// The environment variable carrying a unit's build instructions (JSON).
inline constexpr const char* k_unit_env = "__kiln_unit";
inline constexpr const char* k_rust_unit_builder = "builtin:rust-unit";
// The file a build-script run leaves in its output: the parsed directives.
inline constexpr const char* k_directives_file = "kiln-build-script.json";
// The file a compile leaves in its output when rustc said anything: its
// diagnostics, one JSON object a line, as rustc wrote them.
inline constexpr const char* k_diagnostics_file = "kiln-diagnostics.jsonl";
// What a compile read of the environment it was not given (env!,
// option_env!, from rustc's dep-info; a proc-macro's look-ups, traced):
// {"NAME": value as seen, or null when unset}, kept in the output when not
// empty. cargo compiles with the caller's whole environment, kiln with a
// fixed one: the frontend compares.
inline constexpr const char* k_env_reads_file = "kiln-env-reads.json";

// Variables of presentation a build script or a proc-macro may look up
// (the terminal, the locale beyond LANG, Rust's standard library's
// backtraces and thread stacks): not inputs, though cargo would pass the
// caller's values. kiln's runs see them unset; as inputs they would part
// outputs by terminal and shell settings, for output that does not change.
// (What a crate reads with env! or option_env! is an input whatever its name.)
inline bool
presentation_variable(std::string_view name)
{
  for (std::string_view known :
       {"TERM", "COLORTERM", "COLUMNS", "LINES", "NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE",
        "LANGUAGE", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_MIN_STACK", "RUST_LOG_STYLE"}) {
    if (name == known) {
      return true;
    }
  }
  return name.starts_with("LC_");
}

// A library a unit uses: `--extern NAME=<output>/<file>`.
struct ExternInput
{
  std::string name;
  std::string output;     // a store path
  std::string file;       // libfoo-<m>.rmeta, libfoo-<m>.rlib, libfoo-<m>.so

  bool operator==(const ExternInput&) const = default;
};

struct UnitInputs
{
  // What is built.
  std::string package;                    // "serde"
  std::string version;                    // "1.0.152"
  std::string mode;                       // "build", "check", "check-test", "test", "doctest",
                                          // "run-build-script", "test-run"
  std::string target;                     // the target's name
  std::vector<std::string> target_kind;   // "lib", "bin", "custom-build", ...
  std::vector<std::string> crate_types;
  std::string src_path;                   // the target's root file, relative to the sources
  // A package of the workspace is compiled as cargo does, from the
  // workspace's root with a relative path ("app/src/main.rs": file!() and
  // panic locations say so); its folder relative to that root.
  bool in_workspace = false;
  std::string workspace_path;
  std::string edition;
  bool harness = true;
  // The package's sources, by content, and what cargo tells its processes
  // about it (CARGO_PKG_*, CARGO_MANIFEST_DIR, ...).
  std::string source;
  std::map<std::string, std::string> package_env;
  std::vector<std::string> declared_features;   // for --check-cfg
  // Who builds it, by content.
  std::string compiler;                   // rustc and the host's rustlib
  std::string standard_library;           // the target's ("host" for the host's)
  std::string linker;                     // for units that link and build-script runs
  std::string linker_path;                // -C linker=, from target.<triple>.linker
  std::string driver;                     // "rustc", or clippy-driver / rustdoc by content
  std::string host_cpu;                   // the processor compiled for, with target-cpu=native
                                          // (host_cpu_identity); else empty
  // For which platform, and how.
  std::string target_triple;              // --target (empty: the host, not cross-compiling)
  std::string host;                       // the host triple (a build script's HOST)
  std::string links;                      // the package's `links` (CARGO_MANIFEST_LINKS)
  std::map<std::string, std::string> cfg; // runs: CARGO_CFG_* (rustc --print cfg)
  std::vector<std::string> features;
  Profile profile;
  std::string lto;                        // the unit's part in LTO
  std::vector<std::string> rustflags;
  std::vector<std::string> lint_flags;    // [lints]
  bool cap_lints = false;                 // --cap-lints allow (not a path package)
  bool primary = false;                   // CARGO_PRIMARY_PACKAGE
  std::vector<std::string> tool_args;     // clippy's arguments (-D warnings); a test's harness
                                          // arguments (filters, --ignored, ...)
  std::vector<std::string> rustdocflags;  // doctests
  std::string clippy_conf;                // clippy: the clippy.toml found above the package
  std::string test_binary;                // a test run: the harness (<output>/bin/<name>)
  std::string rerun;                      // a test run asked to run again (--rerun): its nonce
  std::map<std::string, std::string> config_env;   // [env], as it applies
  // Build-script runs: what the script was seen to read of the host — the
  // caller's variables it declares (rerun-if-env-changed) that are set, and
  // host files (by content) — learned from earlier runs of the package.
  std::map<std::string, std::string> host_env;
  std::map<std::string, std::string> host_files;
  std::map<std::string, std::string> bin_exes;     // CARGO_BIN_EXE_<name> → output path
  // What it uses, by output path.
  std::vector<ExternInput> externs;
  std::vector<std::string> library_closure;        // -L dependency=
  std::vector<std::string> link_search_runs;       // runs whose -L reach it through libraries
  std::string own_run;                    // its package's build-script run (OUT_DIR, directives)
  bool applies_link_libs = false;         // its run's rustc-link-lib apply (the lib, or every
                                          // target of a package without one)
  std::string build_script;               // runs: the compiled script's output
  std::map<std::string, std::string> links_runs;   // runs: DEP_<links>_* from these outputs
  // Compiled incrementally, with a session kept between builds outside the
  // store: an output for this machine alone (see make_derivation).
  bool incremental = false;

  bool operator==(const UnitInputs&) const = default;
};

// To and from the JSON the derivation carries (every field, by name).

std::string inputs_to_json(const UnitInputs& inputs);
UnitInputs inputs_from_json(const std::string& text);

// The fields that differ, one line each: "features: [std] → [std, derive]".
std::vector<std::string> diff_inputs(const UnitInputs& before, const UnitInputs& after);

// A unit's derivation, its product inside the output, and its -C metadata.
struct UnitDerivation
{
  Derivation drv;
  StorePath drv_path{"00000000000000000000000000000000-unset"};
  StorePath out{"00000000000000000000000000000000-unset"};
  // The unit's main product inside `out`: "bin/my-app", "libfoo-<m>.rlib",
  // "libfoo-<m>.so", "build-script-build", "out" (a run's OUT_DIR),
  // "report.json" (a test run).
  std::string product;
  std::string metadata;                   // -C metadata / extra-filename
};

// Make the derivation: `__kiln_inputs`, `__kiln_unit` (the instructions
// kiln-rust-unit follows), the sources and the input derivations (`drv_of`
// maps an input's output path to its derivation). `hasher` computes output
// paths as Nix does.
//
// An incremental unit's -C metadata must survive an edit, or rustc would
// see a new crate and drop its session: it hashes the inputs with
// `stable_names` put for the paths that change with every edit (its own
// sources, the outputs of other local-only units), as cargo's metadata
// leaves the sources out. Its output path still hashes everything.
UnitDerivation make_derivation(const UnitInputs& inputs, const std::string& system,
                               const std::map<std::string, StorePath>& drv_of,
                               const StoreDir& store_dir, DrvHasher& hasher,
                               const std::map<std::string, std::string>& stable_names = {});

// The inputs' JSON with each path of `stable_names` replaced by its name.
std::string stable_inputs_json(const UnitInputs& inputs,
                               const std::map<std::string, std::string>& stable_names);

// The instructions for kiln-rust-unit (what rustc, rustdoc or the build
// script is run with), as JSON.
std::string instructions(const UnitInputs& inputs, const std::string& metadata);

} // namespace kiln::cargo
