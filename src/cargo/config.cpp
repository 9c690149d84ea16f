// Cargo's configuration discovery and merging (cargo's src/context/mod.rs:
// walk_tree, load_includes, cli_args_as_table; config_value.rs: merge).
#include <kiln/cargo/config.hpp>
#include <kiln/util/io.hpp>

#include <toml++/toml.h>

#include <algorithm>
#include <sstream>

extern char** environ;

namespace kiln::cargo {

namespace fs = std::filesystem;

Environment
current_environment()
{
  Environment env;
  for (char** e = environ; *e; ++e) {
    std::string entry = *e;
    auto eq = entry.find('=');
    if (eq != std::string::npos) {
      env.emplace(entry.substr(0, eq), entry.substr(eq + 1));
    }
  }
  return env;
}

fs::path
cargo_home_of(const Environment& env)
{
  auto it = env.find("CARGO_HOME");
  if (it != env.end() && !it->second.empty()) {
    return it->second;
  }
  auto home = env.find("HOME");
  return fs::path(home != env.end() ? home->second : "/") / ".cargo";
}

namespace {

const char*
type_name(ConfigValue::Type type)
{
  switch (type) {
  case ConfigValue::Type::string:
    return "a string";
  case ConfigValue::Type::integer:
    return "an integer";
  case ConfigValue::Type::boolean:
    return "a boolean";
  case ConfigValue::Type::floating:
    return "a float";
  case ConfigValue::Type::array:
    return "an array";
  case ConfigValue::Type::table:
    return "a table";
  }
  return "a value";
}

std::string
scalar_text(const toml::node& node, ConfigValue::Type& type)
{
  if (auto s = node.value<std::string>(); s && node.is_string()) {
    type = ConfigValue::Type::string;
    return *s;
  }
  if (node.is_integer()) {
    type = ConfigValue::Type::integer;
    return std::to_string(*node.value<int64_t>());
  }
  if (node.is_boolean()) {
    type = ConfigValue::Type::boolean;
    return *node.value<bool>() ? "true" : "false";
  }
  if (node.is_floating_point()) {
    type = ConfigValue::Type::floating;
    std::ostringstream text;
    text << *node.value<double>();
    return text.str();
  }
  // Dates and times: their TOML text.
  type = ConfigValue::Type::string;
  std::ostringstream text;
  if (auto d = node.as_date()) {
    text << *d;
  } else if (auto t = node.as_time()) {
    text << *t;
  } else if (auto dt = node.as_date_time()) {
    text << *dt;
  }
  return text.str();
}

ConfigValue
from_toml(const toml::node& node, const ConfigSource& source)
{
  ConfigValue value;
  value.source = source;
  if (auto table = node.as_table()) {
    value.type = ConfigValue::Type::table;
    for (const auto& [key, child] : *table) {
      value.table.emplace(std::string(key.str()), from_toml(child, source));
    }
  } else if (auto array = node.as_array()) {
    value.type = ConfigValue::Type::array;
    for (const auto& item : *array) {
      ConfigValue::Type ignored;
      if (item.is_table() || item.is_array()) {
        // An `include = [{ path = "...", optional = true }]` entry: kept
        // as a path, with optional ones marked.
        auto t = item.as_table();
        auto path = t ? (*t)["path"].value<std::string>() : std::nullopt;
        bool optional = t && (*t)["optional"].value_or(false);
        value.items.emplace_back((optional ? "?" : "") + path.value_or(""), source);
      } else {
        value.items.emplace_back(scalar_text(item, ignored), source);
      }
    }
  } else {
    value.scalar = scalar_text(node, value.type);
  }
  return value;
}

// Merge `higher` into `lower` (cargo's ConfigValue::merge with force).
void
merge(ConfigValue& lower, const ConfigValue& higher, const std::string& key)
{
  bool lower_container = lower.is_table() || lower.is_array();
  bool higher_container = higher.is_table() || higher.is_array();
  if ((lower_container || higher_container) && lower.type != higher.type) {
    throw CargoError("failed to merge configuration key `" + key + "`: " +
                     type_name(lower.type) + " in " + lower.source.where + ", " +
                     type_name(higher.type) + " in " + higher.source.where);
  }
  if (lower.is_table()) {
    for (const auto& [k, v] : higher.table) {
      auto it = lower.table.find(k);
      if (it == lower.table.end()) {
        lower.table.emplace(k, v);
      } else {
        merge(it->second, v, key.empty() ? k : key + "." + k);
      }
    }
  } else if (lower.is_array()) {
    lower.items.insert(lower.items.end(), higher.items.begin(), higher.items.end());
  } else {
    lower = higher;
  }
}

toml::table
parse_toml_file(const fs::path& file)
{
  try {
    return toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    throw CargoError(file.string() + ":" + std::to_string(e.source().begin.line) + ":" +
                     std::to_string(e.source().begin.column) + ": " + std::string(e.description()));
  }
}

// A config file, its includes first (the file wins over what it includes).
ConfigValue
load_file(const fs::path& file, ConfigSource::Kind kind, std::vector<fs::path>& read, int depth = 0)
{
  if (depth > 16) {
    throw CargoError(file.string() + ": `include` goes round in a circle");
  }
  read.push_back(file);
  // Relative paths in .cargo/config.toml are relative to the folder above
  // .cargo (cargo's Definition::root: the file's grandparent).
  ConfigSource source{kind, file.string(), file.parent_path().parent_path()};
  ConfigValue value = from_toml(parse_toml_file(file), source);
  auto include = value.table.find("include");
  if (include == value.table.end()) {
    return value;
  }
  std::vector<std::string> paths;
  if (include->second.type == ConfigValue::Type::string) {
    paths.push_back(include->second.scalar);
  } else if (include->second.is_array()) {
    for (const auto& [p, s] : include->second.items) {
      paths.push_back(p);
    }
  } else {
    throw CargoError(file.string() + ": `include` must be a string or an array");
  }
  value.table.erase(include);
  ConfigValue merged;
  merged.source = source;
  for (std::string p : paths) {
    bool optional = p.starts_with('?');
    if (optional) {
      p.erase(0, 1);
    }
    fs::path included = file.parent_path() / p;
    std::error_code ec;
    if (!fs::exists(included, ec)) {
      if (optional) {
        continue;
      }
      throw CargoError(file.string() + ": included file '" + included.string() + "' does not exist");
    }
    merge(merged, load_file(included, kind, read, depth + 1), "");
  }
  merge(merged, value, "");
  return merged;
}

// `--config KEY=VALUE`: one dotted key, no inline tables.
ConfigValue
parse_cli_assignment(const std::string& arg, const fs::path& cwd)
{
  toml::table doc;
  try {
    doc = toml::parse(arg);
  } catch (const toml::parse_error& e) {
    throw CargoError("--config " + arg + ": not a file, and not KEY=VALUE in TOML (" +
                     std::string(e.description()) + ")");
  }
  // Exactly one key path, ending in a value that is not a table.
  const toml::node* node = &doc;
  size_t keys = 0;
  while (auto table = node->as_table()) {
    if (table->size() != 1) {
      throw CargoError("--config " + arg + ": expected exactly one KEY=VALUE");
    }
    node = &table->begin()->second;
    ++keys;
    if (node->is_table() && node->as_table()->is_inline()) {
      throw CargoError("--config " + arg +
                       ": sets a value to an inline table, which is not accepted (use dotted keys)");
    }
  }
  if (keys == 0) {
    throw CargoError("--config " + arg + ": expected KEY=VALUE");
  }
  for (const char* secret : {"token", "secret-key"}) {
    if (arg.find(secret) != std::string::npos &&
        (arg.starts_with("registry.") || arg.starts_with("registries."))) {
      throw CargoError("--config " + arg + ": registry secrets cannot be set on the command line");
    }
  }
  return from_toml(doc, ConfigSource{ConfigSource::Kind::command_line, "--config " + arg, cwd});
}

std::vector<std::string>
split_whitespace(const std::string& text)
{
  std::vector<std::string> out;
  std::istringstream words(text);
  for (std::string w; words >> w;) {
    out.push_back(w);
  }
  return out;
}

// The config file of one folder's `.cargo`: the extensionless `config` wins
// over `config.toml` (with a warning when both exist).
std::optional<fs::path>
config_file_in(const fs::path& dir, std::vector<std::string>& warnings,
               const std::string& sub = ".cargo")
{
  std::error_code ec;
  fs::path folder = sub.empty() ? dir : dir / sub;
  fs::path legacy = folder / "config", modern = folder / "config.toml";
  bool has_legacy = fs::is_regular_file(legacy, ec), has_modern = fs::is_regular_file(modern, ec);
  if (has_legacy && has_modern && !fs::equivalent(legacy, modern, ec)) {
    warnings.push_back("both `" + legacy.string() + "` and `" + modern.string() +
                       "` exist; cargo uses `" + legacy.string() + "`");
  }
  if (has_legacy) {
    return legacy;
  }
  if (has_modern) {
    return modern;
  }
  return std::nullopt;
}

} // namespace

std::string
CargoConfig::env_name(const std::vector<std::string>& key)
{
  std::string name = "CARGO";
  for (const auto& part : key) {
    name += "_";
    for (char c : part) {
      name += c == '-' || c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
  }
  return name;
}

std::string
CargoConfig::dotted(const std::vector<std::string>& key)
{
  std::string text;
  for (const auto& part : key) {
    bool plain = part.find_first_of(".'\" ()") == std::string::npos;
    text += (text.empty() ? "" : ".") + (plain ? part : "'" + part + "'");
  }
  return text;
}

CargoConfig
CargoConfig::load(const fs::path& cwd, const fs::path& cargo_home, const std::vector<std::string>& cli,
                  const Environment& env)
{
  CargoConfig config;
  config.m_env = env;
  config.m_cwd = cwd;
  // Nearest folder first, as found; merged farthest first so nearer wins.
  std::vector<fs::path> found;
  std::error_code ec;
  bool home_seen = false;
  for (fs::path d = fs::absolute(cwd, ec);; d = d.parent_path()) {
    config.m_probed.push_back(d / ".cargo");
    home_seen |= fs::equivalent(d / ".cargo", cargo_home, ec);
    if (auto file = config_file_in(d, config.m_warnings)) {
      found.push_back(*file);
    }
    if (d == d.root_path() || d.empty()) {
      break;
    }
  }
  std::reverse(found.begin(), found.end());
  if (!home_seen) {
    // $CARGO_HOME's file counts lowest of all.
    config.m_probed.push_back(cargo_home);
    if (auto file = config_file_in(cargo_home, config.m_warnings, "")) {
      found.insert(found.begin(), *file);
    }
  }
  config.m_files_root.source = {ConfigSource::Kind::file, "cargo's configuration", cwd};
  for (const auto& file : found) {
    merge(config.m_files_root, load_file(file, ConfigSource::Kind::file, config.m_files), "");
  }
  config.m_cli_root.source = {ConfigSource::Kind::command_line, "--config", cwd};
  for (const auto& arg : cli) {
    fs::path as_file = cwd / arg;
    ConfigValue value = !arg.empty() && fs::exists(as_file, ec)
                          ? load_file(as_file, ConfigSource::Kind::command_line, config.m_files)
                          : parse_cli_assignment(arg, cwd);
    merge(config.m_cli_root, value, "");
  }
  // A value set in files and on the command line must merge too.
  ConfigValue check = config.m_files_root;
  merge(check, config.m_cli_root, "");
  return config;
}

const ConfigValue*
CargoConfig::find_in(const ConfigValue& root, const std::vector<std::string>& key) const
{
  const ConfigValue* node = &root;
  for (const auto& part : key) {
    if (!node->is_table()) {
      return nullptr;
    }
    auto it = node->table.find(part);
    if (it == node->table.end()) {
      return nullptr;
    }
    node = &it->second;
  }
  return node;
}

const ConfigValue*
CargoConfig::find(const std::vector<std::string>& key) const
{
  if (const ConfigValue* cli = find_in(m_cli_root, key)) {
    return cli;
  }
  return find_in(m_files_root, key);
}

std::optional<std::string>
CargoConfig::env_value(const std::vector<std::string>& key) const
{
  auto it = m_env.find(env_name(key));
  return it == m_env.end() ? std::nullopt : std::optional<std::string>(it->second);
}

std::optional<ConfigSource>
CargoConfig::source_of(const std::vector<std::string>& key) const
{
  if (const ConfigValue* cli = find_in(m_cli_root, key)) {
    return cli->is_array() && !cli->items.empty() ? cli->items.back().second : cli->source;
  }
  if (env_value(key)) {
    return ConfigSource{ConfigSource::Kind::environment, "environment variable " + env_name(key), m_cwd};
  }
  if (const ConfigValue* file = find_in(m_files_root, key)) {
    return file->is_array() && !file->items.empty() ? file->items.back().second : file->source;
  }
  return std::nullopt;
}

std::optional<std::string>
CargoConfig::get_string(const std::vector<std::string>& key) const
{
  const ConfigValue* cli = find_in(m_cli_root, key);
  const ConfigValue* file = find_in(m_files_root, key);
  const ConfigValue* value = cli;
  if (!cli) {
    if (auto env = env_value(key)) {
      return env;
    }
    value = file;
  }
  if (!value) {
    return std::nullopt;
  }
  if (value->is_table() || value->is_array()) {
    throw CargoError("configuration key `" + dotted(key) + "` (" + value->source.where +
                     ") must be a string, not " + type_name(value->type));
  }
  return value->scalar;
}

std::optional<bool>
CargoConfig::get_bool(const std::vector<std::string>& key) const
{
  auto text = get_string(key);
  if (!text) {
    return std::nullopt;
  }
  if (*text != "true" && *text != "false") {
    throw CargoError("configuration key `" + dotted(key) + "` (" + source_of(key)->where +
                     ") must be true or false, not '" + *text + "'");
  }
  return *text == "true";
}

std::optional<int64_t>
CargoConfig::get_integer(const std::vector<std::string>& key) const
{
  auto text = get_string(key);
  if (!text) {
    return std::nullopt;
  }
  try {
    size_t used = 0;
    int64_t n = std::stoll(*text, &used);
    if (used == text->size()) {
      return n;
    }
  } catch (const std::exception&) {
  }
  throw CargoError("configuration key `" + dotted(key) + "` (" + source_of(key)->where +
                   ") must be an integer, not '" + *text + "'");
}

std::optional<std::vector<std::string>>
CargoConfig::get_list(const std::vector<std::string>& key) const
{
  std::optional<std::vector<std::string>> out;
  auto append = [&](const ConfigValue* value) {
    if (!value) {
      return;
    }
    if (value->is_table()) {
      throw CargoError("configuration key `" + dotted(key) + "` (" + value->source.where +
                       ") must be a list or a string, not a table");
    }
    if (!out) {
      out.emplace();
    }
    if (value->is_array()) {
      for (const auto& [item, source] : value->items) {
        out->push_back(item);
      }
    } else {
      auto words = split_whitespace(value->scalar);
      out->insert(out->end(), words.begin(), words.end());
    }
  };
  append(find_in(m_files_root, key));
  if (auto env = env_value(key)) {
    if (!out) {
      out.emplace();
    }
    auto words = split_whitespace(*env);
    out->insert(out->end(), words.begin(), words.end());
  }
  append(find_in(m_cli_root, key));
  return out;
}

} // namespace kiln::cargo
