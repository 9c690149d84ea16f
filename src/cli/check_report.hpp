// What --check found (kiln build --check, for kiln.yaml and Cargo builds):
// a line per derivation that is not reproducible, the files that differ,
// and a summary; the same as JSON fields for --json.
#pragma once

#include <kiln/build/build.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <string>

namespace kiln::cli {

// "reproducible", "differs" or "failed" (the second build failed).
const char* check_status(const DerivationCheck& check);

// The fields a --json line gets for a checked derivation: "check", and
// "outputs" with each output's path, sameness, differences and where the
// second build was kept.
nlohmann::json check_json(const DerivationCheck& check, const StoreDir& store_dir);

// Print, on stderr, each derivation that is not reproducible (named by
// `describe`) with what differs, and a summary line (unless `quiet`).
// Returns 0 if every checked derivation is reproducible, else 1.
int report_checks(const CheckResult& result, const StoreDir& store_dir,
                  const std::function<std::string(const StorePath& drv)>& describe, bool quiet);

// A progress function for CheckOptions: "checking NAME" and the verdict,
// on stderr.
std::function<void(const StorePath&, const DerivationCheck*)>
check_progress(const std::function<std::string(const StorePath& drv)>& describe);

} // namespace kiln::cli
