// http(s):// binary caches over cpp-httplib: a pool of keep-alive
// connections, timeouts, retries with back-off on transient failures.
#include "backends.hpp"
#include "idle_pool.hpp"

#include <kiln/util/error.hpp>

#include <httplib.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <random>
#include <thread>

namespace kiln::detail {

namespace fs = std::filesystem;

namespace {

enum class Outcome { ok, not_found, retry, fail, redirect };

Outcome
classify(int status)
{
  if (status >= 200 && status < 300) {
    return Outcome::ok;
  }
  if (status == 301 || status == 302 || status == 303 || status == 307 || status == 308) {
    return Outcome::redirect;
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

using Clock = std::chrono::steady_clock;

// Shuts down the connection of a request that outlives its deadline: the
// total bound that httplib's per-read timeouts do not give (a server that
// drips a byte every few seconds, or sends headers without end).
class Watchdog
{
public:
  Watchdog() : m_thread([this] { run(); })
  {
  }
  ~Watchdog()
  {
    {
      std::lock_guard guard(m_mutex);
      m_stopping = true;
    }
    m_cv.notify_all();
    m_thread.join();
  }

  // Watches `client` while it lives; fired() tells if the deadline struck.
  class Guard
  {
  public:
    Guard(Watchdog& dog, httplib::Client& client, Clock::time_point deadline)
      : m_dog(dog), m_client(&client)
    {
      std::lock_guard guard(m_dog.m_mutex);
      m_dog.m_watched[m_client] = deadline;
      m_dog.m_cv.notify_all();
    }
    ~Guard()
    {
      std::lock_guard guard(m_dog.m_mutex);
      m_dog.m_watched.erase(m_client);
      m_dog.m_fired.erase(m_client);
    }
    bool
    fired() const
    {
      std::lock_guard guard(m_dog.m_mutex);
      return m_dog.m_fired.count(m_client) > 0;
    }

  private:
    Watchdog& m_dog;
    httplib::Client* m_client;
  };

private:
  void
  run()
  {
    std::unique_lock lock(m_mutex);
    while (!m_stopping) {
      auto next = Clock::now() + std::chrono::seconds(1);
      for (auto it = m_watched.begin(); it != m_watched.end();) {
        if (it->second <= Clock::now()) {
          it->first->stop(); // shuts the socket down; the request fails
          m_fired.insert(it->first);
          it = m_watched.erase(it);
        } else {
          next = std::min(next, it->second);
          ++it;
        }
      }
      m_cv.wait_until(lock, next);
    }
  }

  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::map<httplib::Client*, Clock::time_point> m_watched;
  std::set<httplib::Client*> m_fired;
  bool m_stopping = false;
  std::thread m_thread;
};

// The origin ("http://host:port") and path of an absolute URL.
std::pair<std::string, std::string>
split_url(const std::string& url)
{
  auto scheme_end = url.find("://");
  auto path_start = scheme_end == std::string::npos ? std::string::npos
                                                    : url.find('/', scheme_end + 3);
  if (path_start == std::string::npos) {
    return {url, "/"};
  }
  return {url.substr(0, path_start), url.substr(path_start)};
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
    request("HEAD", key, m_options.small_file_deadline_s, [&](Attempt& a) {
      auto res = a.client.Head(a.path.c_str(), a.headers);
      return finish(res, [&] { found = true; });
    });
    return found;
  }

  std::optional<std::string>
  get_file(const std::string& key) override
  {
    check_cache_key(key);
    std::optional<std::string> body;
    request("GET", key, m_options.small_file_deadline_s, [&](Attempt& a) {
      std::string data;
      auto res = a.client.Get(
        a.path.c_str(), a.headers, [&](const httplib::Response& r) { return accept_response(r); },
        [&](const char* bytes, size_t length) {
          if (data.size() + length > m_options.max_small_file) {
            t_refusal = "the answer is larger than " + std::to_string(m_options.max_small_file) +
                        " bytes";
            return false;
          }
          data.append(bytes, length);
          return true;
        });
      return finish(res, [&] { body = std::move(data); });
    });
    return body;
  }

  bool
  get_file(const std::string& key, Sink& sink) override
  {
    check_cache_key(key);
    bool found = false;
    bool delivered = false;
    request("GET", key, m_options.transfer_deadline_s, [&](Attempt& a) {
      std::exception_ptr sink_error;
      bool ok_status = false;
      auto res = a.client.Get(
        a.path.c_str(), a.headers,
        [&](const httplib::Response& response) {
          ok_status = classify(response.status) == Outcome::ok;
          return accept_response(response);
        },
        [&](const char* data, size_t length) {
          if (!ok_status) {
            return true; // an error page: only its status is reported
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
                         (a.timed_out() ? deadline_message(m_options.transfer_deadline_s)
                                        : httplib::to_string(res.error())));
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
    request("PUT", key, m_options.small_file_deadline_s, [&](Attempt& a) {
      auto res = a.client.Put(a.path.c_str(), a.headers, data.data(), data.size(), content_type.c_str());
      return finish_upload(res);
    });
  }

  void
  upsert_file_from(const std::string& key, const fs::path& file,
                   const std::string& content_type) override
  {
    check_cache_key(key);
    uint64_t size = fs::file_size(file);
    request("PUT", key, m_options.transfer_deadline_s, [&](Attempt& a) {
      UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) {
        throw_errno("opening '" + file.string() + "'");
      }
      auto res = a.client.Put(
        a.path.c_str(), a.headers, static_cast<size_t>(size),
        [&](size_t offset, size_t length, httplib::DataSink& out) {
          std::vector<char> buf(std::min<size_t>(length, 256 * 1024));
          ssize_t n = ::pread(fd.get(), buf.data(), buf.size(), static_cast<off_t>(offset));
          if (n <= 0) {
            return false;
          }
          out.write(buf.data(), static_cast<size_t>(n));
          return true;
        },
        content_type.c_str());
      return finish_upload(res);
    });
  }

private:
  // One try of a request: where it goes, with which headers.
  struct Attempt
  {
    httplib::Client& client;
    std::string path;
    httplib::Headers headers;
    const Watchdog::Guard& watch;
    bool
    timed_out() const
    {
      return watch.fired();
    }
  };

  std::string
  path_of(const std::string& key) const
  {
    return m_prefix + "/" + key;
  }

  // The token goes to the cache's own origin only, never to another that
  // a redirect names.
  httplib::Headers
  headers_for(const std::string& origin) const
  {
    httplib::Headers h = {{"User-Agent", std::string("kiln/") + KILN_VERSION},
                          {"Accept-Encoding", "identity"}};
    if (!m_options.token.empty() && origin == m_origin) {
      h.emplace("Authorization", "Bearer " + m_options.token);
    }
    return h;
  }

  static std::string
  deadline_message(int seconds)
  {
    return "no complete answer within " + std::to_string(seconds) + " s";
  }

  // Refuse an answer kiln did not ask for: a content encoding (kiln asks
  // for none; httplib would inflate a gzip bomb in memory).
  bool
  accept_response(const httplib::Response& response)
  {
    t_location = response.get_header_value("Location");
    std::string encoding = response.get_header_value("Content-Encoding");
    if (!encoding.empty() && encoding != "identity") {
      t_refusal = "answered with Content-Encoding '" + encoding.substr(0, 40) +
                  "', which kiln did not ask for";
      return false;
    }
    return true;
  }

  // Map a result to an outcome; `on_ok` runs for 2xx.
  template <typename F>
  Outcome
  finish(const httplib::Result& res, F on_ok)
  {
    if (!t_refusal.empty()) {
      m_last_error = t_refusal;
      return Outcome::fail;
    }
    if (!res) {
      m_last_error = res.error() == httplib::Error::Connection
                       ? "cannot connect to " + m_origin.substr(m_origin.find("://") + 3) +
                           " (connection refused or unreachable)"
                       : httplib::to_string(res.error());
      return Outcome::retry;
    }
    m_last_error = "HTTP " + std::to_string(res->status) + (res->reason.empty() ? "" : " " + res->reason);
    Outcome outcome = classify(res->status);
    if (outcome == Outcome::redirect) {
      t_location = res->get_header_value("Location");
    }
    if (outcome == Outcome::ok) {
      on_ok();
    }
    return outcome;
  }

  Outcome
  finish_upload(const httplib::Result& res)
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
      // The server's reason, e.g. which scope a token lacks: its first line.
      std::string reason = res->body.substr(0, std::min<size_t>(300, res->body.find('\n')));
      if (reason.find('<') == std::string::npos) {
        m_last_error += ": " + reason;
      }
    }
    return outcome;
  }

  std::unique_ptr<httplib::Client>
  make_client(const std::string& origin) const
  {
    auto client = std::make_unique<httplib::Client>(origin);
    client->set_keep_alive(true);
    client->set_follow_location(false); // kiln follows, without the token elsewhere
    client->set_decompress(false);
    client->set_connection_timeout(m_options.connect_timeout_s, 0);
    client->set_read_timeout(m_options.read_timeout_s, 0);
    client->set_write_timeout(m_options.read_timeout_s, 0);
    return client;
  }

  std::unique_ptr<httplib::Client>
  acquire()
  {
    auto client = m_idle.take();
    return client ? std::move(client) : make_client(m_origin);
  }

  // One attempt, following up to 5 redirects (the token only to this
  // cache's origin); a deadline that struck is a failure, not retried.
  template <typename F>
  Outcome
  attempt_following_redirects(const std::string& key, Clock::time_point deadline, int deadline_s,
                              F attempt)
  {
    std::string origin = m_origin;
    std::string path = path_of(key);
    for (int hops = 0;; ++hops) {
      auto client = origin == m_origin ? acquire() : make_client(origin);
      Watchdog::Guard watch(m_watchdog, *client, deadline);
      Attempt a{*client, path, headers_for(origin), watch};
      t_refusal.clear();
      t_location.clear();
      Outcome outcome = attempt(a);
      if (watch.fired()) {
        m_last_error = deadline_message(deadline_s);
        return Outcome::fail;
      }
      if (origin == m_origin) {
        m_idle.give_back(std::move(client));
      }
      if (outcome != Outcome::redirect) {
        return outcome;
      }
      if (hops >= 5 || t_location.empty()) {
        m_last_error += hops >= 5 ? " (more than 5 redirects)" : " (a redirect without Location)";
        return Outcome::fail;
      }
      if (t_location.starts_with("/")) {
        path = t_location;
      } else {
        std::tie(origin, path) = split_url(t_location);
      }
    }
  }

  // Run `attempt` with retries and back-off within `deadline_s` in all.
  template <typename F>
  void
  request(const char* method, const std::string& key, int deadline_s, F attempt)
  {
    auto deadline = Clock::now() + std::chrono::seconds(deadline_s);
    for (int i = 0;; ++i) {
      Outcome outcome = attempt_following_redirects(key, deadline, deadline_s, attempt);
      if (outcome == Outcome::ok || outcome == Outcome::not_found) {
        return;
      }
      if (outcome != Outcome::retry || i >= m_options.retries || Clock::now() >= deadline) {
        throw CacheError(std::string(method) + " " + m_url + "/" + key + " failed: " +
                         m_last_error + (i > 0 ? " (after " + std::to_string(i + 1) + " attempts)" : ""));
      }
      // Exponential back-off with full jitter: 100 ms, 200 ms, … capped at 5 s.
      // (Seeded on a thread's first retry: a download's own thread never
      // pays for random_device when nothing fails.)
      thread_local std::mt19937 rng(std::random_device{}());
      int cap = std::min(5000, 100 << i);
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % (cap + 1)));
    }
  }

  std::string m_url;
  std::string m_origin;
  std::string m_prefix;
  CacheOptions m_options;
  IdlePool<httplib::Client> m_idle{m_options.connections};
  Watchdog m_watchdog;
  // What the current thread's last try said, and why it was refused.
  static thread_local std::string m_last_error;
  static thread_local std::string t_refusal;
  static thread_local std::string t_location;
};

thread_local std::string HttpBinaryCache::m_last_error;
thread_local std::string HttpBinaryCache::t_refusal;
thread_local std::string HttpBinaryCache::t_location;

} // namespace

std::unique_ptr<BinaryCache>
open_http_cache(const std::string& url, const CacheOptions& options)
{
  return std::make_unique<HttpBinaryCache>(url, options);
}

} // namespace kiln::detail
