// Cargo commands on the command line: the flags cargo users know, turned
// into a cargo::CargoRequest, and what the build shows (progress, cargo's
// JSON messages, --json, links to the products).
#pragma once

#include "cli.hpp"

#include <kiln/cargo/project.hpp>

#include <optional>
#include <string>
#include <vector>

namespace kiln::cli {

// cargo's own flags, as `cargo build --help` lists them, and kiln's for a
// Cargo build.
struct CargoArgs
{
  // Package selection
  std::vector<std::string> packages;
  bool workspace = false;
  std::vector<std::string> exclude;
  // Target selection
  bool lib = false, bins = false, examples = false, tests = false, benches = false;
  bool all_targets = false;
  std::vector<std::string> bin, example, test, bench;
  // Features
  std::vector<std::string> features;
  bool all_features = false, no_default_features = false;
  // Compilation
  bool release = false;
  std::optional<std::string> profile, target, target_dir;
  // Manifest
  std::string manifest_path;
  bool locked = false, offline = false, frozen = false;
  std::vector<std::string> config;
  std::vector<std::string> unstable;      // -Z: refused
  // Output
  int verbose = 0;
  std::vector<std::string> message_format;
  std::optional<std::string> timings;     // --timings[=html,json]
  bool print_plan = false;                // --unit-graph
  // test, clippy, run
  std::vector<std::string> after_dashes;  // the harness's, clippy's or the program's arguments
  bool no_run = false, doc = false, no_fail_fast = false, rerun = false;
  bool no_sandbox_for_tests = false;
  bool no_deps = false;                   // clippy: lint the selected packages only
  // kiln's
  bool link_libs = false;
  std::string push_to;
  bool push_drvs = false;
  std::optional<std::string> explain;

  // What to ask cargo (and kiln) for.
  cargo::CargoRequest request(cargo::CargoCommand command) const;
};

// Add the Cargo flags to a command.
void add_cargo_options(CLI::App& command, CargoArgs& args);

// Was any Cargo-only flag given?
bool cargo_options_given(const CLI::App& command);

struct BuildCommonArgs
{
  bool json = false;
  bool keep_going = false;
  bool no_link = false;
  unsigned timeout = 0;
  unsigned max_silent_time = 0;
  bool check = false;         // kiln build --check: build every unit again and compare
};

int cargo_command(Context& ctx, const CargoArgs& args, const BuildCommonArgs& common,
                  cargo::CargoCommand command);

// A Cargo build's policy: the settings' (ctx.build_options) with cargo's
// jobserver, and cargo's build.jobs unless kiln's own jobs setting was given.
BuildOptions cargo_build_options(Context& ctx, const cargo::CargoProject& project, bool keep_going,
                                 unsigned timeout, unsigned max_silent_time);

// Add the common build flags (--json, -k, --no-link, --timeout,
// --max-silent-time) to a command.
void add_build_common_options(CLI::App& command, BuildCommonArgs& args);

// kiln check, test, clippy, run.
void register_cargo_commands(CLI::App& app, Context& ctx);

} // namespace kiln::cli
