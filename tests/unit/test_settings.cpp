#include "support/test_support.hpp"

#include <kiln/settings/settings.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

using namespace kiln;

namespace {

EnvLookup
fake_env(std::map<std::string, std::string> vars)
{
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
}

} // namespace

TEST_CASE("defaults follow the XDG base directories", "[settings]")
{
  auto s = load_settings({}, std::nullopt, fake_env({{"HOME", "/home/u"}}));
  CHECK(s.store == "/home/u/.local/share/kiln");
  CHECK(s.store_dir == "/kiln/store");
  CHECK(s.require_sigs == 1);
  CHECK(s.jobs >= 1);
  auto x = load_settings({}, std::nullopt, fake_env({{"XDG_DATA_HOME", "/data"}}));
  CHECK(x.store == "/data/kiln");
}

TEST_CASE("flags win over the environment, which wins over the config file", "[settings]")
{
  test::TempDir dir;
  test::write_file(dir / "config.yaml", "store: /from/file\n"
                                        "store-dir: /file/store\n"
                                        "substituters:\n"
                                        "  - http://a.example\n"
                                        "  - file:///b\n"
                                        "require-sigs: 2\n"
                                        "jobs: 3\n");
  auto env = fake_env({{"KILN_STORE", "/from/env"}, {"KILN_JOBS", "5"}});
  auto s = load_settings({{"jobs", "7"}}, dir / "config.yaml", env);
  CHECK(s.store == "/from/env");
  CHECK(s.origins["store"] == "KILN_STORE");
  CHECK(s.store_dir == "/file/store");
  CHECK(s.origins["store-dir"] == (dir / "config.yaml").string() + ":2");
  CHECK(s.substituters == std::vector<std::string>{"http://a.example", "file:///b"});
  CHECK(s.require_sigs == 2);
  CHECK(s.jobs == 7);
  CHECK(s.origins["jobs"] == "--jobs");
}

TEST_CASE("every documented environment variable is read", "[settings]")
{
  auto s = load_settings({}, std::nullopt,
                         fake_env({{"KILN_STORE", "/s"},
                                   {"KILN_STORE_DIR", "/x/store"},
                                   {"KILN_SUBSTITUTERS", "http://a  http://b"},
                                   {"KILN_TRUSTED_PUBLIC_KEYS", "k1:AAAA k2:BBBB"},
                                   {"KILN_REQUIRE_SIGS", "0"},
                                   {"KILN_SECRET_KEY_FILE", "/keys/sk"},
                                   {"KILN_TOKEN", "t0k"},
                                   {"KILN_JOBS", "4"}}));
  CHECK(s.store == "/s");
  CHECK(s.store_dir == "/x/store");
  CHECK(s.substituters.size() == 2);
  CHECK(s.trusted_public_keys == std::vector<std::string>{"k1:AAAA", "k2:BBBB"});
  CHECK(s.require_sigs == 0);
  CHECK(s.secret_key_file == "/keys/sk");
  CHECK(s.token == "t0k");
  CHECK(s.jobs == 4);
}

TEST_CASE("the default config file is found through XDG_CONFIG_HOME or KILN_CONFIG", "[settings]")
{
  test::TempDir dir;
  test::write_file(dir / "kiln" / "config.yaml", "jobs: 9\n");
  auto s = load_settings({}, std::nullopt, fake_env({{"XDG_CONFIG_HOME", dir.path().string()}}));
  CHECK(s.jobs == 9);
  test::write_file(dir / "other.yaml", "jobs: 11\n");
  auto t = load_settings({}, std::nullopt,
                         fake_env({{"XDG_CONFIG_HOME", dir.path().string()},
                                   {"KILN_CONFIG", (dir / "other.yaml").string()}}));
  CHECK(t.jobs == 11);
}

TEST_CASE("bad settings are errors naming where they came from", "[settings]")
{
  test::TempDir dir;
  test::write_file(dir / "c.yaml", "jobs: 2\nfrobnicate: yes\n");
  CHECK_THROWS_WITH(load_settings({}, dir / "c.yaml", fake_env({})),
                    Catch::Contains("c.yaml:2") && Catch::Contains("unknown setting 'frobnicate'"));
  test::write_file(dir / "d.yaml", "jobs: [1, [2]]\n");
  CHECK_THROWS_WITH(load_settings({}, dir / "d.yaml", fake_env({})), Catch::Contains("d.yaml:1"));
  test::write_file(dir / "e.yaml", "jobs: : :\n  - x\n");
  CHECK_THROWS_WITH(load_settings({}, dir / "e.yaml", fake_env({})), Catch::Contains("e.yaml:"));
  CHECK_THROWS_WITH(load_settings({}, std::nullopt, fake_env({{"KILN_JOBS", "many"}})),
                    Catch::Contains("KILN_JOBS") && Catch::Contains("'many'"));
  CHECK_THROWS_WITH(load_settings({{"require-sigs", "-1"}}, std::nullopt, fake_env({})),
                    Catch::Contains("--require-sigs"));
  CHECK_THROWS_WITH(load_settings({{"store-dir", "rel/store"}}, std::nullopt, fake_env({})),
                    Catch::Contains("absolute"));
  CHECK_THROWS_WITH(load_settings({}, dir / "missing.yaml", fake_env({})),
                    Catch::Contains("does not exist"));
  CHECK_THROWS_AS(load_settings({{"jobs", "0"}}, std::nullopt, fake_env({})), UsageError);
}
