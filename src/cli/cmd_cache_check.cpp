// kiln cache check: re-derive what a binary cache holds. For each path
// whose derivation the cache has too (pushed with --push-drvs), fetch the
// .drv closure (content-addressed: it vouches for itself), realise its
// inputs, build it again here and compare the NAR with the cache's.
#include "cli.hpp"

#include <kiln/cargo/config.hpp>
#include <kiln/cargo/units.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/parallel.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <iostream>
#include <mutex>
#include <random>

namespace kiln::cli {

namespace fs = std::filesystem;

namespace {

struct CacheCheckArgs
{
  std::string url;
  std::vector<std::string> paths;
  std::optional<size_t> sample;
  bool json = false;
  unsigned timeout = 0;
  unsigned max_silent_time = 0;
};

enum class Verdict { reproducible, differs, failed, unchecked };

const char*
to_string(Verdict v)
{
  switch (v) {
  case Verdict::reproducible:
    return "reproducible";
  case Verdict::differs:
    return "differs";
  case Verdict::failed:
    return "failed";
  case Verdict::unchecked:
    return "unchecked";
  }
  return "unchecked";
}

struct PathCheck
{
  StorePath path;
  std::optional<NarInfo> narinfo;
  std::optional<StorePath> drv;
  Verdict verdict = Verdict::unchecked;
  std::string reason;                        // unchecked, failed: why
  std::vector<TreeDifference> differences;   // first: the cache's, second: the rebuild
};

// The store paths a cache folder has narinfos for.
std::vector<std::string>
listed_paths(CacheClient& cache, const std::string& url)
{
  if (url.starts_with("http://") || url.starts_with("https://")) {
    throw UsageError("kiln cache check lists the paths of a cache folder (file:///dir) only; for "
                     "a cache over HTTP, name the store paths to check");
  }
  fs::path folder = url.starts_with("file://") ? fs::path(url.substr(7)) : fs::path(url);
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    std::string name = entry.path().filename().string();
    if (!name.ends_with(".narinfo")) {
      continue;
    }
    auto text = cache.backend().get_file(name);
    if (!text) {
      continue;
    }
    try {
      out.push_back(NarInfo::parse(*text, StoreDir(cache.cache_info().store_dir), name)
                      .info.path.base());
    } catch (const FormatError& e) {
      note("warning: " + url + "/" + name + ": " + e.what());
    }
  }
  if (ec) {
    throw Error("cannot list the cache folder '" + folder.string() + "': " + ec.message());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Progress of realising the inputs: what is built or substituted.
class InputLines : public BuildObserver
{
public:
  InputLines(const Frontend& frontend, bool show) : m_frontend(frontend), m_show(show) {}
  void
  step_started(const StorePath& drv, StepKind kind) override
  {
    if (m_show) {
      std::fprintf(stderr, "%12s %s (an input)\n",
                   kind == StepKind::substituting ? "Fetching" : "Building",
                   m_frontend.describe(drv).c_str());
    }
  }

private:
  const Frontend& m_frontend;
  bool m_show;
};

// What to check: the paths given, or every path of a cache folder that a
// derivation builds (--sample N of them), each with its narinfo and deriver.
std::vector<PathCheck>
select_checks(CacheClient& cache, const CacheCheckArgs& args, const StoreDir& dir)
{
  std::vector<std::string> names = args.paths;
  bool listed = names.empty();
  if (listed) {
    names = listed_paths(cache, args.url);
  }
  std::vector<PathCheck> checks;
  for (const auto& name : names) {
    auto path = dir.try_parse_prefix(name);
    if (!path) {
      throw UsageError("'" + name + "' is not a store path");
    }
    PathCheck c{*path, std::nullopt, std::nullopt, Verdict::unchecked, "", {}};
    c.narinfo = cache.query(*path);
    if (!c.narinfo) {
      c.reason = "not in the cache";
    } else if (c.narinfo->info.ca || std::string(path->name()).ends_with(".drv")) {
      // Sources and .drv files: their path is their content's hash.
      if (listed) {
        continue;
      }
      c.reason = "content-addressed (a source or a .drv): nothing builds it";
    } else if (!c.narinfo->info.deriver) {
      c.reason = "the cache names no derivation for it";
    } else {
      c.drv = c.narinfo->info.deriver;
    }
    checks.push_back(std::move(c));
  }
  if (args.sample && *args.sample < checks.size()) {
    std::vector<PathCheck> candidates;
    for (auto& c : checks) {
      if (c.drv) {
        candidates.push_back(std::move(c));
      }
    }
    std::shuffle(candidates.begin(), candidates.end(), std::mt19937_64(std::random_device{}()));
    candidates.erase(candidates.begin() + static_cast<long>(std::min(*args.sample, candidates.size())),
                     candidates.end());
    std::sort(candidates.begin(), candidates.end(),
              [](const PathCheck& a, const PathCheck& b) { return a.path < b.path; });
    checks = std::move(candidates);
  }
  return checks;
}

// The checks' derivations, with their closures, from the cache; a check
// whose derivation the cache lacks is left unchecked, saying so.
void
fetch_derivations(Context& ctx, CacheClient& cache, std::vector<PathCheck>& checks)
{
  auto& store = ctx.store();
  std::vector<StorePath> drvs;
  for (const auto& c : checks) {
    if (c.drv && !store.is_valid(*c.drv)) {
      drvs.push_back(*c.drv);
    }
  }
  std::sort(drvs.begin(), drvs.end());
  drvs.erase(std::unique(drvs.begin(), drvs.end()), drvs.end());
  SubstituteOptions fetch;
  fetch.connections = ctx.settings().connections;
  substitute(store, {&cache}, ctx.trust_policy(), drvs, fetch);
  for (auto& c : checks) {
    if (c.drv && !store.is_valid(*c.drv)) {
      c.reason = "its derivation " + store.store_dir().print(*c.drv) +
                 " is not in the cache (push it with --push-drvs)";
      c.drv.reset();
    }
  }
}

// The derivations read, and this machine's toolchain for Cargo units (if
// there is one: it must be theirs for a unit to be checked here).
struct Rebuilders
{
  std::map<StorePath, Derivation> derivations;
  std::unique_ptr<cargo::Toolchain> toolchain;
  std::string no_toolchain;                  // why there is none
};

void
read_derivations(Context& ctx, std::vector<PathCheck>& checks, Rebuilders& r)
{
  auto& store = ctx.store();
  const StoreDir& dir = store.store_dir();
  for (auto& c : checks) {
    if (!c.drv) {
      continue;
    }
    auto it = r.derivations.find(*c.drv);
    if (it == r.derivations.end()) {
      it = r.derivations.emplace(*c.drv, read_derivation(store, *c.drv)).first;
    }
    bool has_output = std::any_of(it->second.outputs.begin(), it->second.outputs.end(),
                                  [&](const auto& o) { return o.second.path == dir.print(c.path); });
    if (!has_output) {
      c.reason = "its derivation " + dir.print(*c.drv) + " does not make it";
      c.drv.reset();
      continue;
    }
    if (it->second.builder == cargo::k_rust_unit_builder && !r.toolchain && r.no_toolchain.empty()) {
      try {
        auto env = cargo::current_environment();
        fs::path cwd = fs::current_path();
        auto config = cargo::CargoConfig::load(cwd, cargo::cargo_home_of(env), {}, env);
        std::vector<std::string> warnings;
        cargo::BuildConfig build_config(config, warnings);
        r.toolchain = cargo::detect_toolchain(cwd, build_config, env, ctx.cargo_cache_dir());
      } catch (const std::exception& e) {
        r.no_toolchain = std::string("no Rust toolchain here: ") + e.what();
      }
    }
  }
}

// Cargo units this machine cannot build are left unchecked, saying why.
void
screen_cargo_units(const cargo::DrvUnitFrontend& frontend, const Rebuilders& r,
                   std::vector<PathCheck>& checks)
{
  for (auto& c : checks) {
    if (!c.drv) {
      continue;
    }
    const Derivation& drv = r.derivations.at(*c.drv);
    if (drv.builder == cargo::k_rust_unit_builder) {
      std::optional<std::string> why =
        r.toolchain ? frontend.cannot_build(drv) : std::optional<std::string>(r.no_toolchain);
      if (why) {
        c.reason = "cannot build it here: " + *why;
        c.drv.reset();
      }
    }
  }
}

// Realise the derivations' inputs: from trusted caches (this one too, if
// trusted), or built here. A check whose input fails has failed.
void
realise_inputs(LocalStore& store, const BuildOptions& options, const Frontend& frontend,
               const Rebuilders& r, bool show, std::vector<PathCheck>& checks)
{
  std::vector<StorePath> inputs;
  for (const auto& [drv_path, drv] : r.derivations) {
    for (const auto& [input, outputs] : drv.input_drvs) {
      inputs.push_back(input);
    }
  }
  std::sort(inputs.begin(), inputs.end());
  inputs.erase(std::unique(inputs.begin(), inputs.end()), inputs.end());
  InputLines lines(frontend, show);
  BuildResult realised = build_derivations(store, inputs, options, frontend, lines);
  for (auto& c : checks) {
    if (!c.drv) {
      continue;
    }
    for (const auto& [input, outputs] : r.derivations.at(*c.drv).input_drvs) {
      if (!realised.succeeded({input})) {
        auto step = realised.steps.find(input);
        c.verdict = Verdict::failed;
        c.reason = "its input " + store.store_dir().print(input) + " could not be realised" +
                   (step != realised.steps.end() && !step->second.error.empty()
                      ? ": " + step->second.error.substr(0, step->second.error.find('\n'))
                      : std::string());
        c.drv.reset();
        break;
      }
    }
  }
}

// Build one check's derivation again and compare its output's NAR with the
// cache's; when they differ, fetch the cache's copy and list the files.
void
rebuild_and_compare(LocalStore& store, CacheClient& cache, const BuildOptions& options,
                    const Frontend& frontend, const Derivation& drv, PathCheck& c)
{
  BuildObserver silent;
  Rebuild rebuilt = rebuild_derivation(store, *c.drv, options, frontend, silent);
  std::string output;
  for (const auto& [name, out] : drv.outputs) {
    if (out.path == store.store_dir().print(c.path)) {
      output = name;
    }
  }
  const fs::path& built = rebuilt.outputs.at(output);
  HashSink hash;
  dump_path(built, hash);
  if (hash.finish() == c.narinfo->info.nar_hash) {
    c.verdict = Verdict::reproducible;
    return;
  }
  c.verdict = Verdict::differs;
  TempFolder theirs(fs::temp_directory_path(), "kiln-cache-check-",
                    "a folder for the cache's copy of " + c.path.base());
  fs::path copy = theirs.path() / c.path.base();
  cache.fetch_to_folder(*c.narinfo, copy);
  c.differences = diff_trees(copy, built, 20);
}

void
print_json_report(const std::string& url, const StoreDir& dir, const std::vector<PathCheck>& checks,
                  const size_t (&count)[4])
{
  nlohmann::json j;
  j["cache"] = url;
  j["paths"] = nlohmann::json::array();
  for (const auto& c : checks) {
    nlohmann::json p = {{"path", dir.print(c.path)}, {"status", to_string(c.verdict)}};
    if (c.narinfo && c.narinfo->info.deriver) {
      p["drv"] = dir.print(*c.narinfo->info.deriver);
    }
    if (!c.reason.empty()) {
      p["reason"] = c.reason;
    }
    if (c.verdict == Verdict::differs) {
      p["differences"] = nlohmann::json::array();
      for (const auto& d : c.differences) {
        p["differences"].push_back({{"file", d.path}, {"what", d.what}});
      }
    }
    j["paths"].push_back(p);
  }
  j["reproducible"] = count[0];
  j["differ"] = count[1];
  j["failed"] = count[2];
  j["unchecked"] = count[3];
  std::cout << j.dump(2) << "\n";
}

void
print_text_report(const std::string& url, const StoreDir& dir, const std::vector<PathCheck>& checks,
                  const size_t (&count)[4], bool quiet)
{
  for (const auto& c : checks) {
    if (c.verdict == Verdict::reproducible) {
      std::cout << dir.print(c.path) << ": reproducible\n";
    } else if (c.verdict == Verdict::differs) {
      std::cout << dir.print(c.path) << ": NOT reproducible (the cache's copy, then the rebuild)\n";
      for (const auto& d : c.differences) {
        std::cout << "    " << (d.path.empty() ? std::string("(the output itself)") : d.path)
                  << ": " << d.what << "\n";
      }
    } else {
      std::cout << dir.print(c.path) << ": "
                << (c.verdict == Verdict::failed ? "failed: " : "not checked: ")
                << c.reason.substr(0, c.reason.find('\n')) << "\n";
    }
  }
  if (!quiet) {
    note("checked " + std::to_string(count[0] + count[1] + count[2]) + " of " +
         std::to_string(checks.size()) + " paths of " + url + ": " + std::to_string(count[0]) +
         " reproducible, " + std::to_string(count[1]) + " not reproducible" +
         (count[2] ? ", " + std::to_string(count[2]) + " failed to build" : std::string()) +
         (count[3] ? "; " + std::to_string(count[3]) + " could not be checked" : std::string()));
  }
}

int
cache_check(Context& ctx, const CacheCheckArgs& args)
{
  auto& store = ctx.store();
  const StoreDir& dir = store.store_dir();
  auto cache = ctx.open_cache(args.url);
  if (cache->cache_info().store_dir != dir.path()) {
    throw UsageError("the cache " + args.url + " is for the store " + cache->cache_info().store_dir +
                     ", this store is " + dir.path());
  }
  bool show = !ctx.quiet && !args.json;

  std::vector<PathCheck> checks = select_checks(*cache, args, dir);
  fetch_derivations(ctx, *cache, checks);
  Rebuilders rebuilders;
  read_derivations(ctx, checks, rebuilders);
  // Without a toolchain, a frontend that builds only what needs none.
  static const cargo::Toolchain none;
  cargo::DrvUnitFrontend frontend(store, rebuilders.toolchain ? *rebuilders.toolchain : none,
                                  ctx.settings().jobs);
  screen_cargo_units(frontend, rebuilders, checks);

  BuildOptions options = ctx.build_options(true, args.timeout, args.max_silent_time);
  options.caches.push_back(cache.get());
  options.jobserver = true;
  realise_inputs(store, options, frontend, rebuilders, show, checks);

  std::vector<size_t> todo;
  for (size_t i = 0; i < checks.size(); ++i) {
    if (checks[i].drv) {
      todo.push_back(i);
    }
  }
  std::mutex mutex;
  parallel_for(todo.size(), std::max(1u, ctx.settings().jobs), [&](size_t k) {
    PathCheck& c = checks[todo[k]];
    if (show) {
      std::lock_guard guard(mutex);
      std::fprintf(stderr, "%12s %s\n", "Checking", dir.print(c.path).c_str());
    }
    try {
      rebuild_and_compare(store, *cache, options, frontend, rebuilders.derivations.at(*c.drv), c);
    } catch (const std::exception& e) {
      c.verdict = Verdict::failed;
      c.reason = e.what();
    }
    if (show) {
      std::lock_guard guard(mutex);
      std::fprintf(stderr, "%12s %s\n",
                   c.verdict == Verdict::reproducible ? "Same"
                   : c.verdict == Verdict::differs    ? "DIFFERS"
                                                      : "Failed",
                   dir.print(c.path).c_str());
    }
  });

  size_t count[4] = {0, 0, 0, 0};
  for (const auto& c : checks) {
    ++count[static_cast<int>(c.verdict)];
  }
  if (args.json) {
    print_json_report(args.url, dir, checks, count);
  } else {
    print_text_report(args.url, dir, checks, count, ctx.quiet);
  }
  return count[1] + count[2] > 0 ? 1 : 0;
}

} // namespace

void
register_cache_check_command(CLI::App& cache, Context& ctx)
{
  auto args = std::make_shared<CacheCheckArgs>();
  auto* check = cache.add_subcommand(
    "check",
    "Build a cache's paths again here and compare them with the cache's, bit for bit: which are "
    "reproducible, which are not and which files differ (the cache must hold their "
    "derivations: push with --push-drvs)");
  check->add_option("CACHE", args->url, "The cache (file:///dir, a folder, or http(s)://…)")
    ->required();
  check->add_option("PATH", args->paths,
                    "Store paths to check (default: every path of a cache folder that a "
                    "derivation builds)");
  check->add_option("--sample", args->sample, "Check this many of them, picked at random")
    ->type_name("N");
  check->add_flag("--json", args->json, "Print the report as JSON");
  check->add_option("--timeout", args->timeout, "Kill a build step after this many seconds");
  check->add_option("--max-silent-time", args->max_silent_time,
                    "Kill a build step silent for this many seconds");
  check->callback([&ctx, args] {
    ctx.action = [&ctx, args] { return cache_check(ctx, *args); };
  });
}

} // namespace kiln::cli
