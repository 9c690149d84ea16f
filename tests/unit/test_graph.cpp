#include <kiln/graph/graph.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/util/jobserver.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <thread>

using namespace kiln;

namespace {

// An in-memory graph of derivations named by hand: name → input names.
struct FakeGraph
{
  explicit FakeGraph(std::map<std::string, std::vector<std::string>> edges)
  {
    for (const auto& [name, inputs] : edges) {
      Derivation d;
      d.name = name;
      d.outputs["out"] = {};
      for (const auto& i : inputs) {
        d.input_drvs[path(i)] = {"out"};
      }
      drvs.emplace(path(name), d);
    }
  }
  static StorePath
  path(const std::string& name)
  {
    return StorePath(std::string(32, '0') + "-" + name + ".drv");
  }
  BuildGraph
  graph(const std::vector<std::string>& targets) const
  {
    std::vector<StorePath> t;
    for (const auto& n : targets) {
      t.push_back(path(n));
    }
    return BuildGraph::from_targets(
      t, [&](const StorePath& p) { return drvs.at(p); }, StoreDir());
  }
  std::map<StorePath, Derivation> drvs;
};

std::string
name_of(const StorePath& p)
{
  std::string n(p.name());
  return n.substr(0, n.size() - 4);
}

// Hooks that record what happened.
struct Recorder
{
  std::set<std::string> present;
  std::set<std::string> substitutable;
  std::set<std::string> failing;
  std::set<std::string> broken_substitutes;
  std::mutex mutex;
  std::vector<std::string> built;
  std::vector<std::string> substituted;
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  int build_ms = 0;

  RealiseHooks
  hooks()
  {
    RealiseHooks h;
    h.is_present = [this](const StorePath& p) { return present.count(name_of(p)) > 0; };
    h.is_substitutable = [this](const StorePath& p) {
      return substitutable.count(name_of(p)) > 0;
    };
    h.substitute = [this](const StorePath& p) {
      if (broken_substitutes.count(name_of(p))) {
        throw Error("cache has a corrupt NAR");
      }
      std::lock_guard guard(mutex);
      substituted.push_back(name_of(p));
    };
    h.build = [this](const StorePath& p, BuildContext&) {
      int now = ++running;
      int seen = max_running;
      while (now > seen && !max_running.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(build_ms));
      --running;
      if (failing.count(name_of(p))) {
        throw Error("compile error in " + name_of(p));
      }
      std::lock_guard guard(mutex);
      built.push_back(name_of(p));
    };
    return h;
  }
  size_t
  position(const std::string& name)
  {
    return static_cast<size_t>(std::find(built.begin(), built.end(), name) - built.begin());
  }
};

const std::map<std::string, std::vector<std::string>> k_diamond = {
  {"app", {"left", "right"}}, {"left", {"core"}}, {"right", {"core"}}, {"core", {}}};

} // namespace

TEST_CASE("topological order lists inputs first, and cycles are named", "[graph]")
{
  FakeGraph fake(k_diamond);
  auto graph = fake.graph({"app"});
  CHECK(graph.size() == 4);
  auto order = graph.topological_order();
  REQUIRE(order.size() == 4);
  CHECK(name_of(order.front()) == "core");
  CHECK(name_of(order.back()) == "app");

  FakeGraph cyclic({{"a", {"b"}}, {"b", {"c"}}, {"c", {"a"}}, {"top", {"a"}}});
  auto bad = cyclic.graph({"top"});
  CHECK_THROWS_AS(bad.topological_order(), CycleError);
  CHECK_THROWS_WITH(bad.topological_order(), Catch::Contains("a.drv") && Catch::Contains("b.drv") &&
                                                Catch::Contains("c.drv") &&
                                                !Catch::Contains("top.drv"));
  Recorder r;
  CHECK_THROWS_AS(realise(bad, {FakeGraph::path("top")}, r.hooks(), {}), CycleError);
  CHECK(r.built.empty());
}

TEST_CASE("realise builds in dependency order, skipping what is present", "[graph]")
{
  FakeGraph fake(k_diamond);
  auto graph = fake.graph({"app"});
  Recorder r;
  r.present = {"core"};
  auto results = realise(graph, {FakeGraph::path("app")}, r.hooks(), {});
  CHECK(results.at(FakeGraph::path("core")).status == StepStatus::present);
  CHECK(results.at(FakeGraph::path("app")).status == StepStatus::built);
  REQUIRE(r.built.size() == 3);
  CHECK(r.position("app") == 2);
}

TEST_CASE("a substitutable derivation's inputs are neither fetched nor built", "[graph]")
{
  FakeGraph fake(k_diamond);
  auto graph = fake.graph({"app"});
  Recorder r;
  r.substitutable = {"app", "core", "left", "right"};
  auto results = realise(graph, {FakeGraph::path("app")}, r.hooks(), {});
  CHECK(results.at(FakeGraph::path("app")).status == StepStatus::substituted);
  CHECK(r.substituted == std::vector<std::string>{"app"});
  CHECK(r.built.empty());
  CHECK_FALSE(results.count(FakeGraph::path("core")));

  SECTION("a failed substitution falls back to building, inputs included")
  {
    Recorder s;
    s.substitutable = {"app", "core"};
    s.broken_substitutes = {"app"};
    auto again = realise(graph, {FakeGraph::path("app")}, s.hooks(), {});
    CHECK(again.at(FakeGraph::path("app")).status == StepStatus::built);
    CHECK(again.at(FakeGraph::path("core")).status == StepStatus::substituted);
    CHECK(again.at(FakeGraph::path("left")).status == StepStatus::built);
    CHECK(s.position("app") == 2);
  }
}

TEST_CASE("independent builds run at once, up to -j N and no more", "[graph]")
{
  std::map<std::string, std::vector<std::string>> wide = {{"top", {}}};
  for (int i = 0; i < 8; ++i) {
    wide["top"].push_back("leaf" + std::to_string(i));
    wide["leaf" + std::to_string(i)] = {};
  }
  FakeGraph fake(wide);
  auto graph = fake.graph({"top"});
  for (unsigned jobs : {1u, 3u}) {
    Recorder r;
    r.build_ms = 30;
    RealiseOptions options;
    options.jobs = jobs;
    realise(graph, {FakeGraph::path("top")}, r.hooks(), options);
    CHECK(r.built.size() == 9);
    CHECK(r.max_running == static_cast<int>(jobs));
    CHECK(r.built.back() == "top");
  }
}

TEST_CASE("a failure stops new work, unless --keep-going", "[graph]")
{
  std::map<std::string, std::vector<std::string>> two = {
    {"top", {"bad", "good"}}, {"bad", {}}, {"good", {"base"}}, {"base", {}}, {"needs-bad", {"bad"}}};
  FakeGraph fake(two);
  auto graph = fake.graph({"top"});
  Recorder r;
  r.failing = {"bad"};
  RealiseOptions keep;
  keep.keep_going = true;
  auto results = realise(graph, {FakeGraph::path("top")}, r.hooks(), keep);
  CHECK(results.at(FakeGraph::path("bad")).status == StepStatus::failed);
  CHECK_THAT(results.at(FakeGraph::path("bad")).error, Catch::Contains("compile error in bad"));
  CHECK(results.at(FakeGraph::path("good")).status == StepStatus::built);
  CHECK(results.at(FakeGraph::path("top")).status == StepStatus::skipped);
  CHECK_THAT(results.at(FakeGraph::path("top")).error, Catch::Contains("bad"));

  Recorder s;
  s.failing = {"bad"};
  s.build_ms = 20;
  auto stopped = realise(graph, {FakeGraph::path("top")}, s.hooks(), {});
  CHECK(stopped.at(FakeGraph::path("bad")).status == StepStatus::failed);
  CHECK(stopped.at(FakeGraph::path("top")).status != StepStatus::built);
}

TEST_CASE("the longest chain of work starts first", "[graph]")
{
  // app ← x, and app ← c3 ← c2 ← c1: with one job, c1 (three more steps
  // behind it) goes before x, unless x is known to cost more.
  FakeGraph fake({{"app", {"x", "c3"}}, {"x", {}}, {"c3", {"c2"}}, {"c2", {"c1"}}, {"c1", {}}});
  auto graph = fake.graph({"app"});
  Recorder r;
  realise(graph, {FakeGraph::path("app")}, r.hooks(), {});
  CHECK(r.position("c1") < r.position("x"));

  Recorder s;
  RealiseHooks hooks = s.hooks();
  hooks.cost = [](const StorePath& p) { return name_of(p) == "x" ? 10.0 : 1.0; };
  realise(graph, {FakeGraph::path("app")}, hooks, {});
  CHECK(s.position("x") == 0);
}

namespace {

// Builds that announce an early artifact, then go on working: a pipelined
// dependent may start in between.
struct Pipeline
{
  using Clock = std::chrono::steady_clock;
  std::mutex mutex;
  std::map<std::string, Clock::time_point> started, early, ended, registered;
  std::set<std::string> failing;        // fail after announcing
  std::map<std::string, std::vector<std::string>> early_inputs;
  bool pipelined = true;

  RealiseHooks
  hooks()
  {
    RealiseHooks h;
    h.is_present = [](const StorePath&) { return false; };
    h.build = [this](const StorePath& p, BuildContext& context) {
      std::string name = name_of(p);
      {
        std::lock_guard guard(mutex);
        started[name] = Clock::now();
        for (const auto& in : context.early_inputs()) {
          early_inputs[name].push_back(name_of(in));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(40));
      {
        std::lock_guard guard(mutex);
        early[name] = Clock::now();
      }
      context.early_ready();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      {
        std::lock_guard guard(mutex);
        ended[name] = Clock::now();
      }
      if (failing.count(name)) {
        throw Error("codegen failed in " + name);
      }
      context.work_done();
      if (!context.wait_for_inputs()) {
        throw Error("an input of " + name + " failed");
      }
      std::lock_guard guard(mutex);
      registered[name] = Clock::now();
    };
    if (pipelined) {
      h.may_start_early = [](const StorePath& dependent, const StorePath&) {
        return name_of(dependent) != "bin"; // a linking step needs the whole input
      };
    }
    return h;
  }
};

} // namespace

TEST_CASE("pipelining: a dependent starts on its input's early artifact", "[graph]")
{
  // bin ← lib2 ← lib1: lib2 may start once lib1's metadata is there; bin
  // links, so it waits for lib2 to be done.
  FakeGraph fake({{"bin", {"lib2"}}, {"lib2", {"lib1"}}, {"lib1", {}}});
  auto graph = fake.graph({"bin"});
  RealiseOptions options;
  options.jobs = 2;

  SECTION("started early, made valid only after its input")
  {
    Pipeline p;
    auto results = realise(graph, {FakeGraph::path("bin")}, p.hooks(), options);
    for (const char* name : {"lib1", "lib2", "bin"}) {
      CHECK(results.at(FakeGraph::path(name)).status == StepStatus::built);
    }
    CHECK(p.started["lib2"] >= p.early["lib1"]);
    CHECK(p.started["lib2"] < p.ended["lib1"]);
    CHECK(p.registered["lib2"] >= p.registered["lib1"]);
    CHECK(p.early_inputs["lib2"] == std::vector<std::string>{"lib1"});
    CHECK(p.started["bin"] >= p.registered["lib2"]);
    CHECK(p.early_inputs["bin"].empty());
  }
  SECTION("without may_start_early, a dependent waits for its input to be done")
  {
    Pipeline p;
    p.pipelined = false;
    realise(graph, {FakeGraph::path("bin")}, p.hooks(), options);
    CHECK(p.started["lib2"] >= p.registered["lib1"]);
    CHECK(p.early_inputs["lib2"].empty());
  }
  SECTION("an input that fails after its early artifact voids the dependent")
  {
    Pipeline p;
    p.failing = {"lib1"};
    auto results = realise(graph, {FakeGraph::path("bin")}, p.hooks(), options);
    CHECK(results.at(FakeGraph::path("lib1")).status == StepStatus::failed);
    CHECK(p.started.count("lib2") == 1); // it did start, on the metadata
    CHECK(results.at(FakeGraph::path("lib2")).status == StepStatus::skipped);
    CHECK_THAT(results.at(FakeGraph::path("lib2")).error, Catch::Contains("lib1"));
    CHECK(p.registered.count("lib2") == 0);
    CHECK(results.at(FakeGraph::path("bin")).status == StepStatus::skipped);
    CHECK(p.started.count("bin") == 0);
  }
}

namespace {

// A job's process taking tokens from the jobserver by its path, as rustc
// does for codegen threads.
struct TokenTaker
{
  explicit TokenTaker(const std::filesystem::path& fifo)
    : fd(::open(fifo.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC))
  {
    REQUIRE(fd >= 0);
  }
  ~TokenTaker() { ::close(fd); }
  // Take up to `n` tokens now; returns how many.
  int
  take(int n)
  {
    int got = 0;
    char token;
    while (got < n && ::read(fd, &token, 1) == 1) {
      ++got;
    }
    return got;
  }
  void
  give(int n)
  {
    for (int i = 0; i < n; ++i) {
      REQUIRE(::write(fd, "+", 1) == 1);
    }
  }
  int fd;
};

std::filesystem::path
fresh_path(const std::string& name)
{
  auto path = std::filesystem::temp_directory_path() /
              (name + "-" + std::to_string(::getpid()) + "-" +
               std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  return path;
}

} // namespace

TEST_CASE("a jobserver bounds builds and the threads they start together", "[graph][jobserver]")
{
  std::map<std::string, std::vector<std::string>> wide = {{"top", {}}};
  for (int i = 0; i < 6; ++i) {
    wide["top"].push_back("leaf" + std::to_string(i));
    wide["leaf" + std::to_string(i)] = {};
  }
  FakeGraph fake(wide);
  auto graph = fake.graph({"top"});
  Jobserver jobserver(fresh_path("kiln-test-jobserver"), 2);
  CHECK(Jobserver::make_flags("/x/fifo") == "-j --jobserver-auth=fifo:/x/fifo");

  std::atomic<int> threads{0}, max_threads{0}, top_extra{-1};
  RealiseHooks hooks;
  hooks.is_present = [](const StorePath&) { return false; };
  hooks.build = [&](const StorePath& p, BuildContext&) {
    TokenTaker taker(jobserver.path());
    int extra = taker.take(3); // a greedy compiler
    if (name_of(p) == "top") {
      // Alone by then: the other token is free, once an idle worker that
      // took it to look for work has put it back.
      for (int i = 0; i < 100 && extra == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        extra = taker.take(1);
      }
      top_extra = extra;
    }
    int now = threads += 1 + extra;
    int seen = max_threads;
    while (now > seen && !max_threads.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    threads -= 1 + extra;
    taker.give(extra);
  };
  RealiseOptions options;
  options.jobs = 2;
  options.jobserver = &jobserver;
  auto results = realise(graph, {FakeGraph::path("top")}, hooks, options);
  CHECK(results.size() == 7);
  for (const auto& [drv, result] : results) {
    CHECK(result.status == StepStatus::built);
  }
  CHECK(max_threads == 2);
  CHECK(top_extra == 1);
  CHECK(jobserver.available() == 2);
}

TEST_CASE("a jobserver gets back tokens a killed process took along", "[graph][jobserver]")
{
  FakeGraph fake({{"c", {"b"}}, {"b", {"a"}}, {"a", {}}});
  auto graph = fake.graph({"c"});
  Jobserver jobserver(fresh_path("kiln-test-jobserver"), 2);
  std::map<std::string, int> extra;
  RealiseHooks hooks;
  hooks.is_present = [](const StorePath&) { return false; };
  hooks.build = [&](const StorePath& p, BuildContext&) {
    TokenTaker taker(jobserver.path());
    int got = taker.take(1);
    for (int i = 0; i < 100 && got == 0; ++i) { // as a compiler's helper thread waits
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      got = taker.take(1);
    }
    extra[name_of(p)] = got;
    if (name_of(p) != "a") {
      taker.give(extra[name_of(p)]); // "a" dies holding its token
    }
  };
  RealiseOptions options;
  options.jobs = 2;
  options.jobserver = &jobserver;
  auto results = realise(graph, {FakeGraph::path("c")}, hooks, options);
  CHECK(results.at(FakeGraph::path("c")).status == StepStatus::built);
  CHECK(extra["a"] == 1);
  CHECK(extra["b"] == 1); // the lost token is back
  CHECK(extra["c"] == 1);
  CHECK(jobserver.available() == 2);
}

TEST_CASE("a build is prepared before it waits for a job token", "[graph][jobserver]")
{
  FakeGraph fake({{"top", {"a", "b"}}, {"a", {}}, {"b", {}}, {"bad", {}}});
  Jobserver jobserver(fresh_path("kiln-test-jobserver"), 1);
  using Clock = std::chrono::steady_clock;
  std::mutex mutex;
  std::map<std::string, Clock::time_point> prepared, built_start, built_end;
  std::vector<std::string> built;
  RealiseHooks hooks;
  hooks.is_present = [](const StorePath&) { return false; };
  hooks.prepare = [&](const StorePath& p) {
    if (name_of(p) == "bad") {
      throw Error("sources of bad changed");
    }
    std::lock_guard guard(mutex);
    prepared[name_of(p)] = Clock::now();
  };
  hooks.build = [&](const StorePath& p, BuildContext&) {
    {
      std::lock_guard guard(mutex);
      built_start[name_of(p)] = Clock::now();
      built.push_back(name_of(p));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::lock_guard guard(mutex);
    built_end[name_of(p)] = Clock::now();
  };
  RealiseOptions options;
  options.jobs = 1; // one token; a second worker prepares the next build meanwhile
  options.jobserver = &jobserver;
  auto results = realise(fake.graph({"top"}), {FakeGraph::path("top")}, hooks, options);
  CHECK(results.at(FakeGraph::path("top")).status == StepStatus::built);
  REQUIRE(built.size() == 3);
  const std::string& second = built[1];
  const std::string& first = built[0];
  CHECK(prepared[second] < built_end[first]); // made ready while the first built
  CHECK(built_start[second] >= built_end[first]); // but built after it: one token

  auto failed = realise(fake.graph({"bad"}), {FakeGraph::path("bad")}, hooks, options);
  CHECK(failed.at(FakeGraph::path("bad")).status == StepStatus::failed);
  CHECK_THAT(failed.at(FakeGraph::path("bad")).error, Catch::Contains("sources of bad changed"));
  CHECK(std::count(built.begin(), built.end(), "bad") == 0);
  CHECK(jobserver.available() == 1);
}

TEST_CASE("ready derivations go by priority, then in the order they became ready", "[graph]")
{
  // 50 leaves under one app, with costs that tie in groups of five: with
  // one job, the costliest go first, and leaves of the same cost in the
  // order they were made ready (their inputs' order: by path).
  std::map<std::string, std::vector<std::string>> edges;
  std::map<std::string, double> cost;
  for (int i = 0; i < 50; ++i) {
    std::string name = "leaf" + std::string(i < 10 ? "0" : "") + std::to_string(i);
    edges["app"].push_back(name);
    edges[name] = {};
    cost[name] = (i * 7) % 10;
  }
  FakeGraph fake(edges);
  auto graph = fake.graph({"app"});
  Recorder r;
  RealiseHooks hooks = r.hooks();
  hooks.cost = [&](const StorePath& p) { return name_of(p) == "app" ? 1.0 : cost.at(name_of(p)); };
  realise(graph, {FakeGraph::path("app")}, hooks, {});
  REQUIRE(r.built.size() == 51);
  CHECK(r.built.back() == "app");
  for (size_t i = 1; i + 1 < r.built.size(); ++i) {
    const auto& a = r.built[i - 1];
    const auto& b = r.built[i];
    INFO(a << " before " << b);
    CHECK((cost.at(a) > cost.at(b) || (cost.at(a) == cost.at(b) && a < b)));
  }
}

TEST_CASE("a graph numbers many derivations, and uses those lent to it in place", "[graph]")
{
  // A chain of 3000 (the index grows many times over), each also needing
  // the first.
  std::map<StorePath, Derivation> held;
  std::vector<StorePath> paths;
  for (int i = 0; i < 3000; ++i) {
    paths.push_back(FakeGraph::path("n" + std::to_string(i)));
    Derivation d;
    d.name = "n" + std::to_string(i);
    if (i > 0) {
      d.input_drvs[paths[i - 1]] = {"out"};
      d.input_drvs[paths[0]] = {"out"};
    }
    held.emplace(paths.back(), d);
  }
  size_t read = 0;
  auto graph = BuildGraph::from_targets(
    {paths.back()},
    [&](const StorePath& p) {
      ++read;
      return held.at(p);
    },
    StoreDir(),
    [&](const StorePath& p) -> const Derivation* {
      // Lends every other one; the rest are read (copied).
      return p.name().substr(1).front() % 2 == 0 ? &held.at(p) : nullptr;
    });
  REQUIRE(graph.size() == 3000);
  size_t lent = 0;
  for (const auto& p : paths) {
    REQUIRE(graph.contains(p));
    CHECK(graph.path(graph.index_of(p)) == p);
    CHECK(graph.derivation(p).name == held.at(p).name);
    lent += &graph.derivation(p) == &held.at(p) ? 1 : 0;
  }
  CHECK(lent + read == 3000);
  CHECK(lent > 1000);
  CHECK(read > 1000);
  auto inputs = graph.input_indices(graph.index_of(paths[5]));
  std::set<StorePath> named;
  for (auto i : inputs) {
    named.insert(graph.path(i));
  }
  CHECK(named == std::set<StorePath>{paths[4], paths[0]});
  // A path the graph does not hold, even one whose hash part matches.
  StorePath stranger = FakeGraph::path("stranger");
  CHECK_FALSE(graph.contains(stranger));
  CHECK_THROWS_AS(graph.index_of(stranger), std::out_of_range);
  auto order = graph.topological_order();
  CHECK(order.front() == paths[0]);
  CHECK(order.back() == paths.back());
}

TEST_CASE("step results read as a map by path, and outlive their graph", "[graph]")
{
  // Paths with different hash parts, so that the order by path is not the
  // order of the names or of the numbers.
  auto path_of = [](const std::string& name) {
    std::string hash = nix32_encode(
      compress_hash(hash_string(HashAlgo::sha256, name).bytes(), StorePath::k_hash_len * 5 / 8));
    return StorePath(hash + "-" + name + ".drv");
  };
  std::map<StorePath, Derivation> drvs;
  std::vector<StorePath> all;
  for (int i = 0; i < 40; ++i) {
    Derivation d;
    d.name = "n" + std::to_string(i);
    d.outputs["out"] = {};
    if (i > 0) {
      d.input_drvs[all[static_cast<size_t>(i) / 2]] = {"out"};
    }
    all.push_back(path_of(d.name));
    drvs.emplace(all.back(), d);
  }
  StepResults results;
  CHECK(results.empty());
  CHECK(results.find(all[0]) == results.end());
  {
    auto graph = BuildGraph::from_targets({all.back()}, [&](const StorePath& p) {
      return drvs.at(p);
    }, StoreDir());
    RealiseHooks hooks;
    hooks.is_present = [&](const StorePath& p) { return p == all[0]; };
    hooks.build = [&](const StorePath& p, BuildContext&) {
      if (p == all[1]) {
        throw Error("no luck for n1");
      }
    };
    RealiseOptions keep;
    keep.keep_going = true;
    results = realise(graph, {all.back()}, hooks, keep);
    // A number twice, or one the graph does not have, is refused.
    CHECK_THROWS_AS(StepResults(graph, {{0, {}}, {0, {}}}), std::invalid_argument);
    CHECK_THROWS_AS(StepResults(graph, {{static_cast<uint32_t>(graph.size()), {}}}),
                    std::invalid_argument);
  } // the graph object is gone; the results keep what they name
  // The chain to n39 is n39 → n19 → n9 → n4 → n2 → n1 → n0.
  std::map<StorePath, StepStatus> expected;
  for (int i : {39, 19, 9, 4, 2}) {
    expected[all[static_cast<size_t>(i)]] = StepStatus::skipped;
  }
  expected[all[1]] = StepStatus::failed;
  expected[all[0]] = StepStatus::present;
  REQUIRE(results.size() == expected.size());
  auto want = expected.begin();
  for (const auto& [drv, result] : results) { // in the order of the paths
    CHECK(drv == want->first);
    CHECK(result.status == want->second);
    ++want;
  }
  CHECK(results.at(all[1]).error.find("no luck for n1") != std::string::npos);
  CHECK(results.at(all[2]).error.find("n1") != std::string::npos);
  auto it = results.find(all[0]);
  REQUIRE(it != results.end());
  CHECK(it->first == all[0]);
  CHECK(it->second.status == StepStatus::present);
  CHECK(results.count(all[39]) == 1);
  CHECK(results.count(all[3]) == 0); // in no chain to the target
  CHECK(results.find(path_of("n99")) == results.end());
  CHECK_THROWS_AS(results.at(path_of("n99")), std::out_of_range);
  auto first = results.begin();
  StepResults moved = std::move(results);
  CHECK(moved.at(all[0]).status == StepStatus::present);
  CHECK(first->first == moved.begin()->first); // an iterator survives the move
}

TEST_CASE("realise takes the graph's own targets, and its results come in the paths' order",
          "[graph]")
{
  // 2000 derivations, each with inputs among the earlier ones. One in five
  // shares a hash part with the others of its kind, so that the results'
  // sort keys (the first 8 bytes) tie and the whole path must decide;
  // another one in five shares the first 5 bytes, and differs in the next
  // 3 (which the sort's last passes order).
  std::map<StorePath, Derivation> drvs;
  std::vector<StorePath> all;
  std::mt19937 rng(7);
  const std::string alphabet = "0123456789abcdfghijklmnpqrsvwxyz"; // nix32
  for (size_t i = 0; i < 2000; ++i) {
    std::string name = "m" + std::to_string(i);
    std::string hash = nix32_encode(compress_hash(hash_string(HashAlgo::sha256, name).bytes(),
                                                  StorePath::k_hash_len * 5 / 8));
    if (i % 5 == 0) {
      hash = std::string(StorePath::k_hash_len, '1');
    } else if (i % 5 == 1) {
      hash.replace(0, 5, "zzzzz");
      for (size_t k = 5; k < 8; ++k) {
        hash[k] = alphabet[rng() % alphabet.size()];
      }
    }
    Derivation d;
    d.name = name;
    d.outputs["out"] = {};
    for (int k = 0; k < 2 && i > 0; ++k) {
      d.input_drvs[all[rng() % i]] = {"out"};
    }
    all.push_back(StorePath(hash + "-" + name + ".drv"));
    drvs.emplace(all.back(), d);
  }
  // The last 100 are the targets, the first of them given twice.
  std::vector<StorePath> targets(all.end() - 100, all.end());
  targets.push_back(targets.front());
  auto graph = BuildGraph::from_targets(
    targets, [&](const StorePath& p) { return drvs.at(p); }, StoreDir(),
    [&](const StorePath& p) { return &drvs.at(p); });
  REQUIRE(graph.target_count() == 100);
  for (size_t i = 0; i < graph.target_count(); ++i) {
    CHECK(graph.path(i) == all[1900 + i]);
  }
  std::mutex mutex;
  std::multiset<StorePath> built;
  RealiseHooks hooks;
  hooks.is_present = [](const StorePath&) { return false; };
  hooks.build = [&](const StorePath& p, BuildContext&) {
    std::lock_guard guard(mutex);
    built.insert(p);
  };
  auto by_graph = realise(graph, hooks, RealiseOptions{});
  std::set<StorePath> closure;
  for (size_t i = 0; i < graph.size(); ++i) {
    closure.insert(graph.path(i));
  }
  CHECK(std::set<StorePath>(built.begin(), built.end()) == closure);
  CHECK(built.size() == closure.size()); // each once
  REQUIRE(by_graph.size() == closure.size());
  auto want = closure.begin();
  for (const auto& [drv, result] : by_graph) {
    REQUIRE(drv == *want);
    CHECK(result.status == StepStatus::built);
    ++want;
  }
  // The same as naming the targets, with a failure this time.
  built.clear();
  hooks.build = [&](const StorePath& p, BuildContext&) {
    if (p == all[0]) {
      throw Error("m0 fails");
    }
    std::lock_guard guard(mutex);
    built.insert(p);
  };
  RealiseOptions keep_going;
  keep_going.keep_going = true;
  auto failed_by_graph = realise(graph, hooks, keep_going);
  auto built_by_graph = std::exchange(built, {});
  auto failed_by_paths = realise(graph, targets, hooks, keep_going);
  CHECK(built == built_by_graph);
  CHECK(failed_by_graph.at(all[0]).status == StepStatus::failed);
  REQUIRE(failed_by_paths.size() == failed_by_graph.size());
  CHECK(std::equal(failed_by_paths.begin(), failed_by_paths.end(), failed_by_graph.begin(),
                   [](const auto& a, const auto& b) {
                     return a.first == b.first && a.second.status == b.second.status &&
                            a.second.error == b.second.error;
                   }));
}
