// The plan's units as a build frontend: their derivations, the builder that
// runs them in the sandbox (kiln-rust-unit, with the toolchain and what a
// build script reads of the host visible), pipelining, costs, what may be
// pushed.
#include <kiln/cargo/units.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/util/process.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <set>
#include <sstream>
#include <tuple>

namespace kiln::cargo {

namespace fs = std::filesystem;

namespace {

// jemalloc's options for rustc's heap: back it, and jemalloc's own
// metadata, with transparent huge pages (where the kernel leaves that to
// madvise, as Debian's does; where THP is off, nothing changes).
constexpr const char* k_rustc_jemalloc_conf = "thp:always,metadata_thp:always";

// Can any user reach `dir`'s files (o+x on it and every folder above)?
bool
world_enterable(const fs::path& dir)
{
  for (fs::path d = dir; !d.empty(); d = d.parent_path()) {
    struct stat st;
    if (::stat(d.c_str(), &st) != 0 || (st.st_mode & S_IXOTH) == 0) {
      return false;
    }
    if (d == d.root_path()) {
      break;
    }
  }
  return true;
}

// The host paths a build-script run reads outside the folders every build
// sees: those its passed-on variables name (PKG_CONFIG_PATH=/opt/x/pkgconfig)
// and the files it was seen reading.
std::vector<fs::path>
host_paths_of(const UnitInputs& run)
{
  static const std::vector<std::string> always = {"/usr/", "/bin/", "/lib/", "/lib64/", "/etc/alternatives/"};
  std::set<fs::path> paths;
  auto add = [&](const std::string& p) {
    std::error_code ec;
    if (p.starts_with("/") && fs::exists(p, ec) &&
        std::none_of(always.begin(), always.end(), [&](const std::string& a) { return p.starts_with(a); })) {
      paths.insert(p);
    }
  };
  for (const auto& [name, value] : run.host_env) {
    std::istringstream parts(value);
    for (std::string part; std::getline(parts, part, ':');) {
      add(part);
    }
  }
  for (const auto& [path, identity] : run.host_files) {
    if (identity != "missing" && identity != "folder") {
      add(path);
    }
  }
  return {paths.begin(), paths.end()};
}

// This executable, and kiln-rust-unit beside kiln (a build tree) or in
// ../libexec/kiln (an install), if there; without it, kiln itself does the
// work (`kiln __rust-unit`).
std::pair<fs::path, fs::path>
builder_programs()
{
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  for (const fs::path& candidate :
       {self.parent_path() / "kiln-rust-unit",
        self.parent_path().parent_path() / "libexec" / "kiln" / "kiln-rust-unit"}) {
    if (::access(candidate.c_str(), X_OK) == 0) {
      return {self, candidate};
    }
  }
  return {self, fs::path()};
}

// What every unit's step sees of the host, read-only: the toolchain, the
// host's C toolchain (rustc links with cc) and cargo (build scripts run
// $CARGO). Folders first: what lies inside them (kiln's own libraries) is
// covered. The builder program as its folder when the builder's user may
// enter it: a folder is not looked into (its libraries are in /usr). A
// private folder (mode 0700) hides it; then the file itself, with its
// libraries.
std::vector<fs::path>
unit_step_tools(const Toolchain& toolchain, const fs::path& program)
{
  std::vector<fs::path> tools;
  for (const fs::path& t : {fs::path("/usr"), fs::path("/bin"), fs::path("/lib"),
                            fs::path("/lib64"), fs::path("/etc/alternatives"),
                            fs::path("/etc/ld.so.cache"), toolchain.sysroot,
                            world_enterable(program.parent_path()) ? program.parent_path()
                                                                   : program}) {
    std::error_code e;
    if (fs::exists(fs::symlink_status(t, e))) {
      tools.push_back(t);
    }
  }
  if (!toolchain.cargo.empty() &&
      !toolchain.cargo.string().starts_with(toolchain.sysroot.string())) {
    tools.push_back(toolchain.cargo);
  }
  return tools;
}

// The sandboxed step of a rust-unit derivation: kiln-rust-unit with the
// toolchain, the host's C toolchain and what a build script reads of the
// host visible. `inputs` (the unit's, if known) names a configured linker
// and the host paths a build-script run reads.
void
rust_unit_step(const LocalStore& store, const Toolchain& toolchain, unsigned jobs,
               const fs::path& self, const fs::path& helper, const UnitInputs* inputs,
               BuildSpec& spec)
{
  spec.builder = helper.empty() ? self.string() : helper.string();
  spec.args = helper.empty() ? std::vector<std::string>{"__rust-unit"} : std::vector<std::string>{};
  // The inputs are for people (why-rebuild, --explain): the builder follows
  // the instructions derived from them, and a big list of host files would
  // not fit in an environment variable.
  spec.env.erase(k_inputs_env);
  spec.env["KILN_UNIT_RUSTC"] = toolchain.rustc.string();
  spec.env["KILN_UNIT_RUSTDOC"] = toolchain.rustdoc.string();
  spec.env["KILN_UNIT_CARGO"] = toolchain.cargo.string();
  spec.env["KILN_UNIT_JOBS"] = std::to_string(std::max(1u, jobs));
  spec.env["KILN_UNIT_CLIPPY_DRIVER"] = (toolchain.sysroot / "bin" / "clippy-driver").string();
  spec.env["KILN_UNIT_RUST_LIB"] = (toolchain.sysroot / "lib" / "rustlib" / toolchain.host / "lib").string();
  // Build scripts run with libkiln-trace.so preloaded, to learn the host
  // files and the variables they read; what is kiln's or the toolchain's is
  // not the host's. Compiles that load a proc-macro run with it too, to learn
  // the variables the proc-macros look up.
  fs::path program = helper.empty() ? self : helper;
  fs::path shim = program.parent_path() / "libkiln-trace.so";
  std::error_code shim_ec;
  if (fs::exists(shim, shim_ec)) {
    spec.env["KILN_UNIT_TRACE"] = shim.string();
    spec.env["KILN_UNIT_TRACE_IGNORE"] =
      store.store_dir().path() + ":" + store.root().string() + ":" +
      toolchain.sysroot.string() + ":" + program.parent_path().string() + ":" +
      toolchain.cargo.parent_path().string();
  }
  if (inputs && inputs->mode != "run-build-script" && inputs->mode != "doctest" &&
      inputs->mode != "test-run") {
    // rustc's allocator (jemalloc) on transparent huge pages: far fewer
    // page faults, about a fifth off a cold build of examples/rust-app on a
    // 2-core VM (docs/architecture.md). The same output; only for steps that
    // run nothing but rustc: a build script's run, a test run and rustdoc
    // --test (which runs the doctests) keep the allocator's defaults.
    spec.jemalloc_conf = k_rustc_jemalloc_conf;
  }
  std::vector<fs::path> declared = std::move(spec.tools);
  spec.tools = unit_step_tools(toolchain, program);
  spec.tools.insert(spec.tools.end(), declared.begin(), declared.end());
  if (spec.env.count("KILN_UNIT_TRACE")) {
    spec.tools.push_back(spec.env["KILN_UNIT_TRACE"]);
  }
  if (inputs) {
    // A linker named in cargo's configuration, wherever it is.
    if (auto found = inputs->linker_path.empty() ? std::nullopt : find_program(inputs->linker_path)) {
      spec.tools.push_back(*found);
    }
    // What a build script reads of the host, visible where it is, as under
    // cargo: the paths its variables name and the files it was seen reading.
    std::string keep;
    for (const auto& path : host_paths_of(*inputs)) {
      spec.tools.push_back(path);
      keep += (keep.empty() ? "" : ":") + path.string();
    }
    spec.env["KILN_UNIT_TRACE_KEEP"] = keep;
  }
}

// Learn what the tools every unit's build step sees need to run in the
// sandbox (look_at_tools), so that the first step need not.
void
look_at_unit_step_tools(const Toolchain& toolchain)
{
  auto [self, helper] = builder_programs();
  look_at_tools(unit_step_tools(toolchain, helper.empty() ? self : helper));
}

} // namespace

UnitFrontend::UnitFrontend(LocalStore& store, const Plan& plan, const InstantiatedPlan& units,
                           const Toolchain& toolchain, unsigned jobs, const Environment* env,
                           fs::path sessions)
  : m_store(store), m_plan(plan), m_units(units), m_toolchain(toolchain), m_jobs(jobs), m_env(env),
    m_sessions(std::move(sessions))
{
  for (size_t i = 0; i < units.units.size(); ++i) {
    m_unit_of.emplace(units.units[i].drv, i);
  }
  for (size_t i = 0; i < units.test_runs.size(); ++i) {
    m_test_run_of.emplace(units.test_runs[i].drv, i);
  }
  std::tie(m_self, m_helper) = builder_programs();
}

std::optional<size_t>
UnitFrontend::test_run_of(const StorePath& drv) const
{
  auto it = m_test_run_of.find(drv);
  return it == m_test_run_of.end() ? std::nullopt : std::optional<size_t>(it->second);
}

std::optional<size_t>
UnitFrontend::unit_of(const StorePath& drv) const
{
  auto it = m_unit_of.find(drv);
  return it == m_unit_of.end() ? std::nullopt : std::optional<size_t>(it->second);
}

const Derivation*
UnitFrontend::derivation(const StorePath& drv) const
{
  auto it = m_units.derivations.find(drv);
  return it == m_units.derivations.end() ? nullptr : &it->second;
}

void
UnitFrontend::build_planned(const StorePath&) const
{
  std::call_once(m_tools_once, [this] {
    m_tools_looked_at = std::async(std::launch::async, [t = &m_toolchain] {
      look_at_unit_step_tools(*t);
    });
  });
}

void
UnitFrontend::prepare(const StorePath& drv) const
{
  m_units.materialize(m_store, drv);
}

double
UnitFrontend::cost(const StorePath& drv) const
{
  auto unit = unit_of(drv);
  return unit ? m_units.units[*unit].cost : 1.0;
}

bool
UnitFrontend::may_start_early(const StorePath& dependent, const StorePath& input) const
{
  auto d = unit_of(dependent), i = unit_of(input);
  return d && i && m_plan.units[*d].reads_metadata_only() && m_plan.units[*i].compiles_to_rlib();
}

bool
UnitFrontend::may_push(const StorePath& drv) const
{
  auto unit = unit_of(drv);
  if (!unit) {
    return true;
  }
  std::lock_guard guard(m_push_mutex);
  std::function<bool(size_t)> pushable = [&](size_t i) {
    auto known = m_pushable.find(i);
    if (known != m_pushable.end()) {
      return known->second;
    }
    bool ok = true;
    const Unit& u = m_plan.units[i];
    if (u.mode == UnitMode::run_custom_build && m_store.is_valid(m_units.units[i].out)) {
      static const Environment none;
      ok = unrecorded_host_reads(m_units.units[i].inputs,
                                 m_store.physical_path(m_units.units[i].out),
                                 m_store.store_dir().path(), m_env ? *m_env : none)
             .empty();
    }
    for (const auto& dep : u.deps) {
      ok = ok && pushable(dep.unit);
    }
    m_pushable[i] = ok;
    return ok;
  };
  return pushable(*unit);
}

bool
UnitFrontend::local_only(const StorePath& drv) const
{
  if (auto unit = unit_of(drv)) {
    return m_units.units[*unit].local_only;
  }
  if (auto run = test_run_of(drv)) {
    return m_units.test_runs[*run].local_only;
  }
  return false;
}

std::string
UnitFrontend::describe(const StorePath& drv) const
{
  auto unit = unit_of(drv);
  if (auto run = test_run_of(drv)) {
    return cargo::describe(m_plan.units[m_units.test_run_of[*run]]) + " run";
  }
  return unit ? cargo::describe(m_plan.units[*unit]) : Frontend::describe(drv);
}

void
UnitFrontend::builtin_builder(const Derivation& drv, BuildSpec& spec) const
{
  if (drv.builder != k_rust_unit_builder) {
    Frontend::builtin_builder(drv, spec);
  }
  // Done already when the scheduler prepared the build; kept for callers
  // that build without a prepare step.
  m_units.materialize(m_store, derivation_path(drv, m_store.store_dir()));
  StorePath drv_path = derivation_path(drv, m_store.store_dir());
  auto unit = unit_of(drv_path);
  auto test_run = test_run_of(drv_path);
  const UnitInputs* inputs = unit       ? &m_units.units[*unit].inputs
                             : test_run ? &m_units.test_runs[*test_run].inputs
                                        : nullptr;
  rust_unit_step(m_store, m_toolchain, m_jobs, m_self, m_helper, inputs, spec);
  if (unit && !m_sessions.empty() && may_compile_incrementally(m_plan.units[*unit])) {
    // Its session folder, made on its first compile here (a clean one): the
    // next compile of the unit is incremental, and keeps its session there.
    fs::path session = m_sessions / session_name(m_plan.units[*unit]);
    fs::create_directories(session);
    if (m_units.units[*unit].inputs.incremental) {
      spec.writable_folders.push_back(session);
      spec.env["KILN_UNIT_INCREMENTAL"] = session.string();
    }
  }
}

// --- DrvUnitFrontend ---

DrvUnitFrontend::DrvUnitFrontend(const LocalStore& store, const Toolchain& toolchain, unsigned jobs)
  : m_store(store), m_toolchain(toolchain), m_jobs(jobs)
{
  std::tie(m_self, m_helper) = builder_programs();
}

std::optional<std::string>
DrvUnitFrontend::cannot_build(const Derivation& drv) const
{
  if (drv.builder != k_rust_unit_builder) {
    return std::nullopt;
  }
  auto it = drv.env.find(k_inputs_env);
  if (it == drv.env.end()) {
    return "a Cargo unit without its inputs (" + std::string(k_inputs_env) + ")";
  }
  UnitInputs inputs = inputs_from_json(it->second);
  auto first_line = [](const std::string& text) { return text.substr(0, text.find('\n')); };
  if (inputs.compiler != m_toolchain.identity) {
    return "it was built with another Rust toolchain (" + first_line(inputs.compiler) +
           "; here: " + first_line(m_toolchain.identity) + ")";
  }
  if (!inputs.standard_library.empty() && inputs.standard_library != "host") {
    try {
      if (inputs.standard_library != m_toolchain.target_identity(inputs.target_triple)) {
        return "it was built with another standard library for " + inputs.target_triple;
      }
    } catch (const std::exception& e) {
      return e.what();
    }
  }
  if (!inputs.linker.empty() && inputs.linker_path.empty() &&
      inputs.linker != m_toolchain.linker_identity) {
    return "it was linked with another C compiler (" + first_line(inputs.linker) + "; here: " +
           first_line(m_toolchain.linker_identity) + ")";
  }
  return std::nullopt;
}

void
DrvUnitFrontend::builtin_builder(const Derivation& drv, BuildSpec& spec) const
{
  if (drv.builder != k_rust_unit_builder) {
    Frontend::builtin_builder(drv, spec);
  }
  if (auto why = cannot_build(drv)) {
    throw Error("cannot build '" + drv.name + "' here: " + *why);
  }
  UnitInputs inputs = inputs_from_json(drv.env.at(k_inputs_env));
  rust_unit_step(m_store, m_toolchain, m_jobs, m_self, m_helper, &inputs, spec);
}

} // namespace kiln::cargo
