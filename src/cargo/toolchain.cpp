#include <kiln/cargo/toolchain.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/parallel.hpp>
#include <kiln/util/process.hpp>

#include <kiln/cargo/cache_dir.hpp>
#include <kiln/cargo/digest_cache.hpp>

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string
capture(const std::vector<std::string>& argv, const std::optional<fs::path>& cwd = std::nullopt,
        const std::map<std::string, std::string>& env = {})
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

std::string
trimmed(std::string s)
{
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
    s.pop_back();
  }
  return s;
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
env_or(const Environment& env, const char* name, const std::string& fallback)
{
  auto it = env.find(name);
  return it != env.end() && !it->second.empty() ? it->second : fallback;
}

// What makes rustup's proxy pick another toolchain: RUSTUP_TOOLCHAIN, its
// settings (overrides, default) and every toolchain file above `cwd`.
std::string
selection_key(const fs::path& cwd, const Environment& env)
{
  std::string key = env_or(env, "RUSTUP_TOOLCHAIN", "") + "|" +
                    stat_key(fs::path(env_or(env, "RUSTUP_HOME", env_or(env, "HOME", "/") +
                                                                   "/.rustup")) /
                             "settings.toml");
  std::error_code ec;
  for (fs::path d = fs::absolute(cwd, ec);; d = d.parent_path()) {
    for (const char* name : {"rust-toolchain", "rust-toolchain.toml"}) {
      if (fs::exists(d / name, ec)) {
        key += "|" + stat_key(d / name);
      }
    }
    if (d == d.root_path() || d.empty()) {
      break;
    }
  }
  return key;
}

std::string
digest_text(DigestCache& digests, const fs::path& path)
{
  return digests.digest(path).nar_hash.to_string(HashFormat::nix32, true);
}

// The compiler by content: rustc, the libraries beside it, the host's
// rustlib (standard library, rust-lld, gcc-ld). About 500 MB for a rustup
// toolchain: the parts are hashed on two threads.
std::string
compiler_identity(const Toolchain& t, DigestCache& digests)
{
  std::error_code ec;
  std::vector<std::pair<std::string, fs::path>> parts = {{"rustc", t.rustc}};
  std::vector<fs::path> libs;
  for (const auto& entry : fs::directory_iterator(t.sysroot / "lib", ec)) {
    if (entry.path().filename().string().find(".so") != std::string::npos) {
      libs.push_back(entry.path());
    }
  }
  std::sort(libs.begin(), libs.end());
  for (const auto& lib : libs) {
    parts.emplace_back("lib/" + lib.filename().string(), lib);
  }
  parts.emplace_back("rustlib/" + t.host, t.sysroot / "lib" / "rustlib" / t.host);
  std::vector<std::string> digest(parts.size());
  parallel_for(parts.size(), 2, [&](size_t i) { digest[i] = digest_text(digests, parts[i].second); });
  std::string text = t.version;
  for (size_t i = 0; i < parts.size(); ++i) {
    text += parts[i].first + " " + digest[i] + "\n";
  }
  return t.version + "content " +
         hash_string(HashAlgo::sha256, text).to_string(HashFormat::nix32, true);
}

void
detect_programs(Toolchain& t, const fs::path& cwd, const BuildConfig& config, const Environment& env)
{
  std::string rustc_name = env_or(env, "RUSTC", config.rustc().value_or("rustc"));
  auto rustc_front = find_program(rustc_name);
  if (!rustc_front) {
    throw CargoError("rustc not found (looked for '" + rustc_name +
                     "' on PATH; set RUSTC or build.rustc to choose one)");
  }
  std::string cargo_name = env_or(env, "CARGO", "cargo");
  auto cargo = find_program(cargo_name);
  if (!cargo) {
    throw CargoError("cargo not found (looked for '" + cargo_name + "' on PATH)");
  }
  t.cargo = *cargo;
  // Run from the project's folder, so that rustup picks the toolchain cargo
  // would pick there.
  t.sysroot = trimmed(capture({rustc_front->string(), "--print", "sysroot"}, cwd));
  t.rustc = t.sysroot / "bin" / "rustc";
  std::error_code ec;
  if (!fs::exists(t.rustc, ec)) {
    t.rustc = *rustc_front;
  }
  std::string rustdoc_name = env_or(env, "RUSTDOC", config.rustdoc().value_or(""));
  t.rustdoc = !rustdoc_name.empty() ? find_program(rustdoc_name).value_or(rustdoc_name)
                                    : t.sysroot / "bin" / "rustdoc";
  t.version = capture({t.rustc.string(), "-vV"});
  std::istringstream lines(t.version);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("host: ")) {
      t.host = line.substr(6);
    }
  }
  if (t.host.empty()) {
    throw CargoError("`" + t.rustc.string() + " -vV` does not name the host triple");
  }
  if (auto cc = find_program("cc")) {
    t.linker = *cc;
  }
}

} // namespace

std::string
Toolchain::program_identity(const fs::path& program) const
{
  auto found = find_program(program.string());
  if (!found) {
    throw CargoError("program '" + program.string() + "' not found");
  }
  return found->string() + " " + digest_text(*digests, fs::canonical(*found));
}

std::string
Toolchain::target_identity(const std::string& triple) const
{
  if (triple == host) {
    return "host";
  }
  std::lock_guard guard(m_mutex);
  auto it = m_targets.find(triple);
  if (it != m_targets.end()) {
    return it->second;
  }
  fs::path dir = sysroot / "lib" / "rustlib" / triple;
  std::error_code ec;
  if (!fs::is_directory(dir / "lib", ec)) {
    throw CargoError("the standard library for target '" + triple + "' is not installed in " +
                     sysroot.string() + " (run `rustup target add " + triple + "`)");
  }
  std::string id = triple + " " + digest_text(*digests, dir);
  m_targets.emplace(triple, id);
  return id;
}

const CfgSet&
Toolchain::cfg(const std::string& triple, const std::vector<std::string>& rustflags,
               bool bootstrap) const
{
  std::string key = (bootstrap ? "bootstrap\x1f" : "") + triple;
  for (const auto& f : rustflags) {
    key += "\x1f" + f;
  }
  // Then the answer (target_feature) is this processor's: a cache folder
  // carried to another machine must not answer for it.
  if (asks_for_native_cpu(rustflags)) {
    key += "\x1f" + this_cpu_identity();
  }
  {
    std::lock_guard guard(m_mutex);
    if (auto it = m_cfg.find(key); it != m_cfg.end()) {
      return it->second;
    }
  }
  // Asked without the lock: two queries (the bootstrap one beside the
  // normal one) run at once.
  // Remembered on disk by the toolchain's identity, triple and flags.
  fs::path cached = cache_dir / keyed_file_name("cfg-", identity + "\n" + key);
  std::string text;
  std::error_code ec;
  if (fs::exists(cached, ec)) {
    text = read_cache_file(cached);
  } else {
    std::vector<std::string> argv = {rustc.string(), "--print", "cfg", "--target", triple};
    argv.insert(argv.end(), rustflags.begin(), rustflags.end());
    text = capture(argv, std::nullopt,
                   bootstrap ? std::map<std::string, std::string>{{"RUSTC_BOOTSTRAP", "1"}}
                             : std::map<std::string, std::string>{});
    try {
      fs::create_directories(cache_dir);
      write_file_atomic(cached, text);
    } catch (const std::exception&) {
      // Only a cache.
    }
  }
  CfgSet set = parse_cfg_lines(text);
  // debug_assertions follows the profile, not this query; cargo drops
  // proc_macro (a property of the crate, not the target).
  set.erase("debug_assertions");
  set.erase("proc_macro");
  std::lock_guard guard(m_mutex);
  return m_cfg.emplace(key, std::move(set)).first->second;
}

std::unique_ptr<Toolchain>
locate_toolchain(const fs::path& cwd, const BuildConfig& config, const Environment& env,
                 const fs::path& cache_dir)
{
  auto t = std::make_unique<Toolchain>();
  t->cache_dir = cache_dir;
  t->digests = std::make_shared<DigestCache>(cache_dir, "toolchain-digest-");
  upkeep_cache_folder(cache_dir);
  // Which programs are found, and what rustup would choose: if unchanged,
  // the programs (not yet their contents) are as last time.
  std::string rustc_name = env_or(env, "RUSTC", config.rustc().value_or("rustc"));
  auto front = find_program(rustc_name);
  std::string key = (front ? stat_key(*front) : rustc_name) + "|" +
                    env_or(env, "CARGO", "cargo") + "|" + env_or(env, "RUSTDOC", "") + "|" +
                    config.rustdoc().value_or("") + "|" + env_or(env, "PATH", "") + "|" +
                    selection_key(cwd, env);
  // One file per key: `cargo kiln` (cargo and rustup add to PATH) and `kiln`,
  // or two projects pinned to different toolchains, do not evict each other
  // (each miss asks rustc twice, ~140 ms).
  fs::path cache_file = cache_dir / keyed_file_name("toolchain-", key, ".json");
  json cached;
  std::error_code ec;
  try {
    if (fs::exists(cache_file, ec)) {
      cached = json::parse(read_cache_file(cache_file));
    }
  } catch (const std::exception&) {
    cached = json();
  }
  if (cached.is_object() && cached.value("key", "") == key &&
      cached.value("rustc_key", "") == stat_key(cached.value("rustc", ""))) {
    t->rustc = cached.at("rustc").get<std::string>();
    t->rustdoc = cached.at("rustdoc").get<std::string>();
    t->cargo = cached.at("cargo").get<std::string>();
    t->sysroot = cached.at("sysroot").get<std::string>();
    t->version = cached.at("version").get<std::string>();
    t->host = cached.at("host").get<std::string>();
    t->linker = cached.at("linker").get<std::string>();
  } else {
    detect_programs(*t, cwd, config, env);
  }
  std::string linker_version, linker_key;
  if (!t->linker.empty()) {
    fs::path real = fs::canonical(t->linker);
    linker_key = stat_key(real);
    linker_version = cached.is_object() && cached.value("linker_key", "") == linker_key
                       ? cached.value("linker_version", "")
                       : capture({t->linker.string(), "--version"});
    t->linker_version = linker_version.substr(0, linker_version.find('\n'));
  }
  json record = {{"key", key},           {"rustc", t->rustc.string()},
                 {"rustc_key", stat_key(t->rustc)}, {"rustdoc", t->rustdoc.string()},
                 {"cargo", t->cargo.string()},      {"sysroot", t->sysroot.string()},
                 {"version", t->version},           {"host", t->host},
                 {"linker", t->linker.string()},    {"linker_key", linker_key},
                 {"linker_version", linker_version}};
  if (record != cached) {
    try {
      fs::create_directories(cache_dir);
      write_file_atomic(cache_file, record.dump());
    } catch (const std::exception&) {
      // Only a cache.
    }
  }
  return t;
}

void
identify_toolchain(Toolchain& t)
{
  // Every file's metadata is looked at each time (a changed byte changes a
  // file's times), its bytes only when they changed.
  t.identity = compiler_identity(t, *t.digests);
  if (!t.linker.empty()) {
    t.linker_identity = t.linker_version + " " + digest_text(*t.digests, fs::canonical(t.linker));
  }
  t.digests->save();
}

std::unique_ptr<Toolchain>
detect_toolchain(const fs::path& cwd, const BuildConfig& config, const Environment& env,
                 const fs::path& cache_dir)
{
  auto t = locate_toolchain(cwd, config, env, cache_dir);
  identify_toolchain(*t);
  return t;
}

std::string
Toolchain::located_key() const
{
  return version + "\n" + rustc.string() + " " + stat_key(rustc) + "\n" + sysroot.string() + "\n" +
         cargo.string() + "\n";
}

bool
asks_for_native_cpu(const std::vector<std::string>& flags)
{
  // -C target-cpu=native, -Ctarget-cpu=native, --codegen target-cpu=native,
  // --codegen=target-cpu=native.
  for (size_t i = 0; i < flags.size(); ++i) {
    std::string_view flag = flags[i];
    std::string_view value;
    if (flag == "-C" || flag == "--codegen") {
      value = i + 1 < flags.size() ? std::string_view(flags[i + 1]) : std::string_view();
    } else if (flag.starts_with("-C")) {
      value = flag.substr(2);
    } else if (flag.starts_with("--codegen=")) {
      value = flag.substr(std::string_view("--codegen=").size());
    }
    if (value == "target-cpu=native") {
      return true;
    }
  }
  return false;
}

std::string
host_cpu_identity(const fs::path& cpuinfo)
{
  std::ifstream in(cpuinfo);
  if (!in) {
    throw CargoError("-C target-cpu=native compiles for this machine's processor, and kiln "
                     "cannot tell which it is: '" + cpuinfo.string() + "' cannot be read");
  }
  // What differs between the cores of one machine, or from moment to
  // moment, or with a microcode update, and what the kernel says of its own
  // mitigations: not the processor rustc sees.
  static const std::set<std::string> k_varying = {
    "processor",      "cpu MHz",     "bogomips", "BogoMIPS",  "core id",   "apicid",
    "initial apicid", "physical id", "siblings", "cpu cores", "microcode", "power management",
    "bugs"};
  std::map<std::string, std::string> fields;
  std::string line;
  while (std::getline(in, line) && !line.empty()) { // the first processor
    auto colon = line.find(':');
    if (colon == std::string::npos) {
      continue;
    }
    std::string key = line.substr(0, colon);
    std::string value = colon + 1 < line.size() ? line.substr(colon + 1) : "";
    key.erase(key.find_last_not_of(" \t") + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    if (!k_varying.count(key)) {
      fields[key] = value;
    }
  }
  if (fields.empty()) {
    throw CargoError("-C target-cpu=native compiles for this machine's processor, and kiln "
                     "cannot tell which it is: '" + cpuinfo.string() + "' names none");
  }
  std::string all;
  for (const auto& [key, value] : fields) {
    all += key + ": " + value + "\n";
  }
  std::string name = fields.count("model name") ? fields["model name"] : "processor";
  if (fields.count("cpu family") && fields.count("model")) {
    name += " (family " + fields["cpu family"] + ", model " + fields["model"] + ")";
  }
  return name + " " + hash_string(HashAlgo::sha256, all).to_string(HashFormat::nix32, true);
}

const std::string&
this_cpu_identity()
{
  static const std::string identity = host_cpu_identity("/proc/cpuinfo");
  return identity;
}

} // namespace kiln::cargo
