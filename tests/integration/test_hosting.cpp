// examples/hosting, run for real: Debian's nginx with the example's config
// (put on a loopback port and temporary folders), and kiln serve with the
// example's serve.yaml; kiln push to each, kiln copy back into a fresh store.
#include "support/test_support.hpp"

#include <kiln/server/server.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path k_examples = fs::path(KILN_SOURCE_DIR) / "examples" / "hosting";

// `text` with each `from` replaced by its `to`; each must occur.
std::string
templated(std::string text, const std::vector<std::pair<std::string, std::string>>& changes)
{
  for (const auto& [from, to] : changes) {
    INFO("the example no longer contains '" << from << "'");
    auto pos = text.find(from);
    REQUIRE(pos != std::string::npos);
    while (pos != std::string::npos) {
      text.replace(pos, from.size(), to);
      pos = text.find(from, pos + to.size());
    }
  }
  return text;
}

// A store holding a small closure: app → lib (with 300 KB of data).
struct Producer
{
  TempDir dir;
  std::string store = (dir / "store").string();
  std::string lib_path;
  std::string app_path;
  std::string lib_data = test::random_bytes(300000, 42);
  std::string secret_key = (dir / "ci.sk").string();
  std::string public_key;

  explicit Producer(const std::string& key_name)
  {
    {
      LocalStore s({dir / "store"});
      auto lib = test::add_test_object(s, "lib", lib_data);
      auto app = test::add_test_object(s, "app", "app v1", {lib});
      lib_path = s.print(lib);
      app_path = s.print(app);
    }
    public_key = test::output_of(
      test::kiln({"key", "generate", key_name, "--secret-file", secret_key}), "key generate");
  }
};

// Substitute `path` into a fresh store from `url`; the file's bytes there.
std::string
pull(const std::string& url, const std::string& public_key, const std::string& path,
     const test::RunOptions& options = {})
{
  TempDir dir;
  auto r = test::kiln({"--store", (dir / "store").string(), "copy", "--from", url,
                       "--trusted-public-keys", public_key, path},
                      options);
  INFO(r.err);
  REQUIRE(r.status == 0);
  LocalStore store({dir / "store"});
  auto p = store.resolve(path);
  REQUIRE(store.is_valid(p));
  CHECK(store.verify({}).ok());
  return read_file(store.physical_path(p));
}

// GET `path` on a new connection: the status line, and how long it took.
std::pair<std::string, double>
timed_get(int port, const std::string& path)
{
  auto start = std::chrono::steady_clock::now();
  int fd = test::connect_loopback(port);
  if (fd < 0) {
    return {"refused", 0};
  }
  std::string request = "GET " + path + " HTTP/1.1\r\nHost: cache\r\nConnection: close\r\n\r\n";
  (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) {
    reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  double seconds =
    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return {reply.substr(0, reply.find("\r\n")), seconds};
}

} // namespace

TEST_CASE("the nginx example serves a cache and takes pushes only with the token", "[hosting]")
{
  TempDir dir;
  fs::create_directories(dir / "cache");
  const std::string token = "Kiln-Write-Token-0123456789abcdef";
  test::write_file(dir / "tokens.map", "\"~^1:Bearer " + token + "$\" 0;\n");
  std::string site = read_file(k_examples / "nginx.conf");
  test::Nginx nginx([&](int port) {
    return templated(site, {{"listen 80;", "listen 127.0.0.1:" + std::to_string(port) + ";"},
                            {"/srv/kiln-cache", (dir / "cache").string()},
                            {"/etc/nginx/kiln-write-tokens.map", (dir / "tokens.map").string()}});
  });
  INFO(nginx.error_log());
  Producer producer("ci-1");
  auto push = [&](std::map<std::string, std::string> env) {
    env["KILN_SECRET_KEY_FILE"] = producer.secret_key;
    test::RunOptions o;
    o.env = env;
    o.unset_env = {"KILN_TOKEN", "KILN_CONFIG"};
    return test::kiln({"--store", producer.store, "push", nginx.url(), producer.app_path}, o);
  };

  SECTION("without the token, or with another, nothing is written")
  {
    for (std::map<std::string, std::string> env :
         {std::map<std::string, std::string>{},
          {{"KILN_TOKEN", "not-the-token"}},
          {{"KILN_TOKEN", "kiln-write-token-0123456789abcdef"}},   // case matters
          {{"KILN_TOKEN", token + "x"}}}) {
      auto refused = push(env);
      INFO(refused.err);
      CHECK(refused.status == 1);
      CHECK_THAT(refused.err, Catch::Contains("401"));
    }
    CHECK(fs::is_empty(dir / "cache"));
    auto r = test::run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE",
                        "-H", "Authorization: Bearer " + token, nginx.url() + "/nix-cache-info"});
    CHECK(r.out == "405");   // the token allows PUT, nothing else
  }

  SECTION("with the token, kiln push uploads the closure and anyone pulls it back")
  {
    auto pushed = push({{"KILN_TOKEN", token}});
    INFO(pushed.err);
    REQUIRE(pushed.status == 0);
    CHECK_THAT(pushed.err, Catch::Contains("pushed 2 paths"));
    CHECK(fs::exists(dir / "cache" / "nix-cache-info"));
    size_t narinfos = 0;
    for (const auto& e : fs::directory_iterator(dir / "cache")) {
      narinfos += e.path().extension() == ".narinfo" ? 1 : 0;
    }
    CHECK(narinfos == 2);

    // Reads need no token; the closure comes along, checked against the signature.
    CHECK(pull(nginx.url(), producer.public_key, producer.lib_path) == producer.lib_data);
    auto app = pull(nginx.url(), producer.public_key, producer.app_path);
    CHECK_THAT(app, Catch::StartsWith("app v1"));

    // Pushing again uploads nothing.
    auto again = push({{"KILN_TOKEN", token}});
    CHECK(again.status == 0);
    CHECK_THAT(again.err, Catch::Contains("pushed 0 paths"));

    // A configured substituter works the same as --from.
    TempDir fresh;
    test::RunOptions o;
    o.env = {{"KILN_SUBSTITUTERS", nginx.url()}, {"KILN_TRUSTED_PUBLIC_KEYS", producer.public_key}};
    o.unset_env = {"KILN_CONFIG"};
    auto r = test::kiln({"--store", (fresh / "s").string(), "copy", producer.app_path}, o);
    INFO(r.err);
    CHECK(r.status == 0);

    // Only cache files are served.
    auto listing = test::run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              nginx.url() + "/"});
    CHECK(listing.out == "404");
  }
}

TEST_CASE("the kiln serve example config loads, serves, and takes its tokens", "[hosting]")
{
  // As installed: /etc/kiln/serve.yaml with tokens/ and keys/ beside it.
  TempDir dir;
  fs::path etc = dir / "etc-kiln";
  fs::create_directories(etc);
  test::write_file(etc / "tokens" / "ci", "ci-token-0123456789\n");
  test::write_file(etc / "tokens" / "developers", "dev-token-0123456789\n");
  fs::create_directories(etc / "keys");
  auto team_key = test::output_of(
    test::kiln({"key", "generate", "team-1", "--secret-file", (etc / "keys" / "team.sk").string()}),
    "key generate");
  fs::copy_file(k_examples / "serve.yaml", etc / "serve.yaml");

  SECTION("as it is")
  {
    auto config = load_server_config(etc / "serve.yaml", "/kiln/store");
    REQUIRE(config.caches.size() == 2);
    CHECK(config.caches[0].name == "main");
    CHECK(config.caches[0].trusted_keys.size() == 1);
    CHECK(config.caches[1].name == "team");
    CHECK(config.caches[1].is_private);
    CHECK(config.caches[1].secret_key_file == (etc / "keys" / "team.sk").string());
    REQUIRE(config.tokens.size() == 2);
    CHECK(config.tokens[0].secret == "ci-token-0123456789");
    CHECK(config.tokens[0].can_write);
    CHECK_FALSE(config.tokens[1].can_write);
    CHECK(config.tokens[1].can_read);
  }

  SECTION("run on a loopback port: CI pushes to both caches, developers read the team cache")
  {
    Producer producer("ci.example.org-1");
    int port = test::free_port();
    std::string yaml = templated(
      read_file(k_examples / "serve.yaml"),
      {{"127.0.0.1:5000", "127.0.0.1:" + std::to_string(port)},
       {"/var/lib/kiln/caches", (dir / "caches").string()},
       {"ci.example.org-1:+11KXiSKxNbfa8ZqUwh7KD02Qw4mhbyo5F5ZOBKrDIo=", producer.public_key}});
    test::write_file(etc / "serve.yaml", yaml);

    // The unit's command line, with the config where the test put it.
    std::string unit = read_file(k_examples / "kiln-serve.service");
    std::string exec = "ExecStart=/usr/bin/kiln serve --config /etc/kiln/serve.yaml\n";
    REQUIRE(unit.find(exec) != std::string::npos);
    test::BackgroundProcess server({test::kiln_binary(), "serve", "--config",
                                    (etc / "serve.yaml").string()},
                                   dir / "serve.log");
    REQUIRE(server.wait_for_stderr("listening on http", 20));
    std::string base = "http://127.0.0.1:" + std::to_string(port);

    test::RunOptions ci;
    ci.env = {{"KILN_TOKEN", "ci-token-0123456789"},
              {"KILN_SECRET_KEY_FILE", producer.secret_key}};
    ci.unset_env = {"KILN_CONFIG"};
    for (const char* cache : {"/main", "/team"}) {
      auto r = test::kiln({"--store", producer.store, "push", base + cache, producer.app_path}, ci);
      INFO(cache << ": " << r.err << server.stderr_text());
      CHECK(r.status == 0);
    }
    // The main cache took CI's signature; the team cache signed with its own key.
    CHECK(pull(base + "/main", producer.public_key, producer.lib_path) == producer.lib_data);
    test::RunOptions dev;
    dev.env = {{"KILN_TOKEN", "dev-token-0123456789"}};
    dev.unset_env = {"KILN_CONFIG"};
    CHECK(pull(base + "/team", team_key, producer.lib_path, dev) == producer.lib_data);

    // Developers may not write; nobody may read the team cache without a token.
    std::string extra;
    {
      LocalStore s({producer.dir / "store"});
      extra = s.print(test::add_test_object(s, "extra", "extra"));
    }
    test::RunOptions dev_push = dev;
    dev_push.env["KILN_SECRET_KEY_FILE"] = producer.secret_key;
    auto refused = test::kiln({"--store", producer.store, "push", base + "/team", extra}, dev_push);
    CHECK(refused.status == 1);
    CHECK_THAT(refused.err, Catch::Contains("403"));
    auto anonymous = test::run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                base + "/team/nix-cache-info"});
    CHECK(anonymous.out == "401");
  }
}

TEST_CASE("kiln serve behind the nginx front answers while 500 idle and 32 slowloris "
          "connections are held, and endless headers are cut off",
          "[hosting][hostile]")
{
  TempDir dir;
  test::KilnServe serve(std::vector<std::string>{(dir / "cache").string()}, dir / "serve.log");
  std::string site = read_file(k_examples / "nginx-front.conf");
  test::Nginx nginx([&](int port) {
    return templated(site, {{"listen 80;", "listen 127.0.0.1:" + std::to_string(port) + ";"},
                            {"127.0.0.1:5000", "127.0.0.1:" + std::to_string(serve.port)}});
  });
  INFO(nginx.error_log());
  int port = std::stoi(nginx.url().substr(nginx.url().rfind(':') + 1));
  REQUIRE(timed_get(port, "/nix-cache-info").first == "HTTP/1.1 200 OK");

  // The hostile client: 500 connections that send nothing, 32 that send
  // half a request and then one header line a second.
  std::vector<int> held;
  for (int i = 0; i < 500; ++i) {
    int fd = test::connect_loopback(port);
    REQUIRE(fd >= 0);
    held.push_back(fd);
  }
  std::vector<int> slow;
  for (int i = 0; i < 32; ++i) {
    int fd = test::connect_loopback(port);
    REQUIRE(fd >= 0);
    std::string part = "GET /nix-cache-info HTTP/1.1\r\nHost: cache\r\n";
    (void)::send(fd, part.data(), part.size(), MSG_NOSIGNAL);
    slow.push_back(fd);
  }
  double worst = 0;
  for (int round = 0; round < 5; ++round) {
    for (int fd : slow) {
      (void)::send(fd, "X-a: b\r\n", 8, MSG_NOSIGNAL);
    }
    auto [status, seconds] = timed_get(port, "/nix-cache-info");
    CHECK(status == "HTTP/1.1 200 OK");
    worst = std::max(worst, seconds);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  WARN("worst GET through the front with 532 hostile connections held: " << worst << " s");
  CHECK(worst < 1.0);

  // Endless headers: nginx refuses past its buffers and closes.
  int flood = test::connect_loopback(port);
  std::string start = "GET /nix-cache-info HTTP/1.1\r\nHost: cache\r\n";
  (void)::send(flood, start.data(), start.size(), MSG_NOSIGNAL);
  size_t sent = 0;
  std::string line = "X-flood: " + std::string(1000, 'a') + "\r\n";
  for (int i = 0; i < 1000; ++i) {
    ssize_t n = ::send(flood, line.data(), line.size(), MSG_NOSIGNAL);
    if (n <= 0) {
      break;
    }
    sent += static_cast<size_t>(n);
  }
  char buf[256];
  ssize_t n = ::read(flood, buf, sizeof buf);
  std::string reply = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  WARN("endless headers: the front answered '" << reply.substr(0, reply.find("\r\n"))
                                               << "' after " << sent << " bytes were sent");
  // Refused once past its 32 KiB of header buffers (the rest is read and
  // dropped while the connection closes).
  CHECK_THAT(reply, Catch::StartsWith("HTTP/1.1 400"));
  ::close(flood);
  for (int fd : held) {
    ::close(fd);
  }
  for (int fd : slow) {
    ::close(fd);
  }
  CHECK(timed_get(port, "/nix-cache-info").first == "HTTP/1.1 200 OK");
}
