#include "support/test_support.hpp"

#include <kiln/settings/settings.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace kiln;

using test::TempDir;

namespace {

size_t
line_count(const std::string& s)
{
  return static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
}

} // namespace

TEST_CASE("kiln --help and every command's --help exit 0", "[cli]")
{
  auto top = test::kiln({"--help"});
  CHECK(top.status == 0);
  CHECK_THAT(top.out, Catch::Contains("store") && Catch::Contains("KILN_STORE"));
  for (std::vector<std::string> cmd :
       {std::vector<std::string>{"hash", "path"}, {"hash", "file"}, {"nar", "dump"},
        {"nar", "restore"}, {"store", "add"}, {"store", "verify"}, {"store", "locate"},
        {"path-info"}, {"gc"}, {"config", "show"}}) {
    cmd.push_back("--help");
    auto r = test::kiln(cmd);
    INFO(cmd[0]);
    CHECK(r.status == 0);
    CHECK_THAT(r.out, Catch::Contains("Usage"));
  }
  CHECK(test::kiln({"--version"}).status == 0);
}

TEST_CASE("bad usage exits 2 with one error line", "[cli]")
{
  for (std::vector<std::string> args :
       {std::vector<std::string>{}, {"frobnicate"}, {"store", "add"}, {"hash", "path", "--nope"},
        {"--jobs", "zero", "config", "show"}, {"gc", "--max-freed", "lots"}}) {
    TempDir dir;
    args.insert(args.begin(), {"--store", (dir / "s").string()});
    auto r = test::kiln(args);
    INFO(r.err);
    CHECK(r.status == 2);
    CHECK_THAT(r.err, Catch::StartsWith("kiln: error: "));
  }
  TempDir dir;
  auto r = test::kiln({"--store", (dir / "s").string(), "frobnicate"});
  CHECK_THAT(r.err, Catch::StartsWith("kiln: error: unknown command 'frobnicate'\n"));
}

TEST_CASE("hash path and hash file print each format", "[cli]")
{
  TempDir dir;
  test::write_file(dir / "hello.txt", "hello\n");
  auto f = (dir / "hello.txt").string();
  CHECK(test::output_of(test::kiln({"hash", "path", "--base32", f}), "hash") ==
        "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw");
  CHECK(test::output_of(test::kiln({"hash", "path", "--hex", f}), "hash") ==
        "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13");
  CHECK(test::output_of(test::kiln({"hash", "path", f}), "hash") ==
        "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=");
  CHECK(test::output_of(test::kiln({"hash", "file", "--hex", f}), "hash") ==
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
  CHECK(test::kiln({"hash", "path", "--hex", "--sri", f}).status == 2);
  auto missing = test::kiln({"hash", "path", (dir / "nope").string()});
  CHECK(missing.status == 2);
  CHECK_THAT(missing.err, Catch::Contains("nope"));
}

TEST_CASE("store add, path-info, locate, verify and gc work end to end", "[cli]")
{
  TempDir dir;
  std::string store = (dir / "s").string();
  test::write_file(dir / "pkg" / "bin" / "run", "#!/bin/sh\necho hi\n", true);
  test::write_file(dir / "pkg" / "README", "read me\n");

  auto added = test::output_of(
    test::kiln({"--store", store, "store", "add", (dir / "pkg").string(), "--root",
          (dir / "result").string()}),
    "store add");
  CHECK_THAT(added, Catch::StartsWith("/kiln/store/") && Catch::EndsWith("-pkg"));
  CHECK(std::filesystem::is_symlink(dir / "result"));

  auto info = test::kiln({"--store", store, "path-info", "--json", added});
  REQUIRE(info.status == 0);
  auto j = nlohmann::json::parse(info.out);
  REQUIRE(j.size() == 1);
  CHECK(j[0]["path"] == added);
  CHECK(j[0]["narSize"].get<uint64_t>() > 0);
  CHECK(j[0]["ca"].get<std::string>().starts_with("fixed:r:sha256:"));
  CHECK(j[0]["narHash"].get<std::string>() ==
        test::output_of(test::kiln({"hash", "path", (dir / "pkg").string()}), "hash"));

  // The link, the physical path and the logical path all name it.
  CHECK(test::output_of(test::kiln({"--store", store, "path-info", (dir / "result").string()}), "info") ==
        added);
  auto physical = test::output_of(test::kiln({"--store", store, "store", "locate", added}), "locate");
  CHECK(test::run({"cat", physical + "/README"}).out == "read me\n");

  // Not valid: exit 1, but the valid ones are still printed.
  auto bogus = "/kiln/store/00000000000000000000000000000000-nothing";
  auto mixed = test::kiln({"--store", store, "path-info", added, bogus});
  CHECK(mixed.status == 1);
  CHECK(mixed.out == added + "\n");
  CHECK_THAT(mixed.err, Catch::Contains("is not valid"));
  CHECK(line_count(mixed.err) == 1);

  CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);
  auto kept = test::kiln({"--store", store, "gc"});
  CHECK(kept.status == 0);
  CHECK(test::kiln({"--store", store, "path-info", added}).status == 0);

  std::filesystem::remove(dir / "result");
  auto gc = test::kiln({"--store", store, "gc", "--json"});
  REQUIRE(gc.status == 0);
  auto gj = nlohmann::json::parse(gc.out);
  CHECK(gj["deleted"].size() == 1);
  CHECK(test::kiln({"--store", store, "path-info", added}).status == 1);
}

TEST_CASE("the environment configures the store", "[cli]")
{
  TempDir dir;
  test::write_file(dir / "f", "x");
  test::RunOptions env;
  env.env = {{"KILN_STORE", (dir / "s").string()}, {"KILN_STORE_DIR", "/custom/store"}};
  auto added = test::output_of(test::kiln({"store", "add", (dir / "f").string()}, env), "add");
  CHECK_THAT(added, Catch::StartsWith("/custom/store/"));
  CHECK(std::filesystem::exists(dir / "s" / "db" / "db.sqlite"));
  auto shown = test::kiln({"config", "show", "--json"}, env);
  REQUIRE(shown.status == 0);
  auto j = nlohmann::json::parse(shown.out);
  CHECK(j["store-dir"]["value"] == "/custom/store");
  CHECK(j["store-dir"]["origin"] == "KILN_STORE_DIR");
  for (const auto& setting : kiln::Settings::table()) {
    INFO(setting.key);
    CHECK(j.contains(setting.key));
    CHECK(j[setting.key]["value"].get<std::string>() != "?");
  }
  CHECK(j["connections"]["value"] == "16");
}

TEST_CASE("nar dump and restore round-trip through pipes", "[cli]")
{
  TempDir dir;
  test::write_file(dir / "t" / "a", test::random_bytes(5000, 5));
  test::write_file(dir / "t" / "x", "#!/bin/sh\n", true);
  test::RunOptions to_file;
  to_file.stdout_file = dir / "t.nar";
  REQUIRE(test::kiln({"nar", "dump", (dir / "t").string()}, to_file).status == 0);
  test::RunOptions from_file;
  from_file.stdin_file = dir / "t.nar";
  REQUIRE(test::kiln({"nar", "restore", (dir / "r").string()}, from_file).status == 0);
  CHECK(test::run({"diff", "-r", (dir / "t").string(), (dir / "r").string()}).status == 0);

  // A corrupt archive: exit 1, one line naming the offset, nothing created.
  std::string nar = test::run({"cat", (dir / "t.nar").string()}).out;
  nar[20] = 'X';
  test::RunOptions bad;
  bad.stdin_data = nar;
  auto r = test::kiln({"nar", "restore", (dir / "r2").string()}, bad);
  CHECK(r.status == 1);
  CHECK_THAT(r.err, Catch::Contains("bad magic") && Catch::Contains("offset"));
  CHECK(line_count(r.err) == 1);
  CHECK_FALSE(std::filesystem::exists(dir / "r2"));
}

TEST_CASE("store verify --remove-corrupt ends by counting what it removed", "[cli]")
{
  TempDir dir;
  std::string store = (dir / "s").string();
  test::write_file(dir / "f", "original\n");
  auto path = test::output_of(test::kiln({"--store", store, "store", "add", (dir / "f").string()}),
                              "add");
  auto located = test::output_of(test::kiln({"--store", store, "store", "locate", path}), "locate");
  std::filesystem::permissions(located, std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  test::write_file(located, "tampered\n");
  auto r = test::kiln({"--store", store, "store", "verify", "--remove-corrupt"});
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK_THAT(r.err, Catch::EndsWith("kiln: checked 1 paths: removed 1 corrupt paths\n"));
  auto gone = test::kiln({"--store", store, "path-info", path});
  INFO(gone.out << gone.err);
  CHECK(gone.status != 0);
}
