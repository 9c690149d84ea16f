#include <kiln/graph/graph.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
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
    h.build = [this](const StorePath& p) {
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
