// http(s):// binary caches over cpp-httplib: a pool of keep-alive
// connections, timeouts, retries with back-off on transient failures.
#include "backends.hpp"

#include <kiln/util/error.hpp>

#include <httplib.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <random>
#include <thread>

namespace kiln::detail {

namespace fs = std::filesystem;

namespace {

enum class Outcome { ok, not_found, retry, fail };

Outcome
classify(int status)
{
  if (status >= 200 && status < 300) {
    return Outcome::ok;
  }
  // S3 and many static hosts answer 403 for a missing object.
  if (status == 404 || status == 410 || status == 403) {
    return Outcome::not_found;
  }
  if (status == 408 || status == 429 || (status >= 500 && status != 501 && status != 505 &&
                                          status != 511)) {
    return Outcome::retry;
  }
  return Outcome::fail;
}

class HttpBinaryCache : public BinaryCache
{
public:
  HttpBinaryCache(const std::string& url, const CacheOptions& options)
    : m_url(url), m_options(options)
  {
    auto scheme_end = url.find("://");
    auto path_start = url.find('/', scheme_end + 3);
    m_origin = path_start == std::string::npos ? url : url.substr(0, path_start);
    m_prefix = path_start == std::string::npos ? "" : url.substr(path_start);
    if (m_origin.size() <= scheme_end + 3) {
      throw UsageError("cache URL '" + url + "' has no host");
    }
  }

  const std::string&
  url() const override
  {
    return m_url;
  }

  bool
  file_exists(const std::string& key) override
  {
    check_cache_key(key);
    bool found = false;
    request("HEAD", key, [&](httplib::Client& client) {
      auto res = client.Head(path_of(key), headers());
      return finish(res, [&] { found = true; });
    });
    return found;
  }

  std::optional<std::string>
  get_file(const std::string& key) override
  {
    check_cache_key(key);
    std::optional<std::string> body;
    request("GET", key, [&](httplib::Client& client) {
      auto res = client.Get(path_of(key), headers());
      return finish(res, [&] { body = std::move(res->body); });
    });
    return body;
  }

  bool
  get_file(const std::string& key, Sink& sink) override
  {
    check_cache_key(key);
    bool found = false;
    bool delivered = false;
    request("GET", key, [&](httplib::Client& client) {
      int status = 0;
      std::string error_body;
      std::exception_ptr sink_error;
      auto res = client.Get(
        path_of(key), headers(),
        [&](const httplib::Response& response) {
          status = response.status;
          return true;
        },
        [&](const char* data, size_t length) {
          if (classify(status) != Outcome::ok) {
            if (error_body.size() < 512) {
              error_body.append(data, std::min<size_t>(length, 512));
            }
            return true;
          }
          try {
            delivered = true;
            sink.write(std::string_view(data, length));
          } catch (...) {
            sink_error = std::current_exception();
            return false;
          }
          return true;
        });
      if (sink_error) {
        std::rethrow_exception(sink_error);
      }
      if (!res && delivered) {
        // Part of the body went to the sink: retrying would duplicate it.
        throw CacheError("download of " + m_url + "/" + key + " broke off: " +
                         httplib::to_string(res.error()));
      }
      return finish(res, [&] { found = true; });
    });
    return found;
  }

  void
  upsert_file(const std::string& key, std::string_view data,
              const std::string& content_type) override
  {
    check_cache_key(key);
    request("PUT", key, [&](httplib::Client& client) {
      auto res = client.Put(path_of(key), headers(), data.data(), data.size(), content_type);
      return finish_upload(res, key);
    });
  }

  void
  upsert_file_from(const std::string& key, const fs::path& file,
                   const std::string& content_type) override
  {
    check_cache_key(key);
    uint64_t size = fs::file_size(file);
    request("PUT", key, [&](httplib::Client& client) {
      UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) {
        throw_errno("opening '" + file.string() + "'");
      }
      auto res = client.Put(
        path_of(key), headers(), static_cast<size_t>(size),
        [&](size_t offset, size_t length, httplib::DataSink& out) {
          std::vector<char> buf(std::min<size_t>(length, 256 * 1024));
          ssize_t n = ::pread(fd.get(), buf.data(), buf.size(), static_cast<off_t>(offset));
          if (n <= 0) {
            return false;
          }
          out.write(buf.data(), static_cast<size_t>(n));
          return true;
        },
        content_type);
      return finish_upload(res, key);
    });
  }

private:
  std::string
  path_of(const std::string& key) const
  {
    return m_prefix + "/" + key;
  }

  httplib::Headers
  headers() const
  {
    httplib::Headers h = {{"User-Agent", std::string("kiln/") + KILN_VERSION}};
    if (!m_options.token.empty()) {
      h.emplace("Authorization", "Bearer " + m_options.token);
    }
    return h;
  }

  // Map a result to an outcome; `on_ok` runs for 2xx.
  template <typename F>
  Outcome
  finish(const httplib::Result& res, F on_ok)
  {
    if (!res) {
      m_last_error = httplib::to_string(res.error());
      return Outcome::retry;
    }
    m_last_error = "HTTP " + std::to_string(res->status) + (res->reason.empty() ? "" : " " + res->reason);
    Outcome outcome = classify(res->status);
    if (outcome == Outcome::ok) {
      on_ok();
    }
    return outcome;
  }

  Outcome
  finish_upload(const httplib::Result& res, const std::string&)
  {
    Outcome outcome = finish(res, [] {});
    if (outcome == Outcome::not_found) {
      // For a write, 403/404 means we may not write here.
      outcome = Outcome::fail;
    }
    if (!res && res.error() == httplib::Error::Write) {
      // The server hung up while we were still sending: most likely it
      // refused the upload before reading it (token, scope, size limit).
      m_last_error += " (the server closed the connection during the upload; it may have "
                      "refused it: check the token's write scope and the server's size limit)";
    }
    if (outcome == Outcome::fail && res && !res->body.empty()) {
      // The server's reason, e.g. which scope a token lacks.
      m_last_error += ": " + res->body.substr(0, 300);
    }
    return outcome;
  }

  std::unique_ptr<httplib::Client>
  acquire()
  {
    {
      std::lock_guard guard(m_mutex);
      if (!m_idle.empty()) {
        auto client = std::move(m_idle.back());
        m_idle.pop_back();
        return client;
      }
    }
    auto client = std::make_unique<httplib::Client>(m_origin);
    client->set_keep_alive(true);
    client->set_follow_location(true);
    client->set_connection_timeout(m_options.connect_timeout_s, 0);
    client->set_read_timeout(m_options.read_timeout_s, 0);
    client->set_write_timeout(m_options.read_timeout_s, 0);
    return client;
  }

  void
  release(std::unique_ptr<httplib::Client> client)
  {
    std::lock_guard guard(m_mutex);
    if (m_idle.size() < m_options.connections) {
      m_idle.push_back(std::move(client));
    }
  }

  // Run `attempt` with retries and back-off; `attempt` returns an Outcome.
  template <typename F>
  void
  request(const char* method, const std::string& key, F attempt)
  {
    thread_local std::mt19937 rng(std::random_device{}());
    for (int i = 0;; ++i) {
      auto client = acquire();
      Outcome outcome = attempt(*client);
      release(std::move(client));
      if (outcome == Outcome::ok || outcome == Outcome::not_found) {
        return;
      }
      if (outcome == Outcome::fail || i >= m_options.retries) {
        throw CacheError(std::string(method) + " " + m_url + "/" + key + " failed: " +
                         m_last_error + (i > 0 ? " (after " + std::to_string(i + 1) + " attempts)" : ""));
      }
      // Exponential back-off with full jitter: 100 ms, 200 ms, … capped at 5 s.
      int cap = std::min(5000, 100 << i);
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % (cap + 1)));
    }
  }

  std::string m_url;
  std::string m_origin;
  std::string m_prefix;
  CacheOptions m_options;
  std::mutex m_mutex;
  std::vector<std::unique_ptr<httplib::Client>> m_idle;
  static thread_local std::string m_last_error;
};

thread_local std::string HttpBinaryCache::m_last_error;

} // namespace

std::unique_ptr<BinaryCache>
open_http_cache(const std::string& url, const CacheOptions& options)
{
  return std::make_unique<HttpBinaryCache>(url, options);
}

} // namespace kiln::detail
