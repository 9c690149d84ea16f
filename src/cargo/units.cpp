#include <kiln/cargo/units.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/util/io.hpp>

#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

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

// The metadata of every file a filtered walk would include: if it is
// unchanged, so is the tree's NAR hash.
std::string
tree_fingerprint(const fs::path& root, const PathFilter& filter)
{
  std::vector<std::string> lines;
  std::vector<std::string> todo = {""};
  while (!todo.empty()) {
    std::string rel = todo.back();
    todo.pop_back();
    fs::path dir = rel.empty() ? root : root / rel;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      std::string entry_rel = (rel.empty() ? "" : rel + "/") + entry.path().filename().string();
      if (filter && !filter(entry_rel)) {
        continue;
      }
      struct stat st;
      if (::lstat(entry.path().c_str(), &st) != 0) {
        continue;
      }
      lines.push_back(entry_rel + " " + std::to_string(st.st_mode) + " " +
                      std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
                      std::to_string(st.st_mtim.tv_nsec) + " " + std::to_string(st.st_ino) + " " +
                      std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec));
      if (S_ISDIR(st.st_mode)) {
        todo.push_back(entry_rel);
      }
    }
  }
  std::sort(lines.begin(), lines.end());
  std::string all;
  for (const auto& l : lines) {
    all += l + "\n";
  }
  return hash_string(HashAlgo::sha256, all).to_string(HashFormat::base16, false);
}

// Source trees in the store, remembered by file metadata.
class SourceCache
{
public:
  explicit SourceCache(LocalStore& store)
    : m_store(store), m_file(store.root() / "var" / "cargo-sources.json")
  {
    std::error_code ec;
    if (fs::exists(m_file, ec)) {
      try {
        m_entries = json::parse(read_file(m_file));
      } catch (const std::exception&) {
        m_entries = json::object();
      }
    }
    if (!m_entries.is_object()) {
      m_entries = json::object();
    }
  }

  // The store path of the package's sources (hashed, not copied).
  StorePath
  path_of(const CargoPackage& pkg, SourceTree& tree)
  {
    fs::path root = pkg.root();
    tree.root = root;
    tree.filter = source_filter(root, pkg.is_local());
    tree.name = pkg.name + "-" + pkg.version + "-src";
    std::string fingerprint = tree_fingerprint(root, tree.filter);
    auto it = m_entries.find(root.string());
    if (it != m_entries.end() && it->value("fingerprint", "") == fingerprint &&
        it->value("name", "") == tree.name && it->contains("size")) {
      try {
        tree.size = it->at("size").get<uint64_t>();
        return m_store.store_dir().parse(it->at("path").get<std::string>());
      } catch (const std::exception&) {
        // Not a usable entry: hash again.
      }
    }
    HashSink hash;
    dump_path(root, hash, tree.filter);
    tree.size = hash.bytes_written();
    StorePath path = m_store.store_dir().make_fixed_output_path(
      tree.name, ContentAddress{ContentAddress::Method::recursive, hash.finish()});
    m_entries[root.string()] = {{"fingerprint", fingerprint},
                                {"name", tree.name},
                                {"path", m_store.store_dir().print(path)},
                                {"size", tree.size}};
    m_dirty = true;
    return path;
  }

  void
  save()
  {
    if (!m_dirty) {
      return;
    }
    try {
      fs::create_directories(m_file.parent_path());
      write_file_atomic(m_file, m_entries.dump());
    } catch (const std::exception&) {
      // Only a cache.
    }
  }

private:
  LocalStore& m_store;
  fs::path m_file;
  json m_entries;
  bool m_dirty = false;
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

void
package_env(json& env, const CargoPackage& pkg, const std::string& src)
{
  Version v = split_version(pkg.version);
  std::string authors;
  for (const auto& a : pkg.authors) {
    authors += (authors.empty() ? "" : ":") + a;
  }
  env["CARGO"] = "@CARGO@";
  env["CARGO_MANIFEST_DIR"] = src;
  env["CARGO_MANIFEST_PATH"] = src + "/Cargo.toml";
  env["CARGO_PKG_NAME"] = pkg.name;
  env["CARGO_PKG_VERSION"] = pkg.version;
  env["CARGO_PKG_VERSION_MAJOR"] = v.major;
  env["CARGO_PKG_VERSION_MINOR"] = v.minor;
  env["CARGO_PKG_VERSION_PATCH"] = v.patch;
  env["CARGO_PKG_VERSION_PRE"] = v.pre;
  env["CARGO_PKG_AUTHORS"] = authors;
  env["CARGO_PKG_DESCRIPTION"] = pkg.description;
  env["CARGO_PKG_HOMEPAGE"] = pkg.homepage;
  env["CARGO_PKG_REPOSITORY"] = pkg.repository;
  env["CARGO_PKG_LICENSE"] = pkg.license;
  env["CARGO_PKG_LICENSE_FILE"] = pkg.license_file;
  env["CARGO_PKG_README"] = pkg.readme;
  env["CARGO_PKG_RUST_VERSION"] = pkg.rust_version;
}

// Profile → rustc flags, as cargo's build_base_args writes them.
void
profile_args(std::vector<std::string>& args, const Profile& p, const Unit& unit)
{
  bool links_whole = unit.target->is_bin() || unit.target->is_custom_build();
  if (p.opt_level != "0") {
    args.push_back("-C");
    args.push_back("opt-level=" + p.opt_level);
  }
  if (p.panic != "unwind") {
    args.push_back("-C");
    args.push_back("panic=" + p.panic);
  }
  if (p.lto == "false") {
    args.push_back("-C");
    args.push_back("embed-bitcode=no");
  } else if (p.lto == "off") {
    args.insert(args.end(), {"-C", "lto=off", "-C", "embed-bitcode=no"});
  } else if (links_whole) {
    args.push_back("-C");
    args.push_back(p.lto == "true" || p.lto == "fat" ? "lto" : "lto=" + p.lto);
  }
  if (p.codegen_units) {
    args.push_back("-C");
    args.push_back("codegen-units=" + std::to_string(*p.codegen_units));
  }
  if (p.debuginfo != "0") {
    args.push_back("-C");
    args.push_back("debuginfo=" + p.debuginfo);
  }
  bool implied = p.opt_level == "0";
  if (p.debug_assertions != implied) {
    args.push_back("-C");
    args.push_back(std::string("debug-assertions=") + (p.debug_assertions ? "on" : "off"));
  }
  if (p.overflow_checks != p.debug_assertions) {
    args.push_back("-C");
    args.push_back(std::string("overflow-checks=") + (p.overflow_checks ? "on" : "off"));
  }
  if (p.strip != "none") {
    args.push_back("-C");
    args.push_back("strip=" + p.strip);
  }
  if (p.rpath) {
    args.push_back("-C");
    args.push_back("rpath");
  }
}

std::string
short_kind(const Unit& u)
{
  if (u.mode == UnitMode::run_custom_build) {
    return "-run";
  }
  if (u.target->is_custom_build()) {
    return "-build";
  }
  if (u.target->is_bin()) {
    return "-bin-" + u.target->name;
  }
  return "";
}

bool
is_rlib(const CargoTarget& t)
{
  return t.has_crate_type("lib") || t.has_crate_type("rlib");
}

// A library that rustc links into a shared object (dylib, cdylib).
bool
links_shared(const CargoTarget& t)
{
  return t.has_crate_type("dylib") || t.has_crate_type("cdylib");
}

// A library that rustc compiles to an rlib (and so to an .rmeta first).
bool
compiles_to_rlib(const Unit& unit)
{
  return unit.mode == UnitMode::build && unit.target->is_lib() && !unit.target->is_proc_macro() &&
         is_rlib(*unit.target);
}

} // namespace

DrvReader
InstantiatedPlan::reader(const LocalStore& store) const
{
  return [this, &store](const StorePath& p) {
    auto it = derivations.find(p);
    return it != derivations.end() ? it->second : read_derivation(store, p);
  };
}

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

InstantiatedPlan
instantiate_plan(LocalStore& store, const Workspace& ws, const Plan& plan,
                 const Toolchain& toolchain, const PlanOptions& options)
{
  const StoreDir& dir = store.store_dir();
  SourceCache sources(store);
  std::map<std::string, StorePath> source_of;
  InstantiatedPlan instantiated;
  std::map<StorePath, Derivation>& made = instantiated.derivations;
  DrvHasher hasher(dir, [&](const StorePath& p) {
    auto it = made.find(p);
    return it != made.end() ? it->second : read_derivation(store, p);
  });
  std::set<std::string> primary;
  for (size_t r : plan.roots) {
    primary.insert(plan.units[r].package->id);
  }

  std::vector<UnitDerivation>& result = instantiated.units;
  std::vector<std::string> metadata(plan.units.size());
  // Per unit: the lib output folders of its transitive lib dependencies, and
  // the build-script runs whose link-search paths it inherits.
  std::vector<std::vector<size_t>> lib_closure(plan.units.size());
  std::vector<std::vector<size_t>> script_closure(plan.units.size());

  for (size_t i = 0; i < plan.units.size(); ++i) {
    const Unit& unit = plan.units[i];
    const CargoPackage& pkg = *unit.package;
    auto src_it = source_of.find(pkg.id);
    if (src_it == source_of.end()) {
      SourceTree tree;
      StorePath path = sources.path_of(pkg, tree);
      instantiated.sources.emplace(path, std::move(tree));
      src_it = source_of.emplace(pkg.id, path).first;
    }
    const StorePath& src_path = src_it->second;
    std::string src = dir.print(src_path);

    Derivation drv;
    drv.name = pkg.name + "-" + pkg.version + short_kind(unit);
    drv.platform = std::string(toolchain.host.substr(0, toolchain.host.find('-'))) + "-linux";
    drv.builder = k_rust_unit_builder;
    drv.input_srcs.insert(src_path);
    for (const auto& dep : unit.deps) {
      drv.input_drvs[result[dep.unit].drv] = {"out"};
    }

    json spec;
    json env = json::object();
    package_env(env, pkg, src);
    spec["cwd"] = src;

    std::optional<size_t> own_run;
    for (const auto& dep : unit.deps) {
      if (plan.units[dep.unit].mode == UnitMode::run_custom_build) {
        own_run = dep.unit;
      }
    }

    if (unit.mode == UnitMode::run_custom_build) {
      spec["mode"] = "run";
      const CfgSet& cfg = toolchain.cfg(unit.triple, options.rustflags);
      std::map<std::string, std::string> cfg_env;
      for (const auto& [name, value] : cfg) {
        std::string key = "CARGO_CFG_" + envify(name);
        auto& v = cfg_env[key];
        v += (v.empty() || value.empty() ? "" : ",") + value;
      }
      for (const auto& [k, v] : cfg_env) {
        env[k] = v;
      }
      if (unit.profile.debug_assertions) {
        env["CARGO_CFG_DEBUG_ASSERTIONS"] = "";
      }
      std::string features;
      for (const auto& f : unit.features) {
        env["CARGO_FEATURE_" + envify(f)] = "1";
        features += (features.empty() ? "" : ",") + f;
      }
      if (!features.empty()) {
        env["CARGO_CFG_FEATURE"] = features;
      }
      std::string encoded;
      for (const auto& f : options.rustflags) {
        encoded += (encoded.empty() ? "" : "\x1f") + f;
      }
      env["CARGO_ENCODED_RUSTFLAGS"] = encoded;
      if (pkg.links) {
        env["CARGO_MANIFEST_LINKS"] = *pkg.links;
      }
      env["DEBUG"] = unit.profile.debuginfo != "0" ? "true" : "false";
      env["OPT_LEVEL"] = unit.profile.opt_level;
      env["PROFILE"] = unit.profile.root;
      env["HOST"] = toolchain.host;
      env["TARGET"] = unit.triple;
      env["NUM_JOBS"] = "@NUM_JOBS@";
      env["OUT_DIR"] = "@out@/out";
      env["RUSTC"] = "@RUSTC@";
      env["RUSTDOC"] = "@RUSTDOC@";
      json links_deps = json::array();
      for (const auto& dep : unit.deps) {
        const Unit& d = plan.units[dep.unit];
        if (d.mode == UnitMode::run_custom_build && d.package != unit.package && d.package->links) {
          links_deps.push_back({{"links", *d.package->links}, {"from", dir.print(result[dep.unit].out)}});
        } else if (d.mode == UnitMode::build) {
          spec["program"] = dir.print(result[dep.unit].out) + "/build-script-build";
        }
      }
      spec["links_deps"] = links_deps;
    } else {
      spec["mode"] = "compile";
      const CargoTarget& target = *unit.target;
      bool lib = target.is_lib() && !target.is_proc_macro();
      std::vector<std::string> args;
      std::string crate_name = target.crate_name();
      std::error_code ec;
      fs::path rel = target.src_path.lexically_relative(pkg.root());
      std::string src_arg = !rel.empty() && !rel.string().starts_with("..")
                              ? rel.string()
                              : target.src_path.string();
      args.insert(args.end(), {"--crate-name", crate_name, "--edition=" + target.edition, src_arg});
      // The sources' store path must not end up in debuginfo and panic
      // messages: a binary would keep every crate's sources in its closure
      // (and its download). cargo's trim-paths names them the same way.
      args.push_back("--remap-path-prefix=" + src + "=" + pkg.name + "-" + pkg.version);
      for (const auto& t : target.crate_types) {
        args.insert(args.end(), {"--crate-type", t});
      }
      args.push_back(lib && is_rlib(target) ? "--emit=metadata,link" : "--emit=link");
      if (target.is_proc_macro()) {
        args.insert(args.end(), {"-C", "prefer-dynamic"});
      }
      profile_args(args, unit.profile, unit);
      for (const auto& f : unit.features) {
        args.insert(args.end(), {"--cfg", "feature=\"" + f + "\""});
      }
      std::string declared;
      for (const auto& [name, values] : pkg.features) {
        if (!name.starts_with("dep:")) {
          declared += (declared.empty() ? "" : ", ") + ("\"" + name + "\"");
        }
      }
      args.insert(args.end(), {"--check-cfg", "cfg(docsrs,test)", "--check-cfg",
                               "cfg(feature, values(" + declared + "))"});
      if (plan.cross && !unit.host_platform) {
        args.insert(args.end(), {"--target", unit.triple});
      }
      // Transitive libraries for -L dependency= and the build-script runs
      // whose link-search paths reach this unit.
      std::set<size_t> libs, scripts;
      for (const auto& dep : unit.deps) {
        const Unit& d = plan.units[dep.unit];
        if (d.mode == UnitMode::run_custom_build) {
          scripts.insert(dep.unit);
        } else if (d.target->is_lib()) {
          libs.insert(dep.unit);
          libs.insert(lib_closure[dep.unit].begin(), lib_closure[dep.unit].end());
          scripts.insert(script_closure[dep.unit].begin(), script_closure[dep.unit].end());
        }
      }
      lib_closure[i].assign(libs.begin(), libs.end());
      script_closure[i].assign(scripts.begin(), scripts.end());
      // Outputs need not refer to one another (an .rlib rarely names its
      // dependencies' paths), so everything read is an input of its own.
      for (size_t l : libs) {
        drv.input_drvs[result[l].drv] = {"out"};
      }
      for (size_t s : scripts) {
        drv.input_drvs[result[s].drv] = {"out"};
      }
      for (size_t l : libs) {
        args.push_back("-L");
        args.push_back("dependency=" + dir.print(result[l].out));
      }
      for (const auto& dep : unit.deps) {
        const Unit& d = plan.units[dep.unit];
        if (d.mode != UnitMode::build || !d.target->is_lib()) {
          continue;
        }
        std::string file = d.target->is_proc_macro() || !lib || !is_rlib(*d.target)
                             ? result[dep.unit].product
                             : "lib" + d.target->crate_name() + "-" + metadata[dep.unit] + ".rmeta";
        args.push_back("--extern");
        args.push_back(dep.extern_name + "=" + dir.print(result[dep.unit].out) + "/" + file);
      }
      if (target.is_proc_macro()) {
        args.insert(args.end(), {"--extern", "proc_macro"});
      }
      if (!pkg.is_local()) {
        args.insert(args.end(), {"--cap-lints", "allow"});
      }
      // As cargo: with --target, RUSTFLAGS are for the target's units only.
      if (!plan.cross || !unit.host_platform) {
        args.insert(args.end(), options.rustflags.begin(), options.rustflags.end());
      }
      json link_from = json::array();
      for (size_t s : scripts) {
        if (!own_run || s != *own_run) {
          link_from.push_back(dir.print(result[s].out));
        }
      }
      spec["link_search_from"] = link_from;
      if (own_run) {
        spec["own_script"] = dir.print(result[*own_run].out);
        env["OUT_DIR"] = dir.print(result[*own_run].out) + "/out";
      }
      spec["apply_link_libs"] = target.is_lib() || !pkg.lib();
      spec["kind"] = unit.kind_name();
      spec["crate_types"] = target.crate_types;
      env["CARGO_CRATE_NAME"] = crate_name;
      if (target.is_bin()) {
        env["CARGO_BIN_NAME"] = target.name;
        spec["bin_name"] = target.name;
      }
      if (primary.count(pkg.id) && pkg.is_member) {
        env["CARGO_PRIMARY_PACKAGE"] = "1";
      }
      spec["args"] = args;
      spec["crate_name"] = crate_name;
    }
    spec["env"] = env;
    spec["package"] = pkg.name + " " + pkg.version;

    // -C metadata: a digest of everything above plus the toolchain.
    std::string key_text = spec.dump() + "\n" + toolchain.identity + "\n" + unit.triple;
    std::string meta =
      hash_string(HashAlgo::sha256, key_text).to_string(HashFormat::base16, false).substr(0, 16);
    metadata[i] = meta;
    std::string product;
    if (unit.mode == UnitMode::run_custom_build) {
      product = "out";
    } else {
      auto& args = spec["args"];
      args.push_back("-C");
      args.push_back("metadata=" + meta);
      args.push_back("-C");
      args.push_back("extra-filename=-" + meta);
      spec["extra_filename"] = "-" + meta;
      const CargoTarget& target = *unit.target;
      if (target.is_proc_macro()) {
        product = "lib" + target.crate_name() + "-" + meta + ".so";
      } else if (target.is_lib()) {
        // rustc names each crate type's file lib<crate><extra-filename>.<ext>;
        // the product is what dependents use, an rlib when there is one.
        const char* ext = is_rlib(target)       ? ".rlib"
                          : links_shared(target) ? ".so"
                          : target.has_crate_type("staticlib") ? ".a"
                                                               : ".rlib";
        product = "lib" + target.crate_name() + "-" + meta + ext;
      } else if (target.is_custom_build()) {
        product = "build-script-build";
      } else {
        product = "bin/" + target.name;
      }
    }
    spec["product"] = product;

    drv.env[k_unit_env] = spec.dump();
    drv.env["rustc"] = toolchain.identity;
    // Units that link, and build-script runs (which may compile C with cc).
    bool links = unit.mode == UnitMode::run_custom_build || unit.target->is_bin() ||
                 unit.target->is_proc_macro() || unit.target->is_custom_build() ||
                 links_shared(*unit.target);
    if (links) {
      drv.env["linker"] = toolchain.linker_identity;
    }
    drv.env["name"] = drv.name;
    drv.env["builder"] = drv.builder;
    drv.env["system"] = drv.platform;
    drv.outputs["out"] = {};
    compute_output_paths(drv, dir, hasher);
    StorePath drv_path = derivation_path(drv, dir);
    StorePath out = dir.parse(drv.outputs.at("out").path);
    made.emplace(drv_path, drv);
    // Seconds, roughly, on one core (fitted to cargo's own timings of
    // examples/rust-app): a build-script run is quick, linking a build
    // script takes a moment, a crate takes time with its size — up to a
    // point, much of a big crate may be configured away — and a proc-macro
    // (a dylib of the syntax crates) more.
    double mib = std::min(
      static_cast<double>(instantiated.sources.at(src_path).size) / (1024.0 * 1024.0), 2.0);
    double cost = unit.mode == UnitMode::run_custom_build ? 0.05
                  : unit.target->is_custom_build()        ? 0.25
                  : unit.target->is_proc_macro()          ? 0.5 + 5 * std::min(mib, 1.0)
                  : unit.target->is_bin()                 ? 0.5 + 2.5 * mib
                                                          : 0.15 + 2.5 * mib;
    result.push_back({drv_path, out, product, cost});
  }
  sources.save();
  return instantiated;
}

// --- the builtin builder ---

namespace {

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

} // namespace

std::string
describe(const Unit& u)
{
  std::string text = u.package->name + " v" + u.package->version;
  std::string kind = u.kind_name();
  if (kind == "bin") {
    text += " (bin \"" + u.target->name + "\")";
  } else if (kind != "lib") {
    text += " (" + kind + ")";
  }
  return text;
}

UnitFrontend::UnitFrontend(LocalStore& store, const Plan& plan, const InstantiatedPlan& units,
                           const Toolchain& toolchain, unsigned jobs)
  : m_store(store), m_plan(plan), m_units(units), m_toolchain(toolchain), m_jobs(jobs)
{
  for (size_t i = 0; i < units.units.size(); ++i) {
    m_unit_of.emplace(units.units[i].drv, i);
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
  return d && i && compiles_to_rlib(m_plan.units[*d]) && compiles_to_rlib(m_plan.units[*i]);
}

std::string
UnitFrontend::describe(const StorePath& drv) const
{
  auto unit = unit_of(drv);
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
  spec.env["KILN_UNIT_RUSTC"] = m_toolchain.rustc.string();
  spec.env["KILN_UNIT_RUSTDOC"] = m_toolchain.rustdoc.string();
  spec.env["KILN_UNIT_CARGO"] = m_toolchain.cargo.string();
  spec.env["KILN_UNIT_JOBS"] = std::to_string(std::max(1u, m_jobs));
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
  if (!m_toolchain.cargo.empty() &&
      !m_toolchain.cargo.string().starts_with(m_toolchain.sysroot.string())) {
    spec.tools.push_back(m_toolchain.cargo);
  }
}

} // namespace kiln::cargo
