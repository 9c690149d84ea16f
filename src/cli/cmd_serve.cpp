// kiln serve: binary-cache folders over HTTP(S)
#include "cli.hpp"

#include <kiln/server/server.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <thread>

namespace kiln::cli {

namespace {

struct ServeArgs
{
  std::string dir;
  std::string listen;
  std::string config;
  std::string tls_cert;
  std::string tls_key;
  unsigned threads = 0;
  std::string max_upload_size;
  bool is_private = false;
  std::string secret_key_file;
  std::vector<std::string> trusted_keys;
};

ServerConfig
make_config(Context& ctx, const ServeArgs& args)
{
  ServerConfig config;
  if (!args.config.empty()) {
    config = load_server_config(args.config, ctx.settings().store_dir);
  } else {
    config.store_dir = ctx.settings().store_dir;
  }
  if (!args.listen.empty()) {
    std::tie(config.host, config.port) = parse_listen_address(args.listen);
  }
  if (!args.tls_cert.empty() || !args.tls_key.empty()) {
    if (args.tls_cert.empty() || args.tls_key.empty()) {
      throw UsageError("--tls-cert and --tls-key go together");
    }
    config.tls_cert = args.tls_cert;
    config.tls_key = args.tls_key;
  }
  if (args.threads > 0) {
    config.threads = args.threads;
  }
  if (!args.max_upload_size.empty()) {
    config.max_upload_size = parse_size(args.max_upload_size);
    if (config.max_upload_size == 0) {
      throw UsageError("--max-upload-size must not be 0");
    }
  }
  if (ctx.quiet) {
    config.access_log = false;
  }
  if (!args.dir.empty()) {
    ServedCache root;
    root.name = "";
    root.path = std::filesystem::absolute(args.dir);
    root.is_private = args.is_private;
    root.store_dir = config.store_dir;
    root.priority = config.priority;
    root.secret_key_file = args.secret_key_file;
    root.trusted_keys = args.trusted_keys;
    config.caches.insert(config.caches.begin(), root);
  } else if (args.is_private || !args.secret_key_file.empty() || !args.trusted_keys.empty()) {
    throw UsageError("--private, --secret-key-file and --trusted-key apply to a DIR given on the "
                     "command line; configure named caches in the server config");
  }
  if (config.caches.empty()) {
    throw UsageError("nothing to serve: give a cache folder (kiln serve DIR) or a server config "
                     "with caches (kiln serve --config FILE)");
  }
  return config;
}

int
serve(Context& ctx, const ServeArgs& args)
{
  ServerConfig config = make_config(ctx, args);
  auto log_mutex = std::make_shared<std::mutex>();
  ServerLog log = [log_mutex](std::string_view line) {
    std::lock_guard guard(*log_mutex);
    std::string text(line);
    text += '\n';
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
  };

  // SIGTERM and SIGINT are taken by a thread of their own; every other
  // thread (the server's workers included) inherits the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigset_t old_mask;
  pthread_sigmask(SIG_BLOCK, &signals, &old_mask);
  struct RestoreMask
  {
    sigset_t mask;
    ~RestoreMask()
    {
      pthread_sigmask(SIG_SETMASK, &mask, nullptr);
    }
  } restore{old_mask};

  CacheServer server(config, log);
  server.bind();
  if (!ctx.quiet) {
    for (const auto& cache : config.caches) {
      note("serving " + (cache.name.empty() ? std::string("/") : "/" + cache.name + "/") +
           " from " + cache.path.string() + (cache.is_private ? " (private)" : "") +
           (cache.secret_key_file.empty() ? "" : " (signing uploads)"));
    }
  }
  if (std::none_of(config.tokens.begin(), config.tokens.end(),
                   [](const AccessToken& t) { return t.can_write; })) {
    note("read-only: no token has the write scope, so every upload is refused (tokens go in "
         "--config FILE; see docs/hosting.md)");
  }
  note("listening on " + server.url());

  std::atomic<bool> done{false};
  std::thread waiter([&] {
    while (!done) {
      struct timespec timeout = {0, 200 * 1000 * 1000};
      int sig = sigtimedwait(&signals, nullptr, &timeout);
      if (sig == SIGTERM || sig == SIGINT) {
        note(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") +
             "; finishing the requests in flight");
        server.shutdown();
        return;
      }
    }
  });
  try {
    server.run();
  } catch (...) {
    done = true;
    waiter.join();
    throw;
  }
  done = true;
  waiter.join();
  if (!ctx.quiet) {
    note("stopped");
  }
  return 0;
}

} // namespace

void
register_serve_commands(CLI::App& app, Context& ctx)
{
  auto args = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand(
    "serve", "Serve binary-cache folders over HTTP(S): reads for Nix and kiln, verified and "
             "signed uploads with tokens");
  cmd->add_option("DIR", args->dir, "A cache folder to serve at '/'");
  cmd->add_option("--listen", args->listen, "ADDR:PORT to listen on (default 127.0.0.1:5000; "
                                            "port 0 picks a free one)");
  cmd->add_option("--config", args->config,
                  "Server config (YAML): named caches, tokens, TLS, limits")
    ->type_name("FILE");
  cmd->add_option("--tls-cert", args->tls_cert, "Serve HTTPS with this PEM certificate")
    ->type_name("FILE");
  cmd->add_option("--tls-key", args->tls_key, "... and this PEM private key")->type_name("FILE");
  cmd->add_option("--threads", args->threads, "Worker threads (default 16)")
    ->check(CLI::Range(1u, 1024u));
  cmd->add_option("--max-upload-size", args->max_upload_size,
                  "Largest NAR upload accepted (default 4G)");
  cmd->add_flag("--private", args->is_private, "DIR: reads need a token with the read scope");
  cmd->add_option("--secret-key-file", args->secret_key_file,
                  "DIR: sign uploaded narinfos that lack a trusted signature")
    ->type_name("FILE");
  cmd->add_option("--trusted-key", args->trusted_keys,
                  "DIR: accept uploads signed by this public key (repeatable)")
    ->type_name("KEY")
    ->allow_extra_args(false); // one key per --trusted-key: never swallow DIR
  cmd->callback([&ctx, args] { ctx.action = [&ctx, args] { return serve(ctx, *args); }; });
}

} // namespace kiln::cli
