// examples/ci/ci-steps.sh, the steps the GitHub Actions and GitLab CI
// examples run, against a local kiln serve cache: a first job compiles and
// pushes each unit as it is built; a second job on a fresh runner (new store,
// new config) compiles nothing; a job without a token only reads.
#include "support/test_support.hpp"

#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>


using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

TEST_CASE("CI example: the CI steps push what they build, and a fresh runner compiles nothing",
          "[cargo][ci]")
{
  TempDir dir;
  fs::path project = dir / "project";
  fs::copy(fs::path(KILN_SOURCE_DIR) / "examples" / "cargo-workspace", project,
           fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  fs::remove_all(project / "target");
  fs::remove(project / "result");

  // The cache signs what trusted tokens upload: CI jobs need no key.
  test::kiln({"key", "generate", "cache-1", "--secret-file", (dir / "cache.sk").string()});
  std::string pub =
    test::output_of(test::kiln({"key", "public", (dir / "cache.sk").string()}), "key public");
  test::write_file(dir / "serve.yaml", "caches:\n"
                                       "  main:\n"
                                       "    path: " + (dir / "cache").string() + "\n"
                                       "    secret-key-file: " + (dir / "cache.sk").string() + "\n"
                                       "tokens:\n"
                                       "  - token: ci-secret-token\n"
                                       "    caches: [main]\n"
                                       "    scopes: [read, write]\n");
  test::KilnServe server(dir / "serve.yaml", dir / "serve.log");
  std::string cache = server.url + "/main";

  // What a runner has: kiln and cargo-kiln on PATH, a store and a config of
  // its own, the cache's URL and key, and (maybe) a token.
  auto job = [&](const std::string& runner, bool with_token) {
    test::RunOptions opts;
    opts.cwd = project;
    std::string path = fs::path(test::kiln_binary()).parent_path().string() + ":" +
                       fs::path(CARGO_KILN_BINARY).parent_path().string() + ":" +
                       std::getenv("PATH");
    opts.env = {{"PATH", path},
                {"KILN_STORE", (dir / runner / "store").string()},
                {"KILN_CONFIG", (dir / runner / "config.yaml").string()},
                {"KILN_CACHE", cache},
                {"KILN_CACHE_KEY", pub}};
    if (with_token) {
      opts.env["KILN_TOKEN"] = "ci-secret-token";
    }
    opts.unset_env = {"KILN_SUBSTITUTERS", "KILN_TRUSTED_PUBLIC_KEYS", "KILN_SECRET_KEY_FILE"};
    fs::remove_all(project / "target");
    return test::run({(fs::path(KILN_SOURCE_DIR) / "examples" / "ci" / "ci-steps.sh").string()},
                     opts);
  };

  auto first = job("runner-1", true);
  INFO(first.out << first.err);
  REQUIRE(first.status == 0);
  CHECK(first.err.find("Compiling mylib v1.0.0-beta.2") != std::string::npos);
  CHECK(first.err.find("ci-secret-token") == std::string::npos);
  CHECK(first.out.find("ci-secret-token") == std::string::npos);
  CHECK(fs::exists(project / "target" / "kiln" / "debug" / "my-app"));
  // The config file the job wrote names the cache and its key.
  std::string config = read_file(dir / "runner-1" / "config.yaml");
  CHECK(config.find(cache) != std::string::npos);
  CHECK(config.find(pub) != std::string::npos);

  // A fresh runner without a token (a fork's pull request): reads only, and
  // compiles nothing.
  auto second = job("runner-2", false);
  INFO(second.out << second.err);
  REQUIRE(second.status == 0);
  CHECK(second.err.find("Compiling") == std::string::npos);
  CHECK(second.err.find("Substituting") != std::string::npos);
  auto run = test::run({(project / "target" / "kiln" / "debug" / "my-app").string()});
  CHECK(run.status == 0);
  CHECK(run.out == read_file(project / "expected" / "my-app.txt"));
}
