#include <kiln/cargo/install.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <algorithm>
#include <regex>
#include <set>
#include <sstream>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The scratch package's name: no crate is called this (a crate of that
// name could not be installed through kiln).
const char* const k_scratch_package = "kiln-install-scratch";

std::string
env_or(const Environment& env, const std::string& name, const std::string& fallback = "")
{
  auto it = env.find(name);
  return it == env.end() || it->second.empty() ? fallback : it->second;
}

// Write `text` unless the file holds it already (so that its metadata, by
// which cargo's answers are remembered, stays).
void
write_if_changed(const fs::path& file, const std::string& text)
{
  std::error_code ec;
  if (fs::exists(file, ec)) {
    try {
      if (read_file(file) == text) {
        return;
      }
    } catch (const std::exception&) {
      // Rewrite it.
    }
  }
  write_file_atomic(file, text);
}

// cargo install's reading of --version: a bare version is that version
// exactly; anything else is a requirement.
std::string
version_requirement(const std::optional<std::string>& version)
{
  if (!version) {
    return "*";
  }
  static const std::regex bare(R"(\d+\.\d+\.\d+([-+].*)?)");
  return std::regex_match(*version, bare) ? "=" + *version : *version;
}

ProcessResult
run_cargo(const std::vector<std::string>& args, const fs::path& cwd, const Environment& env)
{
  std::vector<std::string> argv = {env_or(env, "CARGO", "cargo")};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessOptions options;
  options.cwd = cwd;
  return run_process(argv, options);
}

// What cargo said, without its "error: " and trailing blank lines.
std::string
cargo_said(const ProcessResult& result)
{
  std::string said = result.err;
  while (!said.empty() && std::isspace(static_cast<unsigned char>(said.back()))) {
    said.pop_back();
  }
  auto at = said.find("error: ");
  return at == std::string::npos ? said : said.substr(at + 7);
}

toml::table
read_toml(const fs::path& file)
{
  try {
    return toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    throw CargoError("'" + file.string() + "': " + std::string(e.description()));
  }
}

// Features given as "a,b c" → each.
std::vector<std::string>
split_features(const std::vector<std::string>& given)
{
  std::vector<std::string> out;
  for (const auto& g : given) {
    std::string word;
    for (char c : g + ",") {
      if (c == ',' || c == ' ') {
        if (!word.empty()) {
          out.push_back(word);
        }
        word.clear();
      } else {
        word += c;
      }
    }
  }
  return out;
}

// What cargo resolved: a package's version, source and manifest.
struct Located
{
  std::string version;
  std::string source;
  fs::path manifest;
};

// Which version of the crate cargo install would take, and where its
// sources are (downloaded, for a remote registry): a throwaway package
// that depends on the crate's binaries (an artifact dependency, so that a
// crate without a library resolves too), resolved afresh by `cargo
// metadata`. Artifact dependencies are unstable: cargo resolves them under
// RUSTC_BOOTSTRAP=1, as kiln plans with it; nothing is built this way.
Located
locate_crate(const InstallSpec& spec, const fs::path& dir, const fs::path& home,
             const Environment& env)
{
  fs::create_directories(dir);
  toml::table dependency{{"version", version_requirement(spec.version)}, {"artifact", "bin"}};
  toml::table manifest{
    {"package", toml::table{{"name", k_scratch_package}, {"version", "0.0.0"}, {"edition", "2021"},
                            {"publish", false}}},
    {"lib", toml::table{{"path", "lib.rs"}}},
    {"dependencies", toml::table{{spec.crate, dependency}}},
    {"workspace", toml::table{}}};
  std::ostringstream text;
  text << manifest << "\n";
  write_if_changed(dir / "lib.rs", "");
  write_if_changed(dir / "Cargo.toml", text.str());
  std::error_code ec;
  fs::remove(dir / "Cargo.lock", ec);   // resolved afresh, as cargo install does
  std::vector<std::string> args = {"-Z", "bindeps", "metadata", "--format-version", "1",
                                   "--manifest-path", (dir / "Cargo.toml").string()};
  for (const auto& c : spec.config_args) {
    args.insert(args.end(), {"--config", c});
  }
  std::vector<std::string> argv = {env_or(env, "CARGO", "cargo")};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessOptions options;
  options.cwd = home;
  options.env["RUSTC_BOOTSTRAP"] = "1";
  ProcessResult result = run_process(argv, options);
  std::string what = spec.crate + (spec.version ? "@" + *spec.version : std::string());
  if (!result.ok()) {
    throw CargoError("cannot install " + what + ": cargo: " + cargo_said(result));
  }
  json meta = json::parse(result.out);
  for (const auto& p : meta.at("packages")) {
    if (p.at("name") == spec.crate && p.value("source", json()).is_string()) {
      return {p.at("version").get<std::string>(), p.at("source").get<std::string>(),
              fs::path(p.at("manifest_path").get<std::string>())};
    }
  }
  throw CargoError("cannot install " + what + ": cargo did not find it in the registry");
}

// The packages of a Cargo.lock: (name, version).
std::set<std::pair<std::string, std::string>>
locked_packages(const fs::path& lock)
{
  std::set<std::pair<std::string, std::string>> out;
  toml::table t = read_toml(lock);
  if (const toml::array* packages = t["package"].as_array()) {
    for (const auto& p : *packages) {
      if (const toml::table* pt = p.as_table()) {
        out.emplace((*pt)["name"].value_or(std::string()), (*pt)["version"].value_or(std::string()));
      }
    }
  }
  return out;
}

// The crate's manifest as cargo install resolves it: without its
// dev-dependencies (never resolved for an install), its own workspace.
std::string
install_manifest(const fs::path& manifest)
{
  toml::table t = read_toml(manifest);
  t.erase("dev-dependencies");
  t.erase("dev_dependencies");
  if (toml::table* targets = t["target"].as_table()) {
    for (auto&& [name, node] : *targets) {
      if (toml::table* target = node.as_table()) {
        target->erase("dev-dependencies");
        target->erase("dev_dependencies");
      }
    }
  }
  t.erase("workspace");
  t.insert("workspace", toml::table{});
  std::ostringstream text;
  text << "# The manifest of " << manifest.string() << ",\n"
       << "# as kiln install resolves it (no dev-dependencies, its own workspace).\n"
       << t << "\n";
  return text.str();
}

// A copy of the crate's sources in `to`, made once: cargo writes its lock
// file beside the manifest, which a registry's folder does not allow.
void
copy_sources(const fs::path& from, const fs::path& to)
{
  fs::path stamp = to / ".kiln-install-source";
  std::error_code ec;
  if (fs::exists(stamp, ec) && read_file(stamp) == from.string() + "\n") {
    return;
  }
  if (fs::exists(fs::symlink_status(to, ec))) {
    delete_path(to);
  }
  fs::path temp = to.string() + ".tmp";
  if (fs::exists(fs::symlink_status(temp, ec))) {
    delete_path(temp);
  }
  fs::create_directories(temp);
  for (const auto& entry : fs::directory_iterator(from)) {
    std::string name = entry.path().filename().string();
    if (name == "target" || name == ".cargo-checksum.json") {
      continue;
    }
    fs::copy(entry.path(), temp / name, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  }
  // Writable by us, whatever the registry's modes.
  for (auto it = fs::recursive_directory_iterator(temp); it != fs::recursive_directory_iterator(); ++it) {
    if (!it->is_symlink()) {
      fs::permissions(it->path(), fs::perms::owner_write, fs::perm_options::add);
    }
  }
  fs::permissions(temp, fs::perms::owner_write, fs::perm_options::add);
  write_file_atomic(temp / "Cargo.toml", install_manifest(from / "Cargo.toml"));
  write_file_atomic(temp / ".kiln-install-source", from.string() + "\n");
  fs::rename(temp, to);
}

InstallPlan
registry_plan(const InstallSpec& spec, const fs::path& scratch, const Environment& env,
              std::vector<std::string>& notes)
{
  fs::path home = fs::absolute(cargo_home_of(env));
  fs::create_directories(home);
  Located crate = locate_crate(spec, scratch / "locate", home, env);
  fs::path copy = scratch / (spec.crate + "-" + crate.version);
  copy_sources(crate.manifest.parent_path(), copy);
  fs::path manifest = copy / "Cargo.toml";
  fs::path lock = copy / "Cargo.lock";
  fs::path published = crate.manifest.parent_path() / "Cargo.lock";
  std::error_code ec;
  bool use_published = spec.locked && fs::exists(published, ec);
  if (spec.locked && !use_published) {
    notes.push_back("no Cargo.lock file published in " + spec.crate + " v" + crate.version);
  }
  std::vector<std::string> config;
  for (const auto& c : spec.config_args) {
    config.insert(config.end(), {"--config", c});
  }
  if (use_published) {
    // Its own lock file; cargo drops the entries of dev-dependencies, and
    // must change nothing else.
    write_if_changed(lock, read_file(published));
    std::vector<std::string> args = {"metadata", "--format-version", "1", "--manifest-path",
                                     manifest.string()};
    args.insert(args.end(), config.begin(), config.end());
    ProcessResult result = run_cargo(args, home, env);
    if (!result.ok()) {
      throw CargoError("cannot install " + spec.crate + " v" + crate.version +
                       ": cargo: " + cargo_said(result));
    }
    auto wanted = locked_packages(published);
    for (const auto& [name, version] : locked_packages(lock)) {
      if (!wanted.count({name, version})) {
        throw CargoError("cannot install " + spec.crate + " v" + crate.version +
                         " --locked: its Cargo.lock does not hold " + name + " v" + version +
                         " (the lock file needs to be updated); install without --locked");
      }
    }
  } else {
    // Resolved afresh (cargo leaves an unchanged lock file alone, so that
    // its answers about the project are remembered while nothing changes).
    std::vector<std::string> args = {"generate-lockfile", "--manifest-path", manifest.string()};
    args.insert(args.end(), config.begin(), config.end());
    ProcessResult result = run_cargo(args, home, env);
    if (!result.ok()) {
      throw CargoError("cannot install " + spec.crate + " v" + crate.version +
                       ": cargo: " + cargo_said(result));
    }
  }

  InstallPlan plan;
  plan.source = crate.source;
  CargoRequest& r = plan.request;
  r.command = CargoCommand::build;
  r.cwd = home;   // the configuration cargo install reads: from $CARGO_HOME
  r.env = env;
  r.cap_lints = true;
  std::vector<std::string> common = {"--manifest-path", manifest.string()};
  common.insert(common.end(), config.begin(), config.end());
  r.metadata_args = common;
  r.config_args = spec.config_args;
  r.cargo_args = common;
  r.cargo_args.push_back("--release");
  return plan;
}

InstallPlan
path_plan(const InstallSpec& spec, const Environment& env)
{
  fs::path dir = fs::absolute(*spec.path).lexically_normal();
  fs::path manifest = dir / "Cargo.toml";
  std::error_code ec;
  if (!fs::exists(manifest, ec)) {
    throw UsageError("--path " + spec.path->string() + ": no Cargo.toml there");
  }
  InstallPlan plan;
  CargoRequest& r = plan.request;
  r.command = CargoCommand::build;
  r.cwd = dir;     // cargo install --path reads the configuration from there
  r.env = env;
  std::vector<std::string> common = {"--manifest-path", manifest.string()};
  if (spec.locked) {
    common.push_back("--locked");
  }
  for (const auto& c : spec.config_args) {
    common.insert(common.end(), {"--config", c});
  }
  r.metadata_args = common;
  r.config_args = spec.config_args;
  r.cargo_args = common;
  r.cargo_args.push_back("--release");
  return plan;
}

json
to_json(const InstalledPackage& p)
{
  json j = {{"name", p.name},       {"version", p.version},
            {"source", p.source},   {"version_req", p.version_req ? json(*p.version_req) : json()},
            {"bins", p.bins},       {"features", p.features},
            {"all_features", false}, {"no_default_features", p.no_default_features},
            {"profile", p.profile}, {"target", p.target},
            {"rustc", p.rustc},     {"store", p.store}};
  return j;
}

InstalledPackage
from_json(const json& j)
{
  InstalledPackage p;
  p.name = j.at("name").get<std::string>();
  p.version = j.at("version").get<std::string>();
  p.source = j.value("source", "");
  if (j.contains("version_req") && j.at("version_req").is_string()) {
    p.version_req = j.at("version_req").get<std::string>();
  }
  p.bins = j.value("bins", std::map<std::string, std::string>());
  p.features = j.value("features", std::vector<std::string>());
  p.no_default_features = j.value("no_default_features", false);
  p.profile = j.value("profile", "release");
  p.target = j.value("target", "");
  p.rustc = j.value("rustc", "");
  p.store = j.value("store", "");
  return p;
}

fs::path
records_file(const fs::path& root)
{
  return root / ".kiln-installs.json";
}

// Does the link at `link` point into the output `out` (a store path, whose
// base name its target holds)?
bool
links_into(const fs::path& link, const std::string& out)
{
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(link, ec))) {
    return false;
  }
  std::string target = fs::read_symlink(link, ec).string();
  std::string base = fs::path(out).filename().string();
  return !ec && target.find("/" + base + "/") != std::string::npos;
}

} // namespace

void
parse_crate_spec(const std::string& text, InstallSpec& spec)
{
  auto at = text.find('@');
  spec.crate = text.substr(0, at);
  if (spec.crate.empty()) {
    throw UsageError("'" + text + "': no crate name");
  }
  if (at != std::string::npos) {
    if (spec.version) {
      throw UsageError("cannot specify both `@" + text.substr(at + 1) + "` and `--version " +
                       *spec.version + "`");
    }
    spec.version = text.substr(at + 1);
  }
}

fs::path
install_root(const std::optional<fs::path>& given, const Environment& env)
{
  if (given) {
    return fs::absolute(*given).lexically_normal();
  }
  std::string from_env = env_or(env, "CARGO_INSTALL_ROOT");
  if (!from_env.empty()) {
    return fs::absolute(from_env).lexically_normal();
  }
  fs::path home = fs::absolute(cargo_home_of(env));
  std::error_code ec;
  if (fs::exists(home, ec)) {
    CargoConfig config = CargoConfig::load(home, home, {}, env);
    if (auto root = config.get_string({"install", "root"})) {
      fs::path p = *root;
      if (p.is_relative()) {
        auto source = config.source_of({"install", "root"});
        p = (source ? source->root : home) / p;
      }
      return p.lexically_normal();
    }
  }
  return home;
}

InstallPlan
plan_install(const InstallSpec& spec, const fs::path& scratch, const Environment& env,
             std::vector<std::string>& notes)
{
  InstallPlan plan;
  if (spec.path) {
    plan = path_plan(spec, env);
  } else if (spec.crate.empty()) {
    throw UsageError("name a crate to install, or give --path DIR");
  } else {
    plan = registry_plan(spec, scratch, env, notes);
  }
  std::vector<std::string>& a = plan.request.cargo_args;
  auto features = split_features(spec.features);
  if (!features.empty()) {
    std::string joined;
    for (const auto& f : features) {
      joined += (joined.empty() ? "" : ",") + f;
    }
    a.insert(a.end(), {"--features", joined});
  }
  if (spec.no_default_features) {
    a.push_back("--no-default-features");
  }
  if (spec.bins.empty()) {
    a.push_back("--bins");
  }
  for (const auto& b : spec.bins) {
    a.insert(a.end(), {"--bin", b});
  }
  return plan;
}

std::string
InstalledPackage::key() const
{
  return name + " " + version + " (" + source + ")";
}

std::string
InstalledPackage::describe() const
{
  std::string d = name + " v" + version;
  if (source.starts_with("path+file://")) {
    d += " (" + source.substr(12) + ")";
  }
  return d;
}

InstallRecords::InstallRecords(const fs::path& root)
  : m_root(root),
    m_lock((fs::create_directories(root), root / ".kiln-installs.lock"), LockMode::exclusive)
{
  fs::path file = records_file(root);
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    return;
  }
  json j;
  try {
    j = json::parse(read_file(file));
  } catch (const json::exception& e) {
    throw Error("'" + file.string() + "' is damaged: " + e.what());
  }
  json installs = j.value("installs", json::object());
  for (const auto& [key, entry] : installs.items()) {
    m_packages.push_back(from_json(entry));
  }
}

const InstalledPackage*
InstallRecords::find(const std::string& name) const
{
  for (const auto& p : m_packages) {
    if (p.name == name) {
      return &p;
    }
  }
  return nullptr;
}

void
InstallRecords::put(InstalledPackage package)
{
  remove(package.name);
  m_packages.push_back(std::move(package));
  std::sort(m_packages.begin(), m_packages.end(),
            [](const InstalledPackage& a, const InstalledPackage& b) { return a.key() < b.key(); });
}

bool
InstallRecords::remove(const std::string& name)
{
  auto it = std::remove_if(m_packages.begin(), m_packages.end(),
                           [&](const InstalledPackage& p) { return p.name == name; });
  bool found = it != m_packages.end();
  m_packages.erase(it, m_packages.end());
  return found;
}

const InstalledPackage*
InstallRecords::owner_of(const std::string& bin) const
{
  for (const auto& p : m_packages) {
    if (p.bins.count(bin)) {
      return &p;
    }
  }
  return nullptr;
}

void
InstallRecords::save() const
{
  json installs = json::object();
  for (const auto& p : m_packages) {
    installs[p.key()] = to_json(p);
  }
  write_file_atomic(records_file(m_root), json{{"installs", installs}}.dump(2) + "\n");
}

InstallChanges
install_package(LocalStore& store, InstallRecords& records, InstalledPackage package,
                const std::map<std::string, fs::path>& products, bool force)
{
  InstallChanges changes;
  fs::path bin_dir = records.bin_dir();
  if (const InstalledPackage* previous = records.find(package.name)) {
    changes.previous = *previous;
  }
  // The same outputs, all linked: nothing to do.
  if (!force && changes.previous && changes.previous->bins == package.bins &&
      changes.previous->store == package.store &&
      std::all_of(package.bins.begin(), package.bins.end(), [&](const auto& bin) {
        return links_into(bin_dir / bin.first, bin.second);
      })) {
    changes.unchanged = true;
    return changes;
  }
  // What is in the way: another package's binary, or a file kiln did not
  // put there.
  for (const auto& [bin, out] : package.bins) {
    fs::path link = bin_dir / bin;
    std::error_code ec;
    bool there = fs::exists(fs::symlink_status(link, ec));
    const InstalledPackage* owner = records.owner_of(bin);
    bool ours = owner && owner->name == package.name && links_into(link, owner->bins.at(bin));
    if (there && !ours && !force) {
      throw Error("binary `" + bin + "` already exists in destination " + link.string() +
                  (owner && owner->name != package.name
                     ? " as part of `" + owner->describe() + "`"
                     : std::string(" (not installed by kiln, or changed since)")) +
                  "; add --force to overwrite");
    }
  }
  fs::create_directories(bin_dir);
  for (const auto& [bin, out] : package.bins) {
    fs::path link = bin_dir / bin;
    std::error_code ec;
    bool there = fs::exists(fs::symlink_status(link, ec));
    (there ? changes.replaced : changes.added).push_back(bin);
    // Another package loses the binary (--force).
    if (const InstalledPackage* owner = records.owner_of(bin); owner && owner->name != package.name) {
      InstalledPackage shrunk = *owner;
      shrunk.bins.erase(bin);
      if (shrunk.bins.empty()) {
        records.remove(shrunk.name);
      } else {
        records.put(shrunk);
      }
    }
    // The root keeps the output alive; the link then names the binary in it.
    store.add_root(link, store.store_dir().parse(out));
    replace_symlink(products.at(bin), link);
  }
  // Binaries of the earlier install that this one does not have.
  if (changes.previous) {
    for (const auto& [bin, out] : changes.previous->bins) {
      if (!package.bins.count(bin) && links_into(bin_dir / bin, out)) {
        fs::remove(bin_dir / bin);
      }
    }
  }
  records.put(std::move(package));
  records.save();
  return changes;
}

std::vector<fs::path>
uninstall_package(InstallRecords& records, const std::string& name,
                  const std::vector<std::string>& bins)
{
  const InstalledPackage* found = records.find(name);
  if (!found) {
    throw Error("package `" + name + "` is not installed in " + records.root().string() +
                " by kiln (kiln install --list)");
  }
  InstalledPackage package = *found;
  for (const auto& b : bins) {
    if (!package.bins.count(b)) {
      throw Error("binary `" + b + "` is not part of " + package.describe());
    }
  }
  std::vector<fs::path> removed;
  for (auto it = package.bins.begin(); it != package.bins.end();) {
    if (!bins.empty() && std::find(bins.begin(), bins.end(), it->first) == bins.end()) {
      ++it;
      continue;
    }
    fs::path link = records.bin_dir() / it->first;
    if (links_into(link, it->second)) {
      fs::remove(link);
      removed.push_back(link);
    }
    it = package.bins.erase(it);
  }
  if (package.bins.empty()) {
    records.remove(name);
  } else {
    records.put(package);
  }
  records.save();
  return removed;
}

} // namespace kiln::cargo
