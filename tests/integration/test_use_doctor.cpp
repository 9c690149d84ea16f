// kiln use (a cache and its key into the config file) and kiln doctor
// (toolchain, store, config, substituters), against real files, a real
// nginx and real kiln runs.
#include "support/test_support.hpp"

#include <kiln/cache/cache_client.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// The environment of a user whose config lives under `home`.
test::RunOptions
user_env(const fs::path& home)
{
  test::RunOptions o;
  o.env = {{"HOME", home.string()}, {"XDG_CONFIG_HOME", (home / ".config").string()}};
  o.unset_env = {"KILN_CONFIG", "KILN_SUBSTITUTERS", "KILN_TRUSTED_PUBLIC_KEYS",
                 "KILN_REQUIRE_SIGS", "KILN_SECRET_KEY_FILE", "KILN_STORE", "XDG_DATA_HOME",
                 "RUSTC", "CARGO", "CC"};
  return o;
}

std::string
public_key_of(const TempDir& dir, const std::string& name)
{
  return test::output_of(
    test::kiln({"key", "generate", name, "--secret-file", (dir / (name + ".sk")).string()}),
    "key generate");
}

// A folder of stand-in rustc, cargo and cc that print a version.
fs::path
fake_toolchain(const TempDir& dir, const std::vector<std::string>& tools)
{
  fs::path bin = dir / "toolchain";
  fs::create_directories(bin);
  for (const auto& tool : tools) {
    test::write_file(bin / tool, "#!/bin/sh\necho '" + tool + " 9.9.9 (test)'\n", true);
  }
  return bin;
}

// The status of each check `name` in `kiln doctor --json` output.
std::vector<std::string>
statuses(const nlohmann::json& j, const std::string& name)
{
  std::vector<std::string> out;
  for (const auto& c : j["checks"]) {
    if (c["check"] == name) {
      out.push_back(c["status"]);
    }
  }
  return out;
}

} // namespace

TEST_CASE("kiln use writes the user's config file, idempotently", "[use][cli]")
{
  TempDir home;
  auto env = user_env(home.path());
  auto key = public_key_of(home, "team-1");
  fs::path file = home / ".config" / "kiln" / "config.yaml";

  auto first = test::kiln({"use", "https://cache.example.org/", "--key", key}, env);
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK_THAT(first.out, Catch::Contains("added substituter https://cache.example.org to " +
                                        file.string()));
  CHECK_THAT(first.out, Catch::Contains("added trusted public key " + key));
  REQUIRE(fs::exists(file));
  std::string written = read_file(file);

  // Again: nothing changes, and it says so.
  auto second = test::kiln({"use", "https://cache.example.org", "--key", key}, env);
  CHECK(second.status == 0);
  CHECK_THAT(second.out, Catch::Contains("is already in"));
  CHECK_THAT(second.out, !Catch::Contains("added"));
  CHECK(read_file(file) == written);

  // kiln reads it back: the values and where they came from.
  auto shown = test::kiln({"config", "show", "--json"}, env);
  REQUIRE(shown.status == 0);
  auto j = nlohmann::json::parse(shown.out);
  CHECK(j["substituters"]["value"] == "https://cache.example.org");
  CHECK(j["trusted-public-keys"]["value"] == key);
  CHECK_THAT(j["substituters"]["origin"].get<std::string>(), Catch::StartsWith(file.string()));

  // A second cache goes after the first.
  auto other = test::kiln({"use", "file:///srv/cache"}, env);
  CHECK(other.status == 0);
  CHECK_THAT(other.err, !Catch::Contains("warning"));   // the key trusted above will do
  auto again = nlohmann::json::parse(test::kiln({"config", "show", "--json"}, env).out);
  CHECK(again["substituters"]["value"] == "https://cache.example.org file:///srv/cache");
}

TEST_CASE("kiln use keeps the rest of an existing file, comments and mode included",
          "[use][cli]")
{
  TempDir dir;
  auto env = user_env(dir.path());
  auto key = public_key_of(dir, "ci-1");
  fs::path file = dir / "kiln.yaml";
  const std::string original = "# team settings\n"
                               "store: " + (dir / "store").string() + "   # big disk\n"
                               "substituters:\n"
                               "  - https://a.example.org   # the old one\n"
                               "jobs: 3\n"
                               "cache-tokens:\n"
                               "  https://a.example.org: secret\n";
  test::write_file(file, original);
  ::chmod(file.c_str(), 0600);

  SECTION("--config names the file")
  {
    auto r = test::kiln({"--kiln-config", file.string(), "use", "https://b.example.org", "--key", key},
                        env);
    INFO(r.err);
    REQUIRE(r.status == 0);
  }
  SECTION("$KILN_CONFIG names the file")
  {
    env.env["KILN_CONFIG"] = file.string();
    auto r = test::kiln({"use", "https://b.example.org", "--key", key}, env);
    INFO(r.err);
    REQUIRE(r.status == 0);
  }
  std::string now = read_file(file);
  CHECK(now == "# team settings\n"
               "store: " + (dir / "store").string() + "   # big disk\n"
               "substituters:\n"
               "  - https://a.example.org   # the old one\n"
               "  - https://b.example.org\n"
               "jobs: 3\n"
               "cache-tokens:\n"
               "  https://a.example.org: secret\n"
               "trusted-public-keys:\n"
               "  - " + key + "\n");
  struct stat st;
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("kiln use rewrites a list it cannot extend in place, and refuses bad input",
          "[use][cli]")
{
  TempDir dir;
  auto env = user_env(dir.path());
  fs::path file = dir / "kiln.yaml";
  env.env["KILN_CONFIG"] = file.string();
  test::write_file(file, "# gone after the rewrite\nsubstituters: [https://a.example.org]\njobs: 2\n");

  auto r = test::kiln({"use", "https://b.example.org"}, env);
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.err, Catch::Contains("comments were not kept"));
  auto j = nlohmann::json::parse(test::kiln({"config", "show", "--json"}, env).out);
  CHECK(j["substituters"]["value"] == "https://a.example.org https://b.example.org");
  CHECK(j["jobs"]["value"] == "2");

  std::string before = read_file(file);
  for (std::vector<std::string> bad :
       {std::vector<std::string>{"use", "ftp://x.example.org"},
        {"use", "https://c.example.org", "--key", "not-a-key"},
        {"use"}}) {
    auto refused = test::kiln(bad, env);
    INFO(refused.err);
    CHECK(refused.status == 2);
  }
  CHECK(read_file(file) == before);
}

TEST_CASE("kiln doctor: all is well", "[doctor][cli]")
{
  TempDir dir;
  auto env = user_env(dir.path());
  env.env["PATH"] = fake_toolchain(dir, {"rustc", "cargo", "cc"}).string();

  // A store with a path in it, pushed signed to a folder cache that nginx also serves.
  auto key = SecretKey::generate("doctor-1");
  fs::create_directories(dir / "cache");
  {
    LocalStore store({dir / "store"});
    auto path = test::add_test_object(store, "thing", "thing");
    CacheClient client(open_binary_cache("file://" + (dir / "cache").string()), store.store_dir());
    PushOptions options;
    options.key = &key;
    push(store, client, {path}, options);
  }
  test::Nginx nginx(dir / "cache");
  fs::path config = dir / "config.yaml";
  env.env["KILN_CONFIG"] = config.string();
  test::write_file(config, "store: " + (dir / "store").string() + "\n");
  REQUIRE(test::kiln({"use", "file://" + (dir / "cache").string(), "--key",
                      key.public_key().to_string()},
                     env)
            .status == 0);
  REQUIRE(test::kiln({"use", nginx.url()}, env).status == 0);

  auto r = test::kiln({"doctor"}, env);
  INFO(r.out << r.err);
  CHECK(r.status == 0);
  // (A nearly full disk is a warning, not a failure.)
  CHECK_THAT(r.err, Catch::Contains("all is well") || Catch::Contains("nothing failed"));
  CHECK_THAT(r.out, Catch::Contains("ok    rustc        rustc 9.9.9 (test) (" +
                                    (dir / "toolchain" / "rustc").string() + ")"));
  CHECK_THAT(r.out, Catch::Contains("ok    cargo"));
  CHECK_THAT(r.out, Catch::Contains("ok    cc"));
  CHECK_THAT(r.out, Catch::Contains("ok    config       " + config.string() + " parses"));
  CHECK_THAT(r.out, Catch::Contains("store from " + config.string() + ":1"));
  CHECK_THAT(r.out, Catch::Contains("1 valid path"));
  CHECK_THAT(r.out, Catch::Contains(nginx.url() + ": reachable"));
  CHECK_THAT(r.out, Catch::Contains("1 of 1 sampled paths are trusted (signed by: doctor-1)"));
  CHECK_THAT(r.out, !Catch::Contains("FAIL"));

  auto json = test::kiln({"doctor", "--json"}, env);
  CHECK(json.status == 0);
  auto j = nlohmann::json::parse(json.out);
  CHECK(j["ok"] == true);
  // Over HTTP, where nothing can be listed, the store's own paths are asked for.
  CHECK_THAT(r.out, Catch::Contains(nginx.url() + ": 1 of 1 sampled paths are trusted"));
  CHECK(statuses(j, "substituter") == std::vector<std::string>{"ok", "ok", "ok", "ok"});
}

TEST_CASE("kiln doctor: each problem is a FAIL line, and the exit status is 1", "[doctor][cli]")
{
  TempDir dir;
  auto env = user_env(dir.path());
  env.env["PATH"] = fake_toolchain(dir, {"cargo", "cc"}).string();   // no rustc
  fs::path config = dir / "config.yaml";
  env.env["KILN_CONFIG"] = config.string();

  // A cache for another store directory, one nobody listens for, and one
  // whose paths are signed by a key nobody trusts.
  fs::create_directories(dir / "nix-cache");
  test::write_file(dir / "nix-cache" / "nix-cache-info", "StoreDir: /nix/store\n");
  auto untrusted = SecretKey::generate("stranger-1");
  {
    LocalStore store({dir / "store"});
    auto path = test::add_test_object(store, "thing", "thing");
    CacheClient client(open_binary_cache("file://" + (dir / "signed").string()),
                       store.store_dir());
    PushOptions options;
    options.key = &untrusted;
    push(store, client, {path}, options);
  }
  std::string dead = "http://127.0.0.1:" + std::to_string(test::free_port());
  test::write_file(config, "store: " + (dir / "store").string() + "\n"
                           "require-sigs: 2\n"
                           "trusted-public-keys: " + SecretKey::generate("only-1").public_key().to_string() + "\n"
                           "substituters:\n"
                           "  - file://" + (dir / "nix-cache").string() + "\n"
                           "  - " + dead + "\n"
                           "  - file://" + (dir / "signed").string() + "\n");

  auto r = test::kiln({"doctor"}, env);
  INFO(r.out << r.err);
  CHECK(r.status == 1);
  CHECK_THAT(r.out, Catch::Contains("FAIL  rustc        'rustc' not found on PATH"));
  CHECK_THAT(r.out, Catch::Contains("FAIL  trust        require-sigs is 2 but there is 1 trusted key"));
  CHECK_THAT(r.out, Catch::Contains("serves store directory /nix/store, not /kiln/store"));
  CHECK_THAT(r.out, Catch::Contains("FAIL  substituter  " + dead + ": unreachable"));
  CHECK_THAT(r.out, Catch::Contains("warn  substituter  file://" + (dir / "signed").string() +
                                    ": 0 of 1 sampled paths are trusted (signed by: stranger-1)"));
  CHECK_THAT(r.err, Catch::Contains("checks failed"));

  auto j = nlohmann::json::parse(test::kiln({"doctor", "--json"}, env).out);
  CHECK(j["ok"] == false);
  CHECK(statuses(j, "rustc") == std::vector<std::string>{"fail"});
  CHECK(statuses(j, "cargo") == std::vector<std::string>{"ok"});

  SECTION("a config that does not parse is a FAIL too, not a usage error")
  {
    test::write_file(config, "substituters: [unclosed\n");
    auto broken = test::kiln({"doctor"}, env);
    CHECK(broken.status == 1);
    CHECK_THAT(broken.out, Catch::Contains("FAIL  config       " + config.string() + ":"));
  }
}
