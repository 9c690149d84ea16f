// kiln build, kiln log
#include "check_report.hpp"
#include "cli.hpp"
#include "cmd_cargo.hpp"

#include <kiln/build/build.hpp>
#include <kiln/cargo/workspace.hpp>
#include <kiln/util/error.hpp>

#include <nlohmann/json.hpp>

#include <iostream>
#include <sstream>

namespace kiln::cli {

namespace {

// Progress of a kiln.yaml build: a line as each step starts and ends.
class StepLines : public BuildObserver
{
public:
  StepLines(const Frontend& frontend, bool show) : m_frontend(frontend), m_show(show) {}
  void
  step_started(const StorePath& drv, StepKind kind) override
  {
    say((kind == StepKind::substituting ? "substituting " : "building ") + m_frontend.describe(drv));
  }
  void
  step_finished(const StorePath& drv, const StepResult& result) override
  {
    // Failures are reported once, in full, at the end.
    say(std::string(result.status == StepStatus::failed ? "failed" : to_string(result.status)) +
        " " + m_frontend.describe(drv));
  }

private:
  void
  say(const std::string& line) const
  {
    if (m_show) {
      std::cerr << line << "\n";
    }
  }
  const Frontend& m_frontend;
  bool m_show;
};

struct BuildArgs
{
  std::string file = "kiln.yaml";
  std::vector<std::string> targets;
  bool json = false;
  bool keep_going = false;
  bool no_link = false;
  unsigned timeout = 0;
  unsigned max_silent_time = 0;
  bool check = false;
};

struct Targets
{
  std::vector<StorePath> drvs;
  std::map<StorePath, std::string> label;
  bool from_file = true;
};

// The .drv paths to build and their labels: entries of the build file
// (whose project settings are adopted), or .drv paths given.
Targets
targets_of(Context& ctx, const BuildArgs& args)
{
  Targets targets;
  targets.from_file = args.targets.empty() ||
                      !std::any_of(args.targets.begin(), args.targets.end(),
                                   [](const std::string& t) { return t.ends_with(".drv"); });
  if (!targets.from_file) {
    for (const auto& t : args.targets) {
      auto path = ctx.store().resolve(t);
      targets.drvs.push_back(path);
      std::string n(path.name());
      targets.label[path] = n.substr(0, n.size() - 4);
    }
    return targets;
  }
  BuildFile file = load_build_file(args.file);
  // Project settings: above the user's config file, below KILN_* and flags;
  // adopted before the store is opened, so that store: and store-dir: count.
  Settings settings = ctx.settings();
  for (const auto& [key, value] : file.settings) {
    const std::string& origin = settings.origins[key];
    if (origin == "default" || origin.find(".yaml:") != std::string::npos) {
      settings.set(key, value, file.setting_origins.at(key));
    }
  }
  ctx.adopt_settings(std::move(settings));
  auto drv_of = instantiate(ctx.store(), file, host_platform());
  std::vector<std::string> names = args.targets;
  if (names.empty()) {
    for (const auto& [name, path] : drv_of) {
      names.push_back(name);
    }
  }
  for (const auto& name : names) {
    auto it = drv_of.find(name);
    if (it == drv_of.end()) {
      throw UsageError("'" + name + "' is not an entry of " + args.file);
    }
    targets.drvs.push_back(it->second);
    targets.label[it->second] = name;
  }
  return targets;
}

// kiln build with a kiln.yaml, or of .drv paths.
int
build_files(Context& ctx, const BuildArgs& args, const std::string& push_to, bool push_drvs)
{
  if (push_drvs && push_to.empty()) {
    throw UsageError("--push-drvs goes with --push-to CACHE");
  }
  Targets targets = targets_of(ctx, args);
  const auto& drvs = targets.drvs;
  auto& label = targets.label;
  auto& store = ctx.store();
  const StoreDir& dir = store.store_dir();
  BuildOptions options = ctx.build_options(args.keep_going, args.timeout, args.max_silent_time);
  PushCache push_cache(ctx, push_to);
  options.push_to = push_cache.target();
  Frontend frontend;
  StepLines lines(frontend, !ctx.quiet && !args.json);
  auto describe = [&](const StorePath& drv) {
    return label.count(drv) ? label[drv] : frontend.describe(drv);
  };
  CheckResult checked;
  BuildResult build;
  if (args.check) {
    CheckOptions check;
    if (!ctx.quiet && !args.json) {
      check.progress = check_progress(describe);
    }
    checked = check_derivations(store, drvs, options, frontend, lines, check);
    build = checked.realised;
  } else {
    build = build_derivations(store, drvs, options, frontend, lines);
  }

  // Each derivation's "out" path, read once.
  std::map<StorePath, std::string> out_of;
  auto out_path = [&](const StorePath& drv) -> const std::string& {
    auto it = out_of.find(drv);
    if (it == out_of.end()) {
      it = out_of.emplace(drv, read_derivation(store, drv).outputs.at("out").path).first;
    }
    return it->second;
  };
  int status = 0;
  for (const auto& [drv, result] : build.steps) {
    if (result.status == StepStatus::failed) {
      status = 1;
      std::cerr << "kiln: error: " << result.error << "\n";
    }
    if (args.json) {
      nlohmann::json j = {{"name", describe(drv)},
                          {"drv", dir.print(drv)},
                          {"path", out_path(drv)},
                          {"status", to_string(result.status)}};
      if (!result.error.empty()) {
        j["error"] = result.error;
      }
      if (auto c = checked.checks.find(drv); c != checked.checks.end()) {
        j.update(check_json(c->second, dir));
      }
      std::cout << j.dump() << std::endl;
    }
  }
  status = std::max(status, push_cache.report(build) ? 0 : 1);
  if (push_drvs && !push_cache.push_derivations(drvs)) {
    status = 1;
  }
  if (args.check) {
    status = std::max(status, report_checks(checked, dir, describe, ctx.quiet));
  }
  for (const auto& drv : drvs) {
    if (!build.succeeded({drv})) {
      status = 1;
      continue;
    }
    auto out = dir.parse(out_path(drv));
    if (!args.no_link) {
      // An entry of the file keeps its own result-NAME link, also when it
      // is built alone (then `result` too); one .drv path gets `result`.
      if (drvs.size() == 1) {
        store.add_root("result", out);
      }
      if (drvs.size() > 1 || (targets.from_file && !args.targets.empty())) {
        store.add_root("result-" + label[drv], out);
      }
    }
    if (!args.json) {
      std::cout << dir.print(out) << "\n";
    }
  }
  ctx.apply_size_cap();
  return status;
}

} // namespace

void
register_build_commands(CLI::App& app, Context& ctx)
{
  auto args = std::make_shared<BuildArgs>();
  auto cargo_args = std::make_shared<CargoArgs>();
  auto* build = app.add_subcommand(
    "build", "Build a Cargo project (in a folder with Cargo.toml and no kiln.yaml), the "
             "derivations of a kiln.yaml, or .drv paths: present outputs are kept, trusted "
             "caches are used, the rest is built in the sandbox");
  auto* file_option =
    build->add_option("-f,--file", args->file, "The build file")->capture_default_str();
  build->add_option("TARGET", args->targets,
                    "Entries of the build file, or .drv store paths (default: every entry)");
  build->add_flag("--json", args->json,
                  "One JSON object a line per derivation: name, drv, path, status");
  build->add_flag("-k,--keep-going", args->keep_going,
                  "After a failure, build everything that does not depend on it");
  build->add_flag("--no-link", args->no_link, "Do not create result links");
  build->add_option("--timeout", args->timeout, "Kill a build step after this many seconds");
  build->add_option("--max-silent-time", args->max_silent_time,
                    "Kill a build step silent for this many seconds");
  build->add_flag("--check", args->check,
                  "Build every derivation (every unit, for Cargo) once more and compare with the "
                  "output in the store: say which are not reproducible and which files differ; "
                  "keep each differing rebuild beside the output as …-check (exit status 1)");
  add_cargo_options(*build, *cargo_args);
  build->callback([&ctx, args, cargo_args, build, file_option] {
    // A Cargo project unless a build file or .drv paths are asked for.
    std::error_code ec;
    bool cargo_project = cargo_options_given(*build) ||
                         (file_option->count() == 0 && args->targets.empty() &&
                          !std::filesystem::exists(args->file, ec) &&
                          cargo::find_manifest(std::filesystem::current_path()).has_value());
    if (cargo_project) {
      ctx.action = [&ctx, args, cargo_args] {
        BuildCommonArgs common{args->json, args->keep_going, args->no_link, args->timeout,
                               args->max_silent_time, args->check};
        return cargo_command(ctx, *cargo_args, common, cargo::CargoCommand::build);
      };
      return;
    }
    ctx.action = [&ctx, args, cargo_args] {
      return build_files(ctx, *args, cargo_args->push_to, cargo_args->push_drvs);
    };
  });

  auto log_target = std::make_shared<std::string>();
  auto* log = app.add_subcommand("log", "Print the build log of a derivation or of an output");
  log->add_option("PATH", *log_target, "A .drv path or an output path")->required();
  log->callback([&ctx, log_target] {
    ctx.action = [&ctx, log_target] {
      auto& store = ctx.store();
      auto path = store.resolve(*log_target);
      StorePath drv = path;
      if (!std::string(path.name()).ends_with(".drv")) {
        auto info = store.query_path_info(path);
        if (!info || !info->deriver) {
          throw Error("'" + store.print(path) + "' has no known deriver, so no build log");
        }
        drv = *info->deriver;
      }
      auto file = log_path(store, drv);
      std::error_code ec;
      if (!std::filesystem::exists(file, ec)) {
        throw Error("no build log for '" + store.print(drv) + "' in this store");
      }
      // Without the marks a Cargo unit's builder puts around each
      // diagnostic (for kiln to show it once).
      std::istringstream lines(read_file(file));
      for (std::string line; std::getline(lines, line);) {
        std::string action;
        if (is_builder_message(line)) {
          auto message = nlohmann::json::parse(line.substr(k_builder_message_prefix.size()),
                                               nullptr, false);
          action = message.is_object() ? message.value("action", "") : "";
        }
        if (action != "diagnostic-start" && action != "diagnostic-end") {
          std::cout << line << "\n";
        }
      }
      return 0;
    };
  });
}

} // namespace kiln::cli
