// kiln's command line: a thin layer over libkiln. Exit status 0 on success,
// 1 on failure, 2 on bad usage; errors are one line on stderr.
#include "cli.hpp"

#include <kiln/cargo/units.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <sys/stat.h>

#include <csignal>
#include <cstdio>
#include <iostream>

namespace kiln::cli {

const Settings&
Context::settings()
{
  if (!m_settings) {
    std::map<std::string, std::string> given;
    for (const auto& [key, option] : flag_options) {
      if (option->count() > 0) {
        given[key] = flag_values[key];
      }
    }
    std::optional<std::filesystem::path> file;
    if (!config_file.empty()) {
      file = config_file;
    }
    m_settings = load_settings(given, file);
  }
  return *m_settings;
}

void
Context::adopt_settings(Settings settings)
{
  if (m_store) {
    throw std::logic_error("settings adopted after the store was opened");
  }
  m_settings = std::move(settings);
}

LocalStore&
Context::store()
{
  if (!m_store) {
    const auto& s = settings();
    LocalStoreConfig config{s.store, s.store_dir};
    config.lock_timeout = std::chrono::seconds(s.lock_timeout);
    m_store = std::make_unique<LocalStore>(std::move(config));
  }
  return *m_store;
}

std::filesystem::path
Context::cargo_cache_dir()
{
  return settings().cache_dir / "cargo";
}

std::unique_ptr<CacheClient>
Context::open_cache(const std::string& url)
{
  const auto& s = settings();
  CacheOptions options;
  options.token = s.token_for(url);
  options.connections = s.connections;
  if (!m_negative) {
    m_negative = std::make_unique<NegativeCache>(store().state_dir("narinfo-negative"),
                                                 std::chrono::seconds(s.negative_ttl));
  }
  // A local folder is cheap to ask again: "not there" is remembered only
  // for caches over the network.
  bool remote = url.starts_with("http://") || url.starts_with("https://");
  auto cache = std::make_unique<CacheClient>(open_binary_cache(url, options), store().store_dir(),
                                             remote && !refresh ? m_negative.get() : nullptr);
  // Every command that opens a cache (cargo builds included) says, once
  // per cache, what it could not use and why.
  cache->set_reporter([](const std::string& line) { note(line); });
  return cache;
}

TrustPolicy
Context::trust_policy()
{
  const auto& s = settings();
  auto keys = s.trusted_public_keys;
  if (!s.secret_key_file.empty()) {
    keys.push_back(SecretKey::read_file(s.secret_key_file).public_key().to_string());
  }
  try {
    return TrustPolicy(keys, s.require_sigs);
  } catch (const FormatError& e) {
    throw UsageError(std::string("trusted-public-keys (") + s.origins.at("trusted-public-keys") +
                     "): " + e.what());
  }
}

PushCache::PushCache(Context& ctx, const std::string& url) : m_ctx(ctx), m_url(url)
{
  if (url.empty()) {
    return;
  }
  m_cache = ctx.open_cache(url);
  const auto& settings = ctx.settings();
  if (!settings.secret_key_file.empty()) {
    m_key = SecretKey::read_file(settings.secret_key_file);
  } else {
    note("--push-to without secret-key-file: the pushed paths are not signed");
  }
}

std::optional<PushTarget>
PushCache::target()
{
  if (!m_cache) {
    return std::nullopt;
  }
  return PushTarget{m_cache.get(), m_key ? &*m_key : nullptr};
}

bool
PushCache::report(const BuildResult& build) const
{
  if (!m_cache) {
    return true;
  }
  for (const auto& e : build.push_errors) {
    std::cerr << "kiln: error: pushing to " << m_url << ": " << e << "\n";
  }
  if (!m_ctx.quiet) {
    std::fprintf(stderr, "%12s %zu paths to %s\n", "Pushed", build.pushed, m_url.c_str());
  }
  return build.push_errors.empty();
}

void
Context::apply_size_cap()
{
  const auto& cap = settings().max_store_size;
  if (!cap) {
    return;
  }
  GcOptions options;
  options.max_size = *cap;
  // A build must not hang on another kiln's long lock: the next one evicts.
  options.timeout = std::chrono::seconds(10);
  try {
    GcResult result = store().collect_garbage(options);
    if (!result.deleted.empty() && !quiet) {
      std::cerr << "kiln: the store was over max-store-size (" << human_size(*cap)
                << "): evicted " << result.deleted.size() << " least recently used paths, freed "
                << human_size(result.bytes_freed) << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "kiln: warning: max-store-size not applied: " << e.what() << "\n";
  }
}

bool
PushCache::push_derivations(const std::vector<StorePath>& drvs)
{
  if (!m_cache || drvs.empty()) {
    return true;
  }
  PushOptions options;
  options.key = m_key ? &*m_key : nullptr;
  options.connections = m_ctx.settings().connections;
  try {
    auto result = push(m_ctx.store(), *m_cache, drvs, options);
    if (!m_ctx.quiet) {
      std::fprintf(stderr, "%12s %zu paths of derivations (.drv files and sources) to %s\n",
                   "Pushed", result.uploaded.size(), m_url.c_str());
    }
    return true;
  } catch (const std::exception& e) {
    std::cerr << "kiln: error: pushing derivations to " << m_url << ": " << e.what() << "\n";
    return false;
  }
}

BuildOptions
Context::build_options(bool keep_going, unsigned timeout, unsigned max_silent_time)
{
  const Settings& s = settings();
  BuildOptions options;
  for (const auto& url : s.substituters) {
    m_substituters.push_back(open_cache(url));
    options.caches.push_back(m_substituters.back().get());
  }
  options.policy = trust_policy();
  options.jobs = s.jobs;
  options.connections = s.connections;
  options.keep_going = keep_going;
  options.timeout = std::chrono::seconds(timeout);
  options.max_silent_time = std::chrono::seconds(max_silent_time);
  return options;
}

const CLI::Validator&
existing_path()
{
  static const CLI::Validator validator(
    [](std::string& path) {
      struct stat st;
      return ::lstat(path.c_str(), &st) == 0 ? std::string()
                                             : "'" + path + "' does not exist";
    },
    "PATH");
  return validator;
}

void
note(const std::string& message)
{
  std::cerr << "kiln: " << message << "\n";
}

// The first word of the command line that names no command ("frobnicate"),
// or "" if the command is known (or there is none).
std::string
unknown_command(CLI::App& app, int argc, char** argv)
{
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.starts_with("-")) {
      const CLI::Option* option = app.get_option_no_throw(arg.substr(0, arg.find('=')));
      if (option && option->get_type_size() != 0 && arg.find('=') == std::string::npos) {
        ++i; // its value
      }
      continue;
    }
    for (const auto* sub : app.get_subcommands({})) {
      if (sub->check_name(arg)) {
        return "";
      }
    }
    return arg;
  }
  return "";
}

} // namespace kiln::cli

int
main(int argc, char** argv)
{
  using namespace kiln;
  // The builder of Cargo units, run by kiln itself inside the sandbox.
  if (argc == 2 && std::string_view(argv[1]) == "__rust-unit") {
    return cargo::run_rust_unit();
  }
  // A peer closing a connection must be an error, not a silent death.
  std::signal(SIGPIPE, SIG_IGN);
  cli::Context ctx;
  CLI::App app{"kiln: a build cache for Rust. Crate builds become hermetic derivations whose\n"
               "outputs live in a content-addressed store and move between machines through\n"
               "signed Nix-compatible binary caches.",
               "kiln"};
  app.require_subcommand(1);
  app.fallthrough();
  app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);
  app.add_option("--kiln-config", ctx.config_file,
                 "Read kiln's settings from this YAML file (--config is cargo's, in a Cargo project)")
    ->envname("KILN_CONFIG")
    ->type_name("FILE");
  app.add_flag("-q,--quiet", ctx.quiet, "Print only results and errors");
  app.add_flag("--refresh", ctx.refresh,
               "Ask binary caches again about paths remembered as missing (kiln build --refresh)");
  for (const auto& info : Settings::table()) {
    std::string flag = std::string("--") + info.key;
    if (std::string(info.key) == "jobs") {
      flag = "-j," + flag;
    }
    ctx.flag_options[info.key] =
      app.add_option(flag, ctx.flag_values[info.key],
                     std::string(info.help) + " [env: " + info.env + "]")
        ->group("Settings");
  }

  cli::register_hash_commands(app, ctx);
  cli::register_nar_commands(app, ctx);
  cli::register_store_commands(app, ctx);
  cli::register_config_commands(app, ctx);
  cli::register_cache_commands(app, ctx);
  cli::register_derivation_commands(app, ctx);
  cli::register_build_commands(app, ctx);
  cli::register_cargo_commands(app, ctx);
  cli::register_install_commands(app, ctx);
  cli::register_serve_commands(app, ctx);
  cli::register_doctor_commands(app, ctx);

  try {
    // What follows `--` is for the program kiln runs (a test harness,
    // clippy, `kiln run`'s binary), not for kiln.
    std::vector<std::string> args;
    for (int i = argc - 1; i >= 1; --i) {
      if (std::string_view(argv[i]) == "--" && ctx.after_dashes.empty() && args.empty()) {
        for (int j = i + 1; j < argc; ++j) {
          ctx.after_dashes.push_back(argv[j]);
        }
        ctx.has_dashes = true;
        argc = i;
        break;
      }
    }
    for (int i = argc - 1; i >= 1; --i) {
      args.push_back(argv[i]);
    }
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {
      return app.exit(e); // --help, --version
    }
    std::string unknown = cli::unknown_command(app, argc, argv);
    std::cerr << "kiln: error: "
              << (unknown.empty() ? std::string(e.what()) : "unknown command '" + unknown + "'")
              << "\n"
              << "Run 'kiln --help' (or 'kiln COMMAND --help') for usage.\n";
    return 2;
  }

  try {
    return ctx.action ? ctx.action() : 0;
  } catch (const UsageError& e) {
    std::cerr << "kiln: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kiln: error: " << e.what() << "\n";
    return 1;
  }
}
