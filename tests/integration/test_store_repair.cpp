// Repairing a store from the command line: `kiln store verify --repair`
// fetches a corrupt path again from a trusted cache, `--remove-corrupt`
// removes it with what references it; a push killed midway leaves no
// temporary file behind once gc has run.
#include "support/test_support.hpp"

#include <kiln/store/local_store.hpp>

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <random>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// Overwrite the first file of a store object, as a disk fault would.
void
damage(const LocalStore& store, const StorePath& path)
{
  fs::path target = store.physical_path(path);
  if (fs::is_directory(target)) {
    for (const auto& entry : fs::recursive_directory_iterator(target)) {
      if (entry.is_regular_file()) {
        target = entry.path();
        break;
      }
    }
  }
  fs::permissions(target, fs::perms::owner_write, fs::perm_options::add);
  test::write_file(target, "bit rot");
}

} // namespace

TEST_CASE("kiln store verify --repair fetches a corrupt path again from a trusted cache",
          "[store][verify][cache]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  std::string cache = "file://" + (dir / "cache").string();
  auto pub = test::output_of(
    test::kiln({"key", "generate", "ci-1", "--secret-file", (dir / "sk").string()}), "keygen");
  test::write_file(dir / "src" / "lib.rs", "pub fn f() {}\n");
  auto path = test::output_of(
    test::kiln({"--store", store, "store", "add", (dir / "src").string(), "--root",
                (dir / "result").string()}),
    "add");
  test::RunOptions with_key;
  with_key.env = {{"KILN_SECRET_KEY_FILE", (dir / "sk").string()}};
  REQUIRE(test::kiln({"--store", store, "push", cache, path}, with_key).status == 0);
  {
    LocalStore s({dir / "store"});
    damage(s, s.resolve(path));
  }

  // Without a cache, --repair can only report it.
  auto alone = test::kiln({"--store", store, "store", "verify", "--repair"});
  CHECK(alone.status == 1);
  CHECK_THAT(alone.err, Catch::Contains("corrupt: " + path));

  auto repaired = test::kiln({"--store", store, "--substituters", cache, "--trusted-public-keys",
                              pub, "store", "verify", "--repair"});
  INFO(repaired.err);
  CHECK(repaired.status == 0);
  CHECK_THAT(repaired.err, Catch::Contains("fixed corrupt: " + path) &&
                             Catch::Contains("fetched again from a cache"));
  CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);
  CHECK(read_file(fs::path(store) / "store" / fs::path(path).filename() / "lib.rs") ==
        "pub fn f() {}\n");
}

TEST_CASE("kiln store verify --remove-corrupt reports each path it removes", "[store][verify]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  std::vector<StorePath> chain;
  {
    LocalStore s({dir / "store"});
    chain.push_back(test::add_test_object(s, "base", "B"));
    chain.push_back(test::add_test_object(s, "middle", "M", {chain[0]}));
    chain.push_back(test::add_test_object(s, "top", "T", {chain[1]}));
    damage(s, chain[0]);
  }
  auto r = test::kiln({"--store", store, "store", "verify", "--remove-corrupt"});
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK_THAT(r.err, Catch::Contains("fixed corrupt: /kiln/store/" + chain[0].base()) &&
                      Catch::Contains("fixed dependent: /kiln/store/" + chain[1].base()) &&
                      Catch::Contains("fixed dependent: /kiln/store/" + chain[2].base()));
  CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);
}

TEST_CASE("a push killed midway leaves no temporary file once gc has run", "[cache][crash]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  fs::create_directories(dir / "tmpdir");
  for (int i = 0; i < 4; ++i) {
    test::write_file(dir / "src" / ("f" + std::to_string(i)), test::random_bytes(3 << 20, i));
  }
  auto path = test::output_of(
    test::kiln({"--store", store, "store", "add", (dir / "src").string()}), "add");
  std::mt19937 rng(5);
  int killed = 0;
  for (int i = 0; i < 8; ++i) {
    std::string cache = "file://" + (dir / ("cache" + std::to_string(i))).string();
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setenv("TMPDIR", (dir / "tmpdir").c_str(), 1);
      ::execl(test::kiln_binary().c_str(), "kiln", "--store", store.c_str(), "-q", "push",
              cache.c_str(), path.c_str(), nullptr);
      ::_exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 200));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    killed += WIFSIGNALED(status) ? 1 : 0;
  }
  INFO(killed << " of 8 pushes killed");
  CHECK(killed > 0);
  CHECK(fs::is_empty(dir / "tmpdir"));
  REQUIRE(test::kiln({"--store", store, "gc"}).status == 0);
  CHECK(fs::is_empty(dir / "store" / "tmp"));
}
