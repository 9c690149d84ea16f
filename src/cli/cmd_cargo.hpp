// `kiln build` in a Cargo project: the flags cargo users know, and the
// build itself (plan, derivations, realise, link the results).
#pragma once

#include "cli.hpp"

#include <kiln/cargo/plan.hpp>

#include <optional>
#include <string>
#include <vector>

namespace kiln::cli {

struct CargoArgs
{
  cargo::PlanOptions plan;
  bool release = false;
  std::optional<std::string> profile;
  std::string manifest_path;
  bool locked = false;
  bool print_plan = false;     // --unit-graph: print the plan, build nothing
  bool link_libs = false;
  std::string push_to;         // --push-to CACHE
};

// Add the Cargo flags to `build`.
void add_cargo_options(CLI::App& build, CargoArgs& args);

// Was any Cargo-only flag given?
bool cargo_options_given(const CLI::App& build);

struct BuildCommonArgs
{
  bool json = false;
  bool keep_going = false;
  bool no_link = false;
  unsigned timeout = 0;
  unsigned max_silent_time = 0;
};

int cargo_build(Context& ctx, CargoArgs& args, const BuildCommonArgs& common);

} // namespace kiln::cli
