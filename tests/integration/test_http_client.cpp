// The http(s):// backend against a scripted cpp-httplib server: status
// mapping, retries with back-off, bearer tokens, streaming; and substitution
// over it, pipelined, with a bounded number of requests in flight.
#include "support/test_support.hpp"

#include <kiln/cache/binary_cache.hpp>
#include <kiln/cache/cache_client.hpp>

#include <catch2/catch.hpp>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

using namespace kiln;

namespace {

// An HTTP server on a free loopback port, stopped at scope end.
class ScriptedServer
{
public:
  ScriptedServer()
  {
    m_port = m_server.bind_to_any_port("127.0.0.1");
    m_thread = std::thread([this] { m_server.listen_after_bind(); });
    while (!m_server.is_running()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  ~ScriptedServer()
  {
    m_server.stop();
    m_thread.join();
  }
  httplib::Server&
  server()
  {
    return m_server;
  }
  std::string
  url() const
  {
    return "http://127.0.0.1:" + std::to_string(m_port);
  }

private:
  httplib::Server m_server;
  int m_port = 0;
  std::thread m_thread;
};

} // namespace

TEST_CASE("404, 410 and 403 mean absent, other 4xx are errors", "[cache][http]")
{
  ScriptedServer s;
  s.server().Get("/gone", [](const httplib::Request&, httplib::Response& res) { res.status = 410; });
  s.server().Get("/forbidden",
                 [](const httplib::Request&, httplib::Response& res) { res.status = 403; });
  s.server().Get("/teapot", [](const httplib::Request&, httplib::Response& res) {
    res.status = 418;
    res.set_content("short and stout", "text/plain");
  });
  auto cache = open_binary_cache(s.url());
  CHECK_FALSE(cache->get_file("absent").has_value());
  CHECK_FALSE(cache->get_file("gone").has_value());
  CHECK_FALSE(cache->get_file("forbidden").has_value());
  CHECK_FALSE(cache->file_exists("absent"));
  CHECK_THROWS_WITH(cache->get_file("teapot"), Catch::Contains("418") && Catch::Contains(s.url()));
}

TEST_CASE("transient failures are retried with back-off, then reported", "[cache][http]")
{
  ScriptedServer s;
  std::atomic<int> calls{0};
  s.server().Get("/flaky", [&](const httplib::Request&, httplib::Response& res) {
    if (++calls <= 2) {
      res.status = 503;
      return;
    }
    res.set_content("finally", "text/plain");
  });
  std::atomic<int> always{0};
  s.server().Get("/down", [&](const httplib::Request&, httplib::Response& res) {
    ++always;
    res.status = 502;
  });
  CacheOptions options;
  options.retries = 3;
  auto cache = open_binary_cache(s.url(), options);
  CHECK(cache->get_file("flaky") == "finally");
  CHECK(calls == 3);
  CHECK_THROWS_WITH(cache->get_file("down"), Catch::Contains("502") && Catch::Contains("4 attempts"));
  CHECK(always == 4);

  // Nothing listening: a clear error naming the cache, after the retries.
  CacheOptions quick;
  quick.retries = 1;
  auto nowhere = open_binary_cache("http://127.0.0.1:" + std::to_string(test::free_port()), quick);
  CHECK_THROWS_AS(nowhere->get_file("nix-cache-info"), CacheError);
}

TEST_CASE("the bearer token is sent, and writes go out as PUT", "[cache][http]")
{
  ScriptedServer s;
  std::string seen_auth;
  std::string put_body;
  s.server().Get("/secret", [&](const httplib::Request& req, httplib::Response& res) {
    seen_auth = req.get_header_value("Authorization");
    if (seen_auth != "Bearer t0ken") {
      res.status = 401;
      return;
    }
    res.set_content("ok", "text/plain");
  });
  s.server().Put("/prefix/nar/x.nar", [&](const httplib::Request& req, httplib::Response& res) {
    put_body = req.body;
    res.status = 201;
  });
  s.server().Put("/prefix/denied", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 403;
    res.set_content("no write scope", "text/plain");
  });
  CacheOptions options;
  options.token = "t0ken";
  CHECK(open_binary_cache(s.url(), options)->get_file("secret") == "ok");
  CHECK_THROWS_WITH(open_binary_cache(s.url())->get_file("secret"), Catch::Contains("401"));

  auto prefixed = open_binary_cache(s.url() + "/prefix/", options);
  test::TempDir dir;
  std::string data = test::random_bytes(2 << 20, 4);
  test::write_file(dir / "nar", data);
  prefixed->upsert_file_from("nar/x.nar", dir / "nar", "application/x-nix-nar");
  CHECK(put_body == data);
  CHECK_THROWS_WITH(prefixed->upsert_file("denied", "x", "text/plain"),
                    Catch::Contains("403") && Catch::Contains("no write scope"));
}

TEST_CASE("large files stream to the sink in pieces", "[cache][http]")
{
  ScriptedServer s;
  std::string data = test::random_bytes(8 << 20, 8);
  s.server().Get("/nar/big.nar", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content_provider(data.size(), "application/x-nix-nar",
                             [&](size_t offset, size_t length, httplib::DataSink& sink) {
                               sink.write(data.data() + offset, std::min<size_t>(length, 65536));
                               return true;
                             });
  });
  struct CountingSink : Sink
  {
    void
    write(std::string_view chunk) override
    {
      ++pieces;
      s.append(chunk);
    }
    size_t pieces = 0;
    std::string s;
  } sink;
  REQUIRE(open_binary_cache(s.url())->get_file("nar/big.nar", sink));
  CHECK(sink.s == data);
  CHECK(sink.pieces > 10);
}

TEST_CASE("a hostile cache is cut off: redirects, encodings, size, drip, stall", "[cache][http][hostile]")
{
  ScriptedServer other;   // another origin, which must never see the token
  std::string leaked;
  other.server().Get("/elsewhere", [&](const httplib::Request& req, httplib::Response& res) {
    leaked = req.get_header_value("Authorization");
    res.set_content("from elsewhere", "text/plain");
  });
  ScriptedServer s;
  std::string here;
  s.server().Get("/moved", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 302;
    res.set_header("Location", "/target");
  });
  s.server().Get("/target", [&](const httplib::Request& req, httplib::Response& res) {
    here = req.get_header_value("Authorization");
    res.set_content("same origin", "text/plain");
  });
  s.server().Get("/away", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 302;
    res.set_header("Location", other.url() + "/elsewhere");
  });
  s.server().Get("/gzipped", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Encoding", "gzip");
    res.set_content(std::string(1000, '\0'), "text/x-nix-narinfo");
  });
  s.server().Get("/huge", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(3 << 20, 'x'), "text/x-nix-narinfo");
  });
  s.server().Get("/drip", [](const httplib::Request&, httplib::Response& res) {
    res.set_chunked_content_provider("text/plain", [](size_t offset, httplib::DataSink& sink) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      if (offset > 1000) {
        sink.done();
        return true;
      }
      return sink.write("x", 1);
    });
  });
  CacheOptions options;
  options.token = "t0ken";
  options.small_file_deadline_s = 2;
  options.read_timeout_s = 1;
  options.retries = 1;
  auto cache = open_binary_cache(s.url(), options);

  // Same origin: followed, with the token; another origin: without it.
  CHECK(cache->get_file("moved") == "same origin");
  CHECK(here == "Bearer t0ken");
  CHECK(cache->get_file("away") == "from elsewhere");
  CHECK(leaked.empty());
  // Never asked for: an encoding, a narinfo of megabytes.
  CHECK_THROWS_WITH(cache->get_file("gzipped"), Catch::Contains("Content-Encoding 'gzip'"));
  CHECK_THROWS_WITH(cache->get_file("huge"), Catch::Contains("larger than 1048576 bytes"));
  // One byte every 300 ms never trips the idle timeout; the deadline ends it.
  auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(cache->get_file("drip"), Catch::Contains("no complete answer within 2 s"));
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(took < std::chrono::seconds(4));
  // Nothing listening: one line that names the address.
  auto nowhere = open_binary_cache("http://127.0.0.1:1", options);
  CHECK_THROWS_WITH(nowhere->get_file("nix-cache-info"),
                    Catch::Contains("cannot connect to 127.0.0.1:1"));
}

TEST_CASE("substitution is pipelined over a slow cache, within `connections`", "[cache][http][substitute]")
{
  // A closure with a chain 6 deep (top → c5 → … → c0) and 12 leaves, pushed
  // to a folder that a server 30 ms away serves over keep-alive.
  test::TempDir dir;
  LocalStore a({dir / "a"});
  LocalStore b({dir / "b"});
  auto key = SecretKey::generate("slow-1");
  std::set<StorePath> top_refs;
  std::optional<StorePath> link;
  for (int i = 0; i < 6; ++i) {
    std::set<StorePath> refs;
    if (link) {
      refs.insert(*link);
    }
    link = test::add_test_object(a, "c" + std::to_string(i), test::random_bytes(3000, i), refs);
  }
  top_refs.insert(*link);
  for (int i = 0; i < 12; ++i) {
    top_refs.insert(test::add_test_object(a, "leaf" + std::to_string(i), "leaf " + std::to_string(i)));
  }
  auto top = test::add_test_object(a, "top", "top", top_refs);
  auto folder = dir / "cache";
  CacheClient up(open_binary_cache("file://" + folder.string()), a.store_dir());
  PushOptions push_options;
  push_options.key = &key;
  push(a, up, {top}, push_options);

  ScriptedServer s;
  s.server().set_keep_alive_max_count(100000);
  std::mutex mutex;
  std::vector<std::string> requests; // in the order they arrived
  std::set<int> client_ports;
  int in_flight = 0;
  int most_in_flight = 0;
  s.server().Get(R"(/(.*))", [&](const httplib::Request& req, httplib::Response& res) {
    {
      std::lock_guard guard(mutex);
      requests.push_back(req.matches[1]);
      client_ports.insert(req.remote_port);
      most_in_flight = std::max(most_in_flight, ++in_flight);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    auto file = folder / std::string(req.matches[1]);
    if (std::filesystem::is_regular_file(file)) {
      res.set_content(read_file(file), "application/octet-stream");
    } else {
      res.status = 404;
    }
    std::lock_guard guard(mutex);
    --in_flight;
  });

  CacheOptions http;
  http.connections = 4;
  CacheClient down(open_binary_cache(s.url(), http), b.store_dir());
  SubstituteOptions options;
  options.connections = 4;
  auto result = substitute(b, {&down}, TrustPolicy({key.public_key().to_string()}, 1), {top},
                           options);
  CHECK(result.failed.empty());
  CHECK(result.fetched.size() == 19);
  CHECK(b.closure({top}).size() == 19);
  CHECK(b.verify({}).ok());

  std::lock_guard guard(mutex);
  CHECK(requests.size() == 1 + 19 + 19); // nix-cache-info, then a narinfo and a NAR each
  // NARs are fetched while the closure is still being walked: the first NAR
  // is asked for before the last narinfo (c0's, 7 round trips down).
  auto is_nar = [](const std::string& r) { return r.starts_with("nar/"); };
  auto first_nar = std::find_if(requests.begin(), requests.end(), is_nar);
  auto last_narinfo = std::find_if(requests.rbegin(), requests.rend(),
                                   [](const std::string& r) { return r.ends_with(".narinfo"); });
  REQUIRE(first_nar != requests.end());
  REQUIRE(last_narinfo != requests.rend());
  CHECK(first_nar - requests.begin() < requests.rend() - last_narinfo - 1);
  // Requests overlap, never more than `connections` at once, over
  // connections that are kept and reused.
  CHECK(most_in_flight >= 2);
  CHECK(most_in_flight <= 4);
  CHECK(client_ports.size() <= 4);
}
