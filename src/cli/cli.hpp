// Shared plumbing of the kiln command line: settings and the store, opened
// on first use, and the registration functions of each command group.
#pragma once

#include <kiln/build/build.hpp>
#include <kiln/cache/cache_client.hpp>
#include <kiln/settings/settings.hpp>
#include <kiln/store/local_store.hpp>

#include <CLI/CLI.hpp>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace kiln::cli {

class Context
{
public:
  // Values of the global setting flags, by setting key.
  std::map<std::string, std::string> flag_values;
  std::map<std::string, CLI::Option*> flag_options;
  std::string config_file;
  bool quiet = false;
  // The arguments after `--`, for the program a command runs.
  std::vector<std::string> after_dashes;
  bool has_dashes = false;
  // Ask caches again about paths remembered as missing (--refresh).
  bool refresh = false;

  const Settings& settings();
  // Use these settings instead (a project file's, merged with the command
  // line's); only before the store is opened.
  void adopt_settings(Settings settings);
  LocalStore& store();
  // Where the Cargo frontend remembers digests and cargo's answers (the
  // cache-dir setting's `cargo` folder: shared by the user's stores).
  std::filesystem::path cargo_cache_dir();
  // A client for the binary cache at `url`, with the configured token,
  // connection count and negative cache.
  std::unique_ptr<CacheClient> open_cache(const std::string& url);
  // Trusted keys: trusted-public-keys plus the public half of secret-key-file.
  TrustPolicy trust_policy();
  // A build's policy from the settings: the substituters (opened here, kept
  // by the context), trust, jobs, connections; and these limits.
  BuildOptions build_options(bool keep_going, unsigned timeout, unsigned max_silent_time);
  // After a build: with max-store-size set, evict least recently used paths
  // until the store is under it (a warning if the store is busy).
  void apply_size_cap();

  // The command to run once parsing succeeded.
  std::function<int()> action;

private:
  std::optional<Settings> m_settings;
  std::unique_ptr<LocalStore> m_store;
  std::unique_ptr<NegativeCache> m_negative;
  std::vector<std::unique_ptr<CacheClient>> m_substituters;
};

void register_hash_commands(CLI::App& app, Context& ctx);
void register_nar_commands(CLI::App& app, Context& ctx);
void register_store_commands(CLI::App& app, Context& ctx);
void register_config_commands(CLI::App& app, Context& ctx);
void register_cache_commands(CLI::App& app, Context& ctx);
void register_derivation_commands(CLI::App& app, Context& ctx);
void register_build_commands(CLI::App& app, Context& ctx);
void register_cargo_commands(CLI::App& app, Context& ctx);
void register_install_commands(CLI::App& app, Context& ctx);
void register_serve_commands(CLI::App& app, Context& ctx);
void register_doctor_commands(CLI::App& app, Context& ctx);
// kiln cache check (a subcommand of `cache`).
void register_cache_check_command(CLI::App& cache, Context& ctx);

// --push-to CACHE: the cache and the key to sign with, for BuildOptions,
// and the summary once the build is done.
class PushCache
{
public:
  // Nothing is opened for an empty `url`.
  PushCache(Context& ctx, const std::string& url);
  std::optional<PushTarget> target();
  // Print what was pushed (unless quiet) and each push error; false if there
  // was one.
  bool report(const BuildResult& build) const;
  // --push-drvs: push these derivations (.drv files in the store) with
  // their closures (input derivations, sources), so that anyone can build
  // them again (kiln cache check). Prints what was pushed; false on error.
  bool push_derivations(const std::vector<StorePath>& drvs);

private:
  Context& m_ctx;
  std::string m_url;
  std::unique_ptr<CacheClient> m_cache;
  std::optional<SecretKey> m_key;
};

// A CLI11 check that a path exists, without following a symlink at the end
// (a dangling symlink is a valid thing to hash or add).
const CLI::Validator& existing_path();

// Print a warning or note to stderr, prefixed "kiln: ".
void note(const std::string& message);

} // namespace kiln::cli
