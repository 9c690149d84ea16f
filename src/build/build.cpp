#include <kiln/build/build.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/sandbox/sandbox.hpp>
#include <kiln/util/error.hpp>

#include <sys/utsname.h>

#include <sstream>

namespace kiln {

namespace fs = std::filesystem;

std::string
host_platform()
{
  struct utsname u;
  ::uname(&u);
  return std::string(u.machine) + "-linux";
}

std::filesystem::path
log_path(const LocalStore& store, const StorePath& drv)
{
  return store.root() / "logs" / (drv.base() + ".log");
}

std::map<std::string, StorePath>
instantiate(LocalStore& store, const BuildFile& file, const std::string& platform)
{
  const StoreDir& dir = store.store_dir();
  std::map<std::string, StorePath> drv_of;
  std::map<std::string, std::string> out_of;
  DrvHasher hasher(dir, [&](const StorePath& p) { return read_derivation(store, p); });
  std::function<void(const std::string&)> make = [&](const std::string& name) {
    if (drv_of.count(name)) {
      return;
    }
    const DerivationSpec& spec = file.derivations.at(name);
    for (const auto& dep : spec.deps) {
      make(dep);
    }
    Derivation drv;
    drv.name = name;
    try {
      check_store_path_name(name);
    } catch (const FormatError& e) {
      throw UsageError(spec.location + ": derivation name: " + e.what());
    }
    drv.platform = platform;
    drv.builder = spec.builder;
    drv.args = spec.args;
    drv.env = spec.env;
    drv.env["name"] = name;
    drv.env["builder"] = spec.builder;
    drv.env["system"] = platform;
    drv.outputs["out"] = {};
    for (const auto& dep : spec.deps) {
      drv.input_drvs[drv_of.at(dep)] = {"out"};
      drv.env[dep] = out_of.at(dep);
    }
    for (const auto& src : spec.srcs) {
      std::error_code ec;
      if (!fs::exists(fs::symlink_status(src, ec))) {
        throw UsageError(spec.location + ": source '" + src.string() + "' does not exist");
      }
      StorePath path = store.add_path(src);
      drv.input_srcs.insert(path);
      drv.env[spec.srcs.size() == 1 ? "src" : "src_" + src.filename().string()] = dir.print(path);
    }
    std::string tools;
    for (const auto& tool : spec.tools) {
      std::error_code ec;
      if (!fs::exists(tool, ec)) {
        throw UsageError(spec.location + ": tool '" + tool.string() + "' does not exist");
      }
      HashSink hash;
      dump_path(fs::canonical(tool), hash);
      tools += tool.string() + "=" + hash.finish().to_string(HashFormat::nix32, true) + "\n";
    }
    if (!tools.empty()) {
      drv.env[k_tools_env] = tools;
    }
    compute_output_paths(drv, dir, hasher);
    drv_of.emplace(name, add_derivation(store, drv));
    out_of.emplace(name, drv.outputs.at("out").path);
  };
  for (const auto& [name, spec] : file.derivations) {
    make(name);
  }
  return drv_of;
}

namespace {

std::vector<fs::path>
declared_tools(const Derivation& drv)
{
  std::vector<fs::path> tools;
  auto it = drv.env.find(k_tools_env);
  if (it == drv.env.end()) {
    return tools;
  }
  std::istringstream lines(it->second);
  for (std::string line; std::getline(lines, line);) {
    auto eq = line.rfind('=');
    if (eq != std::string::npos) {
      tools.emplace_back(line.substr(0, eq));
    }
  }
  return tools;
}

std::vector<StorePath>
outputs_of(const LocalStore& store, const Derivation& drv)
{
  std::vector<StorePath> out;
  for (const auto& [name, o] : drv.outputs) {
    out.push_back(store.store_dir().parse(o.path));
  }
  return out;
}

} // namespace

std::map<StorePath, StepResult>
build_derivations(LocalStore& store, const std::vector<StorePath>& drvs,
                  const BuildOptions& options)
{
  const StoreDir& dir = store.store_dir();
  DrvReader read = options.read ? options.read
                                 : [&](const StorePath& p) { return read_derivation(store, p); };
  auto graph = BuildGraph::from_targets(drvs, read, dir);
  auto say = [&](const std::string& line) {
    if (options.progress) {
      options.progress(line);
    }
  };

  RealiseHooks hooks;
  hooks.is_present = [&](const StorePath& drv) {
    for (const auto& out : outputs_of(store, graph.derivation(drv))) {
      if (!store.is_valid(out)) {
        return false;
      }
    }
    return true;
  };
  hooks.is_substitutable = [&](const StorePath& drv) {
    if (options.caches.empty()) {
      return false;
    }
    for (const auto& out : outputs_of(store, graph.derivation(drv))) {
      bool found = false;
      for (auto* cache : options.caches) {
        auto narinfo = cache->query(out);
        if (narinfo && is_trusted(options.policy, dir, narinfo->info)) {
          found = true;
          break;
        }
      }
      if (!found) {
        return false;
      }
    }
    return true;
  };
  hooks.substitute = [&](const StorePath& drv) {
    SubstituteOptions sub;
    sub.connections = options.connections;
    auto result = substitute(store, options.caches, options.policy,
                             outputs_of(store, graph.derivation(drv)), sub);
    if (options.on_downloaded) {
      options.on_downloaded(result.bytes_downloaded);
    }
    if (!result.failed.empty()) {
      throw Error(result.failed.begin()->second);
    }
  };
  hooks.build = [&](const StorePath& drv_path) {
    const Derivation& drv = graph.derivation(drv_path);
    BuildSpec spec;
    spec.name = drv.name;
    spec.builder = drv.builder;
    spec.args = drv.args;
    spec.env = drv.env;
    spec.tools = declared_tools(drv);
    if (drv.builder.starts_with("builtin:")) {
      auto builtin = options.builtins.find(drv.builder);
      if (builtin == options.builtins.end()) {
        throw Error("'" + dir.print(drv_path) + "' needs the builder '" + drv.builder +
                    "', which only the command that made it provides (for Cargo units: "
                    "`kiln build` in the project)");
      }
      builtin->second(drv, spec);
    }
    spec.timeout = options.timeout;
    spec.max_silent_time = options.max_silent_time;
    std::set<StorePath> direct = drv.input_srcs;
    for (const auto& [input, names] : drv.input_drvs) {
      // The graph holds every input derivation: it is their closure.
      const Derivation& in = graph.derivation(input);
      for (const auto& name : names) {
        direct.insert(dir.parse(in.outputs.at(name).path));
      }
    }
    spec.inputs = store.closure(direct);
    for (const auto& [name, out] : drv.outputs) {
      spec.outputs.emplace(name, dir.parse(out.path));
    }
    SandboxOptions sandbox;
    fs::create_directories(store.root() / "logs");
    sandbox.log_file = log_path(store, drv_path);
    sandbox.on_output = options.on_build_output;
    BuildOutcome outcome = run_build(store, spec, sandbox);
    if (!outcome.success) {
      throw Error("building '" + dir.print(drv_path) + "' failed: " + outcome.error +
                  "\n--- last lines of the log (full log: " + outcome.log_file.string() +
                  ", or `kiln log " + dir.print(drv_path) + "`) ---\n" + outcome.log_tail);
    }
    std::set<StorePath> candidates = spec.inputs;
    for (const auto& [name, out] : spec.outputs) {
      candidates.insert(out);
    }
    std::vector<StorePath> registered;
    for (const auto& [name, built] : outcome.output_dirs) {
      store.register_output(spec.outputs.at(name), built, candidates, drv_path,
                            std::string(to_string(outcome.mode)));
      registered.push_back(spec.outputs.at(name));
    }
    if (options.on_built) {
      options.on_built(drv_path, registered);
    }
  };
  hooks.progress = [&](const StorePath& drv, const std::string& event) {
    if (options.on_step) {
      options.on_step(drv, event);
    }
    std::string name(drv.name());
    name = name.substr(0, name.size() - 4);
    // Failures are reported once, in full, by the caller.
    say(event.starts_with("failed") ? "failed " + name : event + " " + name);
  };
  RealiseOptions realise_options;
  realise_options.jobs = options.jobs;
  realise_options.substitution_jobs = options.connections;
  realise_options.keep_going = options.keep_going;
  return realise(graph, drvs, hooks, realise_options);
}

} // namespace kiln
