// kiln key …, kiln copy, kiln push
#include "cli.hpp"

#include <kiln/util/error.hpp>

#include <fcntl.h>
#include <unistd.h>

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

} // namespace

void
register_cache_commands(CLI::App& app, Context& ctx)
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

  auto run_push = [&ctx](const std::string& url, const std::vector<std::string>& texts,
                         const std::string& key_file, const std::string& compression,
                         bool closure) {
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
    auto result = push(ctx.store(), *cache, resolve_all(ctx, texts), options);
    if (!ctx.quiet) {
      note("pushed " + std::to_string(result.uploaded.size()) + " paths (" +
           human_size(result.bytes_uploaded) + ") to " + url + "; " +
           std::to_string(result.already_present.size()) + " were already there" +
           (secret ? "" : "; not signed (no --secret-key-file)"));
    }
    return 0;
  };

  copy->callback([&ctx, copy_args, run_push] {
    ctx.action = [&ctx, copy_args, run_push] {
      if (!copy_args->to.empty()) {
        return run_push(copy_args->to, copy_args->paths, copy_args->secret_key_file,
                        copy_args->compression, !copy_args->no_closure);
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

  struct PushArgs
  {
    std::string url;
    std::vector<std::string> paths;
    std::string compression = "zstd";
    bool no_closure = false;
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
  push_cmd->callback([&ctx, push_args, run_push] {
    ctx.action = [push_args, run_push] {
      return run_push(push_args->url, push_args->paths, "", push_args->compression,
                      !push_args->no_closure);
    };
  });
}

} // namespace kiln::cli
