#include <kiln/cargo/project.hpp>

#include "cargo_queries.hpp"
#include <kiln/cargo/digest_cache.hpp>
#include "host_reads.hpp"

#include <kiln/hash/hash.hpp>
#include <kiln/util/io.hpp>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <future>
#include <set>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char*
to_string(CargoCommand command)
{
  switch (command) {
  case CargoCommand::build:
    return "build";
  case CargoCommand::check:
    return "check";
  case CargoCommand::test:
    return "test";
  case CargoCommand::clippy:
    return "clippy";
  case CargoCommand::run:
    return "run";
  }
  return "build";
}

void CargoObserver::planned(const Plan&, const InstantiatedPlan&) {}
void CargoObserver::note(const std::string&) {}

bool
CargoBuild::succeeded() const
{
  return result.succeeded(roots);
}

namespace {

// The files every answer of cargo's depends on: configuration files (and
// where one could appear), toolchain files, the manifests from the folder up.
std::vector<fs::path>
common_files(const CargoConfig& config, const fs::path& cwd)
{
  std::vector<fs::path> files = config.files();
  for (const auto& dir : config.probed()) {
    files.push_back(dir / "config");
    files.push_back(dir / "config.toml");
  }
  std::error_code ec;
  for (fs::path d = fs::absolute(cwd, ec);; d = d.parent_path()) {
    files.push_back(d / "Cargo.toml");
    files.push_back(d / "rust-toolchain");
    files.push_back(d / "rust-toolchain.toml");
    if (d == d.root_path() || d.empty()) {
      break;
    }
  }
  return files;
}

// The manifests (and lock file) `cargo metadata`'s answer names that can
// change: those of path packages.
std::vector<fs::path>
manifests_of(const std::string& metadata)
{
  std::vector<fs::path> files;
  json meta = json::parse(metadata, nullptr, false);
  if (!meta.is_object()) {
    return files;
  }
  for (const auto& p : meta.value("packages", json::array())) {
    if (p.value("source", json()).is_null()) {
      files.emplace_back(p.value("manifest_path", ""));
    }
  }
  files.push_back(fs::path(meta.value("workspace_root", "")) / "Cargo.lock");
  return files;
}

// "release" if the profile comes down from release (or bench), else "debug":
// its `inherits` chain, from the configuration or the root manifest.
std::function<std::string(const std::string&)>
profile_roots(const CargoConfig& config, const fs::path& root_manifest)
{
  auto manifest = std::make_shared<toml::table>();
  try {
    *manifest = toml::parse_file(root_manifest.string());
  } catch (const std::exception&) {
    // cargo read it; a custom profile's root then defaults to debug.
  }
  return [&config, manifest](std::string name) {
    for (int depth = 0; depth < 32; ++depth) {
      if (name == "release" || name == "bench") {
        return std::string("release");
      }
      if (name == "dev" || name == "test") {
        return std::string("debug");
      }
      auto inherits = config.get_string({"profile", name, "inherits"});
      if (!inherits) {
        inherits = (*manifest)["profile"][name]["inherits"].value<std::string>();
      }
      if (!inherits) {
        break;
      }
      name = *inherits;
    }
    return std::string("debug");
  };
}

// cargo plans with RUSTC_BOOTSTRAP=1 (its unit graph is unstable), under
// which rustc reports more cfg values. Were any dependency gated on one of
// them, cargo's plan would not be stable cargo's: refuse rather than guess.
void
check_bootstrap_cfgs(const Workspace& ws, const Plan& plan, const Toolchain& toolchain,
                     const BuildConfig& config)
{
  std::map<std::string, std::pair<CfgSet, CfgSet>> by_triple;
  for (const auto& u : plan.units) {
    if (by_triple.count(u.triple)) {
      continue;
    }
    auto flags = config.rustflags(u.triple, u.host_kind(), plan.cross,
                                  [&](const std::vector<std::string>& f) -> const CfgSet& {
                                    return toolchain.cfg(u.triple, f);
                                  });
    auto bootstrap = std::async(std::launch::async,
                                [&] { return toolchain.cfg(u.triple, flags, true); });
    const CfgSet& normal = toolchain.cfg(u.triple, flags);
    by_triple[u.triple] = {normal, bootstrap.get()};
  }
  for (const auto& [id, pkg] : ws.packages) {
    for (const auto& dep : pkg.dependencies) {
      if (!dep.platform || !dep.platform->starts_with("cfg(")) {
        continue;
      }
      for (const auto& [triple, sets] : by_triple) {
        if (platform_matches(*dep.platform, triple, sets.first) !=
            platform_matches(*dep.platform, triple, sets.second)) {
          throw CargoError("the dependency " + dep.name + " of " + pkg.name + " " + pkg.version +
                           " is gated on `" + *dep.platform +
                           "`, which depends on an unstable cfg value; kiln cannot plan it as "
                           "stable cargo would");
        }
      }
    }
  }
}

// A host file a build script read, as it is here: its content (through
// symlinks), or that it is a folder, or missing.
std::string
host_file_identity(const fs::path& file, DigestCache& digests)
{
  std::error_code ec;
  fs::path real = fs::canonical(file, ec);
  if (ec) {
    return "missing";
  }
  if (fs::is_directory(real, ec)) {
    return "folder";
  }
  return digests.digest(real).nar_hash.to_string(HashFormat::nix32, true);
}

// A host path a build script only looked at: whether it is there.
std::string
host_file_presence(const fs::path& file)
{
  std::error_code ec;
  auto status = fs::status(file, ec);
  return ec || !fs::exists(status) ? "missing" : fs::is_directory(status) ? "folder" : "present";
}

std::vector<std::string>
unit_graph_argv(const CargoRequest& request, const fs::path& cargo)
{
  std::string command = request.command == CargoCommand::clippy ? "check"
                        : request.command == CargoCommand::run  ? "build"
                                                                : to_string(request.command);
  std::vector<std::string> argv = {cargo.string(), command, "--unit-graph", "-Z", "unstable-options"};
  argv.insert(argv.end(), request.cargo_args.begin(), request.cargo_args.end());
  return argv;
}

} // namespace

std::unique_ptr<CargoProject>
CargoProject::load(const CargoRequest& request, const fs::path& state_dir,
                   const fs::path& cache_dir)
{
  std::unique_ptr<CargoProject> p(new CargoProject());
  p->m_request = request;
  p->m_state_dir = state_dir;
  p->m_cache_dir = cache_dir;
  p->m_config = std::make_unique<CargoConfig>(
    CargoConfig::load(request.cwd, cargo_home_of(request.env), request.config_args, request.env));
  p->m_warnings = p->m_config->warnings();
  p->m_build_config = std::make_unique<BuildConfig>(*p->m_config, p->m_warnings);
  p->m_toolchain = locate_toolchain(request.cwd, *p->m_build_config, request.env, cache_dir);
  // Hashing a toolchain this store has not seen takes as long as cargo's
  // answers: both at once. Nothing below reads the identity before get().
  std::future<void> identified =
    std::async(std::launch::async, [t = p->m_toolchain.get()] { identify_toolchain(*t); });

  CargoQueries queries(cache_dir, request.cwd, request.env, p->m_toolchain->located_key(),
                       common_files(*p->m_config, request.cwd));
  std::vector<std::string> metadata = {p->m_toolchain->cargo.string(), "metadata",
                                       "--format-version", "1"};
  metadata.insert(metadata.end(), request.metadata_args.begin(), request.metadata_args.end());
  std::vector<CargoQuery> asked = {
    {metadata, {}},
    {unit_graph_argv(request, p->m_toolchain->cargo), {{"RUSTC_BOOTSTRAP", "1"}}}};
  bool offline = request.offline || p->m_build_config->offline();
  // Both depend on the manifests cargo metadata names.
  std::vector<std::string> answers;
  try {
    answers = queries.answers(asked, offline, [](size_t, const std::vector<std::string>& so_far) {
      return manifests_of(so_far[0]);
    });
  } catch (const CargoQueryError& e) {
    if (e.query != 1) {
      throw;
    }
    // The project is fine (cargo metadata read it): cargo refused what was
    // asked of it (an unknown package, target, profile or feature).
    std::string said = e.said;
    while (!said.empty() && std::isspace(static_cast<unsigned char>(said.back()))) {
      said.pop_back();
    }
    throw UsageError("cargo: " + (said.starts_with("error: ") ? said.substr(7) : said));
  }
  identified.get();
  p->m_workspace = parse_workspace(answers[0]);
  PlanContext context;
  context.host = p->m_toolchain->host;
  context.checks_tests = request.checks_tests;
  context.profile_root = profile_roots(*p->m_config, p->m_workspace.root / "Cargo.toml");
  p->m_plan = parse_unit_graph(answers[1], p->m_workspace, context);
  check_bootstrap_cfgs(p->m_workspace, p->m_plan, *p->m_toolchain, *p->m_build_config);
  return p;
}

InstantiatedPlan
CargoProject::instantiate(LocalStore& store, std::function<bool(size_t)> incremental,
                          const InstantiatedPlan* clean) const
{
  InstantiateContext context{.ws = m_workspace, .plan = m_plan, .toolchain = *m_toolchain,
                             .config = *m_build_config, .digest_dir = m_cache_dir};
  HostReadsRecord record(m_state_dir / "host-reads.json");
  const Environment& env = m_request.env;
  context.host_inputs = [&](const CargoPackage& pkg, UnitInputs& run) {
    const HostReads& reads = record.of(pkg.name + " " + pkg.version);
    for (const auto& name : reads.env) {
      if (auto it = env.find(name); it != env.end()) {
        run.host_env[name] = it->second;
      }
    }
    for (const auto& file : reads.probes) {
      run.host_files[file] = host_file_presence(file);
    }
    for (const auto& file : reads.files) {
      run.host_files[file] = host_file_identity(file, *m_toolchain->digests);
    }
  };
  context.run_tests = m_request.command == CargoCommand::test && !m_request.no_run;
  context.cap_lints = m_request.cap_lints;
  context.incremental = std::move(incremental);
  context.clean = clean;
  context.test_args = m_request.test_args;
  context.rerun = m_request.rerun;
  if (m_request.command == CargoCommand::clippy) {
    context.clippy = m_toolchain->program_identity(m_toolchain->sysroot / "bin" / "clippy-driver");
    context.clippy_args = m_request.clippy_args;
    context.clippy_selected_only = m_request.clippy_no_deps;
  }
  InstantiatedPlan made = instantiate_plan(store, context);
  m_toolchain->digests->save();
  return made;
}

namespace {

// Learn what this build's build scripts read of the host; true if a run's
// identity changes with it (it must then be run again, with it).
bool
learn_host_reads(const CargoProject& project, const CargoBuild& build, LocalStore& store,
                 CargoObserver& observer)
{
  HostReadsRecord record(project.state_dir() / "host-reads.json");
  bool again = false;
  for (size_t i = 0; i < project.plan().units.size(); ++i) {
    const Unit& u = project.plan().units[i];
    const StorePath& out = build.units.units[i].out;
    if (u.mode != UnitMode::run_custom_build || !store.is_valid(out)) {
      continue;
    }
    std::string package = u.package->name + " " + u.package->version;
    if (record.learn(package, store.physical_path(out), store.store_dir().path(),
                     project.request().env)) {
      observer.note("the build script of " + package +
                    " reads more of this machine than kiln knew (its environment variables or "
                    "files): running it again with them");
      again = true;
    }
  }
  record.save();
  return again;
}

// Where incremental units keep their sessions: beside cargo's own, in the
// project's target folder (deleted with it, never seen by the store's gc).
fs::path
incremental_sessions(const CargoProject& project)
{
  return project.workspace().target_dir / "kiln" / "incremental";
}

// The units to compile incrementally: of those cargo would, the ones this
// build must compile anyway. A clean unit that can be had (in the store, or
// substituted from a cache) is always the better choice: it costs no
// compilation and may be pushed. So the clean plan is walked from its roots
// as the scheduler would: a unit that can be had needs nothing below it;
// one that cannot is built, and so are what it needs. A unit that can be
// had but would have a local-only input in the final plan (a cache holding
// it without its inputs) is built too, or its derivation would change.
std::set<size_t>
units_to_compile_incrementally(LocalStore& store, const CargoProject& project,
                               const InstantiatedPlan& clean, const BuildOptions& options)
{
  const auto& units = project.plan().units;
  // Those that would be compiled incrementally if built: cargo would, and
  // they were compiled in this target folder before (see below).
  std::vector<char> has_session(units.size(), 0);
  std::error_code ec;
  for (size_t i = 0; i < units.size(); ++i) {
    has_session[i] = may_compile_incrementally(units[i]) &&
                     fs::is_directory(incremental_sessions(project) / session_name(units[i]), ec);
  }
  std::set<size_t> had;   // units found in the store or a cache
  auto can_be_had = [&](const StorePath& out) {
    return store.is_valid(out) ||
           (!options.caches.empty() &&
            can_substitute(options.caches, options.policy, store.store_dir(), {out}));
  };
  std::set<size_t> built;
  std::function<void(size_t)> visit = [&](size_t i) {
    if (built.count(i) || had.count(i)) {
      return;
    }
    if (can_be_had(clean.units[i].out)) {
      had.insert(i);
      return;
    }
    built.insert(i);
    for (const auto& dep : units[i].deps) {
      visit(dep.unit);
    }
  };
  for (size_t r = 0; r < clean.test_runs.size(); ++r) {
    if (!can_be_had(clean.test_runs[r].out)) {
      visit(clean.test_run_of[r]);
    }
  }
  for (size_t r : project.plan().roots) {
    if (project.plan().units[r].mode != UnitMode::test || clean.test_runs.empty()) {
      visit(r);
    }
  }
  for (bool changed = true; changed;) {
    changed = false;
    auto local = local_only_units(project.plan(),
                                  [&](size_t i) { return built.count(i) && has_session[i]; });
    for (auto it = had.begin(); it != had.end();) {
      size_t i = *it;
      bool stale = std::any_of(units[i].deps.begin(), units[i].deps.end(),
                               [&](const UnitDep& d) { return local[d.unit]; });
      if (!stale) {
        ++it;
        continue;
      }
      it = had.erase(it);
      built.insert(i);
      for (const auto& dep : units[i].deps) {
        visit(dep.unit);
      }
      changed = true;
    }
  }
  // The first compile of a unit in this target folder is clean (faster than
  // an incremental one from nothing, and pushable), as on a CI runner; it
  // makes the unit's session folder, and from then on it is incremental.
  std::set<size_t> incremental;
  for (size_t i : built) {
    if (has_session[i]) {
      incremental.insert(i);
    }
  }
  return incremental;
}

CargoBuild
build_once(LocalStore& store, const CargoProject& project, const BuildOptions& options,
           CargoObserver& observer)
{
  CargoBuild build;
  build.units = instantiate_for_build(store, project, options);
  observer.planned(project.plan(), build.units);
  for (size_t r : project.plan().roots) {
    build.roots.push_back(build.units.units[r].drv);
  }
  // Every compile of a local package too, as cargo's target folder has
  // them: its warnings are shown again when it is fresh. Otherwise a build
  // script whose run a cache has would not be fetched, and its lints would
  // go unshown in a fresh store.
  std::set<size_t> roots(project.plan().roots.begin(), project.plan().roots.end());
  for (size_t i = 0; i < project.plan().units.size(); ++i) {
    const Unit& u = project.plan().units[i];
    if (u.package->is_local() && !roots.count(i) && u.mode != UnitMode::run_custom_build &&
        u.mode != UnitMode::doctest) {
      build.roots.push_back(build.units.units[i].drv);
    }
  }
  for (const auto& run : build.units.test_runs) {
    build.roots.push_back(run.drv);
  }
  UnitFrontend frontend(store, project.plan(), build.units, project.toolchain(), options.jobs,
                        &project.request().env,
                        project.request().incremental ? incremental_sessions(project) : fs::path());
  build.result = build_derivations(store, build.roots, options, frontend, observer);
  return build;
}

// cargo compiles with the caller's whole environment, kiln in a fixed one:
// a crate that read a variable at compile time (env!, option_env!, its
// proc-macros' look-ups) whose
// value there differs from the caller's is not what cargo would have built.
// Its output (built here or taken from a cache) is refused, by name.
void
check_environment_reads(LocalStore& store, const CargoProject& project, const CargoBuild& build)
{
  const Environment& caller = project.request().env;
  std::vector<std::string> problems;
  for (const auto& unit : build.units.units) {
    if (!store.is_valid(unit.out)) {
      continue;
    }
    fs::path file = store.physical_path(unit.out) / k_env_reads_file;
    std::error_code ec;
    if (!fs::exists(file, ec)) {
      continue;
    }
    json reads = json::parse(read_file(file), nullptr, false);
    if (!reads.is_object()) {
      throw CargoError("'" + file.string() +
                       "' is damaged: repair the store (kiln store verify --repair)");
    }
    for (const auto& [name, seen] : reads.items()) {
      auto mine = caller.find(name);
      std::optional<std::string> theirs =
        seen.is_string() ? std::optional<std::string>(seen.get<std::string>()) : std::nullopt;
      std::optional<std::string> yours =
        mine == caller.end() ? std::nullopt : std::optional<std::string>(mine->second);
      if (theirs == yours) {
        continue;
      }
      problems.push_back(unit.inputs.package + " " + unit.inputs.version + " (" +
                         unit.inputs.target + ") reads " + name +
                         " at compile time (env!, option_env!, or a proc-macro while it expands): cargo would "
                         "compile it with " +
                         (yours ? name + "=" + *yours : name + " unset") +
                         ", and kiln's output was compiled with " +
                         (theirs ? name + "=" + *theirs : name + " unset"));
    }
  }
  if (!problems.empty()) {
    std::string text;
    for (const auto& p : problems) {
      text += "\n  " + p;
    }
    throw CargoError(
      "kiln compiles in a fixed environment, and these crates read variables of yours:" + text +
      "\nSet what they should see in .cargo/config.toml's [env] (kiln passes it and makes it "
      "part of each unit's identity), or leave them out of your environment.");
  }
}

} // namespace

InstantiatedPlan
instantiate_for_build(LocalStore& store, const CargoProject& project, const BuildOptions& options)
{
  InstantiatedPlan clean = project.instantiate(store);
  if (!project.request().incremental) {
    return clean;
  }
  auto incremental = units_to_compile_incrementally(store, project, clean, options);
  if (incremental.empty()) {
    return clean;
  }
  return project.instantiate(
    store, [&](size_t unit) { return incremental.count(unit) > 0; }, &clean);
}

CargoBuild
build_project(LocalStore& store, const CargoProject& project, const BuildOptions& options,
              CargoObserver& observer)
{
  CargoBuild build = build_once(store, project, options, observer);
  // A build script seen reading more of the host than its identity held: its
  // output is this machine's, so the run is made again under an identity
  // that says what it read (once per package and version; kiln remembers).
  // What it reads may depend on what it is given: a few rounds at most.
  for (int round = 0; round < 3 && build.succeeded() &&
                      learn_host_reads(project, build, store, observer);
       ++round) {
    build = build_once(store, project, options, observer);
  }
  check_environment_reads(store, project, build);
  return build;
}

std::vector<StorePath>
write_unit_derivations(LocalStore& store, const CargoBuild& build)
{
  DrvReader read = [&](const StorePath& p) {
    auto it = build.units.derivations.find(p);
    return it != build.units.derivations.end() ? it->second : read_derivation(store, p);
  };
  std::vector<StorePath> drvs;
  for (const auto& unit : build.units.units) {
    drvs.push_back(unit.drv);
  }
  auto order = BuildGraph::from_targets(drvs, read, store.store_dir()).topological_order();
  for (const auto& drv : order) {
    build.units.materialize(store, drv);
  }
  return order;
}

CheckResult
check_units(LocalStore& store, const CargoProject& project, const CargoBuild& build,
            const BuildOptions& options, const CheckOptions& check)
{
  UnitFrontend frontend(store, project.plan(), build.units, project.toolchain(), options.jobs,
                        &project.request().env);
  BuildObserver silent;
  std::vector<StorePath> drvs;
  for (const auto& unit : build.units.units) {
    drvs.push_back(unit.drv);
  }
  return check_derivations(store, drvs, options, frontend, silent, check);
}

namespace {

// A unit's name across builds: package, version, target, mode, platform.
std::string
unit_key(const Unit& u)
{
  return u.package->name + " " + u.package->version + " " + u.target.name + " " +
         json(u.target.kind).dump() + " " + to_string(u.mode) +
         (u.mode == UnitMode::check_test ? "-test" : "") + " " + u.platform.value_or("host");
}

fs::path
record_file(const CargoProject& project)
{
  std::string id = project.workspace().root.string() + "\n" + to_string(project.request().command);
  return project.state_dir() / "builds" / keyed_file_name("", id, ".json");
}

} // namespace

void
record_build(const CargoProject& project, const InstantiatedPlan& units)
{
  json record = json::object();
  for (size_t i = 0; i < project.plan().units.size(); ++i) {
    record[unit_key(project.plan().units[i])] = inputs_to_json(units.units[i].inputs);
  }
  try {
    fs::create_directories(record_file(project).parent_path());
    write_file_atomic(record_file(project), record.dump());
  } catch (const std::exception&) {
    // Only for --explain.
  }
}

std::vector<std::string>
explain_units(const CargoProject& project, const InstantiatedPlan& units, const LocalStore& store,
              const std::string& spec)
{
  std::string name = spec.substr(0, spec.find('@'));
  std::string version = spec.find('@') == std::string::npos ? "" : spec.substr(spec.find('@') + 1);
  json last = json::object();
  try {
    last = json::parse(read_file(record_file(project)));
  } catch (const std::exception&) {
    // No build recorded yet.
  }
  std::vector<std::string> lines;
  for (size_t i = 0; i < project.plan().units.size(); ++i) {
    const Unit& u = project.plan().units[i];
    if (u.package->name != name || (!version.empty() && u.package->version != version)) {
      continue;
    }
    const InstantiatedUnit& made = units.units[i];
    lines.push_back(describe(u) + " [" + to_string(u.mode) + "]: " +
                    store.print(made.out) +
                    (store.is_valid(made.out) ? " (in the store)" : " (not in the store)"));
    std::string key = unit_key(u);
    if (!last.contains(key)) {
      lines.push_back("  not in the last build of this project");
      continue;
    }
    auto changes = diff_inputs(inputs_from_json(last[key].get<std::string>()), made.inputs);
    if (changes.empty()) {
      lines.push_back("  same inputs as in the last build");
    }
    for (const auto& c : changes) {
      lines.push_back("  changed: " + c);
    }
  }
  if (lines.empty()) {
    throw UsageError("no unit of package '" + spec + "' in the plan");
  }
  return lines;
}

} // namespace kiln::cargo
