// The YAML server config: records (not free-form dictionaries), every key
// checked, every error naming file:line.
#include <kiln/server/server.hpp>
#include <kiln/store/store_path.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/strings.hpp>

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <set>

namespace kiln {

namespace fs = std::filesystem;

std::pair<std::string, int>
parse_listen_address(std::string_view text)
{
  std::string host;
  std::string_view port_text;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      throw UsageError("listen address '" + std::string(text) + "' is not [ADDR]:PORT");
    }
    host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) {
      throw UsageError("listen address '" + std::string(text) +
                       "' is not ADDR:PORT (write IPv6 addresses as [ADDR]:PORT)");
    }
    host = std::string(text.substr(0, colon));
    port_text = text.substr(colon + 1);
  }
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (host.empty() || port_text.empty() || ec != std::errc() ||
      end != port_text.data() + port_text.size() || port < 0 || port > 65535) {
    throw UsageError("listen address '" + std::string(text) + "' needs a host and a port 0-65535");
  }
  return {host, port};
}

namespace {

class ConfigReader
{
public:
  explicit ConfigReader(fs::path file) : m_file(std::move(file))
  {
  }

  [[noreturn]] void
  fail(const YAML::Node& node, const std::string& message) const
  {
    throw UsageError(m_file.string() + ":" + std::to_string(node.Mark().line + 1) + ": " + message);
  }

  // Reject keys other than `allowed`.
  void
  check_keys(const YAML::Node& map, const std::set<std::string>& allowed,
             const std::string& what) const
  {
    for (const auto& entry : map) {
      std::string key = string(entry.first, "a key");
      if (!allowed.count(key)) {
        std::string list;
        for (const auto& a : allowed) {
          list += (list.empty() ? "" : ", ") + a;
        }
        fail(entry.first, "unknown key '" + key + "' in " + what + " (known: " + list + ")");
      }
    }
  }

  std::string
  string(const YAML::Node& node, const std::string& what) const
  {
    if (!node.IsScalar()) {
      fail(node, what + " must be a string");
    }
    return node.as<std::string>();
  }

  bool
  boolean(const YAML::Node& node, const std::string& what) const
  {
    try {
      if (node.IsScalar()) {
        return node.as<bool>();
      }
    } catch (const YAML::Exception&) {
    }
    fail(node, what + " must be true or false");
  }

  long long
  integer(const YAML::Node& node, const std::string& what, long long min, long long max) const
  {
    long long value = 0;
    try {
      if (!node.IsScalar()) {
        throw YAML::Exception(node.Mark(), "not a scalar");
      }
      value = node.as<long long>();
    } catch (const YAML::Exception&) {
      fail(node, what + " must be a whole number");
    }
    if (value < min || value > max) {
      fail(node, what + " must be between " + std::to_string(min) + " and " + std::to_string(max));
    }
    return value;
  }

  std::vector<std::string>
  strings(const YAML::Node& node, const std::string& what) const
  {
    std::vector<std::string> out;
    if (node.IsScalar()) {
      out.push_back(node.as<std::string>());
      return out;
    }
    if (!node.IsSequence()) {
      fail(node, what + " must be a list of strings");
    }
    for (const auto& item : node) {
      out.push_back(string(item, what + " entries"));
    }
    return out;
  }

  fs::path
  path(const YAML::Node& node, const std::string& what) const
  {
    fs::path p = string(node, what);
    if (p.empty()) {
      fail(node, what + " is empty");
    }
    return p.is_absolute() ? p : (m_file.parent_path() / p).lexically_normal();
  }

  const fs::path&
  file() const
  {
    return m_file;
  }

private:
  fs::path m_file;
};

bool
valid_cache_name(const std::string& name)
{
  static const std::set<std::string> reserved = {"nar", "metrics", "nix-cache-info"};
  if (name.empty() || name.size() > 64 || reserved.count(name) || name.ends_with(".narinfo") ||
      !std::isalnum(static_cast<unsigned char>(name[0]))) {
    return false;
  }
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

// The settings every cache inherits unless it sets its own.
struct CacheDefaults
{
  std::string store_dir;
  int priority = 40;
};

std::vector<ServedCache>
read_caches(const ConfigReader& r, const YAML::Node& caches, const CacheDefaults& defaults)
{
  if (!caches.IsMap()) {
    r.fail(caches, "caches must map cache names to their settings");
  }
  std::vector<ServedCache> out;
  std::set<std::string> names;
  for (const auto& entry : caches) {
    ServedCache cache;
    cache.name = r.string(entry.first, "a cache name");
    if (!valid_cache_name(cache.name)) {
      r.fail(entry.first, "'" + cache.name +
                            "' is not a valid cache name (letters, digits, '-', '_', '.'; "
                            "not nar, metrics, nix-cache-info)");
    }
    if (!names.insert(cache.name).second) {
      r.fail(entry.first, "cache '" + cache.name + "' is defined twice");
    }
    const YAML::Node& c = entry.second;
    if (!c.IsMap()) {
      r.fail(entry.first, "cache '" + cache.name + "' must be a mapping with at least 'path'");
    }
    std::string what = "cache '" + cache.name + "'";
    r.check_keys(c, {"path", "private", "secret-key-file", "trusted-keys", "store-dir", "priority"},
                 what);
    if (!c["path"]) {
      r.fail(entry.first, what + " has no 'path'");
    }
    cache.path = r.path(c["path"], what + ": path");
    cache.store_dir = defaults.store_dir;
    cache.priority = defaults.priority;
    if (auto n = c["private"]) {
      cache.is_private = r.boolean(n, what + ": private");
    }
    if (auto n = c["secret-key-file"]) {
      cache.secret_key_file = r.path(n, what + ": secret-key-file").string();
    }
    if (auto n = c["trusted-keys"]) {
      cache.trusted_keys = r.strings(n, what + ": trusted-keys");
    }
    if (auto n = c["store-dir"]) {
      cache.store_dir = r.string(n, what + ": store-dir");
      try {
        StoreDir check(cache.store_dir);
      } catch (const Error& e) {
        r.fail(n, what + ": store-dir: " + e.what());
      }
    }
    if (auto n = c["priority"]) {
      cache.priority = static_cast<int>(r.integer(n, what + ": priority", -1000000, 1000000));
    }
    out.push_back(std::move(cache));
  }
  return out;
}

std::vector<AccessToken>
read_tokens(const ConfigReader& r, const YAML::Node& tokens, const std::vector<ServedCache>& caches)
{
  if (!tokens.IsSequence()) {
    r.fail(tokens, "tokens must be a list of {token, caches, scopes}");
  }
  std::set<std::string> names;
  for (const auto& cache : caches) {
    names.insert(cache.name);
  }
  std::vector<AccessToken> out;
  std::set<std::string> secrets;
  size_t index = 0;
  for (const auto& t : tokens) {
    std::string what = "tokens[" + std::to_string(index++) + "]";
    if (!t.IsMap()) {
      r.fail(t, what + " must be a mapping");
    }
    r.check_keys(t, {"token", "token-file", "name", "caches", "scopes"}, what);
    AccessToken token;
    if (t["token"] && t["token-file"]) {
      r.fail(t, what + " has both 'token' and 'token-file'");
    }
    if (auto n = t["token"]) {
      token.secret = r.string(n, what + ": token");
    } else if (auto f = t["token-file"]) {
      fs::path p = r.path(f, what + ": token-file");
      try {
        token.secret = std::string(trim(read_file(p)));
      } catch (const Error& e) {
        r.fail(f, what + ": token-file: " + e.what());
      }
    } else {
      r.fail(t, what + " needs 'token' or 'token-file'");
    }
    if (token.secret.empty()) {
      r.fail(t, what + ": the token is empty");
    }
    for (char c : token.secret) {
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
        r.fail(t, what + ": the token contains spaces or control characters");
      }
    }
    if (!secrets.insert(token.secret).second) {
      r.fail(t, what + ": the same token is listed twice");
    }
    token.label = what;
    if (auto n = t["name"]) {
      token.label = r.string(n, what + ": name");
    }
    if (!t["caches"]) {
      r.fail(t, what + " needs 'caches' (cache names, or \"*\")");
    }
    token.caches = r.strings(t["caches"], what + ": caches");
    for (const auto& name : token.caches) {
      if (name != "*" && name != "/" && !names.count(name)) {
        r.fail(t["caches"], what + ": there is no cache named '" + name + "'");
      }
    }
    if (!t["scopes"]) {
      r.fail(t, what + " needs 'scopes' (read, write)");
    }
    for (const auto& scope : r.strings(t["scopes"], what + ": scopes")) {
      if (scope == "read") {
        token.can_read = true;
      } else if (scope == "write") {
        token.can_write = true;
        token.can_read = true;
      } else {
        r.fail(t["scopes"], what + ": unknown scope '" + scope + "' (read, write)");
      }
    }
    out.push_back(std::move(token));
  }
  return out;
}

void
read_tls(const ConfigReader& r, const YAML::Node& tls, ServerConfig& config)
{
  if (!tls.IsMap()) {
    r.fail(tls, "tls must be a mapping with 'cert' and 'key'");
  }
  r.check_keys(tls, {"cert", "key"}, "tls");
  if (!tls["cert"] || !tls["key"]) {
    r.fail(tls, "tls needs both 'cert' and 'key'");
  }
  config.tls_cert = r.path(tls["cert"], "tls.cert").string();
  config.tls_key = r.path(tls["key"], "tls.key").string();
}

YAML::Node
load_yaml(const fs::path& file)
{
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    throw UsageError("server config '" + file.string() + "' does not exist");
  }
  try {
    return YAML::LoadFile(file.string());
  } catch (const YAML::Exception& e) {
    throw UsageError(file.string() + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

} // namespace

ServerConfig
load_server_config(const fs::path& file, const std::string& store_dir)
{
  ConfigReader r(file);
  YAML::Node root = load_yaml(file);
  ServerConfig config;
  config.store_dir = store_dir;
  if (!root || root.IsNull()) {
    return config;
  }
  if (!root.IsMap()) {
    r.fail(root, "the server config must be a mapping");
  }
  r.check_keys(root,
               {"listen", "store-dir", "max-upload-size", "threads", "access-log", "metrics",
                "shutdown-grace", "priority", "tls", "caches", "tokens"},
               "the server config");

  CacheDefaults defaults{store_dir};
  if (auto n = root["store-dir"]) {
    defaults.store_dir = r.string(n, "store-dir");
    try {
      StoreDir check(defaults.store_dir);
    } catch (const Error& e) {
      r.fail(n, std::string("store-dir: ") + e.what());
    }
  }
  if (auto n = root["priority"]) {
    defaults.priority = static_cast<int>(r.integer(n, "priority", -1000000, 1000000));
  }
  config.store_dir = defaults.store_dir;
  config.priority = defaults.priority;
  if (auto n = root["listen"]) {
    try {
      std::tie(config.host, config.port) = parse_listen_address(r.string(n, "listen"));
    } catch (const UsageError& e) {
      r.fail(n, e.what());
    }
  }
  if (auto n = root["max-upload-size"]) {
    try {
      config.max_upload_size = parse_size(r.string(n, "max-upload-size"));
    } catch (const UsageError& e) {
      r.fail(n, std::string("max-upload-size: ") + e.what());
    }
    if (config.max_upload_size == 0) {
      r.fail(n, "max-upload-size must not be 0");
    }
  }
  if (auto n = root["threads"]) {
    config.threads = static_cast<unsigned>(r.integer(n, "threads", 1, 1024));
  }
  if (auto n = root["access-log"]) {
    config.access_log = r.boolean(n, "access-log");
  }
  if (auto n = root["metrics"]) {
    config.metrics = r.boolean(n, "metrics");
  }
  if (auto n = root["shutdown-grace"]) {
    config.shutdown_grace = std::chrono::seconds(r.integer(n, "shutdown-grace", 0, 86400));
  }
  if (auto tls = root["tls"]) {
    read_tls(r, tls, config);
  }

  if (auto caches = root["caches"]) {
    config.caches = read_caches(r, caches, defaults);
  }
  if (auto tokens = root["tokens"]) {
    config.tokens = read_tokens(r, tokens, config.caches);
  }
  return config;
}

} // namespace kiln
