// The in-sandbox half of "builtin:rust-unit": what `kiln-rust-unit` (or
// `kiln __rust-unit`) does with a unit's instructions. Links only util.
#pragma once

#include <string>
#include <vector>

namespace kiln::cargo {

// Read the unit from the environment (__kiln_unit, $out), run rustc, the
// build script, rustdoc or the test, write the outputs. Returns the exit
// status.
int run_rust_unit();

// A name as cargo puts it into an environment variable's name: upper case,
// '-' → '_' (CARGO_FEATURE_*, CARGO_CFG_*, DEP_<links>_<key>).
std::string envify(std::string name);

// Parse a build script's stdout into the directives file's JSON text;
// `error` gets the first `cargo::error=` message, if any.
std::string parse_build_script_output(const std::string& stdout_text, std::string& error,
                                      std::vector<std::string>& warnings);

} // namespace kiln::cargo
