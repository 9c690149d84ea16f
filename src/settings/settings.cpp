#include <kiln/settings/settings.hpp>
#include <kiln/util/error.hpp>

#include <yaml-cpp/yaml.h>

#include <unistd.h>

#include <cstdlib>
#include <thread>

namespace kiln {

namespace fs = std::filesystem;

namespace {

std::vector<std::string>
split_spaces(const std::string& text)
{
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t start = text.find_first_not_of(" \t\n", pos);
    if (start == std::string::npos) {
      break;
    }
    size_t end = text.find_first_of(" \t\n", start);
    if (end == std::string::npos) {
      end = text.size();
    }
    out.push_back(text.substr(start, end - start));
    pos = end;
  }
  return out;
}

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

} // namespace

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
    {"substituters", "KILN_SUBSTITUTERS", "binary caches to substitute from (space-separated)"},
    {"trusted-public-keys", "KILN_TRUSTED_PUBLIC_KEYS", "keys whose signatures are trusted"},
    {"require-sigs", "KILN_REQUIRE_SIGS", "distinct trusted signatures a substitute needs"},
    {"secret-key-file", "KILN_SECRET_KEY_FILE", "key to sign uploaded paths with"},
    {"token", "KILN_TOKEN", "bearer token for binary caches"},
    {"jobs", "KILN_JOBS", "builds to run at once (default: number of cores)"},
    {"connections", "KILN_CONNECTIONS", "parallel requests to binary caches (default 16)"},
    {"negative-ttl", "KILN_NEGATIVE_TTL",
     "seconds to remember that a cache lacks a path (default 300; 0: never)"},
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
  } else if (key == "substituters") {
    substituters = split_spaces(value);
  } else if (key == "trusted-public-keys") {
    trusted_public_keys = split_spaces(value);
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

std::optional<fs::path>
default_config_file(const EnvLookup& env)
{
  if (auto explicit_file = env("KILN_CONFIG"); explicit_file && !explicit_file->empty()) {
    return fs::path(*explicit_file);
  }
  auto config_home = env("XDG_CONFIG_HOME");
  fs::path base =
    config_home && !config_home->empty() ? fs::path(*config_home) : home_dir(env) / ".config";
  fs::path file = base / "kiln" / "config.yaml";
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
    YAML::Node root;
    try {
      root = YAML::LoadFile(file->string());
    } catch (const YAML::Exception& e) {
      throw UsageError(file->string() + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
    }
    if (root && !root.IsNull()) {
      if (!root.IsMap()) {
        throw UsageError(file->string() + ": the config file must be a mapping of settings");
      }
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
