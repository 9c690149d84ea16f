// The planner follows cargo's own logic (src/cargo/core/resolver/features.rs,
// compiler/unit_dependencies.rs, core/profiles.rs and the unit sharing of
// ops/cargo_compile) closely enough that tests can compare its output with
// `cargo build --unit-graph` unit for unit.
#include <kiln/cargo/plan.hpp>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <tuple>

namespace kiln::cargo {

std::string
Unit::kind_name() const
{
  if (mode == UnitMode::run_custom_build) {
    return "run-build-script";
  }
  if (target->is_custom_build()) {
    return "build-script";
  }
  if (target->is_proc_macro()) {
    return "proc-macro";
  }
  if (target->is_bin()) {
    return "bin";
  }
  return "lib";
}

namespace {

// A dependency declaration matched with the package it resolved to.
struct Edge
{
  const CargoDependency* decl;
  const CargoPackage* pkg;
  std::string extern_name;
};

std::string
underscored(std::string s)
{
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

// Every declared dependency of every package, matched with the resolved
// graph (the extern name tells apart two versions of one crate).
std::map<std::string, std::vector<Edge>>
match_edges(const Workspace& ws)
{
  std::map<std::string, std::vector<Edge>> edges;
  for (const auto& [id, pkg] : ws.packages) {
    auto resolved = ws.resolve.find(id);
    if (resolved == ws.resolve.end()) {
      continue;
    }
    for (const auto& decl : pkg.dependencies) {
      for (const auto& rd : resolved->second) {
        const CargoPackage& dep = ws.package(rd.pkg);
        if (dep.name != decl.name) {
          continue;
        }
        bool kind_matches = std::any_of(rd.dep_kinds.begin(), rd.dep_kinds.end(), [&](const auto& k) {
          return k.kind == decl.kind && k.platform == decl.platform;
        });
        if (!kind_matches) {
          continue;
        }
        const CargoTarget* lib = dep.lib();
        std::string expected =
          decl.rename ? underscored(*decl.rename) : lib ? lib->crate_name() : underscored(dep.name);
        if (rd.name != expected) {
          continue;
        }
        edges[id].push_back({&decl, &dep, rd.name});
      }
    }
  }
  return edges;
}

// Cargo's feature resolver: features per (package, for-host) — with v1 the
// for-host bit is always false (one unified set per package).
class FeatureResolver
{
public:
  using Key = std::pair<std::string, bool>;

  FeatureResolver(const Workspace& ws, const std::map<std::string, std::vector<Edge>>& edges,
                  bool v2, std::function<bool(const CargoDependency&, bool host)> active)
    : m_ws(ws), m_edges(edges), m_v2(v2), m_active(std::move(active))
  {
  }

  void
  activate_root(const CargoPackage& pkg, const std::vector<std::string>& fvs)
  {
    bool host = false;
    if (m_v2 && pkg.lib() && pkg.lib()->is_proc_macro()) {
      // A selected proc-macro is built for the host; its other targets
      // (tests, bins) see the normal set.
      activate_pkg(pkg.id, false, fvs);
      host = true;
    }
    activate_pkg(pkg.id, host, fvs);
  }

  std::vector<std::string>
  features(const std::string& id, bool host) const
  {
    auto it = m_features.find({id, m_v2 && host});
    if (it == m_features.end()) {
      return {};
    }
    return {it->second.begin(), it->second.end()};
  }

  bool
  dep_activated(const std::string& id, bool host, const std::string& dep_name) const
  {
    auto it = m_activated_deps.find({id, m_v2 && host});
    return it != m_activated_deps.end() && it->second.count(dep_name) > 0;
  }

  // The edges of `id` that count for features of (id, host), with the
  // for-host bit of the dependency.
  std::vector<std::pair<const Edge*, bool>>
  deps(const std::string& id, bool host) const
  {
    std::vector<std::pair<const Edge*, bool>> out;
    auto it = m_edges.find(id);
    if (it == m_edges.end()) {
      return out;
    }
    const CargoPackage& pkg = m_ws.package(id);
    for (const auto& edge : it->second) {
      const auto& decl = *edge.decl;
      if (decl.kind == "dev" && (m_v2 || !pkg.is_member)) {
        // v2 (and cargo build) never needs dev-dependencies; v1 lets the
        // members' dev-dependencies enable features anyway.
        continue;
      }
      if (m_v2 && decl.platform && !m_active(decl, host || decl.kind == "build")) {
        continue;
      }
      bool dep_host = m_v2 && (host || decl.kind == "build" ||
                               (edge.pkg->lib() && edge.pkg->lib()->is_proc_macro()));
      out.emplace_back(&edge, dep_host);
    }
    return out;
  }

private:
  std::vector<std::string>
  fvs_from_dependency(const Edge& edge) const
  {
    std::vector<std::string> fvs = edge.decl->features;
    if (edge.decl->uses_default_features && edge.pkg->features.count("default")) {
      fvs.push_back("default");
    }
    return fvs;
  }

  void
  activate_pkg(const std::string& id, bool host, const std::vector<std::string>& fvs)
  {
    Key key{id, m_v2 && host};
    m_features[key];
    for (const auto& fv : fvs) {
      activate_fv(id, host, fv);
    }
    if (!m_processed.insert(key).second) {
      return;
    }
    for (const auto& [edge, dep_host] : deps(id, host)) {
      if (edge->decl->optional) {
        continue;
      }
      activate_pkg(edge->pkg->id, dep_host, fvs_from_dependency(*edge));
    }
  }

  void
  activate_fv(const std::string& id, bool host, const std::string& fv)
  {
    if (fv.starts_with("dep:")) {
      activate_dependency(id, host, fv.substr(4));
      return;
    }
    auto slash = fv.find('/');
    if (slash != std::string::npos) {
      std::string dep_name = fv.substr(0, slash);
      bool weak = dep_name.ends_with("?");
      if (weak) {
        dep_name.pop_back();
      }
      activate_dep_feature(id, host, dep_name, fv.substr(slash + 1), weak);
      return;
    }
    activate_rec(id, host, fv);
  }

  void
  activate_rec(const std::string& id, bool host, const std::string& feature)
  {
    if (!m_features[{id, m_v2 && host}].insert(feature).second) {
      return;
    }
    const CargoPackage& pkg = m_ws.package(id);
    auto it = pkg.features.find(feature);
    if (it == pkg.features.end()) {
      return;
    }
    for (const auto& fv : it->second) {
      activate_fv(id, host, fv);
    }
  }

  void
  activate_dependency(const std::string& id, bool host, const std::string& dep_name)
  {
    m_activated_deps[{id, m_v2 && host}].insert(dep_name);
    for (const auto& [edge, dep_host] : deps(id, host)) {
      if (edge->decl->name_in_toml() == dep_name) {
        activate_pkg(edge->pkg->id, dep_host, fvs_from_dependency(*edge));
      }
    }
    auto deferred = m_deferred_weak.find({id, m_v2 && host, dep_name});
    if (deferred != m_deferred_weak.end()) {
      auto features = std::move(deferred->second);
      m_deferred_weak.erase(deferred);
      for (const auto& f : features) {
        activate_dep_feature(id, host, dep_name, f, false);
      }
    }
  }

  void
  activate_dep_feature(const std::string& id, bool host, const std::string& dep_name,
                       const std::string& dep_feature, bool weak)
  {
    const CargoPackage& pkg = m_ws.package(id);
    for (const auto& [edge, dep_host] : deps(id, host)) {
      if (edge->decl->name_in_toml() != dep_name) {
        continue;
      }
      if (edge->decl->optional) {
        if (weak && !dep_activated(id, host, dep_name)) {
          m_deferred_weak[{id, m_v2 && host, dep_name}].insert(dep_feature);
          continue;
        }
        if (!weak) {
          activate_dependency(id, host, dep_name);
          // The old rule: "dep/feat" also enables a feature named after the
          // dependency, unless `dep:` syntax hid that implicit feature.
          if (pkg.features.count(dep_name)) {
            activate_rec(id, host, dep_name);
          }
        }
      }
      activate_fv(edge->pkg->id, dep_host, dep_feature);
      // Its own dependencies are followed when the package is activated.
      activate_pkg(edge->pkg->id, dep_host, {});
    }
  }

  const Workspace& m_ws;
  const std::map<std::string, std::vector<Edge>>& m_edges;
  bool m_v2;
  std::function<bool(const CargoDependency&, bool)> m_active;
  std::map<Key, std::set<std::string>> m_features;
  std::map<Key, std::set<std::string>> m_activated_deps;
  std::set<Key> m_processed;
  std::map<std::tuple<std::string, bool, std::string>, std::set<std::string>> m_deferred_weak;
};

// --- profiles ---

ProfileToml
builtin_profile(const std::string& name)
{
  ProfileToml p;
  p.codegen_units = std::nullopt;
  if (name == "release" || name == "bench") {
    p.opt_level = "3";
    p.debug = "0";
    p.debug_assertions = false;
    p.overflow_checks = false;
    p.incremental = false;
  } else {
    p.opt_level = "0";
    p.debug = "2";
    p.debug_assertions = true;
    p.overflow_checks = true;
    p.incremental = true;
  }
  p.lto = "false";
  p.panic = "unwind";
  p.rpath = false;
  return p;
}

// The named profile with its `inherits` chain applied (package and
// build-override tables included, for the unit-level merge).
ProfileToml
named_profile(const Workspace& ws, const std::string& name, int depth = 0)
{
  if (depth > 16) {
    throw UsageError("profile '" + name + "': `inherits` goes round in a circle");
  }
  auto it = ws.profiles.find(name);
  bool builtin = name == "dev" || name == "release" || name == "test" || name == "bench";
  if (!builtin && it == ws.profiles.end()) {
    throw UsageError("profile '" + name + "' is not defined in " + (ws.root / "Cargo.toml").string());
  }
  ProfileToml p;
  if (builtin) {
    p = builtin_profile(name);
    if (name == "test") {
      p.merge(named_profile(ws, "dev", depth + 1));
    } else if (name == "bench") {
      p.merge(named_profile(ws, "release", depth + 1));
    }
  } else {
    if (!it->second.inherits) {
      throw UsageError("profile '" + name + "' in " + (ws.root / "Cargo.toml").string() +
                       " needs `inherits` (\"dev\" or \"release\")");
    }
    p = named_profile(ws, *it->second.inherits, depth + 1);
  }
  if (it != ws.profiles.end()) {
    p.merge(it->second);
  }
  return p;
}

// A unit's profile while planning: debuginfo may still be "deferred" (a
// host unit's level is decided once it is known whether it is shared with
// the target graph).
struct PlannedProfile
{
  Profile profile;
  bool debuginfo_deferred = false;
  std::string debuginfo_inner;  // the level before a build-only unit drops it
  bool strip_deferred = true;
};

// "release" if `name` is release or bench or inherits from one, else "debug".
std::string
profile_root(const Workspace& ws, std::string name)
{
  for (int depth = 0; depth < 16; ++depth) {
    if (name == "release" || name == "bench") {
      return "release";
    }
    if (name == "dev" || name == "test") {
      return "debug";
    }
    auto it = ws.profiles.find(name);
    if (it == ws.profiles.end() || !it->second.inherits) {
      break;
    }
    name = *it->second.inherits;
  }
  return "debug";
}

PlannedProfile
unit_profile(const ProfileToml& named, const std::string& name, const CargoPackage& pkg,
             bool for_host, bool abort_safe)
{
  ProfileToml p = named;
  p.package.clear();
  p.build_override.reset();
  bool deferred = false;
  if (for_host) {
    p.opt_level = "0";
    p.codegen_units = std::nullopt;
    deferred = true;
  }
  auto apply = [&](const ProfileToml& over) {
    if (over.debug) {
      deferred = false;
    }
    p.merge(over);
  };
  if (for_host && named.build_override) {
    apply(*named.build_override);
  }
  if (!pkg.is_member) {
    auto all = named.package.find("*");
    if (all != named.package.end()) {
      apply(all->second);
    }
  }
  for (const auto& [spec, over] : named.package) {
    if (spec == pkg.name || spec == pkg.name + "@" + pkg.version) {
      apply(over);
    }
  }
  PlannedProfile out;
  Profile& r = out.profile;
  r.name = name;
  r.dir_name = name == "dev" || name == "test" ? "debug" : name == "bench" ? "release" : name;
  r.opt_level = *p.opt_level;
  r.debuginfo = *p.debug;
  r.debug_assertions = *p.debug_assertions;
  r.overflow_checks = p.overflow_checks ? *p.overflow_checks : r.debug_assertions;
  r.lto = *p.lto;
  r.panic = abort_safe ? *p.panic : "unwind";
  r.codegen_units = p.codegen_units;
  r.rpath = p.rpath.value_or(false);
  if (p.strip) {
    r.strip = *p.strip;
    out.strip_deferred = false;
  }
  out.debuginfo_deferred = deferred;
  out.debuginfo_inner = r.debuginfo;
  return out;
}

// --- units ---

struct Planner
{
  const Workspace& ws;
  const Toolchain& toolchain;
  const PlanOptions& options;
  std::map<std::string, std::vector<Edge>> edges;
  std::unique_ptr<FeatureResolver> features;
  ProfileToml named;
  std::string target_triple;
  bool cross = false;

  struct Draft
  {
    Unit unit;
    PlannedProfile profile;
    std::vector<std::pair<size_t, std::string>> deps;
  };
  std::vector<Draft> drafts;
  // (package, target, mode, features-for-host, for-host) → draft
  std::map<std::tuple<std::string, const CargoTarget*, UnitMode, bool, bool>, size_t> index;

  bool
  active(const CargoDependency& decl, bool host) const
  {
    if (!decl.platform) {
      return true;
    }
    const std::string& triple = host ? toolchain.host : target_triple;
    return platform_matches(*decl.platform, triple, toolchain.cfg(triple, options.rustflags));
  }

  // The dependency edges a unit of `pkg` follows (normal kind, active on its
  // platform, optional ones only when activated).
  std::vector<std::pair<const Edge*, bool>>
  unit_edges(const CargoPackage& pkg, bool host, const std::string& kind) const
  {
    std::vector<std::pair<const Edge*, bool>> out;
    auto it = edges.find(pkg.id);
    if (it == edges.end()) {
      return out;
    }
    for (const auto& edge : it->second) {
      const auto& decl = *edge.decl;
      if (decl.kind != kind) {
        continue;
      }
      bool edge_host = host || kind == "build";
      if (!active(decl, edge_host)) {
        continue;
      }
      if (decl.optional && !features->dep_activated(pkg.id, host, decl.name_in_toml())) {
        continue;
      }
      if (!edge.pkg->lib()) {
        continue;
      }
      out.emplace_back(&edge, edge_host || edge.pkg->lib()->is_proc_macro());
    }
    return out;
  }

  size_t
  add(const CargoPackage& pkg, const CargoTarget& target, UnitMode mode, bool host, bool for_host,
      bool is_root)
  {
    auto key = std::make_tuple(pkg.id, &target, mode, host, for_host);
    auto found = index.find(key);
    if (found != index.end()) {
      drafts[found->second].unit.is_root |= is_root;
      return found->second;
    }
    Draft d;
    d.unit.package = &pkg;
    d.unit.target = &target;
    d.unit.mode = mode;
    d.unit.for_host = host;
    d.unit.host_platform = host || (target.is_custom_build() && mode == UnitMode::build);
    d.unit.triple = d.unit.host_platform ? toolchain.host : target_triple;
    d.unit.features = features->features(pkg.id, host);
    d.unit.is_root = is_root;
    d.profile = unit_profile(named, options.profile, pkg, for_host, !host);
    d.profile.profile.root = profile_root(ws, options.profile);
    size_t self = drafts.size();
    drafts.push_back(std::move(d));
    index.emplace(key, self);

    std::vector<std::pair<size_t, std::string>> deps;
    const CargoTarget* script = pkg.build_script();
    if (mode == UnitMode::run_custom_build) {
      // Run: the compiled script, and the runs of direct dependencies with
      // `links` (their metadata becomes DEP_* variables).
      deps.emplace_back(add(pkg, *script, UnitMode::build, host, true, false), "");
      for (const auto& [edge, dep_host] : unit_edges(pkg, host, "")) {
        if (edge->pkg->links && edge->pkg->build_script()) {
          bool dep_for_host = for_host || edge->pkg->lib()->is_proc_macro();
          deps.emplace_back(add(*edge->pkg, *edge->pkg->build_script(), UnitMode::run_custom_build,
                                dep_host, dep_for_host, false),
                            "");
        }
      }
    } else if (target.is_custom_build()) {
      for (const auto& [edge, dep_host] : unit_edges(pkg, true, "build")) {
        deps.emplace_back(add(*edge->pkg, *edge->pkg->lib(), UnitMode::build, true, true, false),
                          edge->extern_name);
      }
    } else {
      if (target.is_bin() && pkg.lib()) {
        deps.emplace_back(add(pkg, *pkg.lib(), UnitMode::build, host, for_host, false),
                          pkg.lib()->crate_name());
      }
      for (const auto& [edge, dep_host] : unit_edges(pkg, host, "")) {
        bool dep_for_host = for_host || edge->pkg->lib()->is_proc_macro();
        deps.emplace_back(
          add(*edge->pkg, *edge->pkg->lib(), UnitMode::build, dep_host, dep_for_host, false),
          edge->extern_name);
      }
      if (script) {
        deps.emplace_back(add(pkg, *script, UnitMode::run_custom_build, host, for_host, false), "");
      }
    }
    drafts[self].deps = std::move(deps);
    return self;
  }
};

std::vector<std::string>
split_features(const std::vector<std::string>& given)
{
  std::vector<std::string> out;
  for (const auto& g : given) {
    std::string current;
    for (char c : g + ",") {
      if (c == ',' || c == ' ') {
        if (!current.empty()) {
          out.push_back(current);
        }
        current.clear();
      } else {
        current += c;
      }
    }
  }
  return out;
}

} // namespace

Plan
plan_build(const Workspace& ws, const Toolchain& toolchain, const PlanOptions& options)
{
  Planner planner{ws, toolchain, options, match_edges(ws), nullptr, {}, "", false, {}, {}};
  planner.cross = options.target.has_value();
  planner.target_triple = options.target.value_or(toolchain.host);
  planner.named = named_profile(ws, options.profile);
  bool v2 = ws.resolver != "1";
  planner.features = std::make_unique<FeatureResolver>(
    ws, planner.edges, v2,
    [&](const CargoDependency& decl, bool host) { return planner.active(decl, host); });

  // The selected packages.
  std::vector<const CargoPackage*> selected;
  if (options.workspace) {
    for (const auto& id : ws.members) {
      selected.push_back(&ws.package(id));
    }
  } else if (!options.packages.empty()) {
    for (const auto& spec : options.packages) {
      selected.push_back(&ws.find_package(spec));
    }
  } else {
    for (const auto& id : ws.default_members) {
      selected.push_back(&ws.package(id));
    }
  }

  std::vector<std::string> requested = split_features(options.features);
  for (const CargoPackage* pkg : selected) {
    std::vector<std::string> fvs;
    for (const auto& f : requested) {
      auto slash = f.find('/');
      if (slash != std::string::npos && f.substr(0, slash) == pkg->name) {
        fvs.push_back(f.substr(slash + 1));
      } else if (slash != std::string::npos || pkg->features.count(f)) {
        fvs.push_back(f);
      } else if (selected.size() == 1) {
        throw UsageError("package '" + pkg->name + "' has no feature '" + f + "'");
      }
    }
    if (options.all_features) {
      for (const auto& [name, values] : pkg->features) {
        fvs.push_back(name);
      }
      for (const auto& dep : pkg->dependencies) {
        if (dep.optional) {
          fvs.push_back("dep:" + dep.name_in_toml());
        }
      }
    }
    if (!options.no_default_features && pkg->features.count("default")) {
      fvs.push_back("default");
    }
    planner.features->activate_root(*pkg, fvs);
  }

  // The root units: libraries and binaries of the selected packages.
  Plan plan;
  plan.host = toolchain.host;
  plan.cross = planner.cross;
  const std::set<std::string> wanted_bins(options.bins.begin(), options.bins.end());
  std::set<std::string> missing_bins = wanted_bins;
  std::vector<size_t> roots;
  for (const CargoPackage* pkg : selected) {
    bool host_root = pkg->lib() && pkg->lib()->is_proc_macro();
    if (pkg->lib() && (wanted_bins.empty() || options.lib_only)) {
      roots.push_back(planner.add(*pkg, *pkg->lib(), UnitMode::build, host_root, false, true));
    }
    if (options.lib_only) {
      continue;
    }
    for (const auto& target : pkg->targets) {
      if (!target.is_bin() || (!wanted_bins.empty() && !wanted_bins.count(target.name))) {
        continue;
      }
      auto enabled = planner.features->features(pkg->id, false);
      bool ok = std::all_of(target.required_features.begin(), target.required_features.end(),
                            [&](const std::string& f) {
                              return std::find(enabled.begin(), enabled.end(), f) != enabled.end();
                            });
      if (!ok) {
        if (!wanted_bins.empty()) {
          throw UsageError("bin '" + target.name + "' needs features that are not enabled");
        }
        continue;
      }
      missing_bins.erase(target.name);
      roots.push_back(planner.add(*pkg, target, UnitMode::build, false, false, true));
    }
  }
  if (!missing_bins.empty()) {
    throw UsageError("no bin target named '" + *missing_bins.begin() + "' in the selected packages");
  }

  auto& drafts = planner.drafts;
  // Share host units with identical target units (same package, target,
  // features and profile once the debuginfo is decided), as cargo does when
  // the host is the target.
  auto identity = [&](const Planner::Draft& d, const Profile& profile) {
    return std::make_tuple(d.unit.package->id, d.unit.target, d.unit.mode, d.unit.features, profile,
                           planner.cross ? d.unit.triple : std::string());
  };
  std::set<decltype(identity(drafts[0], Profile{}))> target_units;
  for (const auto& d : drafts) {
    if (!d.profile.debuginfo_deferred) {
      target_units.insert(identity(d, d.profile.profile));
    }
  }
  for (auto& d : drafts) {
    if (d.profile.debuginfo_deferred) {
      // Cross-compiling, cargo keeps the level (nothing is shared, nothing
      // weakened); otherwise a build-only unit drops its debuginfo.
      if (!planner.cross && !target_units.count(identity(d, d.profile.profile))) {
        d.profile.profile.debuginfo = "0";
      }
      d.profile.debuginfo_deferred = false;
    }
  }
  // Merge identical units.
  std::map<decltype(identity(drafts[0], Profile{})), size_t> canonical;
  std::vector<size_t> merged_into(drafts.size());
  for (size_t i = 0; i < drafts.size(); ++i) {
    auto [it, fresh] = canonical.emplace(identity(drafts[i], drafts[i].profile.profile), i);
    merged_into[i] = it->second;
    if (!fresh) {
      drafts[it->second].unit.is_root |= drafts[i].unit.is_root;
      // Of two shared copies, the target one is the unit.
      if (!drafts[i].unit.for_host) {
        drafts[it->second].unit.for_host = false;
        drafts[it->second].deps = drafts[i].deps;
      }
    }
  }

  // Order dependencies first, from the roots; decide stripping bottom-up.
  std::vector<size_t> order;
  std::vector<int> state(drafts.size(), 0);
  std::vector<size_t> position(drafts.size());
  std::function<void(size_t)> visit = [&](size_t i) {
    i = merged_into[i];
    if (state[i] == 2) {
      return;
    }
    if (state[i] == 1) {
      throw CargoError("dependency cycle through package '" + drafts[i].unit.package->name + "'");
    }
    state[i] = 1;
    for (const auto& [dep, name] : drafts[i].deps) {
      visit(dep);
    }
    state[i] = 2;
    position[i] = order.size();
    order.push_back(i);
  };
  for (size_t r : roots) {
    visit(r);
  }
  for (size_t i : order) {
    Planner::Draft& d = drafts[i];
    Unit unit = d.unit;
    unit.profile = d.profile.profile;
    std::set<std::pair<size_t, std::string>> seen;
    bool deps_have_debuginfo = false;
    for (const auto& [dep, name] : d.deps) {
      size_t target = position[merged_into[dep]];
      if (seen.insert({target, name}).second) {
        unit.deps.push_back({target, name});
        deps_have_debuginfo |= plan.units[target].profile.debuginfo != "0";
      }
    }
    // Stripping follows the level the profile asked for, before a build-only
    // unit dropped it.
    if (d.profile.strip_deferred && d.profile.debuginfo_inner == "0" && !deps_have_debuginfo) {
      unit.profile.strip = "debuginfo";
    }
    plan.units.push_back(std::move(unit));
  }
  for (size_t r : roots) {
    size_t p = position[merged_into[r]];
    if (std::find(plan.roots.begin(), plan.roots.end(), p) == plan.roots.end()) {
      plan.roots.push_back(p);
    }
  }
  return plan;
}

} // namespace kiln::cargo
