#include "check_report.hpp"

#include <cstdio>
#include <iostream>

namespace kiln::cli {

const char*
check_status(const DerivationCheck& check)
{
  return !check.error.empty() ? "failed" : check.reproducible() ? "reproducible" : "differs";
}

nlohmann::json
check_json(const DerivationCheck& check, const StoreDir& store_dir)
{
  nlohmann::json j;
  j["check"] = check_status(check);
  if (!check.error.empty()) {
    j["checkError"] = check.error;
  }
  j["outputs"] = nlohmann::json::array();
  for (const auto& out : check.outputs) {
    nlohmann::json o = {{"name", out.name}, {"path", store_dir.print(out.path)}, {"same", out.same}};
    if (!out.same) {
      o["differences"] = nlohmann::json::array();
      for (const auto& d : out.differences) {
        o["differences"].push_back({{"file", d.path}, {"what", d.what}});
      }
      if (out.kept) {
        o["kept"] = out.kept->string();
      }
    }
    j["outputs"].push_back(o);
  }
  return j;
}

int
report_checks(const CheckResult& result, const StoreDir& store_dir,
              const std::function<std::string(const StorePath& drv)>& describe, bool quiet)
{
  size_t same = 0, differ = 0, failed = 0;
  for (const auto& [drv, check] : result.checks) {
    if (check.reproducible()) {
      ++same;
      continue;
    }
    if (!check.error.empty()) {
      ++failed;
      std::cerr << "kiln: error: could not check " << describe(drv) << ": " << check.error << "\n";
      continue;
    }
    ++differ;
    std::cerr << "kiln: error: " << describe(drv) << " is not reproducible ("
              << store_dir.print(drv) << ")\n";
    for (const auto& out : check.outputs) {
      if (out.same) {
        continue;
      }
      std::cerr << "  " << store_dir.print(out.path) << " differs from its rebuild"
                << (out.kept ? " (kept at " + out.kept->string() + ")" : std::string()) << ":\n";
      for (const auto& d : out.differences) {
        std::cerr << "    " << (d.path.empty() ? std::string("(the output itself)") : d.path)
                  << ": " << d.what << "\n";
      }
    }
  }
  size_t not_checked = 0;
  for (const auto& [drv, step] : result.realised.steps) {
    if (!result.checks.count(drv)) {
      ++not_checked;
    }
  }
  if (!quiet || differ + failed > 0) {
    std::string line = "checked " + std::to_string(result.checks.size()) + " derivation" +
                       (result.checks.size() == 1 ? "" : "s") + ": " + std::to_string(same) +
                       " reproducible";
    if (differ > 0) {
      line += ", " + std::to_string(differ) + " not reproducible";
    }
    if (failed > 0) {
      line += ", " + std::to_string(failed) + " failed to build again";
    }
    if (not_checked > 0) {
      line += " (" + std::to_string(not_checked) + " not realised, not checked)";
    }
    std::cerr << "kiln: " << line << "\n";
  }
  return differ + failed + not_checked == 0 ? 0 : 1;
}

std::function<void(const StorePath&, const DerivationCheck*)>
check_progress(const std::function<std::string(const StorePath& drv)>& describe)
{
  return [describe](const StorePath& drv, const DerivationCheck* done) {
    std::fprintf(stderr, "%12s %s%s\n", done ? (done->reproducible() ? "Same" : "DIFFERS") : "Checking",
                 describe(drv).c_str(),
                 done && !done->error.empty() ? " (failed to build again)" : "");
  };
}

} // namespace kiln::cli
