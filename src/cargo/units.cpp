#include <kiln/cargo/units.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/parallel.hpp>
#include <kiln/util/process.hpp>

#include <kiln/cargo/digest_cache.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

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
  explicit Sources(const fs::path& digest_dir) : m_digests(digest_dir, "source-digest-") {}
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
    in.cap_lints = !pkg.is_local() || m_ctx.cap_lints;
    if (!m_ctx.cap_lints) {
      in.lint_flags = pkg.lint_flags;
    }
    in.primary = m_primary.count(pkg.id) > 0;
    in.driver = "rustc";
    // cargo clippy makes clippy-driver the wrapper of every compile of a
    // workspace member (RUSTC_WORKSPACE_WRAPPER): its build script and, for
    // a proc-macro or a build-dependency, its compile for the host too are
    // linted, not only its check. (With --no-deps, or lints capped,
    // clippy-driver compiles as rustc does: kiln runs rustc for those.)
    if (!m_ctx.clippy.empty() && pkg.is_member && !in.cap_lints &&
        (!m_ctx.clippy_selected_only || in.primary) && u.mode != UnitMode::run_custom_build &&
        u.mode != UnitMode::doctest) {
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
    // The flags name no processor then: which one compiled it is an input
    // (a build script's run sees it too, in CARGO_ENCODED_RUSTFLAGS and
    // CARGO_CFG_TARGET_FEATURE).
    if (asks_for_native_cpu(in.rustflags) || asks_for_native_cpu(in.rustdocflags)) {
      in.host_cpu = this_cpu_identity();
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

public:
  // A unit whose inputs are not asked for (taken whole from an earlier
  // instantiation): what its dependents' inputs need of it is noted still.
  void
  skip(size_t index)
  {
    if (m_ctx.plan.units[index].mode != UnitMode::run_custom_build) {
      note_closures(index);
    }
  }

private:
  // The libraries a compile links with and the build-script runs whose
  // link search paths it gets, all the way down; remembered for dependents.
  std::pair<std::set<size_t>, std::set<size_t>>
  note_closures(size_t index)
  {
    std::set<size_t> libs, runs;
    for (const auto& dep : m_ctx.plan.units[index].deps) {
      const Unit& d = m_ctx.plan.units[dep.unit];
      if (d.mode == UnitMode::run_custom_build) {
        runs.insert(dep.unit);
      } else if (d.target.is_proc_macro()) {
        // A proc-macro is loaded whole (its dependencies are linked into it,
        // and rustc does not resolve a proc-macro crate's own crates), and
        // cargo does not pass its build scripts' link paths on (they are
        // the host's "plugins"): what it was built from is not an input of
        // its dependents, so they need not be fetched to build them.
        libs.insert(dep.unit);
      } else if (d.target.is_lib()) {
        libs.insert(dep.unit);
        libs.insert(m_lib_closure[dep.unit].begin(), m_lib_closure[dep.unit].end());
        runs.insert(m_run_closure[dep.unit].begin(), m_run_closure[dep.unit].end());
      }
    }
    m_lib_closure[index].assign(libs.begin(), libs.end());
    m_run_closure[index].assign(runs.begin(), runs.end());
    return {std::move(libs), std::move(runs)};
  }

  void
  compile_inputs(size_t index, UnitInputs& in)
  {
    const Unit& u = m_ctx.plan.units[index];
    for (const auto& dep : u.deps) {
      const Unit& d = m_ctx.plan.units[dep.unit];
      if (d.mode == UnitMode::run_custom_build) {
        if (d.package == u.package) {
          in.own_run = out(dep.unit);
        }
      } else if (d.target.is_lib()) {
        in.externs.push_back({dep.extern_name, out(dep.unit), extern_file(u, dep.unit)});
      } else if (d.target.is_bin() && d.mode == UnitMode::build) {
        in.bin_exes[d.target.name] = out(dep.unit);
      }
    }
    auto [libs, runs] = note_closures(index);
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
                         u.reads_metadata_only();
    if (metadata_only && d.compiles_to_rlib()) {
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
    // Computed from the tree's digest: one read, not two. add_path refuses
    // a tree that changed since, naming it.
    add.expected = src;
    store.add_path(tree.root, add);
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
    made.test_runs.push_back({std::move(run), derivation.drv_path, derivation.out,
                              derivation.product, 1.0, harness.local_only});
    made.test_run_of.push_back(r);
  }
}

} // namespace

InstantiatedPlan
instantiate_plan(LocalStore& store, const InstantiateContext& context)
{
  const StoreDir& dir = store.store_dir();
  // Read (a state file of every source tree's digest) only if a source must
  // be hashed here: not when they are taken from context.clean.
  std::optional<Sources> digests;
  auto sources = [&]() -> Sources& {
    if (!digests) {
      digests.emplace(context.digest_dir);
    }
    return *digests;
  };
  InstantiatedPlan made;
  DrvHasher hasher(dir, [&](const StorePath& p) {
    auto it = made.derivations.find(p);
    return it != made.derivations.end() ? it->second : read_derivation(store, p);
  });
  InputsBuilder builder(context, made, dir);
  std::map<std::string, StorePath> source_of, drv_of;
  // Paths that change with every edit, and the names incremental units'
  // metadata hashes in their place.
  std::map<std::string, std::string> stable_names;
  std::string system = context.toolchain.host.substr(0, context.toolchain.host.find('-')) + "-linux";
  auto compiled_incrementally = [&](size_t i) {
    return context.incremental && may_compile_incrementally(context.plan.units[i]) &&
           context.incremental(i);
  };
  std::vector<char> local_only = local_only_units(context.plan, compiled_incrementally);
  const InstantiatedPlan* clean = context.clean;
  if (!clean) {
    // Every package's sources, hashed on a few threads: the walk of each
    // tree's metadata is most of a warm plan's time.
    std::vector<const CargoPackage*> packages;
    std::set<std::string> seen;
    for (const auto& u : context.plan.units) {
      if (seen.insert(u.package->id).second) {
        packages.push_back(&*u.package);
      }
    }
    std::vector<std::optional<StorePath>> paths(packages.size());
    std::vector<SourceTree> trees(packages.size());
    Sources& hashing = sources();
    parallel_for(packages.size(), std::clamp(std::thread::hardware_concurrency(), 1u, 4u),
                 [&](size_t k) { paths[k] = hashing.path_of(dir, *packages[k], trees[k]); });
    for (size_t k = 0; k < packages.size(); ++k) {
      source_of.emplace(packages[k]->id, *paths[k]);
      made.sources.emplace(*paths[k], std::move(trees[k]));
    }
  }
  for (size_t i = 0; i < context.plan.units.size(); ++i) {
    const Unit& unit = context.plan.units[i];
    if (clean) {
      // The package's sources as hashed for the clean plan; the unit itself
      // too unless it is local-only here (nothing it is made from differs).
      const InstantiatedUnit& same = clean->units[i];
      source_of.emplace(unit.package->id, dir.parse(same.inputs.source));
      if (!local_only[i]) {
        const Derivation& drv = clean->derivations.at(same.drv);
        for (const auto& src : drv.input_srcs) {
          if (auto tree = clean->sources.find(src); tree != clean->sources.end()) {
            made.sources.emplace(src, tree->second);
          }
        }
        drv_of.emplace(dir.print(same.out), same.drv);
        made.derivations.emplace(same.drv, drv);
        made.units.push_back(same);
        builder.skip(i);
        continue;
      }
    }
    const StorePath& src = source_of.at(unit.package->id);
    if (!made.sources.count(src)) {
      made.sources.emplace(src, clean->sources.at(src));
    }
    UnitInputs inputs = builder.inputs(i, dir.print(src));
    if (inputs.driver != "rustc") {
      add_clippy_conf(*unit.package, inputs, sources(), made, dir);
    }
    inputs.incremental = compiled_incrementally(i);
    if (inputs.incremental) {
      stable_names[inputs.source] = "source:" + unit.package->name + "-" + unit.package->version;
    }
    UnitDerivation derivation = make_derivation(inputs, system, drv_of, dir, hasher, stable_names);
    if (local_only[i]) {
      // What dependents' stable metadata names this output by.
      stable_names[dir.print(derivation.out)] =
        "local:" + hash_string(HashAlgo::sha256, stable_inputs_json(inputs, stable_names))
                     .to_string(HashFormat::base16, false)
                     .substr(0, 16);
    }
    drv_of.emplace(dir.print(derivation.out), derivation.drv_path);
    made.derivations.emplace(derivation.drv_path, derivation.drv);
    double cost = estimated_cost(unit, made.sources.at(src).size);
    made.units.push_back({std::move(inputs), derivation.drv_path, derivation.out,
                          derivation.product, cost, local_only[i] != 0});
  }
  if (context.run_tests) {
    add_test_runs(context, made, system, dir, hasher);
  }
  return made;
}

bool
may_compile_incrementally(const Unit& u)
{
  return u.incremental && (u.mode == UnitMode::build || u.mode == UnitMode::check ||
                           u.mode == UnitMode::check_test || u.mode == UnitMode::test);
}

std::vector<char>
local_only_units(const Plan& plan, const std::function<bool(size_t)>& incremental)
{
  std::vector<char> local(plan.units.size(), 0);   // units are in dependency order
  for (size_t i = 0; i < plan.units.size(); ++i) {
    local[i] = incremental(i) ||
               std::any_of(plan.units[i].deps.begin(), plan.units[i].deps.end(),
                           [&](const UnitDep& d) { return local[d.unit] != 0; });
  }
  return local;
}

std::string
session_name(const Unit& u)
{
  std::string what = u.package->name + " " + u.package->version + " " + u.target.name + " " +
                     u.kind_name() + " " + to_string(u.mode) +
                     (u.mode == UnitMode::check_test ? "-test" : "") + " " + u.profile.name + " " +
                     u.platform.value_or("host");
  return u.target.name + "-" +
         hash_string(HashAlgo::sha256, what).to_string(HashFormat::base16, false).substr(0, 16);
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

} // namespace kiln::cargo
