#include <kiln/cargo/workspace.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/util/io.hpp>

#include <kiln/util/process.hpp>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <sstream>

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

bool
CargoTarget::is_proc_macro() const
{
  return has_kind("proc-macro");
}

bool
CargoTarget::is_bin() const
{
  return has_kind("bin");
}

bool
CargoTarget::is_custom_build() const
{
  return has_kind("custom-build");
}

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

const CargoPackage&
Workspace::package(const std::string& id) const
{
  auto it = packages.find(id);
  if (it == packages.end()) {
    throw CargoError("cargo metadata names package '" + id + "' but does not describe it");
  }
  return it->second;
}

const CargoPackage&
Workspace::find_package(const std::string& spec) const
{
  auto at = spec.find('@');
  std::string name = spec.substr(0, at);
  std::optional<std::string> version;
  if (at != std::string::npos) {
    version = spec.substr(at + 1);
  }
  const CargoPackage* found = nullptr;
  for (const auto& id : members) {
    const auto& pkg = package(id);
    if (pkg.name == name && (!version || pkg.version == *version)) {
      found = &pkg;
    }
  }
  if (!found) {
    std::string names;
    for (const auto& id : members) {
      names += (names.empty() ? "" : ", ") + package(id).name;
    }
    throw UsageError("package '" + spec + "' is not a member of the workspace (members: " +
                     names + ")");
  }
  return *found;
}

// --- running programs ---

std::string
run_capture(const std::vector<std::string>& argv, const std::optional<fs::path>& cwd,
            const std::map<std::string, std::string>& env)
{
  ProcessOptions options;
  options.cwd = cwd;
  options.env = env;
  ProcessResult result = run_process(argv, options);
  if (!result.ok()) {
    throw CargoError(describe_failure(argv, result));
  }
  return result.out;
}

// --- cargo metadata ---

namespace {

std::string
env_home()
{
  const char* home = std::getenv("HOME");
  return home ? home : "/";
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
  if (it == j.end() || !it->is_string()) {
    return std::nullopt;
  }
  return it->get<std::string>();
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
    dep.uses_default_features = d.value("uses_default_features", true);
    dep.features = strings(d, "features");
    pkg.dependencies.push_back(std::move(dep));
  }
  for (const auto& t : p.at("targets")) {
    CargoTarget target;
    target.name = t.at("name").get<std::string>();
    target.kind = strings(t, "kind");
    target.crate_types = strings(t, "crate_types");
    target.src_path = t.at("src_path").get<std::string>();
    target.edition = string_or(t, "edition", pkg.edition);
    target.required_features = strings(t, "required-features");
    pkg.targets.push_back(std::move(target));
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

std::optional<std::string>
toml_string_or_number(const toml::node* node)
{
  if (!node) {
    return std::nullopt;
  }
  if (node->is_string()) {
    return *node->value<std::string>();
  }
  if (node->is_boolean()) {
    return *node->value<bool>() ? "true" : "false";
  }
  if (node->is_integer()) {
    return std::to_string(*node->value<int64_t>());
  }
  return std::nullopt;
}

ProfileToml
parse_profile(const toml::table& t, const std::string& where)
{
  ProfileToml p;
  p.opt_level = toml_string_or_number(t.get("opt-level"));
  if (auto debug = toml_string_or_number(t.get("debug"))) {
    // true = 2 (full), false = 0; "full"/"limited"/"none" are the new names.
    const std::string& d = *debug;
    p.debug = d == "true" || d == "full" ? "2" : d == "false" || d == "none" ? "0"
            : d == "limited"                 ? "1"
                                             : d;
  }
  if (auto v = t.get("debug-assertions")) {
    p.debug_assertions = v->value<bool>();
  }
  if (auto v = t.get("overflow-checks")) {
    p.overflow_checks = v->value<bool>();
  }
  p.lto = toml_string_or_number(t.get("lto"));
  p.panic = toml_string_or_number(t.get("panic"));
  if (auto v = t.get("codegen-units")) {
    if (auto n = v->value<int64_t>()) {
      p.codegen_units = static_cast<int>(*n);
    }
  }
  if (auto v = t.get("incremental")) {
    p.incremental = v->value<bool>();
  }
  if (auto strip = toml_string_or_number(t.get("strip"))) {
    p.strip = *strip == "true" ? "symbols" : *strip == "false" ? "none" : *strip;
  }
  if (auto v = t.get("rpath")) {
    p.rpath = v->value<bool>();
  }
  p.inherits = toml_string_or_number(t.get("inherits"));
  if (auto packages = t.get_as<toml::table>("package")) {
    for (const auto& [name, value] : *packages) {
      if (auto sub = value.as_table()) {
        p.package[std::string(name.str())] =
          parse_profile(*sub, where + ".package." + std::string(name.str()));
      }
    }
  }
  if (auto bo = t.get_as<toml::table>("build-override")) {
    p.build_override = std::make_shared<ProfileToml>(parse_profile(*bo, where + ".build-override"));
  }
  return p;
}

} // namespace

void
ProfileToml::merge(const ProfileToml& over)
{
  auto take = [](auto& mine, const auto& theirs) {
    if (theirs) {
      mine = theirs;
    }
  };
  take(opt_level, over.opt_level);
  take(debug, over.debug);
  take(debug_assertions, over.debug_assertions);
  take(overflow_checks, over.overflow_checks);
  take(lto, over.lto);
  take(panic, over.panic);
  take(codegen_units, over.codegen_units);
  take(incremental, over.incremental);
  take(strip, over.strip);
  take(rpath, over.rpath);
  for (const auto& [name, p] : over.package) {
    package[name].merge(p);
  }
  if (over.build_override) {
    if (!build_override) {
      build_override = std::make_shared<ProfileToml>();
    }
    build_override->merge(*over.build_override);
  }
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

std::string
files_fingerprint(const std::vector<fs::path>& files)
{
  std::string text;
  for (const auto& f : files) {
    struct stat st;
    if (::stat(f.c_str(), &st) != 0) {
      text += f.string() + " -\n";
    } else {
      text += f.string() + " " + std::to_string(st.st_size) + " " +
              std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + " " +
              std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec) + " " +
              std::to_string(st.st_ino) + "\n";
    }
  }
  return hash_string(HashAlgo::sha256, text).to_string(HashFormat::base16, false);
}

namespace {

// What cargo metadata reads besides the manifests it lists: the lock file,
// cargo's configuration files from the project up to /, and $CARGO_HOME's.
std::vector<fs::path>
metadata_inputs(const fs::path& manifest, const std::vector<std::string>& manifests)
{
  std::vector<fs::path> files = {manifest, manifest.parent_path() / "Cargo.lock"};
  for (fs::path d = manifest.parent_path();; d = d.parent_path()) {
    files.push_back(d / ".cargo" / "config.toml");
    files.push_back(d / ".cargo" / "config");
    if (d == d.root_path() || d.empty()) {
      break;
    }
  }
  const char* home = std::getenv("CARGO_HOME");
  fs::path cargo_home = home ? fs::path(home) : fs::path(env_home()) / ".cargo";
  files.push_back(cargo_home / "config.toml");
  files.push_back(cargo_home / "config");
  for (const auto& m : manifests) {
    files.emplace_back(m);
  }
  return files;
}

} // namespace

Workspace
load_workspace(const fs::path& dir, const fs::path& cargo, bool locked,
               const std::optional<fs::path>& cache_dir)
{
  auto manifest = find_manifest(dir);
  if (!manifest) {
    throw UsageError("no Cargo.toml in '" + dir.string() + "' or any folder above it");
  }
  std::vector<std::string> argv = {cargo.string(), "metadata", "--format-version", "1",
                                   "--offline", "--manifest-path", manifest->string()};
  if (locked) {
    argv.push_back("--locked");
  }
  // A remembered answer, if no input changed since.
  std::optional<fs::path> cache_file;
  std::string text;
  if (cache_dir) {
    std::string id = cargo.string() + "\n" + manifest->string() + (locked ? "\nlocked" : "");
    cache_file = *cache_dir / ("metadata-" + hash_string(HashAlgo::sha256, id)
                                               .to_string(HashFormat::base16, false)
                                               .substr(0, 32) +
                               ".json");
    std::error_code ec;
    if (fs::exists(*cache_file, ec)) {
      try {
        json cached = json::parse(read_file(*cache_file));
        auto manifests = cached.at("manifests").get<std::vector<std::string>>();
        if (cached.at("key") == files_fingerprint(metadata_inputs(*manifest, manifests)) &&
            cached.at("cargo") == files_fingerprint({cargo})) {
          text = cached.at("metadata").get<std::string>();
        }
      } catch (const std::exception&) {
        // Only a cache: ask cargo.
      }
    }
  }
  bool from_cache = !text.empty();
  if (!from_cache) {
    text = run_capture(argv, manifest->parent_path());
  }
  json meta;
  try {
    meta = json::parse(text);
  } catch (const json::exception& e) {
    throw CargoError(std::string("cannot read the output of cargo metadata: ") + e.what());
  }
  if (cache_file && !from_cache) {
    std::vector<std::string> manifests;
    for (const auto& p : meta.at("packages")) {
      if (p.at("source").is_null()) {
        manifests.push_back(p.at("manifest_path").get<std::string>());
      }
    }
    json cached = {{"key", files_fingerprint(metadata_inputs(*manifest, manifests))},
                   {"cargo", files_fingerprint({cargo})},
                   {"manifests", manifests},
                   {"metadata", text}};
    try {
      fs::create_directories(cache_file->parent_path());
      write_file_atomic(*cache_file, cached.dump());
    } catch (const std::exception&) {
      // Only a cache.
    }
  }

  Workspace ws;
  ws.root = meta.at("workspace_root").get<std::string>();
  ws.target_dir = meta.at("target_directory").get<std::string>();
  for (const auto& p : meta.at("packages")) {
    CargoPackage pkg = parse_package(p);
    ws.packages.emplace(pkg.id, std::move(pkg));
  }
  ws.members = meta.at("workspace_members").get<std::vector<std::string>>();
  if (meta.contains("workspace_default_members")) {
    ws.default_members = meta.at("workspace_default_members").get<std::vector<std::string>>();
  } else {
    ws.default_members = ws.members;
  }
  for (const auto& id : ws.members) {
    ws.packages.at(id).is_member = true;
  }
  if (meta.contains("resolve") && meta.at("resolve").is_object()) {
    for (const auto& node : meta.at("resolve").at("nodes")) {
      std::vector<ResolvedDep> deps;
      for (const auto& d : node.at("deps")) {
        ResolvedDep dep;
        dep.name = d.at("name").get<std::string>();
        dep.pkg = d.at("pkg").get<std::string>();
        for (const auto& k : d.at("dep_kinds")) {
          dep.dep_kinds.push_back({string_or(k, "kind"), optional_string(k, "target")});
        }
        deps.push_back(std::move(dep));
      }
      ws.resolve[node.at("id").get<std::string>()] = std::move(deps);
    }
  }

  // The root manifest: the resolver version and the profiles.
  fs::path root_manifest = ws.root / "Cargo.toml";
  toml::table root;
  try {
    root = toml::parse_file(root_manifest.string());
  } catch (const toml::parse_error& e) {
    std::ostringstream where;
    where << root_manifest.string() << ":" << e.source().begin.line << ":"
          << e.source().begin.column;
    throw CargoError(where.str() + ": " + std::string(e.description()));
  }
  std::optional<std::string> resolver = toml_string_or_number(root["workspace"]["resolver"].node());
  if (!resolver) {
    resolver = toml_string_or_number(root["package"]["resolver"].node());
  }
  if (!resolver) {
    // Without a resolver key, the root package's edition decides (2021 → 2,
    // 2024 → 3); a virtual workspace defaults to 1.
    auto edition = toml_string_or_number(root["package"]["edition"].node());
    resolver = !edition ? "1" : *edition >= "2024" ? "3" : *edition >= "2021" ? "2" : "1";
  }
  ws.resolver = *resolver;
  if (auto profiles = root.get_as<toml::table>("profile")) {
    for (const auto& [name, value] : *profiles) {
      if (auto t = value.as_table()) {
        ws.profiles[std::string(name.str())] =
          parse_profile(*t, "profile." + std::string(name.str()));
      }
    }
  }
  return ws;
}

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

// --- the toolchain ---

const CfgSet&
Toolchain::cfg(const std::string& triple, const std::vector<std::string>& rustflags) const
{
  std::string key = triple;
  for (const auto& f : rustflags) {
    key += "\x1f" + f;
  }
  auto it = m_cfg.find(key);
  if (it == m_cfg.end()) {
    // Remembered on disk by the toolchain's identity, triple and flags.
    fs::path cached;
    std::string text;
    if (!cfg_cache_dir.empty()) {
      cached = cfg_cache_dir / ("cfg-" +
                                hash_string(HashAlgo::sha256, identity + "\n" + key)
                                  .to_string(HashFormat::base16, false)
                                  .substr(0, 32));
      std::error_code ec;
      if (fs::exists(cached, ec)) {
        text = read_file(cached);
      }
    }
    if (text.empty()) {
      std::vector<std::string> argv = {rustc.string(), "--print", "cfg", "--target", triple};
      argv.insert(argv.end(), rustflags.begin(), rustflags.end());
      text = run_capture(argv);
      if (!cached.empty()) {
        try {
          fs::create_directories(cached.parent_path());
          write_file_atomic(cached, text);
        } catch (const std::exception&) {
          // Only a cache.
        }
      }
    }
    CfgSet set = parse_cfg_lines(text);
    // debug_assertions follows the profile, not this query.
    set.erase("debug_assertions");
    it = m_cfg.emplace(key, std::move(set)).first;
  }
  return it->second;
}

namespace {

std::optional<fs::path>
find_in_path(const std::string& program)
{
  if (program.find('/') != std::string::npos) {
    return fs::absolute(program);
  }
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    fs::path candidate = fs::path(dir.empty() ? "." : dir) / program;
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return std::nullopt;
}

std::string
stat_key(const fs::path& p)
{
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) {
    return p.string() + ":missing";
  }
  return p.string() + ":" + std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) +
         "." + std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_ino);
}

std::string
env_or(const char* name, const std::string& fallback)
{
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

} // namespace

Toolchain
detect_toolchain(const fs::path& cache_file)
{
  std::string rustc_name = env_or("RUSTC", "rustc");
  std::string cargo_name = env_or("CARGO", "cargo");
  auto rustc_front = find_in_path(rustc_name);
  if (!rustc_front) {
    throw CargoError("rustc not found (looked for '" + rustc_name +
                     "' on PATH; set RUSTC to choose one)");
  }
  auto cargo = find_in_path(cargo_name);
  if (!cargo) {
    throw CargoError("cargo not found (looked for '" + cargo_name + "' on PATH)");
  }
  auto cc = find_in_path("cc");

  // The key of the remembered answer: the programs as found, and what makes
  // rustup pick another toolchain for the same proxy.
  std::string key = stat_key(*rustc_front) + "|" + stat_key(*cargo) + "|" +
                    (cc ? stat_key(fs::canonical(*cc)) : "") + "|" +
                    env_or("RUSTUP_TOOLCHAIN", "") + "|" +
                    stat_key(fs::path(env_or("RUSTUP_HOME", env_or("HOME", "/") + "/.rustup")) /
                             "settings.toml") +
                    "|" + stat_key(fs::current_path() / "rust-toolchain.toml") + "|" +
                    stat_key(fs::current_path() / "rust-toolchain");
  std::error_code ec;
  if (fs::exists(cache_file, ec)) {
    try {
      json cached = json::parse(read_file(cache_file));
      if (cached.at("key") == key) {
        Toolchain t;
        t.rustc = cached.at("rustc").get<std::string>();
        t.rustdoc = cached.at("rustdoc").get<std::string>();
        t.cargo = cached.at("cargo").get<std::string>();
        t.sysroot = cached.at("sysroot").get<std::string>();
        t.version = cached.at("version").get<std::string>();
        t.host = cached.at("host").get<std::string>();
        t.identity = cached.at("identity").get<std::string>();
        t.linker = cached.at("linker").get<std::string>();
        t.linker_identity = cached.at("linker_identity").get<std::string>();
        if (stat_key(t.rustc) == cached.at("rustc_key")) {
          return t;
        }
      }
    } catch (const std::exception&) {
      // A damaged cache file is only a cache: detect again.
    }
  }

  Toolchain t;
  t.cargo = *cargo;
  std::string sysroot = run_capture({rustc_front->string(), "--print", "sysroot"});
  while (!sysroot.empty() && std::isspace(static_cast<unsigned char>(sysroot.back()))) {
    sysroot.pop_back();
  }
  t.sysroot = sysroot;
  t.rustc = t.sysroot / "bin" / "rustc";
  t.rustdoc = t.sysroot / "bin" / "rustdoc";
  if (!fs::exists(t.rustc, ec)) {
    t.rustc = *rustc_front;
  }
  t.version = run_capture({t.rustc.string(), "-vV"});
  std::istringstream lines(t.version);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("host: ")) {
      t.host = line.substr(6);
    }
  }
  if (t.host.empty()) {
    throw CargoError("`" + t.rustc.string() + " -vV` does not name the host triple");
  }
  // The standard library as shipped: each file's name and size, in order.
  std::vector<std::string> files;
  fs::path libdir = t.sysroot / "lib" / "rustlib" / t.host / "lib";
  for (const auto& entry : fs::directory_iterator(libdir, ec)) {
    std::error_code size_ec;
    files.push_back(entry.path().filename().string() + " " +
                    std::to_string(entry.is_regular_file(size_ec) ? entry.file_size(size_ec) : 0));
  }
  std::sort(files.begin(), files.end());
  std::string listing;
  for (const auto& f : files) {
    listing += f + "\n";
  }
  t.identity = t.version + "sysroot-lib " + hash_string(HashAlgo::sha256, listing).to_string(HashFormat::base16, false);
  if (cc) {
    t.linker = *cc;
    std::string v = run_capture({cc->string(), "--version"});
    t.linker_identity = v.substr(0, v.find('\n'));
  }
  json cached = {{"key", key},
                 {"rustc", t.rustc.string()},
                 {"rustc_key", stat_key(t.rustc)},
                 {"rustdoc", t.rustdoc.string()},
                 {"cargo", t.cargo.string()},
                 {"sysroot", t.sysroot.string()},
                 {"version", t.version},
                 {"host", t.host},
                 {"identity", t.identity},
                 {"linker", t.linker.string()},
                 {"linker_identity", t.linker_identity}};
  try {
    fs::create_directories(cache_file.parent_path());
    write_file_atomic(cache_file, cached.dump());
  } catch (const std::exception&) {
    // Not being able to remember it only costs time.
  }
  return t;
}

} // namespace kiln::cargo
