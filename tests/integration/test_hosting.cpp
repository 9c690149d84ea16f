// examples/hosting, run for real: Debian's nginx with the example's config
// (put on a loopback port and temporary folders), and kiln serve with the
// example's serve.yaml; kiln push to each, kiln copy back into a fresh store.
#include "support/test_support.hpp"

#include <kiln/server/server.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

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
