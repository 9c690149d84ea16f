#include <kiln/settings/settings.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/strings.hpp>

#include <yaml-cpp/yaml.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include <cstdlib>
#include <thread>

namespace kiln {

namespace fs = std::filesystem;

namespace {

unsigned
parse_count(const std::string& value, const std::string& what, unsigned min)
{
  size_t pos = 0;
  unsigned long n = 0;
  try {
    if (!value.empty() && value[0] == '-') {
      throw std::invalid_argument("negative");
    }
    n = std::stoul(value, &pos);
  } catch (...) {
    pos = std::string::npos;
  }
  if (pos != value.size() || n < min || n > 1'000'000) {
    throw UsageError(what + ": expected a whole number of at least " + std::to_string(min) +
                     ", got '" + value + "'");
  }
  return static_cast<unsigned>(n);
}

fs::path
home_dir(const EnvLookup& env)
{
  auto home = env("HOME");
  return home && !home->empty() ? fs::path(*home) : fs::path("/root");
}

fs::path
default_store(const EnvLookup& env)
{
  auto data = env("XDG_DATA_HOME");
  fs::path base = data && !data->empty() ? fs::path(*data) : home_dir(env) / ".local" / "share";
  return base / "kiln";
}

fs::path
default_cache_dir(const EnvLookup& env)
{
  auto cache = env("XDG_CACHE_HOME");
  fs::path base = cache && !cache->empty() ? fs::path(*cache) : home_dir(env) / ".cache";
  return base / "kiln";
}

// The YAML of a config file: null (empty) or a mapping.
YAML::Node
parse_config(const std::string& text, const fs::path& file)
{
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw UsageError(file.string() + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (root && !root.IsNull() && !root.IsMap()) {
    throw UsageError(file.string() + ": the config file must be a mapping of settings");
  }
  return root;
}

// The items of a list setting, written as a list or as one space-separated string.
std::vector<std::string>
list_items(const YAML::Node& node)
{
  std::vector<std::string> out;
  if (node && node.IsSequence()) {
    for (const auto& item : node) {
      if (item.IsScalar()) {
        out.push_back(item.as<std::string>());
      }
    }
  } else if (node && node.IsScalar()) {
    out = split_words(node.as<std::string>());
  }
  return out;
}

// `value` as a YAML scalar, quoted if it needs to be.
std::string
yaml_scalar(const std::string& value)
{
  YAML::Emitter out;
  out << value;
  return out.c_str();
}

// Add `value` to the list `key` by inserting one line into `text`: a new
// "key:" block at the end if the key is absent, or an item after the last
// one of a block list. False if the list is written some other way.
bool
insert_list_item(std::string& text, const YAML::Node& root, const std::string& key,
                 const std::string& value)
{
  const YAML::Node& const_root = root;
  YAML::Node node = const_root[key];
  if (!node) {
    if (!text.empty() && text.back() != '\n') {
      text += '\n';
    }
    text += key + ":\n  - " + yaml_scalar(value) + "\n";
    return true;
  }
  if (!node.IsSequence() || node.size() == 0 || node.Style() == YAML::EmitterStyle::Flow) {
    return false;
  }
  YAML::Mark last = node[node.size() - 1].Mark();
  size_t line_start = 0;
  for (int line = 0; line < last.line; ++line) {
    line_start = text.find('\n', line_start);
    if (line_start == std::string::npos) {
      return false;
    }
    ++line_start;
  }
  std::string prefix = text.substr(line_start, static_cast<size_t>(last.column));
  auto dash = prefix.find_first_not_of(' ');
  if (dash == std::string::npos || prefix[dash] != '-' ||
      prefix.find_first_not_of(' ', dash + 1) != std::string::npos) {
    return false;   // not "  - item" on a line of its own
  }
  size_t line_end = text.find('\n', line_start);
  if (line_end == std::string::npos) {
    text += '\n';
    line_end = text.size() - 1;
  }
  text.insert(line_end + 1, prefix + yaml_scalar(value) + "\n");
  return true;
}

// Whether `after` is `before` with `value` added to `key`, all else equal.
bool
is_addition(const YAML::Node& before, const YAML::Node& after, const std::string& key,
            const std::string& value)
{
  if (!after.IsMap()) {
    return false;
  }
  std::vector<std::string> expected = list_items(before[key]);
  expected.push_back(value);
  if (list_items(after[key]) != expected) {
    return false;
  }
  size_t before_size = before && before.IsMap() ? before.size() : 0;
  if (after.size() != before_size + (before[key] ? 0 : 1)) {
    return false;
  }
  for (const auto& entry : after) {
    std::string k = entry.first.as<std::string>();
    if (k != key && (!before[k] || YAML::Dump(entry.second) != YAML::Dump(before[k]))) {
      return false;
    }
  }
  return true;
}

} // namespace

bool
add_to_config(const fs::path& file, std::vector<ConfigAddition>& additions)
{
  std::string text;
  unsigned mode = 0644;
  std::error_code ec;
  if (fs::exists(file, ec)) {
    text = read_file(file);
    struct stat st;
    if (::stat(file.c_str(), &st) == 0) {
      mode = st.st_mode & 07777;
    }
  }
  YAML::Node root = parse_config(text, file);
  bool rewritten = false;
  bool changed = false;
  for (auto& addition : additions) {
    const YAML::Node& const_root = root;
    auto items = list_items(const_root[addition.key]);
    addition.added = std::find(items.begin(), items.end(), addition.value) == items.end();
    if (!addition.added) {
      continue;
    }
    changed = true;
    std::string edited = text;
    if (!rewritten && insert_list_item(edited, root, addition.key, addition.value)) {
      YAML::Node reparsed = YAML::Load(edited);
      if (is_addition(root, reparsed, addition.key, addition.value)) {
        text = std::move(edited);
        root = reparsed;
        continue;
      }
    }
    // Rewrite the file from the parsed document (comments are lost).
    if (!root || root.IsNull()) {
      root = YAML::Node(YAML::NodeType::Map);
    }
    YAML::Node list(YAML::NodeType::Sequence);
    for (const auto& item : items) {
      list.push_back(item);
    }
    list.push_back(addition.value);
    root[addition.key] = list;
    YAML::Emitter out;
    out << root;
    text = std::string(out.c_str()) + "\n";
    rewritten = true;
  }
  if (changed) {
    fs::create_directories(file.parent_path().empty() ? fs::path(".") : file.parent_path(), ec);
    write_file_atomic(file, text, mode);
  }
  return rewritten;
}

std::optional<std::string>
get_env(const std::string& name)
{
  const char* value = std::getenv(name.c_str());
  return value ? std::optional<std::string>(value) : std::nullopt;
}

const std::vector<SettingInfo>&
Settings::table()
{
  static const std::vector<SettingInfo> settings = {
    {"store", "KILN_STORE", "where the store lives on disk (default $XDG_DATA_HOME/kiln)"},
    {"store-dir", "KILN_STORE_DIR", "logical store directory that paths are named under"},
    {"cache-dir", "KILN_CACHE_DIR",
     "where kiln remembers digests of the toolchain and sources and cargo's answers, by file "
     "metadata, for every store (default $XDG_CACHE_HOME/kiln)"},
    {"substituters", "KILN_SUBSTITUTERS", "binary caches to substitute from (space-separated)"},
    {"trusted-public-keys", "KILN_TRUSTED_PUBLIC_KEYS", "keys whose signatures are trusted"},
    {"require-sigs", "KILN_REQUIRE_SIGS", "distinct trusted signatures a substitute needs"},
    {"secret-key-file", "KILN_SECRET_KEY_FILE", "key to sign uploaded paths with"},
    {"token", "KILN_TOKEN", "bearer token for binary caches"},
    {"jobs", "KILN_JOBS", "builds to run at once (default: number of cores)"},
    {"connections", "KILN_CONNECTIONS", "parallel requests to binary caches (default 16)"},
    {"negative-ttl", "KILN_NEGATIVE_TTL",
     "seconds to remember that a cache lacks a path (default 300; 0: never)"},
    {"lock-timeout", "KILN_LOCK_TIMEOUT",
     "seconds to wait for another kiln's store lock before giving up (default 0: no limit)"},
    {"max-store-size", "KILN_MAX_STORE_SIZE",
     "after a build, evict least recently used paths until the store is this small (e.g. 20G; "
     "default: no cap)"},
  };
  return settings;
}

void
Settings::set(const std::string& key, const std::string& value, const std::string& origin)
{
  std::string what = origin + " (" + key + ")";
  if (key == "store") {
    if (value.empty()) {
      throw UsageError(what + ": the store location must not be empty");
    }
    store = value;
  } else if (key == "store-dir") {
    if (value.empty() || value[0] != '/' || (value.size() > 1 && value.back() == '/')) {
      throw UsageError(what + ": '" + value +
                       "' must be an absolute path without a trailing '/'");
    }
    store_dir = value;
  } else if (key == "cache-dir") {
    if (value.empty()) {
      throw UsageError(what + ": the cache folder must not be empty");
    }
    cache_dir = value;
  } else if (key == "substituters") {
    substituters = split_words(value);
  } else if (key == "trusted-public-keys") {
    trusted_public_keys = split_words(value);
  } else if (key == "require-sigs") {
    require_sigs = parse_count(value, what, 0);
  } else if (key == "secret-key-file") {
    secret_key_file = value;
  } else if (key == "token") {
    token = value;
  } else if (key == "jobs") {
    jobs = parse_count(value, what, 1);
  } else if (key == "connections") {
    connections = parse_count(value, what, 1);
  } else if (key == "negative-ttl") {
    negative_ttl = parse_count(value, what, 0);
  } else if (key == "lock-timeout") {
    lock_timeout = parse_count(value, what, 0);
  } else if (key == "max-store-size") {
    try {
      max_store_size = parse_size(value);
    } catch (const std::exception& e) {
      throw UsageError(what + ": " + e.what());
    }
  } else {
    throw UsageError(origin + ": unknown setting '" + key + "'");
  }
  origins[key] = origin;
}

std::string
Settings::token_for(const std::string& cache_url) const
{
  std::string best_prefix;
  std::string best = token;
  for (const auto& [prefix, value] : cache_tokens) {
    std::string p = prefix;
    while (p.size() > 1 && p.back() == '/') {
      p.pop_back();
    }
    if (cache_url.starts_with(p) && p.size() > best_prefix.size()) {
      best_prefix = p;
      best = value;
    }
  }
  return best;
}

fs::path
user_config_file(const EnvLookup& env)
{
  if (auto explicit_file = env("KILN_CONFIG"); explicit_file && !explicit_file->empty()) {
    return fs::path(*explicit_file);
  }
  auto config_home = env("XDG_CONFIG_HOME");
  fs::path base =
    config_home && !config_home->empty() ? fs::path(*config_home) : home_dir(env) / ".config";
  return base / "kiln" / "config.yaml";
}

std::optional<fs::path>
default_config_file(const EnvLookup& env)
{
  fs::path file = user_config_file(env);
  if (auto explicit_file = env("KILN_CONFIG"); explicit_file && !explicit_file->empty()) {
    return file;
  }
  std::error_code ec;
  if (fs::exists(file, ec)) {
    return file;
  }
  return std::nullopt;
}

Settings
load_settings(const std::map<std::string, std::string>& flags,
              const std::optional<fs::path>& config_file, const EnvLookup& env)
{
  Settings settings;
  settings.store = default_store(env);
  settings.cache_dir = default_cache_dir(env);
  unsigned cores = std::thread::hardware_concurrency();
  settings.jobs = cores > 0 ? cores : 1;
  for (const auto& info : Settings::table()) {
    settings.origins[info.key] = "default";
  }

  auto file = config_file ? config_file : default_config_file(env);
  if (file) {
    std::error_code ec;
    if (!fs::exists(*file, ec)) {
      throw UsageError("config file '" + file->string() + "' does not exist");
    }
    YAML::Node root = parse_config(read_file(*file), *file);
    if (root && !root.IsNull()) {
      for (const auto& entry : root) {
        std::string key = entry.first.as<std::string>();
        std::string origin = file->string() + ":" + std::to_string(entry.first.Mark().line + 1);
        const YAML::Node& value = entry.second;
        if (key == "cache-tokens") {
          if (!value.IsMap()) {
            throw UsageError(origin + ": 'cache-tokens' must map cache URLs to tokens");
          }
          for (const auto& item : value) {
            settings.cache_tokens[item.first.as<std::string>()] = item.second.as<std::string>();
          }
          settings.origins[key] = origin;
          continue;
        }
        std::string text;
        if (value.IsSequence()) {
          for (const auto& item : value) {
            if (!item.IsScalar()) {
              throw UsageError(origin + ": '" + key + "' must be a list of strings");
            }
            text += (text.empty() ? "" : " ") + item.as<std::string>();
          }
        } else if (value.IsScalar()) {
          text = value.as<std::string>();
        } else if (!value.IsNull()) {
          throw UsageError(origin + ": '" + key + "' must be a string, number or list");
        }
        settings.set(key, text, origin);
      }
    }
  }

  for (const auto& info : Settings::table()) {
    if (auto value = env(info.env)) {
      settings.set(info.key, *value, info.env);
    }
  }
  for (const auto& [key, value] : flags) {
    settings.set(key, value, "--" + key);
  }
  return settings;
}

} // namespace kiln
