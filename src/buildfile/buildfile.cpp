#include <kiln/buildfile/buildfile.hpp>
#include <kiln/util/error.hpp>

#include <yaml-cpp/yaml.h>

#include <functional>
#include <set>

namespace kiln {

namespace fs = std::filesystem;

namespace {

std::string
where(const fs::path& file, const YAML::Node& node)
{
  auto mark = node.Mark();
  return file.string() + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
}

[[noreturn]] void
fail(const fs::path& file, const YAML::Node& node, const std::string& message)
{
  throw UsageError(where(file, node) + ": " + message);
}

std::string
scalar(const fs::path& file, const YAML::Node& node, const std::string& what)
{
  if (!node.IsScalar()) {
    fail(file, node, what + " must be a string");
  }
  return node.as<std::string>();
}

std::vector<std::string>
string_list(const fs::path& file, const YAML::Node& node, const std::string& what)
{
  if (!node.IsSequence()) {
    fail(file, node, what + " must be a list of strings");
  }
  std::vector<std::string> out;
  for (const auto& item : node) {
    out.push_back(scalar(file, item, "each item of " + what));
  }
  return out;
}

const std::set<std::string> k_derivation_keys = {"builder", "args", "env", "tools", "srcs", "deps"};
const std::set<std::string> k_setting_keys = {"substituters", "trusted-public-keys", "require-sigs",
                                              "jobs", "store", "store-dir", "connections"};

DerivationSpec
parse_derivation(const fs::path& file, const std::string& name, const YAML::Node& node)
{
  DerivationSpec spec;
  spec.name = name;
  spec.location = where(file, node);
  if (!node.IsMap()) {
    fail(file, node, "derivation '" + name + "' must be a mapping (builder, args, env, ...)");
  }
  fs::path base = fs::absolute(file).parent_path();
  for (const auto& entry : node) {
    std::string key = entry.first.as<std::string>();
    const YAML::Node& value = entry.second;
    if (!k_derivation_keys.count(key)) {
      fail(file, entry.first,
           "unknown key '" + key + "' in derivation '" + name +
             "' (expected builder, args, env, tools, srcs or deps)");
    }
    if (key == "builder") {
      spec.builder = scalar(file, value, "builder");
    } else if (key == "args") {
      spec.args = string_list(file, value, "args");
    } else if (key == "env") {
      if (!value.IsMap()) {
        fail(file, value, "env must be a mapping of names to strings");
      }
      for (const auto& e : value) {
        spec.env[e.first.as<std::string>()] = scalar(file, e.second, "env " + e.first.as<std::string>());
      }
    } else if (key == "tools") {
      for (const auto& t : string_list(file, value, "tools")) {
        if (t.empty() || t[0] != '/') {
          fail(file, value, "tool '" + t + "' must be an absolute path");
        }
        spec.tools.emplace_back(t);
      }
    } else if (key == "srcs") {
      for (const auto& s : string_list(file, value, "srcs")) {
        spec.srcs.push_back((base / s).lexically_normal());
      }
    } else if (key == "deps") {
      spec.deps = string_list(file, value, "deps");
    }
  }
  if (spec.builder.empty()) {
    fail(file, node, "derivation '" + name + "' lacks a builder");
  }
  return spec;
}

} // namespace

BuildFile
load_build_file(const fs::path& file)
{
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::BadFile&) {
    throw UsageError("cannot read build file '" + file.string() + "'");
  } catch (const YAML::Exception& e) {
    throw UsageError(file.string() + ":" + std::to_string(e.mark.line + 1) + ":" +
                     std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (!root.IsMap()) {
    throw UsageError(file.string() + ": a build file is a mapping with a 'derivations' key");
  }
  BuildFile result;
  result.file = file;
  for (const auto& entry : root) {
    std::string key = entry.first.as<std::string>();
    if (key == "derivations") {
      if (!entry.second.IsMap()) {
        fail(file, entry.second, "'derivations' must map names to derivations");
      }
      for (const auto& d : entry.second) {
        std::string name = d.first.as<std::string>();
        result.derivations.emplace(name, parse_derivation(file, name, d.second));
      }
    } else if (k_setting_keys.count(key)) {
      std::string text;
      if (entry.second.IsSequence()) {
        for (const auto& item : string_list(file, entry.second, key)) {
          text += (text.empty() ? "" : " ") + item;
        }
      } else {
        text = scalar(file, entry.second, key);
      }
      result.settings[key] = text;
      result.setting_origins[key] = where(file, entry.first);
    } else {
      fail(file, entry.first,
           "unknown key '" + key + "' (expected derivations or a setting: substituters, "
           "trusted-public-keys, require-sigs, jobs, store, store-dir, connections)");
    }
  }
  if (result.derivations.empty()) {
    throw UsageError(file.string() + ": no derivations (add a 'derivations:' mapping)");
  }
  // Every dep names an entry; no cycles.
  for (const auto& [name, spec] : result.derivations) {
    for (const auto& dep : spec.deps) {
      if (!result.derivations.count(dep)) {
        throw UsageError(spec.location + ": derivation '" + name + "' depends on '" + dep +
                         "', which the file does not define");
      }
    }
  }
  std::map<std::string, int> state; // 1 = on the path, 2 = done
  std::vector<std::string> path;
  std::function<void(const std::string&)> visit = [&](const std::string& name) {
    if (state[name] == 2) {
      return;
    }
    if (state[name] == 1) {
      std::string cycle;
      auto it = std::find(path.begin(), path.end(), name);
      for (; it != path.end(); ++it) {
        cycle += *it + " → ";
      }
      throw UsageError(result.derivations.at(name).location + ": dependency cycle: " + cycle + name);
    }
    state[name] = 1;
    path.push_back(name);
    for (const auto& dep : result.derivations.at(name).deps) {
      visit(dep);
    }
    path.pop_back();
    state[name] = 2;
  };
  for (const auto& [name, spec] : result.derivations) {
    visit(name);
  }
  return result;
}

} // namespace kiln
