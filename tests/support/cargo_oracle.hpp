// The real cargo as the oracle for kiln's Cargo frontend: the rustc command
// lines `cargo build -v` runs, normalized (paths, hashes and kiln's own
// additions taken out), to compare with those `kiln build -v` runs.
#pragma once

#include "support/test_support.hpp"

#include <map>
#include <set>
#include <string>
#include <vector>

namespace kiln::test {

// The rustc command lines of a `-v` build's stderr ("Running `rustc ...`",
// and cargo clippy's "Running `clippy-driver rustc ...`" as such),
// normalized: output folders, -C metadata/extra-filename/incremental,
// -L dependency=, --error-format/--json, --remap-path-prefix dropped;
// --extern files by name without their hash; -L native= paths and absolute
// source paths reduced.
std::multiset<std::string> rustc_lines(const std::string& verbose_output);

struct OracleRun
{
  RunResult cargo;
  RunResult kiln;
  fs::path cargo_target_dir;   // cargo's CARGO_TARGET_DIR
  fs::path store;              // kiln's store
};

// Build `project` with `cargo <command> -v FLAGS` (its own target folder)
// and with `kiln <command> -v FLAGS` (a fresh store under `scratch`), with
// `env` for both; fails the test if either fails.
OracleRun build_with_both(const fs::path& project, const std::vector<std::string>& flags,
                          const fs::path& scratch, const std::map<std::string, std::string>& env = {},
                          const std::string& command = "build");

// CHECK that both ran the same rustc command lines; lists the differences.
void check_same_rustc_lines(const OracleRun& run, const std::string& what);

} // namespace kiln::test
