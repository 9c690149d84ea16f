// kiln's binary-cache server: serves cache folders over HTTP(S) to Nix and
// kiln clients, and accepts uploads that it verifies before publishing.
//
// --- Routes --- (PREFIX is "" for the cache served at "/", else "/<name>")
//
//   GET|HEAD PREFIX/nix-cache-info    the folder's file, else a generated one
//                                     (StoreDir, WantMassQuery: 1, Priority)
//   GET|HEAD PREFIX/<hash>.narinfo    text/x-nix-narinfo; <hash> = 32 nix32 digits
//   GET|HEAD PREFIX/nar/<file>        application/x-nix-nar, streamed from disk;
//                                     single and multiple byte ranges (206)
//   PUT      PREFIX/nar/<file>        staged: invisible until a narinfo claims it
//   PUT      PREFIX/<hash>.narinfo    verified (below), then published with its NAR
//   PUT      PREFIX/nix-cache-info    replaces the file (its StoreDir must match)
//   GET      /metrics                 Prometheus text format
//
// <file> is [0-9A-Za-z][0-9A-Za-z+_=-]* ".nar" [ "." [a-z0-9]+ ]. Anything
// else, or a path with "." / ".." / empty segments, is 400; a well-formed
// key that is not there is 404.
//
// --- Access ---
//
// Reads of a public cache need nothing. A private cache needs a token with
// the `read` scope for it; a PUT needs `write` (which implies `read`). The
// token comes as "Authorization: Bearer TOKEN", or as the password of Basic
// auth (what Nix sends from a netrc file). No or an unknown token: 401; a
// token without the scope for that cache: 403. Uploads are checked (token,
// Content-Length against max_upload_size: 413) before their body is read,
// also for "Expect: 100-continue"; a rejected request's connection is closed
// so that its unread body is never taken for a request.
//
// --- Publishing a narinfo (PUT <hash>.narinfo), in this order ---
//
//   1. it parses strictly (NarInfo::parse) for the cache's store directory,
//      its StorePath has <hash> as hash part, its URL is nar/<file>   (400)
//   2. every reference but itself already has a narinfo here          (409)
//   3. it carries a valid signature by one of the cache's trusted keys;
//      failing that the server signs it with the cache's secret key;
//      a cache with neither rejects it                                 (403)
//   4. its NAR is found: published nar/<file> (never overwritten), else the
//      staged upload (409 if neither); it is decompressed and parsed as a
//      NAR while hashed; NarHash, NarSize, FileHash and FileSize must
//      match (400, and a staged NAR that fails is deleted)
//   5. the NAR is renamed into nar/, then the narinfo is written (temporary
//      file + rename). A narinfo already published with the same NAR hash
//      gains the new signatures (200); with another NAR hash it is 409.
//
// Cache folder layout: nix-cache-info, <hash>.narinfo, nar/<file>, and
// .staging/ (uploads not claimed yet; deleted after a day).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {

// One cache folder and how it is served.
struct ServedCache
{
  std::string name;                     // URL prefix "/<name>"; "" means served at "/"
  std::filesystem::path path;           // created if missing
  bool is_private = false;              // reads need a `read` token
  std::string store_dir = "/kiln/store";
  int priority = 40;                    // advertised in a generated nix-cache-info
  std::string secret_key_file;          // sign uploads that lack a trusted signature
  std::vector<std::string> trusted_keys; // "name:base64" public keys
};

// A bearer token and what it may do.
struct AccessToken
{
  std::string secret;                   // never logged or printed
  std::string label;                    // how the access log names its user
  std::vector<std::string> caches;      // cache names; "*" = all, "/" = the one at "/"
  bool can_read = false;
  bool can_write = false;               // implies can_read
};

struct ServerConfig
{
  std::string host = "127.0.0.1";
  int port = 5000;                      // 0: any free port
  std::string tls_cert;                 // both set: HTTPS
  std::string tls_key;
  unsigned threads = 16;                // worker threads (one per open connection)
  uint64_t max_upload_size = 4ull << 30; // per NAR upload, in bytes
  bool access_log = true;               // one line per request
  bool metrics = true;                  // serve /metrics
  std::chrono::seconds shutdown_grace{30}; // in-flight requests get this long
  std::string store_dir = "/kiln/store"; // the config's store-dir, for caches added later
  int priority = 40;                     // the config's priority, likewise
  std::vector<ServedCache> caches;
  std::vector<AccessToken> tokens;
};

// Parse "ADDR:PORT" or "[v6-addr]:PORT"; throws UsageError.
std::pair<std::string, int> parse_listen_address(std::string_view text);

// Read a server config (YAML). Relative paths in it are relative to the
// file's folder; `store_dir` is the default store directory of its caches.
// Errors are UsageError naming "file:line".
//
//   listen: 127.0.0.1:5000          store-dir: /kiln/store
//   max-upload-size: 4G             threads: 16
//   access-log: true                metrics: true
//   shutdown-grace: 30              priority: 40
//   tls: {cert: FILE, key: FILE}
//   caches:
//     NAME: {path: DIR, private: false, secret-key-file: FILE,
//            trusted-keys: [KEY, ...], store-dir: DIR, priority: 40}
//   tokens:
//     - {token: SECRET | token-file: FILE, name: LABEL,
//        caches: [NAME | "*" | "/", ...], scopes: [read, write]}
ServerConfig load_server_config(const std::filesystem::path& file, const std::string& store_dir);

// Receives access-log and warning lines (without a trailing newline).
using ServerLog = std::function<void(std::string_view line)>;

class CacheServer
{
public:
  // Checks the config (keys, caches) and prepares the folders; throws
  // UsageError for a bad config.
  explicit CacheServer(ServerConfig config, ServerLog log = {});
  ~CacheServer();
  CacheServer(const CacheServer&) = delete;
  CacheServer& operator=(const CacheServer&) = delete;

  // Bind the listening socket; returns the port (the chosen one for port 0).
  int bind();
  // "http://127.0.0.1:5000" (after bind()).
  std::string url() const;
  // Serve until shutdown(); returns once in-flight requests have finished.
  void run();
  // Stop accepting connections; requests in flight may finish within
  // shutdown_grace, then run() returns. Thread-safe; any time.
  void shutdown();

  // The /metrics text.
  std::string metrics_text() const;

private:
  struct Impl;
  std::unique_ptr<Impl> m;
};

} // namespace kiln
