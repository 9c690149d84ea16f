#include <kiln/cargo/workspace.hpp>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <algorithm>
#include <tuple>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

// --- targets and packages ---

bool
CargoTarget::has_kind(const std::string& k) const
{
  return std::find(kind.begin(), kind.end(), k) != kind.end();
}

bool
CargoTarget::has_crate_type(const std::string& type) const
{
  return std::find(crate_types.begin(), crate_types.end(), type) != crate_types.end();
}

bool
CargoTarget::is_lib() const
{
  for (const char* k : {"lib", "rlib", "dylib", "cdylib", "staticlib", "proc-macro"}) {
    if (has_kind(k)) {
      return true;
    }
  }
  return false;
}

bool CargoTarget::is_proc_macro() const { return has_kind("proc-macro"); }
bool CargoTarget::is_bin() const { return has_kind("bin"); }
bool CargoTarget::is_custom_build() const { return has_kind("custom-build"); }
bool CargoTarget::is_example() const { return has_kind("example"); }
bool CargoTarget::is_test() const { return has_kind("test"); }
bool CargoTarget::is_bench() const { return has_kind("bench"); }

std::string
CargoTarget::crate_name() const
{
  std::string n = name;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

const CargoTarget*
CargoPackage::lib() const
{
  for (const auto& t : targets) {
    if (t.is_lib()) {
      return &t;
    }
  }
  return nullptr;
}

const CargoTarget*
CargoPackage::build_script() const
{
  for (const auto& t : targets) {
    if (t.is_custom_build()) {
      return &t;
    }
  }
  return nullptr;
}

const CargoTarget*
CargoPackage::target(const std::string& target_name, const std::vector<std::string>& target_kind) const
{
  for (const auto& t : targets) {
    if (t.name == target_name && t.kind == target_kind) {
      return &t;
    }
  }
  return nullptr;
}

const CargoPackage&
Workspace::package(const std::string& id) const
{
  auto it = packages.find(id);
  if (it == packages.end()) {
    throw CargoError("cargo names package '" + id + "' but `cargo metadata` does not describe it");
  }
  return it->second;
}

std::optional<fs::path>
find_manifest(const fs::path& dir)
{
  std::error_code ec;
  for (fs::path d = fs::absolute(dir, ec); !d.empty(); d = d.parent_path()) {
    if (fs::exists(d / "Cargo.toml", ec)) {
      return d / "Cargo.toml";
    }
    if (d == d.root_path()) {
      break;
    }
  }
  return std::nullopt;
}

// --- manifests ---

namespace {

toml::table
parse_manifest(const fs::path& manifest)
{
  try {
    return toml::parse_file(manifest.string());
  } catch (const toml::parse_error& e) {
    throw CargoError(manifest.string() + ":" + std::to_string(e.source().begin.line) + ":" +
                     std::to_string(e.source().begin.column) + ": " +
                     std::string(e.description()));
  }
}

// The lint table that applies: the package's, or the workspace's when it
// says `workspace = true`.
const toml::table*
lints_table(const toml::table& manifest, const toml::table& workspace)
{
  const toml::table* lints = manifest["lints"].as_table();
  if (lints && (*lints)["workspace"].value_or(false)) {
    return workspace["workspace"]["lints"].as_table();
  }
  return lints;
}

// `harness = false` of the [lib], [[bin]], [[test]], [[bench]],
// [[example]] tables, by target name.
std::map<std::string, bool>
harness_of(const toml::table& manifest)
{
  std::map<std::string, bool> out;
  for (const char* section : {"bin", "test", "bench", "example"}) {
    if (auto array = manifest[section].as_array()) {
      for (const auto& entry : *array) {
        auto t = entry.as_table();
        if (t && (*t)["harness"].is_boolean() && (*t)["name"].is_string()) {
          out[*(*t)["name"].value<std::string>()] = *(*t)["harness"].value<bool>();
        }
      }
    }
  }
  if (auto lib = manifest["lib"].as_table(); lib && (*lib)["harness"].is_boolean()) {
    out[""] = *(*lib)["harness"].value<bool>();
  }
  return out;
}

std::string
string_or(const json& j, const char* key, const std::string& fallback = "")
{
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

std::optional<std::string>
optional_string(const json& j, const char* key)
{
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? std::optional(it->get<std::string>()) : std::nullopt;
}

std::vector<std::string>
strings(const json& j, const char* key)
{
  std::vector<std::string> out;
  auto it = j.find(key);
  if (it != j.end() && it->is_array()) {
    for (const auto& v : *it) {
      out.push_back(v.get<std::string>());
    }
  }
  return out;
}

CargoTarget
parse_target(const json& t, const std::string& edition)
{
  CargoTarget target;
  target.name = t.at("name").get<std::string>();
  target.kind = strings(t, "kind");
  target.crate_types = strings(t, "crate_types");
  target.src_path = t.at("src_path").get<std::string>();
  target.edition = string_or(t, "edition", edition);
  target.required_features = strings(t, "required-features");
  target.test = t.value("test", true);
  target.doctest = t.value("doctest", false);
  target.doc = t.value("doc", false);
  return target;
}

CargoPackage
parse_package(const json& p)
{
  CargoPackage pkg;
  pkg.id = p.at("id").get<std::string>();
  pkg.name = p.at("name").get<std::string>();
  pkg.version = p.at("version").get<std::string>();
  pkg.source = optional_string(p, "source");
  pkg.edition = string_or(p, "edition", "2015");
  pkg.links = optional_string(p, "links");
  pkg.manifest_path = p.at("manifest_path").get<std::string>();
  for (const auto& [name, values] : p.at("features").items()) {
    pkg.features[name] = values.get<std::vector<std::string>>();
  }
  for (const auto& d : p.at("dependencies")) {
    CargoDependency dep;
    dep.name = d.at("name").get<std::string>();
    dep.rename = optional_string(d, "rename");
    dep.kind = string_or(d, "kind");
    dep.platform = optional_string(d, "target");
    dep.optional = d.value("optional", false);
    pkg.dependencies.push_back(std::move(dep));
  }
  for (const auto& t : p.at("targets")) {
    pkg.targets.push_back(parse_target(t, pkg.edition));
  }
  pkg.authors = strings(p, "authors");
  pkg.description = string_or(p, "description");
  pkg.homepage = string_or(p, "homepage");
  pkg.repository = string_or(p, "repository");
  pkg.license = string_or(p, "license");
  pkg.license_file = string_or(p, "license_file");
  pkg.readme = string_or(p, "readme");
  pkg.rust_version = string_or(p, "rust_version");
  return pkg;
}

} // namespace

std::vector<std::string>
lint_flags(const fs::path& manifest, const fs::path& workspace_manifest)
{
  toml::table own = parse_manifest(manifest);
  toml::table workspace = manifest == workspace_manifest ? own : parse_manifest(workspace_manifest);
  const toml::table* lints = lints_table(own, workspace);
  if (!lints) {
    return {};
  }
  std::vector<std::tuple<int64_t, std::string, std::string>> flags;
  std::vector<std::string> check_cfgs;
  for (const auto& [tool_key, table] : *lints) {
    std::string tool(tool_key.str());
    if (tool == "cargo" || tool == "workspace" || !table.is_table()) {
      continue;
    }
    for (const auto& [name_key, config] : *table.as_table()) {
      std::string name(name_key.str());
      std::optional<std::string> level = config.value<std::string>();
      int64_t priority = 0;
      if (auto t = config.as_table()) {
        level = (*t)["level"].value<std::string>();
        priority = (*t)["priority"].value_or(int64_t{0});
        if (tool == "rust" && name == "unexpected_cfgs") {
          if (auto cfgs = (*t)["check-cfg"].as_array()) {
            for (const auto& c : *cfgs) {
              check_cfgs.push_back(c.value_or(std::string()));
            }
          }
        }
      }
      if (!level || (*level != "forbid" && *level != "deny" && *level != "warn" && *level != "allow")) {
        throw CargoError(manifest.string() + ": lint `" + tool + "." + name +
                         "` needs a level: forbid, deny, warn or allow");
      }
      flags.emplace_back(priority, name,
                         "--" + *level + "=" + (tool == "rust" ? name : tool + "::" + name));
    }
  }
  // By priority, then by name descending (cargo's Reverse(name)).
  std::sort(flags.begin(), flags.end(), [](const auto& a, const auto& b) {
    if (std::get<0>(a) != std::get<0>(b)) {
      return std::get<0>(a) < std::get<0>(b);
    }
    if (std::get<1>(a) != std::get<1>(b)) {
      return std::get<1>(a) > std::get<1>(b);
    }
    return std::get<2>(a) < std::get<2>(b);
  });
  std::vector<std::string> out;
  for (const auto& f : flags) {
    out.push_back(std::get<2>(f));
  }
  for (const auto& c : check_cfgs) {
    out.insert(out.end(), {"--check-cfg", c});
  }
  return out;
}

Workspace
parse_workspace(const std::string& metadata_json)
{
  json meta;
  try {
    meta = json::parse(metadata_json);
  } catch (const json::exception& e) {
    throw CargoError(std::string("cannot read the output of cargo metadata: ") + e.what());
  }
  Workspace ws;
  ws.root = meta.at("workspace_root").get<std::string>();
  ws.target_dir = meta.at("target_directory").get<std::string>();
  for (const auto& p : meta.at("packages")) {
    CargoPackage pkg = parse_package(p);
    ws.packages.emplace(pkg.id, std::move(pkg));
  }
  ws.members = meta.at("workspace_members").get<std::vector<std::string>>();
  ws.default_members = meta.contains("workspace_default_members")
                         ? meta.at("workspace_default_members").get<std::vector<std::string>>()
                         : ws.members;
  for (const auto& id : ws.members) {
    ws.packages.at(id).is_member = true;
  }
  fs::path root_manifest = ws.root / "Cargo.toml";
  for (auto& [id, pkg] : ws.packages) {
    if (!pkg.is_local()) {
      continue; // --cap-lints allow: cargo passes no [lints]; harness matters for members
    }
    toml::table manifest = parse_manifest(pkg.manifest_path);
    if (manifest.contains("cargo-features")) {
      throw CargoError(pkg.manifest_path.string() +
                       ": `cargo-features` needs a nightly cargo; kiln builds what stable cargo builds");
    }
    pkg.lint_flags = lint_flags(pkg.manifest_path, root_manifest);
    auto harness = harness_of(manifest);
    for (auto& t : pkg.targets) {
      auto it = harness.find(t.is_lib() ? "" : t.name);
      if (it != harness.end()) {
        t.harness = it->second;
      }
    }
  }
  return ws;
}

} // namespace kiln::cargo
