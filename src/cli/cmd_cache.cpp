// kiln key …, kiln copy, kiln push, kiln sign, kiln use, kiln cache gc
#include "cli.hpp"

#include <kiln/cache/cache_gc.hpp>
#include <kiln/util/error.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <ctime>
#include <iostream>

namespace kiln::cli {

namespace {

std::vector<StorePath>
resolve_all(Context& ctx, const std::vector<std::string>& texts)
{
  std::vector<StorePath> out;
  for (const auto& t : texts) {
    out.push_back(ctx.store().resolve(t));
  }
  return out;
}

ProgressFn
progress_printer(Context& ctx)
{
  if (ctx.quiet) {
    return {};
  }
  auto mutex = std::make_shared<std::mutex>();
  return [mutex](const std::string& line) {
    std::lock_guard guard(*mutex);
    std::cerr << line << "\n";
  };
}

// "2024-05-01 12:00 UTC"
std::string
format_time(std::chrono::system_clock::time_point t)
{
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", &tm);
  return buf;
}

// The folder of a cache given as file:///dir or a path.
std::filesystem::path
cache_folder_of(const std::string& url)
{
  if (url.starts_with("http://") || url.starts_with("https://")) {
    throw UsageError("kiln cache gc works on the cache's folder, not over HTTP: run it where "
                     "the folder is (for kiln serve, the path of the cache in its config; for "
                     "a static server, its root)");
  }
  std::string path = url.starts_with("file://") ? url.substr(7) : url;
  if (path.empty()) {
    throw UsageError("cache URL '" + url + "' names no folder");
  }
  return std::filesystem::absolute(path).lexically_normal();
}

void
register_use_command(CLI::App& app, Context& ctx)
{
  struct UseArgs
  {
    std::string url;
    std::vector<std::string> keys;
  };
  auto args = std::make_shared<UseArgs>();
  auto* use = app.add_subcommand(
    "use", "Add a binary cache to the substituters (and its public key to the trusted keys) "
           "in your config file (--kiln-config, $KILN_CONFIG, else ~/.config/kiln/config.yaml)");
  use->add_option("CACHE", args->url, "The cache's URL (https://…, http://…, file:///dir)")
    ->required();
  use->add_option("--key", args->keys, "Trust this public key (NAME:BASE64; repeatable)")
    ->type_name("PUB");
  use->callback([&ctx, args] {
    ctx.action = [&ctx, args] {
      std::string url = args->url;
      while (url.size() > 1 && url.back() == '/') {
        url.pop_back();
      }
      open_binary_cache(url);   // a URL kiln can use (no connection is made)
      std::vector<ConfigAddition> additions = {{"substituters", url}};
      for (const auto& key : args->keys) {
        try {
          PublicKey::parse(key);
        } catch (const FormatError& e) {
          throw UsageError("--key '" + key + "': " + e.what());
        }
        additions.push_back({"trusted-public-keys", key});
      }
      std::filesystem::path file =
        ctx.config_file.empty() ? user_config_file() : std::filesystem::path(ctx.config_file);
      bool rewritten = add_to_config(file, additions);
      for (const auto& a : additions) {
        std::string what = a.key == "substituters" ? "substituter " : "trusted public key ";
        std::cout << (a.added ? "added " + what + a.value + " to " + file.string()
                              : what + a.value + " is already in " + file.string())
                  << "\n";
      }
      if (rewritten) {
        note("rewrote " + file.string() + " as plain YAML (its comments were not kept)");
      }
      // What the file now says, and what still overrides it.
      Settings now = load_settings({}, file);
      for (const char* env : {"KILN_SUBSTITUTERS", "KILN_TRUSTED_PUBLIC_KEYS"}) {
        if (get_env(env)) {
          note(std::string("warning: $") + env + " is set and overrides the config file");
        }
      }
      if (args->keys.empty() && now.require_sigs > now.trusted_public_keys.size()) {
        note("warning: no trusted key yet: paths from " + url +
             " are refused unless signed by one (kiln use " + url + " --key NAME:KEY)");
      }
      return 0;
    };
  });
}

void
register_sign_command(CLI::App& app, Context& ctx)
{
  struct SignArgs
  {
    std::string key_file;
    std::string to;
    std::vector<std::string> paths;
  };
  auto args = std::make_shared<SignArgs>();
  auto* sign = app.add_subcommand(
    "sign", "Add a key's signature to store paths, and with --to to their narinfos in a binary "
            "cache (so that paths built by several builders carry several signatures)");
  sign->add_option("--key-file", args->key_file, "The secret key to sign with")
    ->required()
    ->type_name("FILE");
  sign->add_option("--to", args->to, "Also sign the narinfos of the paths in this cache");
  sign->add_option("PATH", args->paths, "Store paths (not their closures)")->required();
  sign->callback([&ctx, args] {
    ctx.action = [&ctx, args] {
      SecretKey key = SecretKey::read_file(args->key_file);
      std::unique_ptr<CacheClient> cache;
      if (!args->to.empty()) {
        cache = ctx.open_cache(args->to);
      }
      auto changed = sign_paths(ctx.store(), cache.get(), resolve_all(ctx, args->paths), key,
                                ctx.settings().connections);
      if (!ctx.quiet) {
        note("signed " + std::to_string(changed.size()) + " of " +
             std::to_string(args->paths.size()) + " paths with " + key.public_key().name() +
             (cache ? " in " + args->to : "") + (changed.size() < args->paths.size()
                                                  ? " (the others had its signature)"
                                                  : ""));
      }
      return 0;
    };
  });
}

void
print_cache_gc_result(const CacheGcResult& result, bool dry_run, bool json, bool quiet)
{
  StoreDir store_dir(result.store_dir);
  auto seconds = [](std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
  };
  if (json) {
    nlohmann::json j;
    j["dryRun"] = dry_run;
    j["deleted"] = nlohmann::json::array();
    for (const auto& d : result.deleted) {
      j["deleted"].push_back({{"path", store_dir.print(d.path)},
                              {"bytes", d.bytes},
                              {"lastUsed", seconds(d.last_used)}});
    }
    j["bytesFreed"] = result.bytes_freed;
    j["kept"] = result.kept.size();
    j["bytesKept"] = result.bytes_kept;
    j["orphansRemoved"] = result.orphans_removed;
    j["warnings"] = result.warnings;
    std::cout << j.dump(2) << "\n";
    return;
  }
  for (const auto& w : result.warnings) {
    note("warning: " + w);
  }
  const char* verb = dry_run ? "would delete " : "deleted ";
  for (const auto& d : result.deleted) {
    std::cout << verb << store_dir.print(d.path) << " (" << human_size(d.bytes)
              << ", last used " << format_time(d.last_used) << ")\n";
  }
  for (const auto& o : result.orphans_removed) {
    std::cout << verb << o << " (no narinfo names it)\n";
  }
  if (!quiet) {
    note(std::string(verb) + std::to_string(result.deleted.size()) + " paths" +
         (result.orphans_removed.empty()
            ? ""
            : " and " + std::to_string(result.orphans_removed.size()) + " orphaned files") +
         ", " + (dry_run ? "freeing " : "freed ") + human_size(result.bytes_freed) +
         "; kept " + std::to_string(result.kept.size()) + " paths (" +
         human_size(result.bytes_kept) + ")");
  }
}

void
register_cache_gc_command(CLI::App& cache, Context& ctx)
{
  struct GcArgs
  {
    std::string url;
    std::optional<unsigned> keep_days;
    std::string max_size;
    bool dry_run = false;
    bool json = false;
  };
  auto args = std::make_shared<GcArgs>();
  auto* gc = cache.add_subcommand(
    "gc", "Drop the least recently used paths of a cache folder (last use: the latest access "
          "or modification time of a path's narinfo and NAR), never one that a kept path "
          "references; NAR files with their narinfos");
  gc->add_option("CACHE", args->url, "The cache folder: file:///dir or a path")->required();
  gc->add_option("--keep-days", args->keep_days,
                 "Drop what has not been used for this many days");
  gc->add_option("--max-size", args->max_size,
                 "Then drop more, least recently used first, until the cache is no larger "
                 "(e.g. 50G)");
  gc->add_flag("-n,--dry-run", args->dry_run, "Only print what would be deleted");
  gc->add_flag("--json", args->json, "Print the result as JSON");
  gc->callback([&ctx, args] {
    ctx.action = [&ctx, args] {
      CacheGcOptions options;
      if (!args->keep_days && args->max_size.empty()) {
        throw UsageError("give --keep-days N, --max-size SIZE, or both");
      }
      if (args->keep_days) {
        options.keep_for = std::chrono::hours(24) * *args->keep_days;
      }
      if (!args->max_size.empty()) {
        options.max_size = parse_size(args->max_size);
      }
      options.dry_run = args->dry_run;
      auto result = collect_cache_garbage(cache_folder_of(args->url), options);
      print_cache_gc_result(result, options.dry_run, args->json, ctx.quiet);
      return 0;
    };
  });
}

// `kiln push` and `kiln copy --to`: upload what the cache lacks, signed
// with the given key file or the configured one; with `drvs`, each path's
// derivation too, with its closure (for kiln cache check).
int
push_paths(Context& ctx, const std::string& url, const std::vector<std::string>& texts,
           const std::string& key_file, const std::string& compression, bool closure,
           bool drvs)
{
  auto cache = ctx.open_cache(url);
  std::optional<SecretKey> secret;
  std::string file = key_file.empty() ? ctx.settings().secret_key_file : key_file;
  if (!file.empty()) {
    secret = SecretKey::read_file(file);
  }
  PushOptions options;
  options.compression = compression;
  options.key = secret ? &*secret : nullptr;
  options.connections = ctx.settings().connections;
  options.closure = closure;
  options.progress = progress_printer(ctx);
  auto paths = resolve_all(ctx, texts);
  if (drvs) {
    for (size_t i = 0, n = paths.size(); i < n; ++i) {
      auto info = ctx.store().query_path_info(paths[i]);
      if (info && info->deriver && ctx.store().is_valid(*info->deriver)) {
        paths.push_back(*info->deriver);
      } else if (!ctx.quiet) {
        note("warning: the derivation of " + ctx.store().print(paths[i]) +
             " is not in this store; not pushed");
      }
    }
  }
  auto result = push(ctx.store(), *cache, paths, options);
  if (!ctx.quiet) {
    note("pushed " + std::to_string(result.uploaded.size()) + " paths (" +
         human_size(result.bytes_uploaded) + ") to " + url + "; " +
         std::to_string(result.already_present.size() + result.signed_in_cache.size()) +
         " were already there" +
         (result.signed_in_cache.empty()
            ? ""
            : " (" + std::to_string(result.signed_in_cache.size()) + " gained signatures)") +
         (secret ? "" : "; not signed (no --secret-key-file)"));
  }
  return 0;
}

void
register_key_commands(CLI::App& app, Context& ctx)
{
  auto* key = app.add_subcommand("key", "Create and inspect signing keys (Ed25519, Nix format)");
  key->require_subcommand(1);

  struct GenArgs
  {
    std::string name;
    std::string file;
  };
  auto gen_args = std::make_shared<GenArgs>();
  auto* gen = key->add_subcommand(
    "generate", "Write a new secret key to a file (mode 0600) and print its public key");
  gen->add_option("NAME", gen_args->name, "Key name, e.g. cache.example.org-1")->required();
  gen->add_option("--secret-file", gen_args->file, "Where to write the secret key (must not exist)")
    ->required();
  gen->callback([&ctx, gen_args] {
    ctx.action = [gen_args] {
      SecretKey secret = SecretKey::generate(gen_args->name);
      UniqueFd fd(::open(gen_args->file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      if (!fd) {
        if (errno == EEXIST) {
          throw Error("'" + gen_args->file + "' already exists; not overwriting a key");
        }
        throw_errno("creating '" + gen_args->file + "'");
      }
      write_all(fd.get(), secret.to_string(), "writing the secret key");
      if (::fsync(fd.get()) != 0) {
        throw_errno("syncing '" + gen_args->file + "'");
      }
      note("secret key written to " + gen_args->file + "; the public key is:");
      std::cout << secret.public_key().to_string() << std::endl;
      return 0;
    };
  });

  auto public_file = std::make_shared<std::string>();
  auto* pub = key->add_subcommand("public", "Print the public key of a secret key file");
  pub->add_option("SECRET-FILE", *public_file, "Secret key file")->required();
  pub->callback([&ctx, public_file] {
    ctx.action = [public_file] {
      std::cout << SecretKey::read_file(*public_file).public_key().to_string() << "\n";
      return 0;
    };
  });
}

void
register_copy_command(CLI::App& app, Context& ctx)
{
  struct CopyArgs
  {
    std::vector<std::string> from;
    std::string to;
    std::string secret_key_file;
    std::string compression = "zstd";
    bool no_closure = false;
    bool refresh = false;
    std::vector<std::string> paths;
  };
  auto copy_args = std::make_shared<CopyArgs>();
  auto* copy = app.add_subcommand(
    "copy", "Copy store paths (with their closures) from binary caches into the store, or from "
            "the store to a binary cache");
  auto* from_opt = copy->add_option("--from", copy_args->from,
                                    "Substitute from this cache (repeatable; default: the "
                                    "configured substituters, all asked at once)");
  auto* to_opt = copy->add_option("--to", copy_args->to, "Upload to this cache");
  // One URL per --from, so that paths after it are not taken for caches.
  from_opt->allow_extra_args(false);
  from_opt->excludes(to_opt);
  copy->add_option("--secret-key-file", copy_args->secret_key_file,
                   "With --to: sign what is uploaded with this key [env: KILN_SECRET_KEY_FILE]");
  copy->add_option("--compression", copy_args->compression, "With --to: zstd, xz or none")
    ->capture_default_str();
  copy->add_flag("--no-closure", copy_args->no_closure, "Copy only the paths named");
  copy->add_flag("--refresh", copy_args->refresh,
                 "Ignore remembered 'not in this cache' answers");
  copy->add_option("PATH", copy_args->paths, "Store paths")->required();


  copy->callback([&ctx, copy_args] {
    ctx.action = [&ctx, copy_args] {
      if (!copy_args->to.empty()) {
        return push_paths(ctx, copy_args->to, copy_args->paths, copy_args->secret_key_file,
                          copy_args->compression, !copy_args->no_closure, false);
      }
      std::vector<std::string> urls = copy_args->from;
      if (urls.empty()) {
        urls = ctx.settings().substituters;
      }
      if (urls.empty()) {
        throw UsageError("no cache to copy from: give --from URL or set substituters");
      }
      std::vector<std::unique_ptr<CacheClient>> clients;
      std::vector<CacheClient*> caches;
      for (const auto& url : urls) {
        clients.push_back(ctx.open_cache(url));
        caches.push_back(clients.back().get());
      }
      SubstituteOptions options;
      options.connections = ctx.settings().connections;
      options.refresh = copy_args->refresh;
      options.progress = progress_printer(ctx);
      auto wanted = resolve_all(ctx, copy_args->paths);
      auto result = substitute(ctx.store(), caches, ctx.trust_policy(), wanted, options);
      for (const auto& [path, why] : result.failed) {
        std::cerr << "kiln: error: cannot substitute '" << ctx.store().print(path)
                  << "': " << why << "\n";
      }
      if (!ctx.quiet) {
        note("fetched " + std::to_string(result.fetched.size()) + " paths (" +
             human_size(result.bytes_downloaded) + "), " +
             std::to_string(result.already_valid.size()) + " already valid, " +
             std::to_string(result.failed.size()) + " failed");
      }
      return result.failed.empty() ? 0 : 1;
    };
  });
}

void
register_push_command(CLI::App& app, Context& ctx)
{
  struct PushArgs
  {
    std::string url;
    std::vector<std::string> paths;
    std::string compression = "zstd";
    bool no_closure = false;
    bool push_drvs = false;
  };
  auto push_args = std::make_shared<PushArgs>();
  auto* push_cmd = app.add_subcommand(
    "push", "Upload store paths (with their closures) that a binary cache lacks, signed with "
            "secret-key-file");
  push_cmd->add_option("URL", push_args->url, "The cache")->required();
  push_cmd->add_option("PATH", push_args->paths, "Store paths")->required();
  push_cmd->add_option("--compression", push_args->compression, "zstd, xz or none")
    ->capture_default_str();
  push_cmd->add_flag("--no-closure", push_args->no_closure, "Push only the paths named");
  push_cmd->add_flag("--push-drvs", push_args->push_drvs,
                     "Also push each path's derivation (.drv) with its closure, so that anyone "
                     "can build it again and compare (kiln cache check)");
  push_cmd->callback([&ctx, push_args] {
    ctx.action = [&ctx, push_args] {
      return push_paths(ctx, push_args->url, push_args->paths, "", push_args->compression,
                        !push_args->no_closure, push_args->push_drvs);
    };
  });
}

} // namespace

void
register_cache_commands(CLI::App& app, Context& ctx)
{
  register_use_command(app, ctx);
  register_sign_command(app, ctx);
  auto* cache = app.add_subcommand("cache", "Maintain binary-cache folders");
  cache->require_subcommand(1);
  register_cache_gc_command(*cache, ctx);
  register_cache_check_command(*cache, ctx);
  register_key_commands(app, ctx);
  register_copy_command(app, ctx);
  register_push_command(app, ctx);
}

} // namespace kiln::cli
