// kiln's settings: each has a command-line flag, a KILN_* environment
// variable and a key in the YAML config file. Flags win over the
// environment, which wins over the file, which wins over the defaults.
//
// Config file: --config FILE, else $KILN_CONFIG, else
// $XDG_CONFIG_HOME/kiln/config.yaml (~/.config/kiln/config.yaml) if present.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kiln {

struct SettingInfo
{
  const char* key;   // config-file key, and the flag is --<key>
  const char* env;   // environment variable
  const char* help;
};

struct Settings
{
  std::filesystem::path store;             // where the store lives on disk
  // What kiln learned of this machine's files, by their metadata: toolchain
  // and source digests, cargo's answers. Shared by every store of the user.
  std::filesystem::path cache_dir;
  std::string store_dir = "/kiln/store";   // the logical store directory
  std::vector<std::string> substituters;
  std::vector<std::string> trusted_public_keys;
  unsigned require_sigs = 1;
  std::string secret_key_file;
  std::string token;
  unsigned jobs = 1;
  unsigned connections = 16;             // parallel requests to binary caches
  unsigned negative_ttl = 300;           // seconds a "not in this cache" answer is remembered
  unsigned lock_timeout = 0;             // seconds to wait for a store lock (0: no limit)
  std::optional<uint64_t> max_store_size;  // the size cap applied after builds
  // Bearer tokens per cache URL prefix (config file key `cache-tokens`).
  std::map<std::string, std::string> cache_tokens;

  // The token for `cache_url`: its `cache-tokens` entry, else `token`.
  std::string token_for(const std::string& cache_url) const;

  // Where each setting's value came from ("default", "KILN_STORE", a file:line, "--store").
  std::map<std::string, std::string> origins;

  // Every setting kiln knows.
  static const std::vector<SettingInfo>& table();

  // Set `key` from text, validating it; errors name `origin`.
  void set(const std::string& key, const std::string& value, const std::string& origin);
};

using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

// The process environment.
std::optional<std::string> get_env(const std::string& name);

// Load settings: defaults, then the config file, then the environment, then
// `flags` (key → value as given on the command line). `config_file` is an
// explicit --config (which must exist).
Settings load_settings(const std::map<std::string, std::string>& flags,
                       const std::optional<std::filesystem::path>& config_file,
                       const EnvLookup& env = get_env);

// The config file that would be read, if any.
std::optional<std::filesystem::path>
default_config_file(const EnvLookup& env = get_env);

// The user's config file, whether it exists or not: $KILN_CONFIG, else
// $XDG_CONFIG_HOME/kiln/config.yaml (~/.config/kiln/config.yaml).
std::filesystem::path user_config_file(const EnvLookup& env = get_env);

struct ConfigAddition
{
  std::string key;     // a list setting: substituters, trusted-public-keys
  std::string value;
  bool added = false;  // set by add_to_config: false if it was there already
};

// Add values to list settings in the YAML config `file`, creating the file
// (and its folder) if missing, in one atomic write. Everything else in the
// file stays as it was, comments included, when the list is absent or a
// block list ("- item" lines); a list written another way (flow style, one
// space-separated string) is rewritten, and then the file's comments are
// lost: the return value says so. Values already present are left alone.
// Returns true if the whole file had to be rewritten.
bool add_to_config(const std::filesystem::path& file, std::vector<ConfigAddition>& additions);

} // namespace kiln
