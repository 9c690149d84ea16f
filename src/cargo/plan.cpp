// cargo's unit graph (src/compiler/unit_graph.rs, format version 1) as kiln's
// plan, with each unit's part in LTO computed as cargo's lto.rs does.
#include <kiln/cargo/plan.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <set>

namespace kiln::cargo {

using json = nlohmann::json;

const char*
to_string(UnitMode mode)
{
  switch (mode) {
  case UnitMode::build:
    return "build";
  case UnitMode::check:
  case UnitMode::check_test:
    return "check";
  case UnitMode::test:
    return "test";
  case UnitMode::doctest:
    return "doctest";
  case UnitMode::run_custom_build:
    return "run-custom-build";
  }
  return "build";
}

std::string
Unit::kind_name() const
{
  if (mode == UnitMode::run_custom_build) {
    return "run-build-script";
  }
  if (target.is_custom_build()) {
    return "build-script";
  }
  if (target.is_proc_macro()) {
    return "proc-macro";
  }
  for (const char* k : {"bin", "example", "test", "bench"}) {
    if (target.has_kind(k)) {
      return k;
    }
  }
  return "lib";
}

bool
Unit::compiles_to_rlib() const
{
  return mode == UnitMode::build && target.is_lib() && !target.is_proc_macro() &&
         (target.has_crate_type("lib") || target.has_crate_type("rlib"));
}

bool
Unit::reads_metadata_only() const
{
  return compiles_to_rlib() &&
         !(target.has_crate_type("dylib") || target.has_crate_type("cdylib") ||
           target.has_crate_type("staticlib"));
}

namespace {

[[noreturn]] void
refuse(const std::string& what)
{
  throw CargoError("cargo's unit graph: " + what + "; kiln cannot build it as cargo would");
}

UnitMode
parse_mode(const std::string& mode)
{
  static const std::map<std::string, UnitMode> modes = {
    {"build", UnitMode::build},       {"check", UnitMode::check},
    {"test", UnitMode::test},         {"doctest", UnitMode::doctest},
    {"run-custom-build", UnitMode::run_custom_build}};
  auto it = modes.find(mode);
  if (it == modes.end()) {
    refuse("a unit of mode '" + mode + "'");
  }
  return it->second;
}

std::string
lower(std::string s)
{
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  return s;
}

// `{"resolved": {"Named": "symbols"}}`, `{"deferred": "None"}`, ...
std::string
parse_strip(const json& strip)
{
  const json* inner = &strip;
  if (strip.is_object()) {
    inner = strip.contains("resolved") ? &strip.at("resolved") : &strip.at("deferred");
  }
  if (inner->is_string()) {
    return lower(inner->get<std::string>());
  }
  if (inner->is_object() && inner->contains("Named")) {
    return lower(inner->at("Named").get<std::string>());
  }
  refuse("a strip setting it does not know: " + strip.dump());
}

std::string
parse_debuginfo(const json& d)
{
  const json* inner = &d;
  if (d.is_object()) {
    inner = d.contains("resolved") ? &d.at("resolved") : &d.at("deferred");
  }
  if (inner->is_number_integer()) {
    return std::to_string(inner->get<int>());
  }
  if (inner->is_string()) {
    std::string v = inner->get<std::string>();
    return v == "none" ? "0" : v == "limited" ? "1" : v == "full" ? "2" : v;
  }
  refuse("a debuginfo setting it does not know: " + d.dump());
}

Profile
parse_profile(const json& p, const PlanContext& context)
{
  static const std::set<std::string> known = {
    "name",       "opt_level", "lto",   "codegen_backend", "codegen_units",  "debuginfo",
    "split_debuginfo", "debug_assertions", "overflow_checks", "rpath", "incremental", "panic",
    "strip"};
  for (const auto& [key, value] : p.items()) {
    if (!known.count(key) && !value.is_null() && !(value.is_array() && value.empty())) {
      refuse("the profile setting `" + key + "` = " + value.dump());
    }
  }
  if (!p.at("codegen_backend").is_null()) {
    refuse("the profile setting codegen-backend (needs -Z codegen-backend)");
  }
  Profile r;
  r.name = p.at("name").get<std::string>();
  r.dir_name = r.name == "dev" || r.name == "test"      ? "debug"
               : r.name == "release" || r.name == "bench" ? "release"
                                                          : r.name;
  r.root = context.profile_root ? context.profile_root(r.name) : "debug";
  r.opt_level = p.at("opt_level").get<std::string>();
  r.lto = p.at("lto").get<std::string>();
  if (!p.at("codegen_units").is_null()) {
    r.codegen_units = p.at("codegen_units").get<int>();
  }
  r.debuginfo = parse_debuginfo(p.at("debuginfo"));
  if (!p.at("split_debuginfo").is_null()) {
    r.split_debuginfo = p.at("split_debuginfo").get<std::string>();
  }
  r.debug_assertions = p.at("debug_assertions").get<bool>();
  r.overflow_checks = p.at("overflow_checks").get<bool>();
  r.rpath = p.at("rpath").get<bool>();
  r.panic = p.at("panic").get<std::string>();
  if (r.panic != "unwind" && r.panic != "abort") {
    refuse("panic = \"" + r.panic + "\"");
  }
  r.strip = parse_strip(p.at("strip"));
  return r;
}

CargoTarget
parse_target(const json& t, const CargoPackage& pkg)
{
  CargoTarget target;
  target.name = t.at("name").get<std::string>();
  target.kind = t.at("kind").get<std::vector<std::string>>();
  target.crate_types = t.at("crate_types").get<std::vector<std::string>>();
  target.src_path = t.at("src_path").get<std::string>();
  target.edition = t.at("edition").get<std::string>();
  target.test = t.value("test", true);
  target.doctest = t.value("doctest", false);
  target.doc = t.value("doc", false);
  // What the unit graph does not print comes from the package's target.
  if (const CargoTarget* known = pkg.target(target.name, target.kind)) {
    target.required_features = known->required_features;
    target.harness = known->harness;
  }
  return target;
}

// Cargo prints check and check-as-test units alike; among otherwise equal
// ones it sorts the plain check first (its CompileMode::Check { test: false }
// orders before test: true). A unit with no twin is a test check if it is a
// test or bench target, or a root of a command that checks tests.
void
mark_check_tests(std::vector<Unit>& units, const json& raw, const std::vector<bool>& root,
                 const PlanContext& context)
{
  std::map<std::string, std::vector<size_t>> twins;
  for (size_t i = 0; i < units.size(); ++i) {
    if (units[i].mode != UnitMode::check) {
      continue;
    }
    const json& u = raw.at(i);
    twins[u.at("pkg_id").dump() + u.at("target").dump() + u.at("profile").dump() +
          u.at("platform").dump() + u.at("features").dump()]
      .push_back(i);
  }
  for (const auto& [key, group] : twins) {
    if (group.size() > 2) {
      refuse("more than two identical check units of " + units[group[0]].package->name);
    }
    if (group.size() == 2) {
      units[group[1]].mode = UnitMode::check_test;
      continue;
    }
    Unit& u = units[group[0]];
    bool test_target = u.target.is_test() || u.target.is_bench();
    if (test_target || (root[group[0]] && context.checks_tests && u.target.test &&
                        (u.target.is_lib() || u.target.is_bin()))) {
      u.mode = UnitMode::check_test;
    }
  }
}

// --- LTO (cargo's lto::generate and lto::calculate) ---

bool
target_for_host(const CargoTarget& t)
{
  return t.is_proc_macro() || t.is_custom_build();
}

std::vector<std::string>
lto_crate_types(const Unit& u)
{
  if (u.mode == UnitMode::test || u.mode == UnitMode::doctest) {
    return {"bin"};
  }
  std::vector<std::string> types = u.target.crate_types;
  for (auto& t : types) {
    t = t == "lib" ? "rlib" : t;
  }
  return types;
}

bool
can_lto(const std::string& t)
{
  return t == "bin" || t == "staticlib" || t == "cdylib";
}

bool
needs_object(const std::vector<std::string>& types)
{
  return std::any_of(types.begin(), types.end(), [](const std::string& t) {
    return can_lto(t) || t == "dylib" || t == "cdylib" || t == "proc-macro";
  });
}

LtoRole
when_needs_object(const std::vector<std::string>& types)
{
  bool all_dylib =
    std::all_of(types.begin(), types.end(), [](const std::string& t) { return t == "dylib"; });
  return all_dylib ? LtoRole::only_object : LtoRole::object_and_bitcode;
}

LtoRole
merged(LtoRole a, LtoRole b)
{
  if (a == b) {
    return a;
  }
  if (a == LtoRole::run || b == LtoRole::run) {
    return LtoRole::run;
  }
  if (a == LtoRole::off || b == LtoRole::off) {
    return LtoRole::off;
  }
  return LtoRole::object_and_bitcode;
}

void
calculate_lto(std::vector<Unit>& units, std::vector<std::optional<LtoRole>>& roles, size_t i,
              LtoRole parent)
{
  Unit& u = units[i];
  auto types = lto_crate_types(u);
  bool all_lto = !types.empty() && std::all_of(types.begin(), types.end(), can_lto);
  LtoRole lto;
  if (target_for_host(u.target)) {
    lto = LtoRole::only_object;
  } else if (all_lto) {
    lto = u.profile.lto == "false" ? LtoRole::only_object
          : u.profile.lto == "off" ? LtoRole::off
                                   : LtoRole::run;
  } else {
    bool object = needs_object(types);
    if (parent == LtoRole::run && !object) {
      lto = LtoRole::only_bitcode;
    } else if ((parent == LtoRole::run || parent == LtoRole::only_bitcode) && object) {
      lto = when_needs_object(types);
    } else if (parent == LtoRole::off) {
      lto = LtoRole::off;
    } else {
      lto = parent;
    }
  }
  if (roles[i]) {
    LtoRole result = merged(lto, *roles[i]);
    if (result == *roles[i]) {
      return;
    }
    lto = result;
  }
  roles[i] = lto;
  for (const auto& dep : u.deps) {
    calculate_lto(units, roles, dep.unit, lto);
  }
}

void
assign_lto(Plan& plan)
{
  std::vector<std::optional<LtoRole>> roles(plan.units.size());
  for (size_t r : plan.roots) {
    const Unit& u = plan.units[r];
    LtoRole root;
    if (u.profile.lto == "false") {
      root = LtoRole::only_object;
    } else if (u.profile.lto == "off") {
      root = LtoRole::off;
    } else {
      auto types = u.target.crate_types;
      root = target_for_host(u.target) ? LtoRole::only_object
             : needs_object(types)     ? when_needs_object(types)
                                       : LtoRole::only_bitcode;
    }
    calculate_lto(plan.units, roles, r, root);
  }
  for (size_t i = 0; i < plan.units.size(); ++i) {
    plan.units[i].lto = roles[i].value_or(LtoRole::only_object);
  }
}

// Dependencies before dependents, keeping cargo's order otherwise.
std::vector<size_t>
topological(const std::vector<std::vector<size_t>>& deps)
{
  std::vector<size_t> order;
  std::vector<int> state(deps.size(), 0);
  std::function<void(size_t)> visit = [&](size_t i) {
    if (state[i] == 2) {
      return;
    }
    if (state[i] == 1) {
      refuse("a dependency cycle");
    }
    state[i] = 1;
    for (size_t d : deps[i]) {
      visit(d);
    }
    state[i] = 2;
    order.push_back(i);
  };
  for (size_t i = 0; i < deps.size(); ++i) {
    visit(i);
  }
  return order;
}

} // namespace

Plan
parse_unit_graph(const std::string& text, const Workspace& ws, const PlanContext& context)
{
  json graph = json::parse(text, nullptr, false);
  if (graph.is_discarded() || !graph.is_object()) {
    refuse("not JSON");
  }
  if (graph.value("version", 0) != 1) {
    refuse("format version " + graph.value("version", json()).dump() + " (kiln reads version 1)");
  }
  const json& raw = graph.at("units");
  std::vector<Unit> units(raw.size());
  std::vector<std::vector<size_t>> deps(raw.size());
  std::vector<bool> root(raw.size(), false);
  for (const auto& r : graph.at("roots")) {
    root.at(r.get<size_t>()) = true;
  }
  for (size_t i = 0; i < raw.size(); ++i) {
    const json& u = raw[i];
    if (u.value("is_std", false)) {
      refuse("a standard library unit (-Z build-std)");
    }
    Unit& unit = units[i];
    unit.package = &ws.package(u.at("pkg_id").get<std::string>());
    unit.target = parse_target(u.at("target"), *unit.package);
    unit.mode = parse_mode(u.at("mode").get<std::string>());
    if (!u.at("platform").is_null()) {
      unit.platform = u.at("platform").get<std::string>();
    }
    unit.triple = unit.platform.value_or(context.host);
    unit.features = u.at("features").get<std::vector<std::string>>();
    std::sort(unit.features.begin(), unit.features.end());
    unit.profile = parse_profile(u.at("profile"), context);
    unit.incremental = u.at("profile").value("incremental", false);
    unit.is_root = root[i];
    for (const auto& d : u.at("dependencies")) {
      size_t index = d.at("index").get<size_t>();
      if (index >= raw.size()) {
        refuse("a dependency on unit " + std::to_string(index) + " of " + std::to_string(raw.size()));
      }
      unit.deps.push_back({index, d.at("extern_crate_name").get<std::string>()});
      deps[i].push_back(index);
    }
  }
  mark_check_tests(units, raw, root, context);

  // Renumber, dependencies first.
  std::vector<size_t> order = topological(deps);
  std::vector<size_t> position(units.size());
  for (size_t p = 0; p < order.size(); ++p) {
    position[order[p]] = p;
  }
  Plan plan;
  plan.host = context.host;
  plan.unit_graph = text;
  for (size_t i : order) {
    Unit u = std::move(units[i]);
    for (auto& d : u.deps) {
      d.unit = position[d.unit];
    }
    plan.cross |= u.platform.has_value();
    plan.units.push_back(std::move(u));
  }
  for (const auto& r : graph.at("roots")) {
    plan.roots.push_back(position[r.get<size_t>()]);
  }
  assign_lto(plan);
  return plan;
}

} // namespace kiln::cargo
