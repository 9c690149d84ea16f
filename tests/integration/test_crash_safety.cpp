#include "support/test_support.hpp"

#include <kiln/store/local_store.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

pid_t
spawn_quietly(const std::vector<std::string>& args)
{
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

void
make_tree(const fs::path& root)
{
  for (int d = 0; d < 20; ++d) {
    for (int f = 0; f < 15; ++f) {
      test::write_file(root / ("dir" + std::to_string(d)) / ("file" + std::to_string(f)),
                       test::random_bytes(static_cast<size_t>(100 + (d * 15 + f) * 97 % 20000),
                                          static_cast<uint64_t>(d * 100 + f)),
                       f % 5 == 0);
    }
  }
  test::write_file(root / "big", test::random_bytes(4 << 20, 99));
  fs::create_symlink("dir0/file0", root / "link");
}

} // namespace

TEST_CASE("store additions killed at random moments never leave a half-written valid path",
          "[store][crash][slow]")
{
  TempDir dir;
  auto store_root = dir / "store";
  auto tree = dir / "tree";
  make_tree(tree);
  auto add_args = [&](int id) {
    test::write_file(tree / "id", std::to_string(id));
    return std::vector<std::string>{test::kiln_binary(), "--store", store_root.string(), "store",
                                    "add", tree.string()};
  };

  // Calibrate: how long does one addition take here?
  auto start = std::chrono::steady_clock::now();
  REQUIRE(test::run(add_args(-1)).status == 0);
  auto full = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - start)
                .count();

  std::mt19937 rng(42);
  std::uniform_int_distribution<long> delay(0, full * 12 / 10);
  int killed = 0;
  int finished = 0;
  for (int i = 0; i < 40; ++i) {
    pid_t pid = spawn_quietly(add_args(i));
    REQUIRE(pid > 0);
    std::this_thread::sleep_for(std::chrono::microseconds(delay(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    (WIFSIGNALED(status) ? killed : finished)++;
  }
  INFO("killed " << killed << ", finished " << finished << " (one addition takes " << full
                 << " us)");
  CHECK(killed > 0);

  LocalStore store({store_root});
  // Every valid path re-hashes to its registered NAR hash: nothing half-written is valid.
  auto result = store.verify({});
  for (const auto& p : result.problems) {
    UNSCOPED_INFO(p.path << ": " << p.detail);
  }
  CHECK(result.ok());
  CHECK(store.valid_paths().size() >= 1);

  // The debris (strays, temporaries) is garbage; GC clears it and the store
  // is clean afterwards. The CLI agrees.
  store.collect_garbage({});
  CHECK(store.verify({}).problems.empty());
  CHECK(test::kiln({"--store", store_root.string(), "store", "verify"}).status == 0);
  CHECK(test::run({"sqlite3", (store_root / "db" / "db.sqlite").string(),
                   "PRAGMA integrity_check"})
          .out == "ok\n");
}
