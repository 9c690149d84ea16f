#include <kiln/build/build.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/sandbox/sandbox.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/jobserver.hpp>

#include <nlohmann/json.hpp>

#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
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

// Where a build's early artifacts are offered to the dependents that start
// on them: a folder of hard links (they stay whole however the build goes
// on), deleted when the last dependent using it is done.
class EarlyFolder
{
public:
  EarlyFolder(const LocalStore& store, const StorePath& output)
    : m_folder(store.root() / "tmp", "early-" + output.base() + "-",
               "a folder for the early artifacts of '" + output.base() + "'")
  {
    fs::permissions(path(), fs::perms::owner_all | fs::perms::group_read |
                              fs::perms::group_exec | fs::perms::others_read |
                              fs::perms::others_exec);
  }

  const fs::path& path() const { return m_folder.path(); }

  void
  add(const fs::path& file)
  {
    fs::path target = path() / file.filename();
    std::error_code ec;
    fs::create_hard_link(file, target, ec);
    if (ec) {
      fs::copy_file(file, target, fs::copy_options::overwrite_existing);
    }
  }

private:
  TempFolder m_folder;
};

// The early artifacts announced so far, by output path; an entry goes once
// its output is valid (dependents starting later read the store).
class EarlyArtifacts
{
public:
  void
  offer(const StorePath& output, std::shared_ptr<EarlyFolder> folder)
  {
    std::lock_guard guard(m_mutex);
    m_folders[output] = std::move(folder);
  }
  std::shared_ptr<EarlyFolder>
  find(const StorePath& output) const
  {
    std::lock_guard guard(m_mutex);
    auto it = m_folders.find(output);
    return it == m_folders.end() ? nullptr : it->second;
  }
  void
  withdraw(const StorePath& output)
  {
    std::lock_guard guard(m_mutex);
    m_folders.erase(output);
  }

private:
  mutable std::mutex m_mutex;
  std::map<StorePath, std::shared_ptr<EarlyFolder>> m_folders;
};

// The early artifacts one build offered, withdrawn however the build ends
// (after its outputs are registered, when it succeeds).
class Offers
{
public:
  explicit Offers(EarlyArtifacts& artifacts) : m_artifacts(artifacts) {}
  ~Offers()
  {
    for (const auto& out : m_outputs) {
      m_artifacts.withdraw(out);
    }
  }
  Offers(const Offers&) = delete;
  Offers& operator=(const Offers&) = delete;
  void
  offer(const StorePath& output, std::shared_ptr<EarlyFolder> folder)
  {
    m_artifacts.offer(output, std::move(folder));
    m_outputs.insert(output);
  }

private:
  EarlyArtifacts& m_artifacts;
  std::set<StorePath> m_outputs;
};

// Splits build output into lines and picks out the builder's messages to
// kiln (is_builder_message); the rest goes on to `forward`.
class BuilderMessages
{
public:
  BuilderMessages(std::function<void(std::string_view)> forward,
                  std::function<void(const nlohmann::json&)> handle)
    : m_forward(std::move(forward)), m_handle(std::move(handle))
  {
  }
  void
  feed(std::string_view chunk)
  {
    m_pending.append(chunk);
    std::string out;
    size_t start = 0;
    for (size_t nl; (nl = m_pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(m_pending.data() + start, nl - start);
      if (is_builder_message(line)) {
        try {
          m_handle(nlohmann::json::parse(line.substr(k_builder_message_prefix.size())));
        } catch (const nlohmann::json::exception&) {
          out.append(line).push_back('\n'); // not ours after all
        }
      } else {
        out.append(line).push_back('\n');
      }
    }
    m_pending.erase(0, start);
    // A partial line is held back only while it may still become a message.
    static const std::string opening = std::string(k_builder_message_prefix) + "{";
    if (!m_pending.empty() && !std::string_view(opening).starts_with(
                                std::string_view(m_pending).substr(0, opening.size()))) {
      out += m_pending;
      m_pending.clear();
    }
    if (!out.empty() && m_forward) {
      m_forward(out);
    }
  }

private:
  std::function<void(std::string_view)> m_forward;
  std::function<void(const nlohmann::json&)> m_handle;
  std::string m_pending;
};

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
  // Pipelining needs early inputs mounted at their logical paths.
  bool pipelining = options.may_start_early && sandbox_mode() == SandboxMode::namespaces;
  if (pipelining) {
    hooks.may_start_early = options.may_start_early;
  }
  hooks.cost = options.cost;
  hooks.prepare = options.prepare;
  EarlyArtifacts early_artifacts;
  std::unique_ptr<Jobserver> jobserver;
  if (options.jobserver) {
    static std::atomic<unsigned> serial{0};
    fs::create_directories(store.root() / "tmp");
    jobserver = std::make_unique<Jobserver>(
      store.root() / "tmp" /
        ("jobserver-" + std::to_string(::getpid()) + "-" + std::to_string(serial++)),
      std::max(1u, options.jobs));
  }

  hooks.build = [&](const StorePath& drv_path, BuildContext& context) {
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
    // Inputs: valid ones with their closure; those started on early (not
    // valid yet) as their early folders, with their own inputs in turn.
    std::set<StorePath> direct = drv.input_srcs;
    std::vector<std::shared_ptr<EarlyFolder>> early_held;
    std::set<StorePath> seen;
    std::function<void(const Derivation&)> add_inputs = [&](const Derivation& of) {
      for (const auto& [input, names] : of.input_drvs) {
        // The graph holds every input derivation: it is their closure.
        const Derivation& in = graph.derivation(input);
        for (const auto& name : names) {
          StorePath out = dir.parse(in.outputs.at(name).path);
          if (!seen.insert(out).second) {
            continue;
          }
          auto folder = context.early_inputs().empty() || store.is_valid(out)
                          ? nullptr
                          : early_artifacts.find(out);
          if (!folder) {
            direct.insert(out); // valid (or made valid since it was looked at)
            continue;
          }
          spec.early_inputs[out] = folder->path();
          early_held.push_back(folder);
          direct.insert(in.input_srcs.begin(), in.input_srcs.end());
          add_inputs(in);
        }
      }
    };
    add_inputs(drv);
    spec.inputs = store.closure(direct);
    for (const auto& [name, out] : drv.outputs) {
      spec.outputs.emplace(name, dir.parse(out.path));
    }
    if (jobserver) {
      spec.jobserver = jobserver->path();
    }
    SandboxOptions sandbox;
    fs::create_directories(store.root() / "logs");
    sandbox.log_file = log_path(store, drv_path);
    std::map<std::string, fs::path> output_dirs;
    sandbox.on_start = [&](const std::map<std::string, fs::path>& dirs) { output_dirs = dirs; };
    Offers offers(early_artifacts);
    BuilderMessages messages(options.on_build_output, [&](const nlohmann::json& message) {
      // {"action":"early-output","path":"/kiln/store/<output>/<file>"}
      if (message.value("action", "") != "early-output" || !pipelining) {
        return;
      }
      std::string path = message.value("path", "");
      for (const auto& [name, out] : spec.outputs) {
        std::string prefix = dir.print(out) + "/";
        if (!path.starts_with(prefix) || !output_dirs.count(name)) {
          continue;
        }
        fs::path file = fs::path(path.substr(prefix.size())).lexically_normal();
        fs::path host = output_dirs.at(name) / file;
        if (file.has_parent_path() || file.empty() || !fs::is_regular_file(fs::symlink_status(host))) {
          return; // only files at the top of an output, and only real ones
        }
        auto folder = early_artifacts.find(out);
        if (!folder) {
          folder = std::make_shared<EarlyFolder>(store, out);
        }
        folder->add(host);
        offers.offer(out, folder);
        context.early_ready();
      }
    });
    sandbox.on_output = [&](std::string_view chunk) { messages.feed(chunk); };
    BuildOutcome outcome = run_build(store, spec, sandbox);
    early_held.clear();
    context.work_done();
    if (!outcome.success) {
      throw Error("building '" + dir.print(drv_path) + "' failed: " + outcome.error +
                  "\n--- last lines of the log (full log: " + outcome.log_file.string() +
                  ", or `kiln log " + dir.print(drv_path) + "`) ---\n" + outcome.log_tail);
    }
    // Started on early artifacts: valid only once what it read is.
    if (!context.wait_for_inputs()) {
      throw Error("an input of '" + dir.print(drv_path) + "' failed");
    }
    std::set<StorePath> candidates = spec.inputs;
    for (const auto& [input, folder] : spec.early_inputs) {
      candidates.insert(input);
    }
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
  realise_options.jobserver = jobserver.get();
  return realise(graph, drvs, hooks, realise_options);
}

} // namespace kiln
