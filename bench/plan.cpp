// Planning a synthetic graph of N derivations (each with up to 3 inputs
// among the earlier ones): reading the closure, ordering it, and running
// the scheduler with builds that do nothing. Prints one line per size, to
// show the time grows linearly; then one `RESULT plan-N MS ms -` line per size.
//
//   kiln-bench-plan [N...]        (default 1000 10000 100000)
#include <kiln/graph/graph.hpp>

#include <chrono>
#include <iostream>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

using namespace kiln;
using Clock = std::chrono::steady_clock;

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
  std::vector<std::pair<size_t, double>> totals; // for the RESULT lines
  std::cout << "| derivations | read closure | topological order | schedule (no-op builds, -j2) | "
               "total | per derivation |\n|---:|---:|---:|---:|---:|---:|\n";
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
    // Every derivation is a target, so the whole graph is planned.
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
    auto ms = [](auto a, auto b) {
      return std::chrono::duration<double, std::milli>(b - a).count();
    };
    std::cout << "| " << graph.size() << " | " << ms(t0, t1) << " ms | " << ms(t1, t2) << " ms | "
              << ms(t2, t3) << " ms | " << ms(t0, t3) << " ms | "
              << ms(t0, t3) * 1000 / static_cast<double>(graph.size()) << " µs |\n";
    totals.emplace_back(graph.size(), ms(t0, t3));
    if (results.size() != graph.size()) {
      std::cerr << "scheduler realised " << results.size() << " of " << graph.size() << "\n";
      return 1;
    }
  }
  // Machine-readable (for bench/run): name, total milliseconds, unit, no peer.
  std::cout << "\n";
  for (const auto& [n, total] : totals) {
    std::cout << "RESULT plan-" << n << " " << total << " ms -\n";
  }
  return 0;
}
