#include <kiln/build/build.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/sandbox/sandbox.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/jobserver.hpp>
#include <kiln/util/parallel.hpp>

#include <nlohmann/json.hpp>

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
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
  return store.build_log_path(drv);
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
    : m_folder(store.make_temp_folder("early-" + output.base()))
  {
    fs::permissions(path(), fs::perms::owner_all | fs::perms::group_read |
                              fs::perms::group_exec | fs::perms::others_read |
                              fs::perms::others_exec);
  }

  const fs::path& path() const { return m_folder->path(); }

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
  std::unique_ptr<TempFolder> m_folder;
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
        // What came before a message is passed on before it, in order.
        if (!out.empty() && m_forward) {
          m_forward(out);
          out.clear();
        }
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

// The observer, called by one thread at a time.
class SerializedObserver
{
public:
  explicit SerializedObserver(BuildObserver& observer) : m_observer(observer) {}
  template <typename F>
  void
  operator()(F&& call)
  {
    std::lock_guard guard(m_mutex);
    call(m_observer);
  }

private:
  BuildObserver& m_observer;
  std::mutex m_mutex;
};

// A build outside the scheduler (a second build, for a check): its inputs
// are all valid, nothing starts early on it.
class PlainContext : public BuildContext
{
public:
  const std::vector<StorePath>& early_inputs() const override { return m_none; }
  void early_ready() override {}
  void work_done() override {}
  bool wait_for_inputs() override { return true; }

private:
  std::vector<StorePath> m_none;
};

// One build_derivations call: the scheduler's hooks, over the store, the
// caches, the sandbox and the frontend.
class Realiser
{
public:
  Realiser(LocalStore& store, const BuildOptions& options, const Frontend& frontend,
           BuildObserver& observer, const BuildGraph& graph)
    : m_store(store), m_dir(store.store_dir()), m_options(options), m_frontend(frontend),
      m_observer(observer), m_graph(graph),
      m_pipelining(sandbox_mode() == SandboxMode::namespaces)
  {
    if (options.jobserver) {
      m_jobserver = std::make_unique<Jobserver>(store.new_temp_path("jobserver"),
                                                std::max(1u, options.jobs));
    }
  }

  RealiseHooks
  hooks()
  {
    RealiseHooks hooks;
    hooks.is_present = [this](const StorePath& drv) { return is_present(drv); };
    hooks.is_substitutable = [this](const StorePath& drv) { return is_substitutable(drv); };
    hooks.claim = [this](const StorePath& drv) -> std::shared_ptr<void> {
      return m_store.claim(outputs_of(m_store, m_graph.derivation(drv)));
    };
    hooks.substitute = [this](const StorePath& drv) { substitute(drv); };
    hooks.planned_build = [this](const StorePath& drv) { m_frontend.build_planned(drv); };
    hooks.prepare = [this](const StorePath& drv) { m_frontend.prepare(drv); };
    hooks.build = [this](const StorePath& drv, BuildContext& context) { build(drv, context); };
    hooks.cost = [this](const StorePath& drv) { return m_frontend.cost(drv); };
    if (m_pipelining) {
      hooks.may_start_early = [this](const StorePath& dependent, const StorePath& input) {
        return m_frontend.may_start_early(dependent, input);
      };
    }
    hooks.started = [this](const StorePath& drv, StepKind kind) {
      m_observer([&](BuildObserver& o) { o.step_started(drv, kind); });
    };
    hooks.finished = [this](const StorePath& drv, const StepResult& result) {
      m_observer([&](BuildObserver& o) { o.step_finished(drv, result); });
    };
    return hooks;
  }

  Jobserver* jobserver() const { return m_jobserver.get(); }

  // Build `drv_path` once more (its inputs valid), registering nothing;
  // with a job token of its own, as the scheduler gives a build.
  BuildOutcome
  rebuild(const StorePath& drv_path)
  {
    m_frontend.prepare(drv_path);
    const Derivation& drv = m_graph.derivation(drv_path);
    BuildSpec spec = step_of(drv);
    PlainContext context;
    std::vector<std::shared_ptr<EarlyFolder>> none;
    add_inputs(spec, drv, context, none);
    SandboxOptions sandbox;
    sandbox.log_file = m_store.build_log_path(drv_path).replace_extension(".check.log");
    // The builder's messages are for a first build (early artifacts, the
    // commands it runs); its output is in the log.
    BuilderMessages messages({}, [](const nlohmann::json&) {});
    sandbox.on_output = [&](std::string_view chunk) { messages.feed(chunk); };
    struct Token
    {
      Jobserver* jobserver;
      explicit Token(Jobserver* j) : jobserver(j)
      {
        if (jobserver) {
          jobserver->acquire();
        }
      }
      ~Token()
      {
        if (jobserver) {
          jobserver->release();
        }
      }
    } token(m_jobserver.get());
    BuildOutcome outcome = run_build(m_store, spec, sandbox);
    if (!outcome.success) {
      throw Error("building '" + m_dir.print(drv_path) + "' again failed: " + outcome.error +
                  "\n--- last lines of the log (full log: " + outcome.log_file.string() +
                  ") ---\n" + outcome.log_tail);
    }
    return outcome;
  }

  // Build `drv_path` again and compare each output with the valid one.
  DerivationCheck
  check(const StorePath& drv_path, const CheckOptions& options)
  {
    DerivationCheck result;
    try {
      BuildOutcome outcome = rebuild(drv_path);
      const Derivation& drv = m_graph.derivation(drv_path);
      for (const auto& [name, built] : outcome.output_dirs) {
        OutputCheck out{name, m_dir.parse(drv.outputs.at(name).path), false, {}, std::nullopt};
        auto info = m_store.query_path_info(out.path);
        HashSink hash;
        dump_path(built, hash);
        out.same = info && hash.finish() == info->nar_hash;
        if (!out.same) {
          fs::path valid = m_store.physical_path(out.path);
          out.differences = diff_trees(valid, built, options.max_differences);
          if (options.keep) {
            fs::path kept = valid.string() + "-check";
            std::error_code ec;
            if (fs::exists(fs::symlink_status(kept, ec))) {
              delete_path(kept);
            }
            fs::rename(built, kept);
            out.kept = kept;
          }
        }
        result.outputs.push_back(std::move(out));
      }
    } catch (const std::exception& e) {
      result.error = e.what();
    }
    return result;
  }

  void
  report_pushes(BuildResult& result)
  {
    std::lock_guard guard(m_push_mutex);
    result.pushed = m_pushed;
    result.push_errors = m_push_errors;
  }

private:
  bool
  is_present(const StorePath& drv) const
  {
    auto outputs = outputs_of(m_store, m_graph.derivation(drv));
    // Rooted first: an output found valid stays so while this build needs it.
    m_store.add_temp_roots({outputs.begin(), outputs.end()});
    return std::all_of(outputs.begin(), outputs.end(),
                       [&](const StorePath& out) { return m_store.is_valid(out); });
  }

  bool
  is_substitutable(const StorePath& drv) const
  {
    if (m_frontend.local_only(drv)) {
      return false;
    }
    return can_substitute(m_options.caches, m_options.policy, m_dir,
                          outputs_of(m_store, m_graph.derivation(drv)));
  }

  void
  substitute(const StorePath& drv)
  {
    SubstituteOptions sub;
    sub.connections = m_options.connections;
    auto result = kiln::substitute(m_store, m_options.caches, m_options.policy,
                                   outputs_of(m_store, m_graph.derivation(drv)), sub);
    m_observer([&](BuildObserver& o) { o.downloaded(result.bytes_downloaded); });
    if (!result.failed.empty()) {
      throw Error(result.failed.begin()->second);
    }
  }

  // The sandboxed step of `drv`: its builder (a builtin one from the
  // frontend), environment, tools and outputs; inputs come separately.
  BuildSpec
  step_of(const Derivation& drv) const
  {
    BuildSpec spec;
    spec.name = drv.name;
    spec.builder = drv.builder;
    spec.args = drv.args;
    spec.env = drv.env;
    spec.tools = declared_tools(drv);
    if (drv.builder.starts_with("builtin:")) {
      m_frontend.builtin_builder(drv, spec);
    }
    spec.timeout = m_options.timeout;
    spec.max_silent_time = m_options.max_silent_time;
    for (const auto& [name, out] : drv.outputs) {
      spec.outputs.emplace(name, m_dir.parse(out.path));
    }
    if (m_jobserver) {
      spec.jobserver = m_jobserver->path();
    }
    return spec;
  }

  // Inputs: valid ones with their closure; those started on early (not
  // valid yet) as their early folders, with their own inputs in turn. The
  // folders are held in `held` while the build runs.
  void
  add_inputs(BuildSpec& spec, const Derivation& drv, const BuildContext& context,
             std::vector<std::shared_ptr<EarlyFolder>>& held) const
  {
    std::set<StorePath> direct = drv.input_srcs;
    std::set<StorePath> seen;
    std::function<void(const Derivation&)> add = [&](const Derivation& of) {
      for (const auto& [input, names] : of.input_drvs) {
        // The graph holds every input derivation: it is their closure.
        const Derivation& in = m_graph.derivation(input);
        for (const auto& name : names) {
          StorePath out = m_dir.parse(in.outputs.at(name).path);
          if (!seen.insert(out).second) {
            continue;
          }
          auto folder = context.early_inputs().empty() || m_store.is_valid(out)
                          ? nullptr
                          : m_early.find(out);
          if (!folder) {
            direct.insert(out); // valid (or made valid since it was looked at)
            continue;
          }
          spec.early_inputs[out] = folder->path();
          held.push_back(folder);
          direct.insert(in.input_srcs.begin(), in.input_srcs.end());
          add(in);
        }
      }
    };
    add(drv);
    spec.inputs = m_store.closure(direct);
  }

  // {"action":"early-output","path":"/kiln/store/<output>/<file>"}: the file
  // is offered to the dependents that may start on it.
  void
  early_output(const nlohmann::json& message, const BuildSpec& spec,
               const std::map<std::string, fs::path>& output_dirs, Offers& offers,
               BuildContext& context)
  {
    if (message.value("action", "") != "early-output" || !m_pipelining) {
      return;
    }
    std::string path = message.value("path", "");
    for (const auto& [name, out] : spec.outputs) {
      std::string prefix = m_dir.print(out) + "/";
      if (!path.starts_with(prefix) || !output_dirs.count(name)) {
        continue;
      }
      fs::path file = fs::path(path.substr(prefix.size())).lexically_normal();
      fs::path host = output_dirs.at(name) / file;
      if (file.has_parent_path() || file.empty() || !fs::is_regular_file(fs::symlink_status(host))) {
        return; // only files at the top of an output, and only real ones
      }
      auto folder = m_early.find(out);
      if (!folder) {
        folder = std::make_shared<EarlyFolder>(m_store, out);
      }
      folder->add(host);
      offers.offer(out, folder);
      context.early_ready();
    }
  }

  void
  build(const StorePath& drv_path, BuildContext& context)
  {
    const Derivation& drv = m_graph.derivation(drv_path);
    BuildSpec spec = step_of(drv);
    std::vector<std::shared_ptr<EarlyFolder>> early_held;
    add_inputs(spec, drv, context, early_held);
    SandboxOptions sandbox;
    sandbox.log_file = log_path(m_store, drv_path);
    std::map<std::string, fs::path> output_dirs;
    sandbox.on_start = [&](const std::map<std::string, fs::path>& dirs) { output_dirs = dirs; };
    Offers offers(m_early);
    BuilderMessages messages(
      [&](std::string_view chunk) {
        m_observer([&](BuildObserver& o) { o.build_output(drv_path, chunk); });
      },
      [&](const nlohmann::json& message) {
        if (message.value("action", "") == "early-output") {
          early_output(message, spec, output_dirs, offers, context);
        } else {
          m_observer([&](BuildObserver& o) { o.builder_message(drv_path, message.dump()); });
        }
      });
    sandbox.on_output = [&](std::string_view chunk) { messages.feed(chunk); };
    BuildOutcome outcome = run_build(m_store, spec, sandbox);
    early_held.clear();
    context.work_done();
    if (!outcome.success) {
      throw Error("building '" + m_dir.print(drv_path) + "' failed: " + outcome.error +
                  "\n--- last lines of the log (full log: " + outcome.log_file.string() +
                  ", or `kiln log " + m_dir.print(drv_path) + "`) ---\n" + outcome.log_tail);
    }
    // Started on early artifacts: valid only once what it read is.
    if (!context.wait_for_inputs()) {
      throw Error("an input of '" + m_dir.print(drv_path) + "' failed");
    }
    auto registered = register_outputs(drv_path, spec, outcome);
    push(drv_path, registered);
  }

  std::vector<StorePath>
  register_outputs(const StorePath& drv_path, const BuildSpec& spec, const BuildOutcome& outcome)
  {
    std::set<StorePath> candidates = spec.inputs;
    for (const auto& [input, folder] : spec.early_inputs) {
      candidates.insert(input);
    }
    for (const auto& [name, out] : spec.outputs) {
      candidates.insert(out);
    }
    std::vector<StorePath> registered;
    bool local_only = m_frontend.local_only(drv_path);
    for (const auto& [name, built] : outcome.output_dirs) {
      m_store.register_output(spec.outputs.at(name), built, candidates, drv_path,
                              std::string(to_string(outcome.mode)), local_only);
      registered.push_back(spec.outputs.at(name));
    }
    return registered;
  }

  // --push-to: what was just built goes up at once, with its closure.
  void
  push(const StorePath& drv_path, const std::vector<StorePath>& outputs)
  {
    if (!m_options.push_to || !m_frontend.may_push(drv_path) || m_frontend.local_only(drv_path)) {
      return;
    }
    PushOptions push_options;
    push_options.key = m_options.push_to->key;
    push_options.connections = m_options.connections;
    try {
      auto result = kiln::push(m_store, *m_options.push_to->cache, outputs, push_options);
      {
        std::lock_guard guard(m_push_mutex);
        m_pushed += result.uploaded.size();
      }
      m_observer([&](BuildObserver& o) { o.pushed(drv_path, result.uploaded.size()); });
    } catch (const std::exception& e) {
      std::lock_guard guard(m_push_mutex);
      m_push_errors.push_back(m_frontend.describe(drv_path) + ": " + e.what());
    }
  }

  LocalStore& m_store;
  const StoreDir& m_dir;
  const BuildOptions& m_options;
  const Frontend& m_frontend;
  mutable SerializedObserver m_observer;
  const BuildGraph& m_graph;
  // Pipelining needs early inputs mounted at their logical paths.
  bool m_pipelining;
  std::unique_ptr<Jobserver> m_jobserver;
  EarlyArtifacts m_early;
  std::mutex m_push_mutex;
  size_t m_pushed = 0;
  std::vector<std::string> m_push_errors;
};

// The graph's .drvs and sources stay in the store while this process builds.
void
keep_inputs(LocalStore& store, const BuildGraph& graph)
{
  std::set<StorePath> used;
  for (const auto& drv : graph.topological_order()) {
    used.insert(drv);
    const auto& srcs = graph.derivation(drv).input_srcs;
    used.insert(srcs.begin(), srcs.end());
  }
  store.add_temp_roots(used);
}

} // namespace

// --- Frontend and BuildObserver defaults ---

const Derivation*
Frontend::derivation(const StorePath&) const
{
  return nullptr;
}

void
Frontend::builtin_builder(const Derivation& drv, BuildSpec&) const
{
  throw Error("'" + drv.name + "' needs the builder '" + drv.builder +
              "', which only the command that made it provides (for Cargo units: "
              "`kiln build` in the project)");
}

void
Frontend::build_planned(const StorePath&) const
{
}

void
Frontend::prepare(const StorePath&) const
{
}

double
Frontend::cost(const StorePath&) const
{
  return 1;
}

bool
Frontend::may_start_early(const StorePath&, const StorePath&) const
{
  return false;
}

bool
Frontend::may_push(const StorePath&) const
{
  return true;
}

bool
Frontend::local_only(const StorePath&) const
{
  return false;
}

std::string
Frontend::describe(const StorePath& drv) const
{
  std::string name(drv.name());
  return name.ends_with(".drv") ? name.substr(0, name.size() - 4) : name;
}

void BuildObserver::step_started(const StorePath&, StepKind) {}
void BuildObserver::step_finished(const StorePath&, const StepResult&) {}
void BuildObserver::downloaded(uint64_t) {}
void BuildObserver::build_output(const StorePath&, std::string_view) {}
void BuildObserver::pushed(const StorePath&, size_t) {}
void BuildObserver::builder_message(const StorePath&, const std::string&) {}

bool
BuildResult::succeeded(const std::vector<StorePath>& drvs) const
{
  return std::all_of(drvs.begin(), drvs.end(), [&](const StorePath& drv) {
    auto it = steps.find(drv);
    return it != steps.end() && (it->second.status == StepStatus::present ||
                                 it->second.status == StepStatus::built ||
                                 it->second.status == StepStatus::substituted);
  });
}

bool
DerivationCheck::reproducible() const
{
  return error.empty() && !outputs.empty() &&
         std::all_of(outputs.begin(), outputs.end(), [](const OutputCheck& o) { return o.same; });
}

namespace {

DrvReader
reader_for(LocalStore& store)
{
  return [&](const StorePath& p) { return read_derivation(store, p); };
}

// The derivations the frontend holds: it outlives the graph.
BuildGraph::DrvLender
lender_for(const Frontend& frontend)
{
  return [&](const StorePath& p) { return frontend.derivation(p); };
}

} // namespace

CheckResult
check_derivations(LocalStore& store, const std::vector<StorePath>& drvs, const BuildOptions& options,
                  const Frontend& frontend, BuildObserver& observer, const CheckOptions& check)
{
  auto graph = BuildGraph::from_targets(drvs, reader_for(store), store.store_dir(),
                                        lender_for(frontend));
  std::vector<StorePath> all = graph.topological_order();
  CheckResult result;
  result.realised = build_derivations(store, all, options, frontend, observer);
  std::vector<StorePath> todo;
  for (const auto& drv : all) {
    if (result.realised.succeeded({drv})) {
      todo.push_back(drv);
    }
  }
  Realiser realiser(store, options, frontend, observer, graph);
  std::mutex mutex;
  parallel_for(todo.size(), std::max(1u, options.jobs), [&](size_t i) {
    if (check.progress) {
      std::lock_guard guard(mutex);
      check.progress(todo[i], nullptr);
    }
    DerivationCheck checked = realiser.check(todo[i], check);
    std::lock_guard guard(mutex);
    auto& stored = result.checks[todo[i]] = std::move(checked);
    if (check.progress) {
      check.progress(todo[i], &stored);
    }
  });
  return result;
}

Rebuild
rebuild_derivation(LocalStore& store, const StorePath& drv, const BuildOptions& options,
                   const Frontend& frontend, BuildObserver& observer)
{
  auto graph = BuildGraph::from_targets({drv}, reader_for(store), store.store_dir(),
                                        lender_for(frontend));
  Realiser realiser(store, options, frontend, observer, graph);
  BuildOutcome outcome = realiser.rebuild(drv);
  return Rebuild{outcome.output_dirs, outcome.lease};
}

BuildResult
build_derivations(LocalStore& store, const std::vector<StorePath>& drvs,
                  const BuildOptions& options, const Frontend& frontend, BuildObserver& observer)
{
  store.add_temp_roots({drvs.begin(), drvs.end()});
  auto graph = BuildGraph::from_targets(drvs, reader_for(store), store.store_dir(),
                                        lender_for(frontend));
  keep_inputs(store, graph);
  Realiser realiser(store, options, frontend, observer, graph);
  RealiseHooks hooks = realiser.hooks();
  RealiseOptions realise_options;
  realise_options.jobs = options.jobs;
  realise_options.substitution_jobs = options.connections;
  realise_options.keep_going = options.keep_going;
  realise_options.jobserver = realiser.jobserver();
  BuildResult result;
  // The graph's targets: the `drvs` it was made from above.
  result.steps = realise(graph, hooks, realise_options);
  realiser.report_pushes(result);
  return result;
}

} // namespace kiln
