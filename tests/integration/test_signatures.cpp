// k-of-n signatures that independent builders reach: pushes merge
// signatures into a narinfo for the same NAR (file:// and kiln serve), a
// different NAR is an error naming both hashes, `kiln sign` signs what a
// cache holds, and the client combines signatures across caches before
// it applies require-sigs. Real kiln processes over loopback.
#include "support/test_support.hpp"

#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// One project folder, several stores and keys.
struct Team
{
  TempDir dir;
  test::RunOptions in_project;

  Team()
  {
    test::write_file(dir / "project" / "kiln.yaml", test::k_two_step_project);
    test::write_file(dir / "project" / "src" / "main.c", "int main(void) { return 0; }\n");
    in_project.cwd = dir / "project";
  }

  std::string
  store(const std::string& name) const
  {
    return (dir / ("store-" + name)).string();
  }

  // A key pair: the secret key's file, and the public key.
  std::pair<std::string, std::string>
  key(const std::string& name) const
  {
    std::string file = (dir / (name + ".sk")).string();
    auto pub = test::output_of(test::kiln({"key", "generate", name, "--secret-file", file}), "key");
    return {file, pub};
  }

  // Build the project in `store`: name → {status, path}.
  std::map<std::string, nlohmann::json>
  build(const std::vector<std::string>& before, const std::vector<std::string>& after = {},
        std::string* err = nullptr) const
  {
    std::vector<std::string> args = before;
    args.push_back("build");
    args.push_back("--json");
    args.insert(args.end(), after.begin(), after.end());
    auto r = test::kiln(args, in_project);
    if (err) {
      *err = r.err;
    }
    INFO(r.err);
    REQUIRE(r.status == 0);
    std::map<std::string, nlohmann::json> by_name;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      auto j = nlohmann::json::parse(line);
      by_name[j["name"]] = j;
    }
    return by_name;
  }
};

size_t
count_signatures(const fs::path& narinfo)
{
  std::string text = read_file(narinfo);
  size_t n = 0;
  for (size_t pos = 0; (pos = text.find("\nSig: ", pos)) != std::string::npos; ++pos) {
    ++n;
  }
  return n;
}

std::string
narinfo_name(const std::string& store_path)
{
  return fs::path(store_path).filename().string().substr(0, 32) + ".narinfo";
}

} // namespace

TEST_CASE("two builders reach require-sigs: 2 through one kiln serve", "[signatures][server]")
{
  Team team;
  auto [a_key, a_pub] = team.key("builder-a");
  auto [b_key, b_pub] = team.key("builder-b");
  test::write_file(team.dir / "server.yaml",
                   "caches:\n"
                   "  main:\n"
                   "    path: main\n"
                   "    trusted-keys: [\"" + a_pub + "\", \"" + b_pub + "\"]\n"
                   "tokens:\n"
                   "  - token: builders\n"
                   "    name: ci\n"
                   "    caches: [main]\n"
                   "    scopes: [write]\n");
  test::KilnServe server({team.dir.path().string(), "--config", (team.dir / "server.yaml").string()},
                         team.dir / "serve.log");
  std::string url = server.url + "/main";
  test::RunOptions with_token = team.in_project;
  with_token.env = {{"KILN_TOKEN", "builders"}};

  // Each builder builds on its own and pushes with its own key.
  auto a = team.build({"--store", team.store("a")});
  auto b = team.build({"--store", team.store("b")});
  REQUIRE(a["app"]["status"] == "built");
  REQUIRE(b["app"]["status"] == "built");
  REQUIRE(a["app"]["path"] == b["app"]["path"]);
  std::string app = a["app"]["path"];
  std::string header = a["header"]["path"];
  auto push_a = test::kiln({"--store", team.store("a"), "push", url, app, "--secret-key-file", a_key},
                           with_token);
  INFO(push_a.err);
  REQUIRE(push_a.status == 0);
  fs::path app_narinfo = team.dir / "main" / narinfo_name(app);
  CHECK(count_signatures(app_narinfo) == 1);

  // One builder only: a store that needs two signatures builds, and says why.
  std::vector<std::string> strict = {"--store", team.store("c1"), "--substituters", url,
                                     "--trusted-public-keys", a_pub + " " + b_pub,
                                     "--require-sigs", "2"};
  std::string why;
  auto alone = team.build(strict, {}, &why);
  CHECK(alone["app"]["status"] == "built");
  CHECK_THAT(why, Catch::Contains("warning: cache " + url + ": ") &&
                    Catch::Contains("signed only by builder-a (1 valid trusted signatures of the 2 "
                                    "required); not using them"));

  // The second builder's push adds its signature to the same narinfos.
  auto push_b = test::kiln({"--store", team.store("b"), "push", url, app, "--secret-key-file", b_key},
                           with_token);
  INFO(push_b.err);
  REQUIRE(push_b.status == 0);
  CHECK_THAT(push_b.err, Catch::Contains("pushed 0 paths") &&
                           Catch::Contains("(2 gained signatures)"));
  CHECK(count_signatures(app_narinfo) == 2);
  CHECK(count_signatures(team.dir / "main" / narinfo_name(header)) == 2);

  // A third store with require-sigs: 2 substitutes everything.
  strict[1] = team.store("c2");
  auto c = team.build(strict, {"app"});
  CHECK(c["app"]["status"] == "substituted");
  CHECK(test::kiln({"--store", team.store("c2"), "path-info", header}).status == 0);
  CHECK(server.stop() == 0);
}

TEST_CASE("file:// pushes merge signatures, refuse another NAR, and kiln sign signs in a cache",
          "[signatures][cache]")
{
  Team team;
  auto [a_key, a_pub] = team.key("builder-a");
  auto [b_key, b_pub] = team.key("builder-b");
  auto [c_key, c_pub] = team.key("release");
  std::string cache = "file://" + (team.dir / "cache").string();
  auto a = team.build({"--store", team.store("a")});
  team.build({"--store", team.store("b")});
  std::string app = a["app"]["path"];
  fs::path narinfo = team.dir / "cache" / narinfo_name(app);

  REQUIRE(test::kiln({"--store", team.store("a"), "push", cache, app, "--secret-key-file", a_key})
            .status == 0);
  // Pushing again with the same key changes nothing.
  auto again = test::kiln({"--store", team.store("a"), "push", cache, app, "--secret-key-file", a_key});
  CHECK_THAT(again.err, Catch::Contains("2 were already there") && !Catch::Contains("gained"));
  REQUIRE(test::kiln({"--store", team.store("b"), "push", cache, app, "--secret-key-file", b_key})
            .status == 0);
  CHECK(count_signatures(narinfo) == 2);

  // kiln sign: a third key, in the store and in the cache.
  auto signed_ = test::kiln({"--store", team.store("a"), "sign", "--key-file", c_key, app, "--to",
                             cache});
  INFO(signed_.err);
  CHECK(signed_.status == 0);
  CHECK_THAT(signed_.err, Catch::Contains("signed 1 of 1 paths with release in " + cache));
  CHECK(count_signatures(narinfo) == 3);
  auto info = nlohmann::json::parse(
    test::output_of(test::kiln({"--store", team.store("a"), "path-info", "--json", app}), "info"));
  CHECK(info[0]["signatures"].size() == 2); // builder-a's and release's

  // The cache holding another NAR for the path: an error naming both hashes.
  std::string text = read_file(narinfo);
  auto at = text.find("NarHash: ");
  auto eol = text.find('\n', at);
  std::string theirs = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
  std::string ours = text.substr(at + 9, eol - at - 9);
  text.replace(at, eol - at, "NarHash: " + theirs);
  test::write_file(narinfo, text);
  auto conflict = test::kiln({"--store", team.store("b"), "push", cache, app, "--secret-key-file", b_key});
  CHECK(conflict.status == 1);
  CHECK_THAT(conflict.err, Catch::Contains(theirs) && Catch::Contains(ours) &&
                             Catch::Contains("not reproducible"));
}

TEST_CASE("signatures held by two caches are combined before require-sigs", "[signatures][cache]")
{
  Team team;
  auto [a_key, a_pub] = team.key("builder-a");
  auto [b_key, b_pub] = team.key("builder-b");
  std::string cache_a = "file://" + (team.dir / "cache-a").string();
  std::string cache_b = "file://" + (team.dir / "cache-b").string();
  auto a = team.build({"--store", team.store("a")});
  team.build({"--store", team.store("b")});
  std::string app = a["app"]["path"];
  REQUIRE(test::kiln({"--store", team.store("a"), "push", cache_a, app, "--secret-key-file", a_key})
            .status == 0);
  REQUIRE(test::kiln({"--store", team.store("b"), "push", cache_b, app, "--secret-key-file", b_key})
            .status == 0);

  std::vector<std::string> strict = {"--store", team.store("c"), "--trusted-public-keys",
                                     a_pub + " " + b_pub, "--require-sigs", "2"};
  // Each cache alone has one signature: refused.
  auto one = strict;
  one.insert(one.end(), {"copy", app, "--from", cache_a});
  auto refused = test::kiln(one);
  CHECK(refused.status == 1);
  CHECK_THAT(refused.err, Catch::Contains("warning: cache " + cache_a + ": 1 path signed only by "
                                          "builder-a"));
  // Both together: two valid signatures, and the store keeps both.
  auto both = strict;
  both.insert(both.end(), {"copy", app, "--from", cache_a, "--from", cache_b});
  auto copied = test::kiln(both);
  INFO(copied.err);
  CHECK(copied.status == 0);
  auto info = nlohmann::json::parse(
    test::output_of(test::kiln({"--store", team.store("c"), "path-info", "--json", app}), "info"));
  CHECK(info[0]["signatures"].size() == 2);
}

TEST_CASE("kiln build --refresh asks a cache again about what it remembered as missing",
          "[signatures][cache]")
{
  Team team;
  auto [a_key, a_pub] = team.key("builder-a");
  test::KilnServe server(std::vector<std::string>{(team.dir / "cache").string(), "--trusted-key",
                                                  a_pub},
                         team.dir / "serve.log");
  auto a = team.build({"--store", team.store("a")});
  std::string app = a["app"]["path"];
  std::vector<std::string> trusting = {"--substituters", server.url, "--trusted-public-keys", a_pub};

  // Two stores ask before the push: "not there" is remembered by each.
  for (const auto* name : {"fresh", "stale"}) {
    std::vector<std::string> args = {"--store", team.store(name)};
    args.insert(args.end(), trusting.begin(), trusting.end());
    args.insert(args.end(), {"copy", app});
    CHECK(test::kiln(args).status == 1);
  }
  // (A bare kiln serve is read-only: the push goes to its folder.)
  REQUIRE(test::kiln({"--store", team.store("a"), "push", "file://" + (team.dir / "cache").string(),
                      app, "--secret-key-file", a_key})
            .status == 0);

  auto stale = trusting;
  stale.insert(stale.begin(), {"--store", team.store("stale")});
  CHECK(team.build(stale, {"app"})["app"]["status"] == "built");
  auto fresh = trusting;
  fresh.insert(fresh.begin(), {"--store", team.store("fresh")});
  CHECK(team.build(fresh, {"--refresh", "app"})["app"]["status"] == "substituted");
}
