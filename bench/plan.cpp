// Planning a synthetic graph of N derivations (each with up to 3 inputs
// among the earlier ones): reading the closure, ordering it, and running
// the scheduler with builds that do nothing. Each size runs 7 times (the
// first one also grows the heap, and two shared cores make the thread
// hand-offs vary from run to run); prints the fastest run's line per size,
// with the median and slowest totals beside it, to show the time grows
// linearly; then `RESULT plan-N MS ms -` lines per size with the fastest
// total, and `RESULT plan-median-N MS ms -` with the median.
//
//   kiln-bench-plan [N...]        (default 1000 10000 100000)
#include <kiln/graph/graph.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <iostream>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

using namespace kiln;
using Clock = std::chrono::steady_clock;

namespace {

// This process's CPU time (all threads), in milliseconds.
double
cpu_ms()
{
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

// Read, order and schedule every derivation of `drvs` once (all of them
// targets): the milliseconds of each phase, the total, and the CPU time.
std::vector<double>
plan_once(const std::vector<StorePath>& paths,
          const std::unordered_map<StorePath, Derivation>& drvs)
{
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  double cpu0 = cpu_ms();
  auto t0 = Clock::now();
  auto graph = BuildGraph::from_targets(
    paths, [&](const StorePath& p) { return drvs.at(p); }, StoreDir());
  auto t1 = Clock::now();
  auto order = graph.topological_order();
  auto t2 = Clock::now();
  RealiseHooks hooks;
  hooks.is_present = [](const StorePath&) { return false; };
  hooks.build = [](const StorePath&, BuildContext&) {};
  RealiseOptions options;
  options.jobs = 2;
  options.substitution_jobs = 2;
  auto results = realise(graph, paths, hooks, options);
  auto t3 = Clock::now();
  if (results.size() != graph.size() || graph.size() != paths.size()) {
    throw Error("scheduler realised " + std::to_string(results.size()) + " of " +
                std::to_string(graph.size()));
  }
  return {ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t0, t3), cpu_ms() - cpu0};
}

} // namespace

int
main(int argc, char** argv)
{
  std::vector<size_t> sizes;
  for (int i = 1; i < argc; ++i) {
    sizes.push_back(std::stoul(argv[i]));
  }
  if (sizes.empty()) {
    sizes = {1000, 10000, 100000};
  }
  struct Totals
  {
    size_t n;
    double fastest, median;
  };
  std::vector<Totals> totals; // for the RESULT lines
  std::cout << "| derivations | read closure | topological order | schedule (no-op builds, -j2) | "
               "total (fastest of 7) | median | slowest | per derivation | CPU per derivation |\n"
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (size_t n : sizes) {
    std::mt19937 rng(1);
    std::vector<StorePath> paths;
    std::unordered_map<StorePath, Derivation> drvs;
    for (size_t i = 0; i < n; ++i) {
      std::string hash = nix32_encode(
        compress_hash(hash_string(HashAlgo::sha256, std::to_string(i)).bytes(), 20));
      paths.emplace_back(hash + "-crate-" + std::to_string(i) + ".drv");
      Derivation d;
      d.name = "crate-" + std::to_string(i);
      d.outputs["out"] = {};
      for (int k = 0; k < 3 && i > 0; ++k) {
        d.input_drvs[paths[rng() % i]] = {"out"};
      }
      drvs.emplace(paths.back(), std::move(d));
    }
    std::vector<double> best; // read, order, schedule, total, CPU
    std::vector<double> all;
    for (int run = 0; run < 7; ++run) {
      auto times = plan_once(paths, drvs);
      if (best.empty() || times[3] < best[3]) {
        best = times;
      }
      all.push_back(times[3]);
    }
    std::sort(all.begin(), all.end());
    double median = all[all.size() / 2];
    size_t planned = paths.size();
    std::cout << "| " << planned << " | " << best[0] << " ms | " << best[1] << " ms | " << best[2]
              << " ms | " << best[3] << " ms | " << median << " ms | " << all.back() << " ms | "
              << best[3] * 1000 / static_cast<double>(planned) << " µs | "
              << best[4] * 1000 / static_cast<double>(planned) << " µs |\n";
    totals.push_back({planned, best[3], median});
  }
  // Machine-readable (for bench/run): name, total milliseconds, unit, no peer.
  std::cout << "\n";
  for (const auto& t : totals) {
    std::cout << "RESULT plan-" << t.n << " " << t.fastest << " ms -\n";
    std::cout << "RESULT plan-median-" << t.n << " " << t.median << " ms -\n";
  }
  return 0;
}
