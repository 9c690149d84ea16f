// UnitInputs: the named inputs of a unit, their JSON form, and what differs
// between two (unit_derivation.cpp makes the derivation from them).
#include <kiln/cargo/inputs.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/cargo/unit_builder.hpp>
#include <kiln/hash/hash.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

// --- JSON ---

namespace {

json
profile_json(const Profile& p)
{
  return {{"name", p.name},
          {"dir_name", p.dir_name},
          {"root", p.root},
          {"opt_level", p.opt_level},
          {"debuginfo", p.debuginfo},
          {"split_debuginfo", p.split_debuginfo ? json(*p.split_debuginfo) : json(nullptr)},
          {"debug_assertions", p.debug_assertions},
          {"overflow_checks", p.overflow_checks},
          {"lto", p.lto},
          {"panic", p.panic},
          {"codegen_units", p.codegen_units ? json(*p.codegen_units) : json(nullptr)},
          {"strip", p.strip},
          {"rpath", p.rpath}};
}

Profile
profile_from(const json& j)
{
  Profile p;
  p.name = j.at("name");
  p.dir_name = j.at("dir_name");
  p.root = j.at("root");
  p.opt_level = j.at("opt_level");
  p.debuginfo = j.at("debuginfo");
  if (!j.at("split_debuginfo").is_null()) {
    p.split_debuginfo = j.at("split_debuginfo").get<std::string>();
  }
  p.debug_assertions = j.at("debug_assertions");
  p.overflow_checks = j.at("overflow_checks");
  p.lto = j.at("lto");
  p.panic = j.at("panic");
  if (!j.at("codegen_units").is_null()) {
    p.codegen_units = j.at("codegen_units").get<int>();
  }
  p.strip = j.at("strip");
  p.rpath = j.at("rpath");
  return p;
}

json
to_json_value(const UnitInputs& i)
{
  json externs = json::array();
  for (const auto& e : i.externs) {
    externs.push_back({{"name", e.name}, {"output", e.output}, {"file", e.file}});
  }
  json j = {{"package", i.package},
          {"version", i.version},
          {"mode", i.mode},
          {"target", i.target},
          {"target_kind", i.target_kind},
          {"crate_types", i.crate_types},
          {"src_path", i.src_path},
          {"in_workspace", i.in_workspace},
          {"workspace_path", i.workspace_path},
          {"edition", i.edition},
          {"harness", i.harness},
          {"source", i.source},
          {"package_env", i.package_env},
          {"declared_features", i.declared_features},
          {"compiler", i.compiler},
          {"standard_library", i.standard_library},
          {"linker", i.linker},
          {"linker_path", i.linker_path},
          {"driver", i.driver},
          {"target_triple", i.target_triple},
          {"host", i.host},
          {"links", i.links},
          {"cfg", i.cfg},
          {"features", i.features},
          {"profile", profile_json(i.profile)},
          {"lto", i.lto},
          {"rustflags", i.rustflags},
          {"lint_flags", i.lint_flags},
          {"cap_lints", i.cap_lints},
          {"primary", i.primary},
          {"tool_args", i.tool_args},
          {"rustdocflags", i.rustdocflags},
          {"clippy_conf", i.clippy_conf},
          {"test_binary", i.test_binary},
          {"rerun", i.rerun},
          {"config_env", i.config_env},
          {"host_env", i.host_env},
          {"host_files", i.host_files},
          {"bin_exes", i.bin_exes},
          {"externs", externs},
          {"library_closure", i.library_closure},
          {"link_search_runs", i.link_search_runs},
          {"own_run", i.own_run},
          {"applies_link_libs", i.applies_link_libs},
          {"build_script", i.build_script},
          {"links_runs", i.links_runs}};
  // Only when set: the path of every clean unit stays what it was before
  // the field existed, so caches filled then still serve.
  if (i.incremental) {
    j["incremental"] = true;
  }
  if (!i.host_cpu.empty()) {
    j["host_cpu"] = i.host_cpu;
  }
  return j;
}

} // namespace

std::string
inputs_to_json(const UnitInputs& inputs)
{
  return to_json_value(inputs).dump();
}

UnitInputs
inputs_from_json(const std::string& text)
{
  json j = json::parse(text);
  UnitInputs i;
  i.package = j.at("package");
  i.version = j.at("version");
  i.mode = j.at("mode");
  i.target = j.at("target");
  i.target_kind = j.at("target_kind").get<std::vector<std::string>>();
  i.crate_types = j.at("crate_types").get<std::vector<std::string>>();
  i.src_path = j.at("src_path");
  i.in_workspace = j.at("in_workspace");
  i.workspace_path = j.at("workspace_path");
  i.edition = j.at("edition");
  i.harness = j.at("harness");
  i.source = j.at("source");
  i.package_env = j.at("package_env").get<std::map<std::string, std::string>>();
  i.declared_features = j.at("declared_features").get<std::vector<std::string>>();
  i.compiler = j.at("compiler");
  i.standard_library = j.at("standard_library");
  i.linker = j.at("linker");
  i.linker_path = j.at("linker_path");
  i.driver = j.at("driver");
  i.target_triple = j.at("target_triple");
  i.host = j.at("host");
  i.links = j.at("links");
  i.cfg = j.at("cfg").get<std::map<std::string, std::string>>();
  i.features = j.at("features").get<std::vector<std::string>>();
  i.profile = profile_from(j.at("profile"));
  i.lto = j.at("lto");
  i.rustflags = j.at("rustflags").get<std::vector<std::string>>();
  i.lint_flags = j.at("lint_flags").get<std::vector<std::string>>();
  i.cap_lints = j.at("cap_lints");
  i.primary = j.at("primary");
  i.tool_args = j.at("tool_args").get<std::vector<std::string>>();
  i.rustdocflags = j.at("rustdocflags").get<std::vector<std::string>>();
  i.clippy_conf = j.at("clippy_conf");
  i.test_binary = j.at("test_binary");
  i.rerun = j.at("rerun");
  i.config_env = j.at("config_env").get<std::map<std::string, std::string>>();
  i.host_env = j.at("host_env").get<std::map<std::string, std::string>>();
  i.host_files = j.at("host_files").get<std::map<std::string, std::string>>();
  i.bin_exes = j.at("bin_exes").get<std::map<std::string, std::string>>();
  for (const auto& e : j.at("externs")) {
    i.externs.push_back({e.at("name"), e.at("output"), e.at("file")});
  }
  i.library_closure = j.at("library_closure").get<std::vector<std::string>>();
  i.link_search_runs = j.at("link_search_runs").get<std::vector<std::string>>();
  i.own_run = j.at("own_run");
  i.applies_link_libs = j.at("applies_link_libs");
  i.build_script = j.at("build_script");
  i.links_runs = j.at("links_runs").get<std::map<std::string, std::string>>();
  i.incremental = j.value("incremental", false);
  i.host_cpu = j.value("host_cpu", "");
  return i;
}

std::string
stable_inputs_json(const UnitInputs& inputs, const std::map<std::string, std::string>& stable_names)
{
  std::string text = inputs_to_json(inputs);
  // Store paths are distinct and never a prefix of one another's name, so
  // a plain replacement cannot touch anything else.
  for (const auto& [path, name] : stable_names) {
    for (size_t at = text.find(path); at != std::string::npos; at = text.find(path, at + name.size())) {
      text.replace(at, path.size(), name);
    }
  }
  return text;
}

std::vector<std::string>
diff_inputs(const UnitInputs& before, const UnitInputs& after)
{
  std::vector<std::string> out;
  json a = to_json_value(before), b = to_json_value(after);
  std::set<std::string> keys;
  for (const auto& [key, value] : a.items()) {
    keys.insert(key);
  }
  for (const auto& [key, value] : b.items()) {
    keys.insert(key);
  }
  // A field written only when set (incremental) is null when it is not.
  for (const auto& key : keys) {
    std::string was = a.contains(key) ? a.at(key).dump() : "null";
    std::string is = b.contains(key) ? b.at(key).dump() : "null";
    for (auto& line : json_differences(key, was, is)) {
      out.push_back(std::move(line));
    }
  }
  return out;
}

} // namespace kiln::cargo
