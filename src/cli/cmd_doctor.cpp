// kiln doctor: is this machine ready? The toolchain, the store, the config,
// and each substituter (reachable, for this store directory, trusted).
#include "cli.hpp"

#include <kiln/cache/narinfo.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <set>

extern char** environ;

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

enum class Status { ok, warn, fail };

struct Check
{
  Status status;
  std::string name;
  std::string detail;
};

const char*
label(Status s)
{
  switch (s) {
  case Status::ok:
    return "ok";
  case Status::warn:
    return "warn";
  case Status::fail:
    return "FAIL";
  }
  return "?";
}

// The first line `program --version` prints, or why there is none.
std::pair<bool, std::string>
first_line_of(const fs::path& program, const std::vector<std::string>& args)
{
  std::vector<std::string> argv = {program.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessOptions options;
  options.merge_stderr = true;
  options.max_output = 65536;
  ProcessResult result = run_process(argv, options);
  std::string line = result.out.substr(0, result.out.find('\n'));
  if (result.status == 127 && result.out.empty()) {
    return {false, result.err};
  }
  if (!result.ok()) {
    return {false, "'" + program.string() + " --version' failed: " + line};
  }
  return {true, line};
}

void
check_tool(std::vector<Check>& checks, const std::string& name, const std::string& env_name,
           const std::string& hint)
{
  std::string program = get_env(env_name).value_or(name);
  auto found = find_program(program);
  if (!found) {
    checks.push_back({Status::fail, name,
                      "'" + program + "' not found on PATH" +
                        (program == name ? "" : " (from $" + env_name + ")") + "; " + hint});
    return;
  }
  auto [ok, line] = first_line_of(*found, {"--version"});
  checks.push_back({ok ? Status::ok : Status::fail, name, line + " (" + found->string() + ")"});
}

void
check_store(std::vector<Check>& checks, Context& ctx)
{
  const auto& s = ctx.settings();
  std::error_code ec;
  fs::path root = s.store;
  if (!fs::exists(root, ec)) {
    checks.push_back({Status::warn, "store",
                      root.string() + " does not exist yet (it is made on first use)"});
  } else {
    try {
      auto& store = ctx.store();
      VerifyOptions options;
      options.check_contents = false;
      auto result = store.verify(options);
      size_t problems = 0;
      for (const auto& p : result.problems) {
        problems += p.kind == VerifyProblem::Kind::stray ? 0 : 1;
      }
      if (problems > 0) {
        checks.push_back({Status::fail, "store",
                          root.string() + ": " + std::to_string(problems) +
                            " valid paths are missing or damaged (run 'kiln store verify')"});
      } else {
        checks.push_back({Status::ok, "store",
                          root.string() + " (paths named " + s.store_dir + "/…): " +
                            std::to_string(result.checked) + " valid path" +
                            (result.checked == 1 ? "" : "s") + ", database ok"});
      }
    } catch (const std::exception& e) {
      checks.push_back({Status::fail, "store", root.string() + ": " + e.what()});
      return;
    }
    if (::access(root.c_str(), W_OK) != 0) {
      checks.push_back({Status::fail, "store", root.string() + " is not writable by this user"});
    }
  }

  // Free space where the store is (or will be).
  fs::path existing = root;
  while (!existing.empty() && !fs::exists(existing, ec) && existing != existing.parent_path()) {
    existing = existing.parent_path();
  }
  struct statvfs vfs;
  if (::statvfs(existing.c_str(), &vfs) == 0) {
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    Status status = free_bytes < (1ull << 30) ? Status::fail
                    : free_bytes < (5ull << 30) ? Status::warn
                                                : Status::ok;
    checks.push_back({status, "disk",
                      human_size(free_bytes) + " free on " + existing.string() +
                        (status == Status::ok ? "" : " (Rust builds need several GiB)")});
  }
}

// The settings: where the config file is, whether it parses, where each
// value comes from. False if the settings cannot be loaded.
bool
check_config(std::vector<Check>& checks, Context& ctx)
{
  std::optional<fs::path> file;
  if (!ctx.config_file.empty()) {
    file = ctx.config_file;
  } else {
    file = default_config_file();
  }
  try {
    const auto& s = ctx.settings();
    checks.push_back({Status::ok, "config",
                      file ? file->string() + " parses"
                           : "no config file (" + user_config_file().string() +
                               " would be read); defaults, environment and flags only"});
    std::string from;
    for (const auto& info : Settings::table()) {
      std::string origin = s.origins.count(info.key) ? s.origins.at(info.key) : "default";
      if (origin != "default") {
        from += (from.empty() ? "" : ", ") + std::string(info.key) + " from " + origin;
      }
    }
    if (s.origins.count("cache-tokens")) {
      from += (from.empty() ? "" : ", ") + std::string("cache-tokens from ") +
              s.origins.at("cache-tokens");
    }
    checks.push_back({Status::ok, "settings", (from.empty() ? "all defaults" : from + "; the rest default")});
  } catch (const Error& e) {
    checks.push_back({Status::fail, "config", e.what()});
    return false;
  }

  const auto& s = ctx.settings();
  try {
    auto policy = ctx.trust_policy();
    size_t keys = s.trusted_public_keys.size() + (s.secret_key_file.empty() ? 0 : 1);
    if (s.require_sigs == 0) {
      checks.push_back({Status::warn, "trust",
                        "require-sigs is 0: anything a substituter serves is accepted unsigned"});
    } else if (keys < s.require_sigs) {
      // Without substituters nothing is fetched, so too few keys only
      // matters once a cache is added: a warning, not a failure.
      checks.push_back(
        {s.substituters.empty() ? Status::warn : Status::fail, "trust",
         "require-sigs is " + std::to_string(s.require_sigs) + " but there " +
           (keys == 1 ? "is 1 trusted key" : "are " + std::to_string(keys) + " trusted keys") +
           ": no signed path can be accepted (add one: kiln use CACHE --key NAME:KEY)"});
    } else {
      checks.push_back({Status::ok, "trust",
                        std::to_string(keys) + " trusted key" + (keys == 1 ? "" : "s") +
                          ", require-sigs " + std::to_string(s.require_sigs)});
    }
  } catch (const Error& e) {
    checks.push_back({Status::fail, "trust", e.what()});
  }
  if (!s.secret_key_file.empty()) {
    try {
      auto key = SecretKey::read_file(s.secret_key_file);
      checks.push_back({Status::ok, "signing",
                        "uploads are signed as " + key.public_key().to_string()});
    } catch (const Error& e) {
      checks.push_back({Status::fail, "signing", s.secret_key_file + ": " + e.what()});
    }
  }
  return true;
}

// Up to 20 narinfos of a cache: from its folder, or (over HTTP, where
// nothing can be listed) those of paths this store holds.
std::vector<NarInfo>
sample_narinfos(BinaryCache& cache, Context& ctx, const StoreDir& store_dir)
{
  std::vector<NarInfo> found;
  auto take = [&](const std::string& key, std::optional<std::string> text) {
    try {
      if (text) {
        found.push_back(NarInfo::parse(*text, store_dir, cache.url() + "/" + key));
      }
    } catch (const Error&) {
    }
  };
  if (cache.url().starts_with("file://")) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(cache.url().substr(7), ec)) {
      if (found.size() < 20 && entry.path().extension() == ".narinfo") {
        take(entry.path().filename(), read_file(entry.path()));
      }
    }
    return found;
  }
  size_t asked = 0;
  for (const auto& path : ctx.store().valid_paths()) {
    if (found.size() >= 20 || ++asked > 200) {
      break;
    }
    std::string key = std::string(path.hash_part()) + ".narinfo";
    take(key, cache.get_file(key));
  }
  return found;
}

// Whether the trust policy accepts what the cache holds, and who signed it:
// a mistyped key shows here, not as a build that compiles everything.
void
sample_trust(std::vector<Check>& checks, const std::string& url,
             const std::vector<NarInfo>& sample, const StoreDir& store_dir,
             const TrustPolicy& policy)
{
  if (sample.empty()) {
    checks.push_back({Status::ok, "substituter",
                      url + ": no path to check its signatures by (an empty cache, or none of "
                            "this store's paths)"});
    return;
  }
  size_t trusted = 0;
  std::set<std::string> signers;
  for (const auto& narinfo : sample) {
    trusted += is_trusted(policy, store_dir, narinfo.info) ? 1 : 0;
    for (const auto& sig : narinfo.info.signatures) {
      signers.insert(sig.substr(0, sig.find(':')));
    }
  }
  std::string names;
  for (const auto& n : signers) {
    names += (names.empty() ? "" : ", ") + n;
  }
  checks.push_back({trusted == sample.size() ? Status::ok : Status::warn, "substituter",
                    url + ": " + std::to_string(trusted) + " of " + std::to_string(sample.size()) +
                      " sampled paths are trusted (signed by: " +
                      (names.empty() ? "nobody" : names) + ")" +
                      (trusted == sample.size() ? "" : "; is its key in trusted-public-keys?")});
}

void
check_substituters(std::vector<Check>& checks, Context& ctx)
{
  const auto& s = ctx.settings();
  if (s.substituters.empty()) {
    checks.push_back({Status::ok, "substituter",
                      "none configured (add one: kiln use CACHE --key NAME:KEY)"});
    return;
  }
  std::optional<TrustPolicy> policy;
  try {
    policy = ctx.trust_policy();
  } catch (const Error&) {
  }
  for (const auto& url : s.substituters) {
    CacheOptions options;
    options.token = s.token_for(url);
    options.connect_timeout_s = 5;
    options.read_timeout_s = 15;
    options.retries = 0;
    try {
      auto cache = open_binary_cache(url, options);
      auto start = std::chrono::steady_clock::now();
      auto text = cache->get_file("nix-cache-info");
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start)
                  .count();
      if (!text) {
        checks.push_back({Status::warn, "substituter",
                          url + ": reachable, but it has no nix-cache-info (an empty cache, a "
                                "wrong URL, or a token without read access)"});
        continue;
      }
      auto info = CacheInfo::parse(*text, url + "/nix-cache-info");
      if (info.store_dir != s.store_dir) {
        checks.push_back({Status::fail, "substituter",
                          url + ": serves store directory " + info.store_dir + ", not " +
                            s.store_dir + ": nothing in it can be used"});
        continue;
      }
      checks.push_back({Status::ok, "substituter",
                        url + ": reachable in " + std::to_string(ms) + " ms, StoreDir " +
                          info.store_dir + ", Priority " + std::to_string(info.priority)});
      if (policy) {
        StoreDir store_dir(s.store_dir);
        sample_trust(checks, url, sample_narinfos(*cache, ctx, store_dir), store_dir, *policy);
      }
    } catch (const std::exception& e) {
      checks.push_back({Status::fail, "substituter", url + ": unreachable: " + e.what()});
    }
  }
}

} // namespace

void
register_doctor_commands(CLI::App& app, Context& ctx)
{
  auto json = std::make_shared<bool>(false);
  auto* doctor = app.add_subcommand(
    "doctor", "Check the toolchain, the store, the config and each substituter; exit 1 if "
              "anything fails (warnings do not)");
  doctor->add_flag("--json", *json, "Print the checks as JSON");
  doctor->callback([&ctx, json] {
    ctx.action = [&ctx, json] {
      std::vector<Check> checks;
      check_tool(checks, "rustc", "RUSTC", "install Rust (apt install rustc, or rustup)");
      check_tool(checks, "cargo", "CARGO", "install Cargo (apt install cargo, or rustup)");
      check_tool(checks, "cc", "CC", "install a C compiler and linker (apt install gcc)");
      if (check_config(checks, ctx)) {
        check_store(checks, ctx);
        check_substituters(checks, ctx);
      } else {
        checks.push_back({Status::fail, "store", "not checked: the settings do not load"});
      }
      size_t failures = 0;
      size_t warnings = 0;
      for (const auto& c : checks) {
        failures += c.status == Status::fail ? 1 : 0;
        warnings += c.status == Status::warn ? 1 : 0;
      }
      if (*json) {
        nlohmann::json j;
        j["ok"] = failures == 0;
        j["checks"] = nlohmann::json::array();
        for (const auto& c : checks) {
          j["checks"].push_back({{"check", c.name},
                                 {"status", c.status == Status::fail ? "fail" : label(c.status)},
                                 {"detail", c.detail}});
        }
        std::cout << j.dump(2) << "\n";
      } else {
        for (const auto& c : checks) {
          std::string status = label(c.status);
          std::string name = c.name;
          status.resize(6, ' ');
          name.resize(std::max<size_t>(name.size(), 12), ' ');
          std::cout << status << name << " " << c.detail << "\n";
        }
        if (!ctx.quiet) {
          note(failures == 0 ? (warnings == 0 ? "all is well"
                                              : std::to_string(warnings) + " warning" +
                                                  (warnings == 1 ? "" : "s") + ", nothing failed")
                             : std::to_string(failures) + " check" + (failures == 1 ? "" : "s") +
                                 " failed");
        }
      }
      return failures == 0 ? 0 : 1;
    };
  });
}

} // namespace kiln::cli
