#include <kiln/cargo/build_config.hpp>

#include <algorithm>
#include <set>
#include <sstream>

namespace kiln::cargo {

namespace fs = std::filesystem;

// --- cfg expressions ---

CfgSet
parse_cfg_lines(const std::string& text)
{
  CfgSet cfg;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) {
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string::npos) {
      cfg.emplace(line, "");
    } else {
      std::string value = line.substr(eq + 1);
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
        value = value.substr(1, value.size() - 2);
      }
      cfg.emplace(line.substr(0, eq), value);
    }
  }
  return cfg;
}

namespace {

class CfgParser
{
public:
  CfgParser(const std::string& text, const CfgSet& cfg) : m_text(text), m_cfg(cfg) {}

  bool
  parse_expr()
  {
    skip_space();
    std::string ident = identifier();
    skip_space();
    if (peek() == '(') {
      ++m_pos;
      std::vector<bool> values;
      skip_space();
      while (peek() != ')') {
        values.push_back(parse_expr());
        skip_space();
        if (peek() == ',') {
          ++m_pos;
          skip_space();
        } else if (peek() != ')') {
          fail("expected ',' or ')'");
        }
      }
      ++m_pos;
      if (ident == "all") {
        return std::all_of(values.begin(), values.end(), [](bool b) { return b; });
      }
      if (ident == "any") {
        return std::any_of(values.begin(), values.end(), [](bool b) { return b; });
      }
      if (ident == "not") {
        if (values.size() != 1) {
          fail("not() takes one argument");
        }
        return !values[0];
      }
      fail("unknown operator '" + ident + "'");
    }
    if (peek() == '=') {
      ++m_pos;
      skip_space();
      std::string value = quoted();
      auto [begin, end] = m_cfg.equal_range(ident);
      return std::any_of(begin, end, [&](const auto& kv) { return kv.second == value; });
    }
    return m_cfg.count(ident) > 0;
  }

  void
  expect_end()
  {
    skip_space();
    if (m_pos != m_text.size()) {
      fail("unexpected text");
    }
  }

private:
  char
  peek() const
  {
    return m_pos < m_text.size() ? m_text[m_pos] : '\0';
  }

  void
  skip_space()
  {
    while (m_pos < m_text.size() && std::isspace(static_cast<unsigned char>(m_text[m_pos]))) {
      ++m_pos;
    }
  }

  std::string
  identifier()
  {
    size_t start = m_pos;
    while (m_pos < m_text.size() &&
           (std::isalnum(static_cast<unsigned char>(m_text[m_pos])) || m_text[m_pos] == '_')) {
      ++m_pos;
    }
    if (start == m_pos) {
      fail("expected a name");
    }
    return m_text.substr(start, m_pos - start);
  }

  std::string
  quoted()
  {
    if (peek() != '"') {
      fail("expected a quoted value");
    }
    size_t end = m_text.find('"', m_pos + 1);
    if (end == std::string::npos) {
      fail("unterminated string");
    }
    std::string value = m_text.substr(m_pos + 1, end - m_pos - 1);
    m_pos = end + 1;
    return value;
  }

  [[noreturn]] void
  fail(const std::string& what) const
  {
    throw CargoError("cfg expression '" + m_text + "' at offset " + std::to_string(m_pos) +
                     ": " + what);
  }

  const std::string& m_text;
  const CfgSet& m_cfg;
  size_t m_pos = 0;
};

} // namespace

bool
platform_matches(const std::string& platform, const std::string& triple, const CfgSet& cfg)
{
  if (platform.starts_with("cfg(") && platform.ends_with(")")) {
    std::string inner = platform.substr(4, platform.size() - 5);
    CfgParser parser(inner, cfg);
    bool result = parser.parse_expr();
    parser.expect_end();
    return result;
  }
  return platform == triple;
}

// --- what kiln honours, and what it refuses ---

namespace {

using Key = std::vector<std::string>;

std::string
where_of(const CargoConfig& config, const Key& key)
{
  auto source = config.source_of(key);
  return source ? source->where : "cargo's configuration";
}

// Keys of target.<triple> tables kiln knows; anything else there is a
// build-script override (`target.<triple>.<links>`).
const std::set<std::string> k_target_keys = {"linker", "runner", "rustflags", "rustdocflags", "ar"};

// Wrappers that only cache rustc's work: running without them builds the same.
bool
caching_wrapper(const std::string& program)
{
  std::string name = fs::path(program).filename().string();
  return name == "sccache" || name == "cachepot";
}

void
refuse_unstable(const CargoConfig& config)
{
  for (const char* table : {"unstable", "host"}) {
    if (const ConfigValue* v = config.find({table}); v && (!v->is_table() || !v->table.empty())) {
      const std::string what = v->is_table() ? v->table.begin()->first : "";
      throw CargoError(std::string("`") + table + (what.empty() ? "" : "." + what) + "` (" +
                       v->source.where + "): kiln honours stable cargo only; remove it to build "
                       "with kiln (cargo itself ignores it without -Z)");
    }
  }
  if (const ConfigValue* v = config.find({"target-applies-to-host"})) {
    throw CargoError("`target-applies-to-host` (" + v->source.where +
                     ") needs -Z target-applies-to-host, which kiln does not honour");
  }
  for (const auto& [name, value] : config.environment()) {
    if (name.starts_with("CARGO_UNSTABLE_")) {
      throw CargoError("environment variable " + name + ": kiln honours stable cargo only");
    }
  }
  if (config.environment().count("RUSTC_BOOTSTRAP")) {
    throw CargoError("environment variable RUSTC_BOOTSTRAP is set: kiln builds with a stable "
                     "rustc, which would then behave differently from yours; unset it");
  }
}

void
refuse_wrappers(const CargoConfig& config, std::vector<std::string>& warnings)
{
  for (const auto& [key, env] :
       std::vector<std::pair<Key, const char*>>{{{"build", "rustc-wrapper"}, "RUSTC_WRAPPER"},
                                                {{"build", "rustc-workspace-wrapper"},
                                                 "RUSTC_WORKSPACE_WRAPPER"}}) {
    auto it = config.environment().find(env);
    std::optional<std::string> value =
      it != config.environment().end() ? std::optional(it->second) : config.get_string(key);
    std::string where = it != config.environment().end() ? std::string("environment variable ") + env
                                                         : where_of(config, key);
    if (!value || value->empty()) {
      continue;
    }
    if (!caching_wrapper(*value)) {
      throw CargoError("`" + CargoConfig::dotted(key) + "` = '" + *value + "' (" + where +
                       "): kiln runs rustc itself and cannot run it through a wrapper that may "
                       "change what is built; unset it to build with kiln");
    }
    warnings.push_back("ignoring " + CargoConfig::dotted(key) + " = '" + *value + "' (" + where +
                       "): kiln caches rustc's work itself");
  }
}

void
refuse_links_overrides(const CargoConfig& config)
{
  const ConfigValue* target = config.find({"target"});
  if (!target || !target->is_table()) {
    return;
  }
  for (const auto& [triple, table] : target->table) {
    if (triple.starts_with("cfg(") || !table.is_table()) {
      continue;
    }
    for (const auto& [key, value] : table.table) {
      if (!k_target_keys.count(key)) {
        throw CargoError("`target." + triple + "." + key + "` (" + value.source.where +
                         "): build-script overrides are not honoured by kiln; remove it to build "
                         "with kiln");
      }
    }
  }
}

std::map<std::string, EnvEntry>
read_env_table(const CargoConfig& config)
{
  std::map<std::string, EnvEntry> entries;
  const ConfigValue* env = config.find({"env"});
  if (!env) {
    return entries;
  }
  if (!env->is_table()) {
    throw CargoError("`env` (" + env->source.where + ") must be a table");
  }
  for (const auto& [name, value] : env->table) {
    if (name == "CARGO_HOME" || name == "RUSTUP_HOME" || name == "RUSTUP_TOOLCHAIN") {
      throw CargoError("`env." + name + "` (" + value.source.where + ") cannot be set in [env]");
    }
    EnvEntry entry;
    entry.where = value.source.where;
    bool relative = false;
    if (value.is_table()) {
      auto field = [&](const char* f) -> const ConfigValue* {
        auto it = value.table.find(f);
        return it == value.table.end() ? nullptr : &it->second;
      };
      const ConfigValue* v = field("value");
      if (!v || v->is_table() || v->is_array()) {
        throw CargoError("`env." + name + "` (" + value.source.where + ") needs a string `value`");
      }
      entry.value = v->scalar;
      entry.force = field("force") && field("force")->scalar == "true";
      relative = field("relative") && field("relative")->scalar == "true";
      entry.where = v->source.where;
      if (relative) {
        entry.value = (v->source.root / entry.value).string();
      }
    } else if (value.is_array()) {
      throw CargoError("`env." + name + "` (" + value.source.where + ") must be a string or a table");
    } else {
      entry.value = value.scalar;
    }
    entries.emplace(name, std::move(entry));
  }
  return entries;
}

} // namespace

BuildConfig::BuildConfig(const CargoConfig& config, std::vector<std::string>& warnings)
  : m_config(config)
{
  refuse_unstable(config);
  refuse_wrappers(config, warnings);
  refuse_links_overrides(config);
  m_env = read_env_table(config);
  if (const ConfigValue* target = config.find({"build", "target"}); target && target->is_array()) {
    if (target->items.size() != 1) {
      throw CargoError("`build.target` (" + target->source.where +
                       ") names several targets; kiln builds one target at a time");
    }
    m_build_target = target->items.front().first;
  } else {
    m_build_target = config.get_string({"build", "target"});
  }
  if (m_build_target && m_build_target->ends_with(".json")) {
    throw CargoError("`build.target` = '" + *m_build_target + "' (" +
                     where_of(config, {"build", "target"}) +
                     "): custom target specifications are not supported by kiln");
  }
  m_jobs = config.get_integer({"build", "jobs"});
  m_offline = config.get_bool({"net", "offline"}).value_or(false);
  m_rustc = config.get_string({"build", "rustc"});
  m_rustdoc = config.get_string({"build", "rustdoc"});
  // CARGO_INCREMENTAL and build.incremental reach kiln through cargo's plan
  // (each unit's profile says whether cargo would compile it incrementally).
  if (config.find({"build", "dep-info-basedir"})) {
    warnings.push_back("ignoring build.dep-info-basedir (" +
                       where_of(config, {"build", "dep-info-basedir"}) +
                       "): kiln writes no dep-info files");
  }
}

std::optional<std::vector<std::string>>
BuildConfig::target_flags(const char* key, const std::string& triple, const CfgSet* cfg) const
{
  std::vector<std::string> flags;
  if (auto list = m_config.get_list({"target", triple, key})) {
    flags = *list;
  }
  const ConfigValue* target = m_config.find({"target"});
  if (cfg && target && target->is_table()) {
    // std::map: the cfg tables in lexicographic order of their keys, as cargo.
    for (const auto& [name, table] : target->table) {
      if (name.starts_with("cfg(") && table.is_table() && table.table.count(key) &&
          platform_matches(name, triple, *cfg)) {
        if (auto list = m_config.get_list({"target", name, key})) {
          flags.insert(flags.end(), list->begin(), list->end());
        }
      }
    }
  }
  return flags.empty() ? std::nullopt : std::optional(flags);
}

std::vector<std::string>
BuildConfig::flags(const char* key, const char* env, const std::string& triple, bool host_kind,
                   bool cross, const std::function<const CfgSet&(const std::vector<std::string>&)>& cfg) const
{
  // With --target (or build.target), host units get no flags on stable.
  if (host_kind && cross) {
    return {};
  }
  const auto& environment = m_config.environment();
  if (auto it = environment.find(std::string("CARGO_ENCODED_") + env); it != environment.end()) {
    std::vector<std::string> out;
    if (!it->second.empty()) {
      std::string current;
      for (char c : it->second + "\x1f") {
        if (c == '\x1f') {
          out.push_back(current);
          current.clear();
        } else {
          current += c;
        }
      }
    }
    return out;
  }
  if (auto it = environment.find(env); it != environment.end()) {
    std::vector<std::string> out;
    std::istringstream words(it->second);
    for (std::string w; std::getline(words, w, ' ');) {
      if (!w.empty()) {
        out.push_back(w);
      }
    }
    return out;
  }
  auto from_config = [&](const std::vector<std::string>& current) {
    bool cfg_tables = std::string(key) == "rustflags" || std::string(key) == "rustdocflags";
    if (auto t = target_flags(key, triple, cfg_tables ? &cfg(current) : nullptr)) {
      return *t;
    }
    return m_config.get_list({"build", key}).value_or(std::vector<std::string>{});
  };
  // The cfg tables that apply depend on the flags, and the flags on the
  // tables: cargo settles it in at most two rounds.
  std::vector<std::string> flags = from_config({});
  std::vector<std::string> again = from_config(flags);
  return again;
}

std::vector<std::string>
BuildConfig::rustflags(const std::string& triple, bool host_kind, bool cross,
                       const std::function<const CfgSet&(const std::vector<std::string>&)>& cfg) const
{
  return flags("rustflags", "RUSTFLAGS", triple, host_kind, cross, cfg);
}

std::vector<std::string>
BuildConfig::rustdocflags(const std::string& triple, bool host_kind, bool cross,
                          const std::function<const CfgSet&(const std::vector<std::string>&)>& cfg) const
{
  return flags("rustdocflags", "RUSTDOCFLAGS", triple, host_kind, cross, cfg);
}

namespace {

// A program named in the configuration: a path relative to the config's
// folder when it holds a '/', else a name looked up on PATH when run.
std::string
resolve_program(const std::string& value, const ConfigSource& source)
{
  return value.find('/') != std::string::npos ? (source.root / value).lexically_normal().string()
                                              : value;
}

} // namespace

std::optional<std::string>
BuildConfig::cfg_table(const char* key, const std::string& triple, const CfgSet& cfg) const
{
  const ConfigValue* target = m_config.find({"target"});
  if (!target || !target->is_table()) {
    return std::nullopt;
  }
  std::optional<std::string> found_key;
  for (const auto& [name, table] : target->table) {
    if (name.starts_with("cfg(") && table.is_table() && table.table.count(key) &&
        platform_matches(name, triple, cfg)) {
      if (found_key) {
        throw CargoError(std::string("several matching instances of `target.'cfg(..)'.") + key +
                         "`: `" + *found_key + "` and `" + name + "`");
      }
      found_key = name;
    }
  }
  return found_key;
}

std::optional<fs::path>
BuildConfig::linker(const std::string& triple, const CfgSet& cfg) const
{
  Key key = {"target", triple, "linker"};
  if (!m_config.get_string(key)) {
    auto table = cfg_table("linker", triple, cfg);
    if (!table) {
      return std::nullopt;
    }
    key = {"target", *table, "linker"};
  }
  return resolve_program(*m_config.get_string(key), *m_config.source_of(key));
}

std::optional<std::vector<std::string>>
BuildConfig::runner(const std::string& triple, const CfgSet& cfg) const
{
  Key key = {"target", triple, "runner"};
  if (!m_config.get_list(key)) {
    auto table = cfg_table("runner", triple, cfg);
    if (!table) {
      return std::nullopt;
    }
    key = {"target", *table, "runner"};
  }
  auto list = m_config.get_list(key);
  if (!list || list->empty()) {
    return std::nullopt;
  }
  (*list)[0] = resolve_program((*list)[0], *m_config.source_of(key));
  return list;
}

std::map<std::string, std::string>
BuildConfig::env_for_process(const std::map<std::string, std::string>& cargo_sets) const
{
  std::map<std::string, std::string> out;
  for (const auto& [name, entry] : m_env) {
    if (cargo_sets.count(name)) {
      continue;
    }
    auto caller = m_config.environment().find(name);
    if (caller != m_config.environment().end() && !entry.force) {
      out[name] = caller->second; // the caller's own value wins, as under cargo
      continue;
    }
    out[name] = entry.value;
  }
  return out;
}

} // namespace kiln::cargo
