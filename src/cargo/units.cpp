#include <kiln/cargo/units.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include "digest_cache.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

namespace kiln::cargo {

namespace fs = std::filesystem;

namespace {

// --- sources ---

// Leave out what is not source: build output, VCS folders and (for path
// packages) nested packages, which are units of their own.
PathFilter
source_filter(const fs::path& root, bool local)
{
  return [root, local](const std::string& rel) {
    std::string name = rel.substr(rel.rfind('/') + 1);
    if (name == ".git" || name == ".hg" || name == ".svn") {
      return false;
    }
    if (rel == "target") {
      return false;
    }
    if (rel.starts_with("result") && rel.find('/') == std::string::npos) {
      // kiln's (and nix's) `result` links: GC roots, not sources.
      std::error_code ec;
      if (fs::is_symlink(fs::symlink_status(root / rel, ec))) {
        return false;
      }
    }
    if (local) {
      std::error_code ec;
      fs::path p = root / rel;
      if (fs::is_directory(fs::symlink_status(p, ec)) && fs::exists(p / "Cargo.toml", ec)) {
        return false;
      }
    }
    return true;
  };
}

// The sources of each package: hashed (not copied), remembered by file
// metadata.
class Sources
{
public:
  explicit Sources(const fs::path& state_dir) : m_digests(state_dir / "source-digests.json") {}
  ~Sources() { m_digests.save(); }

  StorePath
  path_of(const StoreDir& dir, const CargoPackage& pkg, SourceTree& tree)
  {
    tree.root = pkg.root();
    tree.filter = source_filter(tree.root, pkg.is_local());
    tree.name = pkg.name + "-" + pkg.version + "-src";
    TreeDigest d = m_digests.digest(tree.root, tree.filter, pkg.is_local() ? "path" : "registry");
    tree.size = d.nar_size;
    return dir.make_fixed_output_path(tree.name,
                                      ContentAddress{ContentAddress::Method::recursive, d.nar_hash});
  }

  // A folder's one configuration file `name`, as a source of its own.
  StorePath
  conf_path(const StoreDir& dir, const fs::path& folder, const std::string& name, SourceTree& tree)
  {
    tree.root = folder;
    tree.filter = [name](const std::string& rel) { return rel == name; };
    tree.name = "clippy-conf";
    TreeDigest d = m_digests.digest(folder, tree.filter, "only " + name);
    tree.size = d.nar_size;
    return dir.make_fixed_output_path(tree.name,
                                      ContentAddress{ContentAddress::Method::recursive, d.nar_hash});
  }

private:
  DigestCache m_digests;
};

// --- what cargo tells rustc and build scripts ---

struct Version
{
  std::string major, minor, patch, pre;
};

Version
split_version(const std::string& v)
{
  Version out;
  std::string core = v.substr(0, v.find('+'));
  auto dash = core.find('-');
  if (dash != std::string::npos) {
    out.pre = core.substr(dash + 1);
    core = core.substr(0, dash);
  }
  auto a = core.find('.');
  auto b = core.find('.', a + 1);
  out.major = core.substr(0, a);
  out.minor = a == std::string::npos ? "" : core.substr(a + 1, b - a - 1);
  out.patch = b == std::string::npos ? "" : core.substr(b + 1);
  return out;
}

std::map<std::string, std::string>
package_env(const CargoPackage& pkg, const std::string& src)
{
  Version v = split_version(pkg.version);
  std::string authors;
  for (const auto& a : pkg.authors) {
    authors += (authors.empty() ? "" : ":") + a;
  }
  return {{"CARGO", "@CARGO@"},
          {"CARGO_MANIFEST_DIR", src},
          {"CARGO_MANIFEST_PATH", src + "/Cargo.toml"},
          {"CARGO_PKG_NAME", pkg.name},
          {"CARGO_PKG_VERSION", pkg.version},
          {"CARGO_PKG_VERSION_MAJOR", v.major},
          {"CARGO_PKG_VERSION_MINOR", v.minor},
          {"CARGO_PKG_VERSION_PATCH", v.patch},
          {"CARGO_PKG_VERSION_PRE", v.pre},
          {"CARGO_PKG_AUTHORS", authors},
          {"CARGO_PKG_DESCRIPTION", pkg.description},
          {"CARGO_PKG_HOMEPAGE", pkg.homepage},
          {"CARGO_PKG_REPOSITORY", pkg.repository},
          {"CARGO_PKG_LICENSE", pkg.license},
          {"CARGO_PKG_LICENSE_FILE", pkg.license_file},
          {"CARGO_PKG_README", pkg.readme},
          {"CARGO_PKG_RUST_VERSION", pkg.rust_version}};
}

const char*
mode_name(UnitMode mode)
{
  return mode == UnitMode::check_test ? "check-test"
         : mode == UnitMode::run_custom_build ? "run-build-script"
                                              : to_string(mode);
}

const char*
lto_name(LtoRole role)
{
  switch (role) {
  case LtoRole::run:
    return "run";
  case LtoRole::off:
    return "off";
  case LtoRole::only_bitcode:
    return "only-bitcode";
  case LtoRole::object_and_bitcode:
    return "object-and-bitcode";
  case LtoRole::only_object:
    return "only-object";
  }
  return "only-object";
}

// A library that compiles to an rlib (and so to an .rmeta first).
bool
compiles_to_rlib(const Unit& u)
{
  return u.mode == UnitMode::build && u.target.is_lib() && !u.target.is_proc_macro() &&
         (u.target.has_crate_type("lib") || u.target.has_crate_type("rlib"));
}

// Does the unit read only its libraries' metadata (cargo's pipelining)?
bool
reads_metadata_only(const Unit& u)
{
  return compiles_to_rlib(u) &&
         !(u.target.has_crate_type("dylib") || u.target.has_crate_type("cdylib") ||
           u.target.has_crate_type("staticlib"));
}

// Units that link (and build-script runs, which may run the C compiler).
bool
links(const Unit& u)
{
  if (u.mode == UnitMode::run_custom_build) {
    return true;
  }
  if (u.mode == UnitMode::check || u.mode == UnitMode::check_test) {
    return false;
  }
  return u.mode == UnitMode::test || u.target.is_bin() || u.target.is_proc_macro() ||
         u.target.is_custom_build() || u.target.has_crate_type("dylib") ||
         u.target.has_crate_type("cdylib") || u.target.has_crate_type("bin");
}

// Gathers each unit's inputs, dependencies first.
class InputsBuilder
{
public:
  InputsBuilder(const InstantiateContext& context, const InstantiatedPlan& done,
                const StoreDir& store_dir)
    : m_ctx(context), m_done(done), m_store_dir(store_dir),
      m_lib_closure(context.plan.units.size()),
      m_run_closure(context.plan.units.size())
  {
    for (size_t r : context.plan.roots) {
      if (context.plan.units[r].package->is_member) {
        m_primary.insert(context.plan.units[r].package->id);
      }
    }
  }

  UnitInputs
  inputs(size_t index, const std::string& source)
  {
    const Unit& u = m_ctx.plan.units[index];
    const CargoPackage& pkg = *u.package;
    UnitInputs in;
    in.package = pkg.name;
    in.version = pkg.version;
    in.mode = mode_name(u.mode);
    in.target = u.target.name;
    in.target_kind = u.target.kind;
    in.crate_types = u.target.crate_types;
    in.src_path = relative_source(u, pkg);
    fs::path in_root = pkg.root().lexically_relative(m_ctx.ws.root);
    if (pkg.is_local() && !in_root.empty() && !in_root.string().starts_with("..")) {
      in.in_workspace = true;
      in.workspace_path = in_root == "." ? "" : in_root.string();
    }
    in.edition = u.target.edition;
    in.harness = u.target.harness;
    in.source = source;
    in.package_env = package_env(pkg, source);
    for (const auto& [name, values] : pkg.features) {
      in.declared_features.push_back(name);
    }
    in.compiler = m_ctx.toolchain.identity;
    in.host = m_ctx.toolchain.host;
    in.links = pkg.links.value_or("");
    in.target_triple = u.platform.value_or("");
    in.features = u.features;
    in.profile = u.profile;
    in.lto = lto_name(u.lto);
    in.rustflags = rustflags(u);
    in.cap_lints = !pkg.is_local();
    in.lint_flags = pkg.lint_flags;
    in.primary = m_primary.count(pkg.id) > 0;
    in.driver = "rustc";
    if (!m_ctx.clippy.empty() && pkg.is_member &&
        (!m_ctx.clippy_selected_only || in.primary) &&
        (u.mode == UnitMode::check || u.mode == UnitMode::check_test)) {
      in.driver = m_ctx.clippy;
      in.tool_args = m_ctx.clippy_args;
    }
    in.config_env = m_ctx.config.env_for_process(in.package_env);
    if (u.mode != UnitMode::run_custom_build) {
      in.standard_library = m_ctx.toolchain.target_identity(u.triple);
    }
    if (links(u)) {
      in.linker = m_ctx.toolchain.linker_identity;
      if (auto linker = m_ctx.config.linker(u.triple, cfg(u))) {
        in.linker_path = linker->string();
        in.linker = m_ctx.toolchain.program_identity(*linker);
      }
    }
    if (u.mode == UnitMode::run_custom_build) {
      run_inputs(index, in);
    } else {
      compile_inputs(index, in);
    }
    return in;
  }

private:
  std::string
  relative_source(const Unit& u, const CargoPackage& pkg) const
  {
    fs::path rel = u.target.src_path.lexically_relative(pkg.root());
    if (rel.empty() || rel.string().starts_with("..")) {
      throw CargoError("target '" + u.target.name + "' of " + pkg.name + " " + pkg.version +
                       " has its source '" + u.target.src_path.string() +
                       "' outside the package's folder; kiln builds a package from its own "
                       "folder only");
    }
    return rel.string();
  }

  const CfgSet&
  cfg(const Unit& u) const
  {
    return m_ctx.toolchain.cfg(u.triple, rustflags(u));
  }

  std::vector<std::string>
  rustflags(const Unit& u) const
  {
    auto key = u.triple + (u.host_kind() ? "/host" : "/target");
    auto it = m_rustflags.find(key);
    if (it == m_rustflags.end()) {
      auto flags = m_ctx.config.rustflags(
        u.triple, u.host_kind(), m_ctx.plan.cross,
        [&](const std::vector<std::string>& f) -> const CfgSet& { return m_ctx.toolchain.cfg(u.triple, f); });
      it = m_rustflags.emplace(key, std::move(flags)).first;
    }
    return it->second;
  }

  const InstantiatedUnit&
  done(size_t unit) const
  {
    return m_done.units.at(unit);
  }

  std::string
  out(size_t unit) const
  {
    return m_store_dir.print(done(unit).out);
  }

  void
  run_inputs(size_t index, UnitInputs& in)
  {
    const Unit& u = m_ctx.plan.units[index];
    if (m_ctx.host_inputs) {
      m_ctx.host_inputs(*u.package, in);
    }
    for (const auto& [name, value] : cfg(u)) {
      std::string key = "CARGO_CFG_" + envify(name);
      auto& v = in.cfg[key];
      v += (v.empty() || value.empty() ? "" : ",") + value;
    }
    for (const auto& dep : u.deps) {
      const Unit& d = m_ctx.plan.units[dep.unit];
      if (d.mode == UnitMode::run_custom_build && d.package != u.package && d.package->links) {
        in.links_runs[*d.package->links] = out(dep.unit);
      } else if (d.mode == UnitMode::build && d.target.is_custom_build()) {
        in.build_script = out(dep.unit);
      }
    }
  }

  void
  compile_inputs(size_t index, UnitInputs& in)
  {
    const Unit& u = m_ctx.plan.units[index];
    std::set<size_t> libs, runs;
    for (const auto& dep : u.deps) {
      const Unit& d = m_ctx.plan.units[dep.unit];
      if (d.mode == UnitMode::run_custom_build) {
        if (d.package == u.package) {
          in.own_run = out(dep.unit);
        }
        runs.insert(dep.unit);
      } else if (d.target.is_lib()) {
        libs.insert(dep.unit);
        libs.insert(m_lib_closure[dep.unit].begin(), m_lib_closure[dep.unit].end());
        runs.insert(m_run_closure[dep.unit].begin(), m_run_closure[dep.unit].end());
        in.externs.push_back({dep.extern_name, out(dep.unit), extern_file(u, dep.unit)});
      } else if (d.target.is_bin() && d.mode == UnitMode::build) {
        in.bin_exes[d.target.name] = out(dep.unit);
      }
    }
    m_lib_closure[index].assign(libs.begin(), libs.end());
    m_run_closure[index].assign(runs.begin(), runs.end());
    for (size_t l : libs) {
      in.library_closure.push_back(out(l));
    }
    for (size_t r : runs) {
      if (out(r) != in.own_run) {
        in.link_search_runs.push_back(out(r));
      }
    }
    in.applies_link_libs = u.target.is_lib() || !u.package->lib();
  }

  // The file a dependent passes with --extern: the .rmeta when it reads
  // only metadata (a check, or an rlib using an rlib), else the product.
  std::string
  extern_file(const Unit& u, size_t dep) const
  {
    const Unit& d = m_ctx.plan.units[dep];
    const InstantiatedUnit& made = done(dep);
    bool metadata_only = u.mode == UnitMode::check || u.mode == UnitMode::check_test ||
                         reads_metadata_only(u);
    if (metadata_only && compiles_to_rlib(d)) {
      std::string product = made.product;
      return product.substr(0, product.size() - 5) + ".rmeta"; // libfoo-<m>.rlib → .rmeta
    }
    return made.product;
  }

  const InstantiateContext& m_ctx;
  const InstantiatedPlan& m_done;
  const StoreDir& m_store_dir;
  std::set<std::string> m_primary;
  std::vector<std::vector<size_t>> m_lib_closure;
  std::vector<std::vector<size_t>> m_run_closure;
  mutable std::map<std::string, std::vector<std::string>> m_rustflags;
};

// Seconds, roughly, on one core (fitted to cargo's own timings of
// examples/rust-app): a build-script run is quick, linking a build script
// takes a moment, a crate takes time with its size — up to a point, much of
// a big crate may be configured away — and a proc-macro (a dylib of the
// syntax crates) more; checking is cheaper than compiling.
double
estimated_cost(const Unit& u, uint64_t source_size)
{
  double mib = std::min(static_cast<double>(source_size) / (1024.0 * 1024.0), 2.0);
  if (u.mode == UnitMode::run_custom_build) {
    return 0.05;
  }
  if (u.target.is_custom_build()) {
    return 0.25;
  }
  if (u.mode == UnitMode::check || u.mode == UnitMode::check_test) {
    return 0.1 + 1.0 * mib;
  }
  if (u.target.is_proc_macro()) {
    return 0.5 + 5 * std::min(mib, 1.0);
  }
  if (u.target.is_bin() || u.mode == UnitMode::test) {
    return 0.5 + 2.5 * mib;
  }
  return 0.15 + 2.5 * mib;
}

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

} // namespace

void
InstantiatedPlan::materialize(LocalStore& store, const StorePath& drv_path) const
{
  auto it = derivations.find(drv_path);
  if (it == derivations.end()) {
    if (store.is_valid(drv_path)) {
      return;
    }
    throw Error("'" + store.print(drv_path) + "' is neither in the store nor in the plan");
  }
  const Derivation& drv = it->second;
  // The .drv itself only if its inputs' are there (they were built here): a
  // .drv must come with its closure, and writing the sources of every
  // substituted crate (a second or so for a real project) is not worth it.
  auto drv_wanted = [&] {
    return !store.is_valid(drv_path) &&
           std::all_of(drv.input_drvs.begin(), drv.input_drvs.end(),
                       [&](const auto& input) { return store.is_valid(input.first); });
  };
  auto done = [&] {
    return std::all_of(drv.input_srcs.begin(), drv.input_srcs.end(),
                       [&](const StorePath& src) { return store.is_valid(src); }) &&
           !drv_wanted();
  };
  if (done()) {
    return; // without waiting for another unit's sources
  }
  std::lock_guard guard(*m_materializing);
  for (const auto& src : drv.input_srcs) {
    if (store.is_valid(src)) {
      continue;
    }
    const SourceTree& tree = sources.at(src);
    AddOptions add;
    add.name = tree.name;
    add.filter = tree.filter;
    StorePath added = store.add_path(tree.root, add);
    if (added != src) {
      throw Error("the sources in '" + tree.root.string() +
                  "' changed while kiln was building; build again");
    }
  }
  if (drv_wanted()) {
    add_derivation(store, drv);
  }
}

namespace {

// clippy reads clippy.toml (or .clippy.toml) from the package's folder or
// the nearest folder above it. One above the package (the workspace's) is
// put in the store beside the sources and named by CLIPPY_CONF_DIR.
void
add_clippy_conf(const CargoPackage& pkg, UnitInputs& inputs, Sources& sources,
                InstantiatedPlan& made, const StoreDir& dir)
{
  std::error_code ec;
  for (fs::path d = pkg.root(); !d.empty(); d = d.parent_path()) {
    for (const char* name : {"clippy.toml", ".clippy.toml"}) {
      if (!fs::is_regular_file(d / name, ec)) {
        continue;
      }
      if (d == pkg.root()) {
        return; // in the sources already
      }
      SourceTree tree;
      std::string file = name;
      StorePath path = sources.conf_path(dir, d, file, tree);
      made.sources.emplace(path, std::move(tree));
      inputs.clippy_conf = dir.print(path);
      return;
    }
    if (d == d.root_path()) {
      return;
    }
  }
}

// A run of each test harness the plan compiles as a root: its inputs are
// the harness (which stands for everything it was compiled from), its
// arguments, the package's sources (its working folder) and what it sees at
// run time.
void
add_test_runs(const InstantiateContext& context, InstantiatedPlan& made, const std::string& system,
              const StoreDir& dir, DrvHasher& hasher)
{
  for (size_t r : context.plan.roots) {
    if (context.plan.units[r].mode != UnitMode::test) {
      continue;
    }
    const InstantiatedUnit& harness = made.units[r];
    const UnitInputs& h = harness.inputs;
    UnitInputs run;
    run.package = h.package;
    run.version = h.version;
    run.mode = "test-run";
    run.target = h.target;
    run.target_kind = h.target_kind;
    run.source = h.source;
    run.package_env = h.package_env;
    run.config_env = h.config_env;
    run.compiler = h.compiler;
    run.host = h.host;
    run.target_triple = h.target_triple;
    run.own_run = h.own_run;
    run.bin_exes = h.bin_exes;
    run.tool_args = context.test_args;
    run.rerun = context.rerun;
    run.test_binary = dir.print(harness.out) + "/" + harness.product;
    std::map<std::string, StorePath> drv_of;
    for (const auto& u : made.units) {
      drv_of.emplace(dir.print(u.out), u.drv);
    }
    UnitDerivation derivation = make_derivation(run, system, drv_of, dir, hasher);
    made.derivations.emplace(derivation.drv_path, derivation.drv);
    made.test_runs.push_back({std::move(run), derivation.drv_path, derivation.out, derivation.product, 1.0});
    made.test_run_of.push_back(r);
  }
}

} // namespace

InstantiatedPlan
instantiate_plan(LocalStore& store, const InstantiateContext& context)
{
  const StoreDir& dir = store.store_dir();
  Sources sources(context.state_dir);
  InstantiatedPlan made;
  DrvHasher hasher(dir, [&](const StorePath& p) {
    auto it = made.derivations.find(p);
    return it != made.derivations.end() ? it->second : read_derivation(store, p);
  });
  InputsBuilder builder(context, made, dir);
  std::map<std::string, StorePath> source_of, drv_of;
  std::string system = context.toolchain.host.substr(0, context.toolchain.host.find('-')) + "-linux";
  for (size_t i = 0; i < context.plan.units.size(); ++i) {
    const Unit& unit = context.plan.units[i];
    auto src = source_of.find(unit.package->id);
    if (src == source_of.end()) {
      SourceTree tree;
      StorePath path = sources.path_of(dir, *unit.package, tree);
      made.sources.emplace(path, std::move(tree));
      src = source_of.emplace(unit.package->id, path).first;
    }
    UnitInputs inputs = builder.inputs(i, dir.print(src->second));
    if (inputs.driver != "rustc") {
      add_clippy_conf(*unit.package, inputs, sources, made, dir);
    }
    UnitDerivation derivation = make_derivation(inputs, system, drv_of, dir, hasher);
    drv_of.emplace(dir.print(derivation.out), derivation.drv_path);
    made.derivations.emplace(derivation.drv_path, derivation.drv);
    double cost = estimated_cost(unit, made.sources.at(src->second).size);
    made.units.push_back(
      {std::move(inputs), derivation.drv_path, derivation.out, derivation.product, cost});
  }
  if (context.run_tests) {
    add_test_runs(context, made, system, dir, hasher);
  }
  return made;
}

std::string
describe(const Unit& u)
{
  std::string text = u.package->name + " v" + u.package->version;
  std::string kind = u.kind_name();
  std::string what = kind == "lib" ? "" : kind == "bin" || kind == "example" || kind == "test" || kind == "bench"
                                            ? kind + " \"" + u.target.name + "\""
                                            : kind;
  if (u.mode == UnitMode::test || u.mode == UnitMode::check_test) {
    what += what.empty() ? "test" : " test";
  } else if (u.mode == UnitMode::doctest) {
    what += what.empty() ? "doctest" : " doctest";
  }
  return what.empty() ? text : text + " (" + what + ")";
}

UnitFrontend::UnitFrontend(LocalStore& store, const Plan& plan, const InstantiatedPlan& units,
                           const Toolchain& toolchain, unsigned jobs, const Environment* env)
  : m_store(store), m_plan(plan), m_units(units), m_toolchain(toolchain), m_jobs(jobs), m_env(env)
{
  for (size_t i = 0; i < units.units.size(); ++i) {
    m_unit_of.emplace(units.units[i].drv, i);
  }
  for (size_t i = 0; i < units.test_runs.size(); ++i) {
    m_test_run_of.emplace(units.test_runs[i].drv, i);
  }
  std::error_code ec;
  m_self = fs::read_symlink("/proc/self/exe", ec);
  // kiln-rust-unit beside kiln (a build tree) or in ../libexec/kiln (an
  // install); without it, kiln itself does the work (`kiln __rust-unit`).
  for (const fs::path& candidate :
       {m_self.parent_path() / "kiln-rust-unit",
        m_self.parent_path().parent_path() / "libexec" / "kiln" / "kiln-rust-unit"}) {
    if (::access(candidate.c_str(), X_OK) == 0) {
      m_helper = candidate;
      break;
    }
  }
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
  return d && i && reads_metadata_only(m_plan.units[*d]) && compiles_to_rlib(m_plan.units[*i]);
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
  spec.builder = m_helper.empty() ? m_self.string() : m_helper.string();
  spec.args = m_helper.empty() ? std::vector<std::string>{"__rust-unit"} : std::vector<std::string>{};
  // The inputs are for people (why-rebuild, --explain): the builder follows
  // the instructions derived from them, and a big list of host files would
  // not fit in an environment variable.
  spec.env.erase(k_inputs_env);
  spec.env["KILN_UNIT_RUSTC"] = m_toolchain.rustc.string();
  spec.env["KILN_UNIT_RUSTDOC"] = m_toolchain.rustdoc.string();
  spec.env["KILN_UNIT_CARGO"] = m_toolchain.cargo.string();
  spec.env["KILN_UNIT_JOBS"] = std::to_string(std::max(1u, m_jobs));
  spec.env["KILN_UNIT_CLIPPY_DRIVER"] = (m_toolchain.sysroot / "bin" / "clippy-driver").string();
  spec.env["KILN_UNIT_RUST_LIB"] = (m_toolchain.sysroot / "lib" / "rustlib" / m_toolchain.host / "lib").string();
  // Build scripts run with libkiln-trace.so preloaded, to learn the host
  // files they read; what is kiln's or the toolchain's is not the host's.
  fs::path shim = (m_helper.empty() ? m_self : m_helper).parent_path() / "libkiln-trace.so";
  std::error_code shim_ec;
  if (fs::exists(shim, shim_ec)) {
    spec.env["KILN_UNIT_TRACE"] = shim.string();
    spec.env["KILN_UNIT_TRACE_IGNORE"] =
      m_store.store_dir().path() + ":" + m_store.root().string() + ":" +
      m_toolchain.sysroot.string() + ":" +
      (m_helper.empty() ? m_self : m_helper).parent_path().string() + ":" +
      m_toolchain.cargo.parent_path().string();
  }
  // The toolchain and the host's C toolchain (rustc links with cc), read-only.
  // Folders first: what lies inside them (kiln's own libraries) is covered.
  // The builder program as its folder when the builder's user may enter
  // it: a folder is not run through ldd (its libraries are in /usr). A
  // private folder (mode 0700) hides it; then the file itself, with its
  // libraries.
  fs::path builder = m_helper.empty() ? m_self : m_helper;
  std::vector<fs::path> tools = {"/usr", "/bin", "/lib", "/lib64", "/etc/alternatives",
                                 "/etc/ld.so.cache", m_toolchain.sysroot,
                                 world_enterable(builder.parent_path()) ? builder.parent_path()
                                                                        : builder};
  std::vector<fs::path> declared = std::move(spec.tools);
  spec.tools.clear();
  for (const auto& t : tools) {
    std::error_code e;
    if (fs::exists(fs::symlink_status(t, e))) {
      spec.tools.push_back(t);
    }
  }
  spec.tools.insert(spec.tools.end(), declared.begin(), declared.end());
  if (spec.env.count("KILN_UNIT_TRACE")) {
    spec.tools.push_back(spec.env["KILN_UNIT_TRACE"]);
  }
  if (!m_toolchain.cargo.empty() &&
      !m_toolchain.cargo.string().starts_with(m_toolchain.sysroot.string())) {
    spec.tools.push_back(m_toolchain.cargo);
  }
  StorePath drv_path = derivation_path(drv, m_store.store_dir());
  auto unit = unit_of(drv_path);
  auto test_run = test_run_of(drv_path);
  if (unit || test_run) {
    const UnitInputs& inputs = unit ? m_units.units[*unit].inputs : m_units.test_runs[*test_run].inputs;
    // A linker named in cargo's configuration, wherever it is.
    if (auto found = inputs.linker_path.empty() ? std::nullopt : find_program(inputs.linker_path)) {
      spec.tools.push_back(*found);
    }
    // What a build script reads of the host, visible where it is, as under
    // cargo: the paths its variables name and the files it was seen reading.
    std::string keep;
    for (const auto& path : host_paths_of(inputs)) {
      spec.tools.push_back(path);
      keep += (keep.empty() ? "" : ":") + path.string();
    }
    spec.env["KILN_UNIT_TRACE_KEEP"] = keep;
  }
}

} // namespace kiln::cargo
