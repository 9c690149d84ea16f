// The HTTP side of `kiln serve`: routes, access control, streaming, the
// access log, /metrics and graceful shutdown, over cpp-httplib 0.11.4.
#include "cache_folder.hpp"
#include "http_support.hpp"

#include <kiln/cache/binary_cache.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/server/server.hpp>
#include <kiln/util/strings.hpp>

#include <httplib.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

namespace kiln {

using namespace server_detail;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t k_small_body_limit = 1 << 20; // narinfo, nix-cache-info

// httplib::Server or SSLServer, plus the two shutdown steps 0.11.4 lacks
// (its stop() also cuts off responses being streamed).
template <class Base>
class GracefulServer : public Base
{
public:
  using Base::Base;

  // Stop accepting connections. accept() fails on the shut-down socket, so
  // listen_after_bind() closes it and then waits for the connections being
  // served (ThreadPool::shutdown joins the workers). Unlike stop(), this
  // leaves svr_sock_ set, which streaming responses and keep-alive loops
  // check to keep going.
  void
  stop_accepting()
  {
    auto sock = this->svr_sock_.load();
    if (sock != INVALID_SOCKET) {
      ::shutdown(sock, SHUT_RDWR);
    }
  }

  // After the grace period: streaming responses and keep-alive loops see
  // the server as stopped and end (the socket itself is closed already).
  void
  abandon_connections()
  {
    this->svr_sock_ = INVALID_SOCKET;
  }
};

} // namespace

struct CacheServer::Impl
{
  ServerConfig config;
  ServerLog log;

  std::unique_ptr<httplib::Server> http;
  std::function<void()> stop_accepting;
  std::function<void()> abandon_connections;

  std::vector<std::unique_ptr<CacheFolder>> caches;
  CacheFolder* root = nullptr;
  std::map<std::string, CacheFolder*> named;

  struct TokenEntry
  {
    std::vector<uint8_t> digest; // sha256 of the secret
    const AccessToken* token;
  };
  std::vector<TokenEntry> tokens;

  struct Metrics
  {
    std::mutex mutex;
    std::map<std::pair<std::string, std::string>, uint64_t> requests; // method, class
    std::map<std::string, uint64_t> rejected;                         // reason
    std::atomic<uint64_t> bytes_sent{0};
    std::atomic<uint64_t> narinfo_hits{0};
    std::atomic<uint64_t> narinfo_misses{0};
    std::atomic<uint64_t> nars_uploaded{0};
    std::atomic<uint64_t> upload_bytes{0};
    std::atomic<uint64_t> narinfos_published{0};
  } metrics;

  std::mutex state_mutex;
  std::condition_variable state_cv;
  int port = -1;
  bool bound = false;
  bool stopping = false;
  bool finished = false;
  std::atomic<bool> draining{false};
  std::thread watchdog;

  void
  say(const std::string& line)
  {
    if (log) {
      log(line);
    }
  }

  // --- Access ---

  const AccessToken*
  find_token(const std::string& secret) const
  {
    Hash h = hash_string(HashAlgo::sha256, secret);
    const AccessToken* found = nullptr;
    for (const auto& entry : tokens) {
      // Compare every byte of every entry: the time taken says nothing.
      unsigned char diff = 0;
      for (size_t i = 0; i < entry.digest.size(); ++i) {
        diff |= static_cast<unsigned char>(entry.digest[i] ^ h.bytes()[i]);
      }
      if (diff == 0) {
        found = entry.token;
      }
    }
    return found;
  }

  void
  authorize(const httplib::Request& req, const CacheFolder& cache, bool write)
  {
    if (!write && !cache.config().is_private) {
      return;
    }
    auto presented = presented_token(req);
    const AccessToken* token = presented ? find_token(*presented) : nullptr;
    if (!token) {
      throw HttpError(401, "unauthorized",
                      presented ? "unknown token"
                                : std::string("cache ") + cache.label() + " needs a token for " +
                                    (write ? "uploads" : "reads") +
                                    " (Authorization: Bearer TOKEN)");
    }
    t_request.user = token->label;
    const std::string& name = cache.config().name;
    bool covers = std::any_of(token->caches.begin(), token->caches.end(), [&](const auto& n) {
      return n == "*" || n == name || (n == "/" && name.empty());
    });
    if (!covers || !(write ? token->can_write : token->can_read)) {
      throw HttpError(403, "forbidden",
                      "token '" + token->label + "' may not " + (write ? "write to" : "read") +
                        " cache " + cache.label());
    }
  }

  // --- Routing ---

  // The cache a path is in, and the key inside it.
  std::pair<CacheFolder*, std::string>
  resolve(const std::string& path)
  {
    if (path.empty() || path[0] != '/') {
      throw HttpError(400, "bad_key", "the path must start with '/'");
    }
    std::string rest = path.substr(1);
    if (rest.empty()) {
      throw HttpError(404, "not_found", "this is a kiln binary cache server; no file here");
    }
    try {
      check_cache_key(rest);
    } catch (const FormatError& e) {
      throw HttpError(400, "bad_key", e.what());
    }
    auto slash = rest.find('/');
    if (slash != std::string::npos) {
      auto it = named.find(rest.substr(0, slash));
      if (it != named.end()) {
        return {it->second, rest.substr(slash + 1)};
      }
    }
    if (root) {
      return {root, rest};
    }
    throw HttpError(404, "not_found", "no cache here: '" + path + "'");
  }

  // --- GET and HEAD ---

  void
  handle_get(const httplib::Request& req, httplib::Response& res)
  {
    try {
      if (config.metrics && req.path == "/metrics") {
        set_body(res, metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
        return;
      }
      auto [cache, key] = resolve(req.path);
      authorize(req, *cache, false);
      CacheKey k = classify_key(key);
      switch (k.kind) {
      case CacheKey::Kind::cache_info:
        set_body(res, cache->cache_info(), "text/x-nix-cache-info");
        return;
      case CacheKey::Kind::narinfo:
        if (auto text = cache->read_narinfo(k.name)) {
          ++metrics.narinfo_hits;
          set_body(res, *text, "text/x-nix-narinfo");
          return;
        }
        ++metrics.narinfo_misses;
        throw HttpError(404, "not_found", "no narinfo " + key + " in cache " + cache->label());
      case CacheKey::Kind::nar:
        serve_nar(req, res, *cache, k.name);
        return;
      }
    } catch (const HttpError& e) {
      respond_error(res, e);
    }
  }

  void
  serve_nar(const httplib::Request& req, httplib::Response& res, const CacheFolder& cache,
            const std::string& file)
  {
    uint64_t size = 0;
    auto fd = cache.open_nar(file, size);
    if (!fd) {
      throw HttpError(404, "not_found", "no NAR nar/" + file + " in cache " + cache.label());
    }
    res.set_header("Accept-Ranges", "bytes");
    if (size == 0) {
      set_body(res, "", "application/x-nix-nar");
      return;
    }
    if (!t_request.ranges.empty()) {
      httplib::Ranges ranges = t_request.ranges;
      if (!normalize_ranges(ranges, size)) {
        res.set_header("Content-Range", "bytes */" + std::to_string(size));
        throw HttpError(416, "bad_range", "range not satisfiable: nar/" + file + " has " +
                                            std::to_string(size) + " bytes");
      }
      const_cast<httplib::Request&>(req).ranges = std::move(ranges); // see take_ranges()
    }
    auto shared = std::make_shared<UniqueFd>(std::move(*fd));
    t_request.streamed = true;
    // The status stays unset: httplib makes it 200, or 206 with ranges.
    res.set_content_provider(
      size, "application/x-nix-nar",
      [shared](size_t offset, size_t length, httplib::DataSink& sink) {
        // Never throw here: httplib does not catch exceptions from providers.
        thread_local std::vector<char> buf(256 * 1024);
        size_t want = std::min(length, buf.size());
        ssize_t n;
        do {
          n = ::pread(shared->get(), buf.data(), want, static_cast<off_t>(offset));
        } while (n < 0 && errno == EINTR);
        if (n <= 0 || !sink.write(buf.data(), static_cast<size_t>(n))) {
          return false;
        }
        t_request.streamed_bytes += static_cast<uint64_t>(n);
        return true;
      });
  }

  // --- PUT ---

  struct PutTarget
  {
    CacheFolder* cache;
    CacheKey key;
    uint64_t limit;
  };

  // Everything that can be decided from the headers alone.
  PutTarget
  check_put(const httplib::Request& req)
  {
    auto [cache, key] = resolve(req.path);
    authorize(req, *cache, true);
    CacheKey k = classify_key(key);
    uint64_t limit = k.kind == CacheKey::Kind::nar ? config.max_upload_size : k_small_body_limit;
    if (req.has_header("Content-Length")) {
      std::string text = req.get_header_value("Content-Length");
      uint64_t length = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), length);
      if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
        throw HttpError(400, "invalid", "bad Content-Length '" + sanitize(text) + "'");
      }
      if (length > limit) {
        throw HttpError(413, "too_large",
                        key + ": " + std::to_string(length) + " bytes is more than the " +
                          std::to_string(limit) + " this server accepts");
      }
    } else if (lower(req.get_header_value("Transfer-Encoding")).find("chunked") ==
               std::string::npos) {
      throw HttpError(411, "length_required", "an upload needs a Content-Length");
    }
    return {cache, k, limit};
  }

  // Read the whole body into `consume`, at most `limit` bytes.
  static void
  read_body(const httplib::ContentReader& reader, uint64_t limit,
            const std::function<void(std::string_view)>& consume, bool& consumed)
  {
    uint64_t total = 0;
    bool too_large = false;
    std::exception_ptr error;
    bool ok = reader([&](const char* data, size_t length) {
      total += length;
      if (total > limit) {
        too_large = true;
        return false;
      }
      try {
        consume(std::string_view(data, length));
      } catch (...) {
        error = std::current_exception();
        return false;
      }
      return true;
    });
    if (error) {
      std::rethrow_exception(error);
    }
    if (too_large) {
      throw HttpError(413, "too_large",
                      "the upload is larger than " + std::to_string(limit) + " bytes");
    }
    if (!ok) {
      throw HttpError(400, "broken_upload", "the upload broke off");
    }
    consumed = true;
  }

  void
  reject(httplib::Response& res, const HttpError& e)
  {
    {
      std::lock_guard lock(metrics.mutex);
      ++metrics.rejected[e.reason()];
    }
    respond_error(res, e);
  }

  void
  handle_put(const httplib::Request& req, httplib::Response& res,
             const httplib::ContentReader& reader)
  {
    bool consumed = false;
    try {
      PutTarget target = check_put(req);
      CacheFolder& cache = *target.cache;
      switch (target.key.kind) {
      case CacheKey::Kind::nar: {
        cache.sweep_staging(std::chrono::hours(24));
        StagedUpload upload(cache, target.key.name);
        read_body(reader, target.limit, [&](std::string_view d) { upload.write(d); }, consumed);
        upload.commit();
        ++metrics.nars_uploaded;
        metrics.upload_bytes += upload.size();
        res.status = 201;
        set_body(res, "staged nar/" + target.key.name + " (" + std::to_string(upload.size()) +
                        " bytes); a narinfo naming it publishes it\n",
                 "text/plain; charset=utf-8");
        break;
      }
      case CacheKey::Kind::narinfo: {
        std::string body;
        read_body(reader, target.limit, [&](std::string_view d) { body.append(d); }, consumed);
        auto published = cache.publish_narinfo(target.key.name, body);
        if (published.status == 201) {
          ++metrics.narinfos_published;
        }
        res.status = published.status;
        set_body(res, published.message + "\n", "text/plain; charset=utf-8");
        break;
      }
      case CacheKey::Kind::cache_info: {
        std::string body;
        read_body(reader, target.limit, [&](std::string_view d) { body.append(d); }, consumed);
        cache.put_cache_info(body);
        res.status = 204;
        break;
      }
      }
    } catch (const HttpError& e) {
      reject(res, e);
    } catch (const std::exception& e) {
      say("kiln serve: error: PUT " + sanitize(req.path) + ": " + e.what());
      reject(res, HttpError(500, "internal", "internal server error (see the server's log)"));
    }
    if (!consumed) {
      close_after(res, false);
    }
  }

  // Other methods: 405, without reading a body.
  void
  handle_other(const httplib::Request&, httplib::Response& res)
  {
    res.set_header("Allow", "GET, HEAD, PUT");
    respond_error(res, HttpError(405, "method", "method not allowed"));
    close_after(res, false);
  }

  // --- Metrics and the access log ---

  void
  finish_request(const httplib::Request& req, const httplib::Response& res)
  {
    uint64_t bytes = 0;
    if (req.method != "HEAD") {
      bytes = t_request.streamed ? t_request.streamed_bytes : res.body.size();
    }
    double ms = 0;
    if (t_request.active) {
      ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                     t_request.start)
             .count();
    }
    metrics.bytes_sent += bytes;
    {
      std::lock_guard lock(metrics.mutex);
      static const std::set<std::string> known = {"GET", "HEAD", "PUT", "POST", "DELETE",
                                                  "PATCH", "OPTIONS"};
      ++metrics.requests[{known.count(req.method) ? req.method : "other", status_class(res.status)}];
    }
    if (config.access_log && log) {
      char buf[64];
      std::snprintf(buf, sizeof buf, " %d %llu %.1fms", res.status,
                    static_cast<unsigned long long>(bytes), ms);
      log(sanitize(req.remote_addr) + " " + sanitize(t_request.user) + " \"" + req.method + " " +
          sanitize(req.path) + "\"" + buf);
    }
    t_request = RequestState{};
  }

  std::string
  metrics_text()
  {
    std::ostringstream out;
    auto counter = [&](const char* name, const char* help) {
      out << "# HELP " << name << " " << help << "\n# TYPE " << name << " counter\n";
    };
    counter("kiln_http_requests_total", "HTTP requests answered, by method and status class.");
    {
      std::lock_guard lock(metrics.mutex);
      for (const auto& [key, n] : metrics.requests) {
        out << "kiln_http_requests_total{method=\"" << key.first << "\",status=\"" << key.second
            << "\"} " << n << "\n";
      }
    }
    counter("kiln_http_sent_bytes_total", "Response body bytes sent.");
    out << "kiln_http_sent_bytes_total " << metrics.bytes_sent << "\n";
    counter("kiln_narinfo_requests_total", "narinfo look-ups, by result.");
    out << "kiln_narinfo_requests_total{result=\"hit\"} " << metrics.narinfo_hits << "\n";
    out << "kiln_narinfo_requests_total{result=\"miss\"} " << metrics.narinfo_misses << "\n";
    counter("kiln_nars_uploaded_total", "NAR uploads received (staged).");
    out << "kiln_nars_uploaded_total " << metrics.nars_uploaded << "\n";
    counter("kiln_uploaded_bytes_total", "Bytes of NAR uploads received.");
    out << "kiln_uploaded_bytes_total " << metrics.upload_bytes << "\n";
    counter("kiln_narinfos_published_total", "narinfos verified and published.");
    out << "kiln_narinfos_published_total " << metrics.narinfos_published << "\n";
    counter("kiln_uploads_rejected_total", "Uploads refused, by reason.");
    {
      std::lock_guard lock(metrics.mutex);
      for (const auto& [reason, n] : metrics.rejected) {
        out << "kiln_uploads_rejected_total{reason=\"" << reason << "\"} " << n << "\n";
      }
    }
    return out.str();
  }

  // --- Set-up ---

  // Bind the listening socket (state_mutex held).
  int
  bind_locked()
  {
    if (bound) {
      return port;
    }
    errno = 0;
    int p = -1;
    // httplib listens with a backlog of 5: a client opening its 16
    // connections at once has SYNs dropped and retried a second later.
    int listening = -1;
    http->set_socket_options([&listening](socket_t sock) {
      // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, with
      // which a second server on a port in use "listens" and takes half
      // of the traffic. Binding then fails with EADDRINUSE instead.
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      listening = sock;
    });
    if (config.port == 0) {
      p = http->bind_to_any_port(config.host);
    } else if (http->bind_to_port(config.host, config.port)) {
      p = config.port;
    }
    if (p < 0) {
      int saved = errno;
      throw Error("cannot listen on " + config.host + ":" + std::to_string(config.port) +
                  (saved ? std::string(": ") + std::strerror(saved) : std::string()));
    }
    if (listening >= 0) {
      ::listen(listening, SOMAXCONN);
    }
    http->set_socket_options(httplib::default_socket_options);
    port = p;
    bound = true;
    return port;
  }

  template <class S>
  void
  adopt(std::unique_ptr<GracefulServer<S>> server)
  {
    auto* raw = server.get();
    stop_accepting = [raw] { raw->stop_accepting(); };
    abandon_connections = [raw] { raw->abandon_connections(); };
    http = std::move(server);
  }

  void
  setup_routes()
  {
    auto& s = *http;
    unsigned threads = config.threads;
    s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    s.set_read_timeout(60, 0);
    s.set_write_timeout(60, 0);
    s.set_keep_alive_timeout(5);
    s.set_keep_alive_max_count(100);
    s.set_tcp_nodelay(true);
    s.set_payload_max_length(std::max<uint64_t>(config.max_upload_size, k_small_body_limit));

    s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response&) {
      begin_request();
      take_ranges(req);
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // Runs after httplib added its own connection headers, just before they
    // are written.
    s.set_post_routing_handler([this](const httplib::Request&, httplib::Response& res) {
      if (draining || res.has_header("Connection")) {
        // One "Connection: close" (httplib adds a second one when the client
        // asked for it too), and no Keep-Alive next to it.
        res.headers.erase("Connection");
        res.headers.erase("Keep-Alive");
        res.set_header("Connection", "close");
      }
    });
    // Before a client that asked sends its body: refuse bad uploads early.
    s.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
      begin_request();
      if (req.method != "PUT") {
        return 100;
      }
      try {
        check_put(req);
        return 100;
      } catch (const HttpError& e) {
        reject(res, e);
        close_after(res, true);
        return e.status();
      }
    });
    s.Get(".*", [this](const httplib::Request& req, httplib::Response& res) {
      handle_get(req, res);
    });
    s.Put(".*", [this](const httplib::Request& req, httplib::Response& res,
                       const httplib::ContentReader& reader) { handle_put(req, res, reader); });
    auto other = [this](const httplib::Request& req, httplib::Response& res,
                        const httplib::ContentReader&) { handle_other(req, res); };
    s.Post(".*", other);
    s.Delete(".*", other);
    s.Patch(".*", other);
    s.Options(".*", [this](const httplib::Request& req, httplib::Response& res) {
      handle_other(req, res);
    });
    s.set_exception_handler(
      [this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        say("kiln serve: error: " + req.method + " " + sanitize(req.path) + ": " + what);
        res.status = 500;
        res.headers.clear();
        set_body(res, "internal server error (see the server's log)\n", "text/plain");
      });
    s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      finish_request(req, res);
    });
  }
};

CacheServer::CacheServer(ServerConfig config, ServerLog log) : m(std::make_unique<Impl>())
{
  m->config = std::move(config);
  m->log = std::move(log);
  const ServerConfig& c = m->config;
  if (c.caches.empty()) {
    throw UsageError("nothing to serve: give a cache folder, or caches in the server config");
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    throw UsageError("TLS needs both a certificate and a key");
  }
  for (const auto& cache : c.caches) {
    auto folder = std::make_unique<CacheFolder>(cache);
    if (cache.name.empty()) {
      if (m->root) {
        throw UsageError("two caches are served at '/'");
      }
      m->root = folder.get();
    } else if (!m->named.emplace(cache.name, folder.get()).second) {
      throw UsageError("cache '" + cache.name + "' is defined twice");
    }
    folder->sweep_staging(std::chrono::hours(24), true);
    m->caches.push_back(std::move(folder));
  }
  for (const auto& token : c.tokens) {
    Hash h = hash_string(HashAlgo::sha256, token.secret);
    m->tokens.push_back({std::vector<uint8_t>(h.bytes().begin(), h.bytes().end()), &token});
  }
  for (const auto& folder : m->caches) {
    const auto& cc = folder->config();
    bool writable = std::any_of(c.tokens.begin(), c.tokens.end(), [&](const AccessToken& t) {
      return t.can_write && std::any_of(t.caches.begin(), t.caches.end(), [&](const auto& n) {
               return n == "*" || n == cc.name || (n == "/" && cc.name.empty());
             });
    });
    if (writable && cc.trusted_keys.empty() && cc.secret_key_file.empty()) {
      m->say("kiln serve: warning: cache " + folder->label() +
             " has write tokens but neither trusted-keys nor secret-key-file, so every "
             "narinfo upload will be refused");
    }
  }

  if (!c.tls_cert.empty()) {
    for (const auto& file : {c.tls_cert, c.tls_key}) {
      if (::access(file.c_str(), R_OK) != 0) {
        throw UsageError("cannot read TLS file '" + file + "': " + std::strerror(errno));
      }
    }
    auto server = std::make_unique<GracefulServer<httplib::SSLServer>>(c.tls_cert.c_str(),
                                                                       c.tls_key.c_str());
    if (!server->is_valid()) {
      throw UsageError("cannot use TLS certificate '" + c.tls_cert + "' with key '" + c.tls_key +
                       "' (not PEM, or they do not match)");
    }
    m->adopt(std::move(server));
  } else {
    m->adopt(std::make_unique<GracefulServer<httplib::Server>>());
  }
  m->setup_routes();
}

CacheServer::~CacheServer()
{
  {
    std::lock_guard lock(m->state_mutex);
    m->finished = true;
  }
  m->state_cv.notify_all();
  if (m->watchdog.joinable()) {
    m->watchdog.join();
  }
}

int
CacheServer::bind()
{
  std::lock_guard lock(m->state_mutex);
  return m->bind_locked();
}

std::string
CacheServer::url() const
{
  const auto& host = m->config.host;
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return std::string(m->config.tls_cert.empty() ? "http" : "https") + "://" + h + ":" +
         std::to_string(m->port);
}

void
CacheServer::run()
{
  {
    // Under the lock, so that a shutdown() either comes first (and nothing
    // is served) or finds the socket bound (and shuts it down).
    std::lock_guard lock(m->state_mutex);
    if (m->stopping) {
      return;
    }
    m->bind_locked();
  }
  bool ok = m->http->listen_after_bind();
  bool stopping = false;
  {
    std::lock_guard lock(m->state_mutex);
    m->finished = true;
    stopping = m->stopping;
  }
  m->state_cv.notify_all();
  if (m->watchdog.joinable()) {
    m->watchdog.join();
  }
  if (!ok && !stopping) {
    throw Error("the server stopped: accepting connections failed");
  }
}

void
CacheServer::shutdown()
{
  std::lock_guard lock(m->state_mutex);
  if (m->stopping) {
    return;
  }
  m->stopping = true;
  m->draining = true;
  if (!m->bound || m->finished) {
    return;
  }
  m->stop_accepting();
  Impl* impl = m.get();
  m->watchdog = std::thread([impl] {
    std::unique_lock wait_lock(impl->state_mutex);
    if (!impl->state_cv.wait_for(wait_lock, impl->config.shutdown_grace,
                                 [impl] { return impl->finished; })) {
      wait_lock.unlock();
      impl->say("kiln serve: the shutdown grace period is over; closing the remaining "
                "connections");
      impl->abandon_connections();
    }
  });
}

std::string
CacheServer::metrics_text() const
{
  return m->metrics_text();
}

} // namespace kiln
