// Planning a synthetic graph of N derivations (each with up to 3 inputs
// among the earlier ones): reading the closure, ordering it, and running
// the scheduler with builds that do nothing. 7 samples per size, the sizes
// taking turns, each sample in a process of its own; a sample plans a
// smaller graph as many times as it takes to plan as many derivations as
// the largest graph has (the times given are per plan). Prints the fastest sample's line per size, with the
// median and slowest beside it, to show the time grows linearly, and how
// long the least a planner must read of the frontend's derivations takes
// (part of the read, not kiln's code); then
// `RESULT plan-N MS ms -` lines per size with the fastest,
// `RESULT plan-median-N MS ms -` with the median, and
// `RESULT plan-least-read-N MS ms -` with the fastest such walk.
//
//   kiln-bench-plan [N...]        (default 1000 10000 100000)
#include <kiln/graph/graph.hpp>

#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

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
  // As kiln's build does with a frontend's derivations: held elsewhere, lent
  // to the graph (a look-up per derivation, no copy).
  auto graph = BuildGraph::from_targets(
    paths, [&](const StorePath& p) { return drvs.at(p); }, StoreDir(),
    [&](const StorePath& p) { return &drvs.at(p); });
  auto t1 = Clock::now();
  auto order = graph.topological_order();
  auto t2 = Clock::now();
  RealiseHooks hooks;
  hooks.is_present = [](const StorePath&) { return false; };
  hooks.build = [](const StorePath&, BuildContext&) {};
  RealiseOptions options;
  options.jobs = 2;
  options.substitution_jobs = 2;
  auto results = realise(graph, hooks, options); // the graph's targets, as kiln's build does
  auto t3 = Clock::now();
  if (results.size() != graph.size() || graph.size() != paths.size()) {
    throw Error("scheduler realised " + std::to_string(results.size()) + " of " +
                std::to_string(graph.size()));
  }
  return {ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t0, t3), cpu_ms() - cpu0};
}

// What reading the closure cannot do without, and is not kiln's code: a
// look-up of every derivation in the frontend's map and a walk over its
// inputs, reading each input's name (the one thing that says which
// derivation it is), in milliseconds. It shows how much of the read
// phase's growth is the memory the derivations themselves take.
double
walk_frontend_map(const std::vector<StorePath>& paths,
                  const std::unordered_map<StorePath, Derivation>& drvs)
{
  auto t0 = Clock::now();
  size_t seen = 0;
  for (const auto& p : paths) {
    for (const auto& [input, outputs] : drvs.at(p).input_drvs) {
      const std::string& name = input.base();
      seen += name.size() + static_cast<unsigned char>(name.front()) +
              static_cast<unsigned char>(name.back());
    }
  }
  auto t1 = Clock::now();
  __asm__ volatile("" : : "g"(seen) : "memory"); // so that the walk is not optimised away
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

// A synthetic graph of n derivations: each has up to 3 inputs among the
// earlier ones.
struct SyntheticGraph
{
  std::vector<StorePath> paths;
  std::unordered_map<StorePath, Derivation> drvs;

  explicit SyntheticGraph(size_t n)
  {
    std::mt19937 rng(1);
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
  }
};

// One sample, in a child process that holds only this graph (so that no
// other size's memory is in its heap): a first plan that is not counted
// (it grows the heap), then `repeat` plans. The times per plan: read,
// order, schedule, total, CPU, and the frontend's map walked alone.
std::vector<double>
sample_in_child(size_t n, size_t repeat)
{
  int fds[2];
  if (pipe(fds) != 0) {
    throw Error("pipe failed");
  }
  pid_t pid = fork();
  if (pid < 0) {
    throw Error("fork failed");
  }
  if (pid == 0) {
    close(fds[0]);
    // Freed memory stays in the process (blocks up to 32 MB from the heap,
    // no trimming), so that the plan before the samples has mapped what
    // they use: by default glibc gives large blocks back to the kernel on
    // free, and this VM takes about 10 µs to map each page again, so a
    // change in which allocations happened to reuse freed memory moved
    // milliseconds between phases.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    int status = 0;
    try {
      SyntheticGraph g(n);
      plan_once(g.paths, g.drvs);
      std::vector<double> sum(6, 0.0);
      for (size_t r = 0; r < repeat; ++r) {
        auto times = plan_once(g.paths, g.drvs);
        times.push_back(walk_frontend_map(g.paths, g.drvs));
        for (size_t k = 0; k < sum.size(); ++k) {
          sum[k] += times[k] / static_cast<double>(repeat);
        }
      }
      if (write(fds[1], sum.data(), sum.size() * sizeof(double)) !=
          static_cast<ssize_t>(sum.size() * sizeof(double))) {
        status = 1;
      }
    } catch (const std::exception& e) {
      std::cerr << "kiln-bench-plan: " << e.what() << "\n";
      status = 1;
    }
    _exit(status);
  }
  close(fds[1]);
  std::vector<double> sum(6, 0.0);
  ssize_t got = read(fds[0], sum.data(), sum.size() * sizeof(double));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got != static_cast<ssize_t>(sum.size() * sizeof(double)) || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    throw Error("the sample of " + std::to_string(n) + " derivations failed");
  }
  return sum;
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
  size_t largest = *std::max_element(sizes.begin(), sizes.end());
  // Every sample plans as many derivations as one plan of the largest
  // graph: a sample of a few milliseconds is more likely than one of
  // hundreds to fall between two interruptions of a shared machine, so the
  // fastest short one would understate the cost per derivation.
  auto repeat_of = [&](size_t n) { return std::max<size_t>(1, largest / n); };
  std::vector<std::vector<std::vector<double>>> samples(sizes.size());
  // The sizes take turns, so that a slow spell of the machine falls on all.
  for (int round = 0; round < 7; ++round) {
    for (size_t s = 0; s < sizes.size(); ++s) {
      samples[s].push_back(sample_in_child(sizes[s], repeat_of(sizes[s])));
    }
  }
  struct Totals
  {
    size_t n;
    double fastest, median, least_read;
  };
  std::vector<Totals> totals; // for the RESULT lines
  std::cout << "| derivations | plans per sample | read closure | topological order | "
               "schedule (no-op builds, -j2) | total (fastest of 7) | median | slowest | "
               "per derivation | CPU per derivation | the least read: the frontend's derivations and "
               "their inputs' names, no kiln code |\n"
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (size_t s = 0; s < sizes.size(); ++s) {
    auto& all = samples[s];
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a[3] < b[3]; });
    const auto& best = all.front();
    double median = all[all.size() / 2][3];
    double n = static_cast<double>(sizes[s]);
    // (the fastest walk of the 7: it is timed apart from the plans)
    double least_read = std::min_element(all.begin(), all.end(), [](const auto& a, const auto& b) {
                          return a[5] < b[5];
                        })->at(5);
    std::cout << "| " << sizes[s] << " | " << repeat_of(sizes[s]) << " | " << best[0] << " ms | "
              << best[1] << " ms | " << best[2] << " ms | " << best[3] << " ms | " << median
              << " ms | " << all.back()[3] << " ms | " << best[3] * 1000 / n << " µs | "
              << best[4] * 1000 / n << " µs | " << least_read << " ms |\n";
    totals.push_back({sizes[s], best[3], median, least_read});
  }
  // Machine-readable (for bench/run): name, milliseconds per plan, unit, no peer.
  std::cout << "\n";
  for (const auto& t : totals) {
    std::cout << "RESULT plan-" << t.n << " " << t.fastest << " ms -\n";
    std::cout << "RESULT plan-median-" << t.n << " " << t.median << " ms -\n";
    std::cout << "RESULT plan-least-read-" << t.n << " " << t.least_read << " ms -\n";
  }
  return 0;
}
