#include "support/test_support.hpp"

#include <kiln/store/local_store.hpp>

#include <catch2/catch.hpp>

#include <mutex>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

TEST_CASE("several processes adding and collecting garbage at once lose nothing valid",
          "[store][concurrency][slow]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  // 12 distinct trees; every adder adds all of them, so the same path is
  // added by several processes at the same moment.
  for (int t = 0; t < 12; ++t) {
    for (int f = 0; f < 30; ++f) {
      test::write_file(dir / "src" / ("tree" + std::to_string(t)) / ("f" + std::to_string(f)),
                       test::random_bytes(2000 + f * 300, static_cast<uint64_t>(t * 1000 + f)));
    }
  }
  fs::create_directories(dir / "roots");

  std::mutex mutex;
  std::vector<std::string> failures;
  auto record = [&](const test::RunResult& r, const std::string& what) {
    if (r.status != 0) {
      std::lock_guard guard(mutex);
      failures.push_back(what + " exited " + std::to_string(r.status) + ": " + r.err);
    }
  };

  std::vector<std::thread> workers;
  for (int w = 0; w < 3; ++w) {
    workers.emplace_back([&, w] {
      for (int t = 0; t < 12; ++t) {
        int tree = (t + w * 4) % 12;
        auto link = dir / "roots" / ("w" + std::to_string(w) + "-t" + std::to_string(tree));
        record(test::kiln({"--store", store, "store", "add",
                           (dir / "src" / ("tree" + std::to_string(tree))).string(), "--root",
                           link.string()}),
               "adder " + std::to_string(w));
      }
    });
  }
  // An adder without roots: its paths may be collected, which is fine.
  workers.emplace_back([&] {
    for (int t = 0; t < 12; ++t) {
      record(test::kiln({"--store", store, "store", "add",
                         (dir / "src" / ("tree" + std::to_string(t))).string(), "--name",
                         "unrooted-" + std::to_string(t)}),
             "unrooted adder");
    }
  });
  workers.emplace_back([&] {
    for (int i = 0; i < 8; ++i) {
      record(test::kiln({"--store", store, "-q", "gc"}), "gc");
      record(test::kiln({"--store", store, "-q", "store", "verify", "--no-contents"}), "verify");
    }
  });
  for (auto& w : workers) {
    w.join();
  }
  for (const auto& f : failures) {
    UNSCOPED_INFO(f);
  }
  CHECK(failures.empty());

  LocalStore s({dir / "store"});
  size_t roots = 0;
  for (const auto& entry : fs::directory_iterator(dir / "roots")) {
    ++roots;
    auto path = s.resolve(entry.path().string());
    INFO(entry.path());
    CHECK(s.is_valid(path));
  }
  CHECK(roots == 36);
  auto result = s.verify({});
  CHECK(result.ok());
  // Exactly the 12 rooted trees survive a final collection.
  s.collect_garbage({});
  CHECK(s.valid_paths().size() == 12);
  CHECK(s.verify({}).problems.empty());
}
