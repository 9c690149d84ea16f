// kiln build in a Cargo project: plan the units cargo would build, turn each
// into a derivation, realise them (present, substituted or built), and link
// the binaries into target/kiln/<profile>/ like cargo's own layout.
#include "cmd_cargo.hpp"

#include <kiln/build/build.hpp>
#include <kiln/cargo/units.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <mutex>
#include <sstream>

namespace kiln::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const k_cargo_group = "Cargo projects";

std::vector<std::string>
rustflags_from_env()
{
  std::vector<std::string> flags;
  if (const char* encoded = std::getenv("CARGO_ENCODED_RUSTFLAGS"); encoded && *encoded) {
    std::string all = encoded, current;
    for (char c : all + "\x1f") {
      if (c == '\x1f') {
        flags.push_back(current);
        current.clear();
      } else {
        current += c;
      }
    }
    return flags;
  }
  if (const char* text = std::getenv("RUSTFLAGS")) {
    std::istringstream words(text);
    for (std::string w; words >> w;) {
      flags.push_back(w);
    }
  }
  return flags;
}

json
plan_json(const cargo::Plan& plan)
{
  json units = json::array();
  for (const auto& u : plan.units) {
    json deps = json::array();
    for (const auto& d : u.deps) {
      deps.push_back({{"index", d.unit}, {"extern_crate_name", d.extern_name}});
    }
    const auto& p = u.profile;
    units.push_back(
      {{"pkg_id", u.package->id},
       {"name", u.package->name},
       {"version", u.package->version},
       {"target",
        {{"name", u.target->name}, {"kind", u.target->kind}, {"crate_types", u.target->crate_types}}},
       {"kind", u.kind_name()},
       {"mode", u.mode == cargo::UnitMode::run_custom_build ? "run-custom-build" : "build"},
       // As cargo prints it: null for the host, else the target triple.
       {"platform", plan.cross && !u.host_platform ? json(u.triple) : json(nullptr)},
       {"for_host", u.for_host},
       {"features", u.features},
       {"profile",
        {{"name", p.name},
         {"opt_level", p.opt_level},
         {"debuginfo", p.debuginfo},
         {"debug_assertions", p.debug_assertions},
         {"overflow_checks", p.overflow_checks},
         {"lto", p.lto},
         {"panic", p.panic},
         {"codegen_units", p.codegen_units ? json(*p.codegen_units) : json(nullptr)},
         {"strip", p.strip}}},
       {"dependencies", deps}});
  }
  return {{"version", 1}, {"units", units}, {"roots", plan.roots}};
}

// Progress on stderr, as cargo prints it: a line as each unit starts and,
// on a terminal, a status line with a bar kept under the log lines.
class Progress : public BuildObserver
{
public:
  Progress(const cargo::Plan& plan, const cargo::UnitFrontend& frontend, bool show)
    : m_plan(plan), m_frontend(frontend), m_show(show),
      m_live(show && ::isatty(2) && std::getenv("CI") == nullptr &&
             std::string(std::getenv("TERM") ? std::getenv("TERM") : "dumb") != "dumb")
  {
  }

  void
  step_started(const StorePath& drv, StepKind kind) override
  {
    auto unit = m_frontend.unit_of(drv);
    if (!unit) {
      return;
    }
    auto now = std::chrono::steady_clock::now();
    m_times[drv] = {now, now};
    ++m_running;
    const char* verb = kind == StepKind::substituting ? "Substituting"
                       : m_plan.units[*unit].mode == cargo::UnitMode::run_custom_build
                         ? "Running"
                         : "Compiling";
    char line[512];
    std::snprintf(line, sizeof line, "%12s %s", verb, cargo::describe(m_plan.units[*unit]).c_str());
    print_line(line);
  }

  void
  step_finished(const StorePath& drv, const StepResult& result) override
  {
    if (!m_frontend.unit_of(drv)) {
      return;
    }
    m_times[drv].second = std::chrono::steady_clock::now();
    m_running -= m_running > 0 ? 1 : 0;
    ++m_finished;
    m_built += result.status == StepStatus::built;
    m_substituted += result.status == StepStatus::substituted;
    if (m_live) {
      std::fprintf(stderr, "\r\x1b[K%s", status_bar().c_str());
      std::fflush(stderr);
    }
  }

  void
  downloaded(uint64_t bytes) override
  {
    m_downloaded += bytes;
  }

  // Clear the status line.
  void
  done() const
  {
    if (m_live) {
      std::fprintf(stderr, "\r\x1b[K");
    }
  }

  size_t built() const { return m_built; }
  size_t substituted() const { return m_substituted; }
  double downloaded_mib() const { return static_cast<double>(m_downloaded) / (1024.0 * 1024.0); }
  // When a step started and ended.
  std::optional<std::pair<std::chrono::steady_clock::time_point, std::chrono::steady_clock::time_point>>
  times(const StorePath& drv) const
  {
    auto it = m_times.find(drv);
    return it == m_times.end() ? std::nullopt : std::optional(it->second);
  }

private:
  std::string
  status_bar() const
  {
    size_t total = m_plan.units.size();
    size_t width = 24, done = total ? m_finished * width / total : width;
    std::string bar = "[" + std::string(done, '=') + (done < width ? ">" : "") +
                      std::string(width - std::min(width, done + 1), ' ') + "]";
    char line[256];
    std::snprintf(line, sizeof line,
                  "%12s %s %zu/%zu: %zu built, %zu substituted, %zu running; %.1f MiB downloaded",
                  "Building", bar.c_str(), m_finished, total, m_built, m_substituted, m_running,
                  downloaded_mib());
    return line;
  }

  void
  print_line(const std::string& text) const
  {
    if (!m_show) {
      return;
    }
    if (m_live) {
      std::fprintf(stderr, "\r\x1b[K%s\n%s", text.c_str(), status_bar().c_str());
    } else {
      std::fprintf(stderr, "%s\n", text.c_str());
    }
    std::fflush(stderr);
  }

  const cargo::Plan& m_plan;
  const cargo::UnitFrontend& m_frontend;
  bool m_show, m_live;
  size_t m_built = 0, m_substituted = 0, m_running = 0, m_finished = 0;
  uint64_t m_downloaded = 0;
  std::map<StorePath, std::pair<std::chrono::steady_clock::time_point,
                                std::chrono::steady_clock::time_point>> m_times;
};

} // namespace

void
add_cargo_options(CLI::App& build, CargoArgs& args)
{
  build.add_flag("-r,--release", args.release, "Cargo: build with the release profile")
    ->group(k_cargo_group);
  build.add_option("--profile", args.profile, "Cargo: build with this profile")->group(k_cargo_group);
  build.add_option("-F,--features", args.plan.features, "Cargo: features to enable (comma separated)")
    ->group(k_cargo_group);
  build.add_flag("--all-features", args.plan.all_features, "Cargo: enable every feature")
    ->group(k_cargo_group);
  build.add_flag("--no-default-features", args.plan.no_default_features,
                 "Cargo: do not enable the default features")
    ->group(k_cargo_group);
  build.add_option("-p,--package", args.plan.packages, "Cargo: build only this package")
    ->group(k_cargo_group);
  build.add_flag("--workspace", args.plan.workspace, "Cargo: build every workspace member")
    ->group(k_cargo_group);
  build.add_option("--bin", args.plan.bins, "Cargo: build only this binary")->group(k_cargo_group);
  build.add_flag("--lib", args.plan.lib_only, "Cargo: build only the library")->group(k_cargo_group);
  build.add_option("--target", args.plan.target, "Cargo: build for this target triple")
    ->group(k_cargo_group);
  build.add_option("--manifest-path", args.manifest_path, "Cargo: the project's Cargo.toml")
    ->group(k_cargo_group);
  build.add_flag("--locked", args.locked, "Cargo: require Cargo.lock to be up to date")
    ->group(k_cargo_group);
  build.add_flag("--unit-graph", args.print_plan,
                 "Cargo: print the planned units as JSON (like cargo's --unit-graph); build nothing")
    ->group(k_cargo_group);
  build.add_flag("--link-libs", args.link_libs,
                 "Cargo: also link the selected packages' libraries into target/kiln/<profile>/")
    ->group(k_cargo_group);
  build.add_option("--push-to", args.push_to,
                   "Push every path built (not substituted) to this cache as soon as it is built, "
                   "signed with secret-key-file, with the cache's token")
    ->group(k_cargo_group);
}

bool
cargo_options_given(const CLI::App& build)
{
  for (const auto* option : build.get_options()) {
    if (option->get_group() == k_cargo_group && option->count() > 0 &&
        option->get_name() != "--push-to") {
      return true;
    }
  }
  return false;
}

int
cargo_build(Context& ctx, CargoArgs& args, const BuildCommonArgs& common)
{
  auto started = std::chrono::steady_clock::now();
  auto& store = ctx.store();
  const StoreDir& dir = store.store_dir();
  const Settings& settings = ctx.settings();
  if (args.release && args.profile && *args.profile != "release") {
    throw UsageError("--release and --profile " + *args.profile + " contradict each other");
  }
  args.plan.profile = args.release ? "release" : args.profile.value_or("dev");
  args.plan.rustflags = rustflags_from_env();

  cargo::Toolchain toolchain = cargo::detect_toolchain(store.root() / "var" / "rust-toolchain.json");
  fs::path where = args.manifest_path.empty() ? fs::current_path() : fs::path(args.manifest_path).parent_path();
  toolchain.cfg_cache_dir = store.root() / "var" / "cargo";
  cargo::Workspace ws =
    cargo::load_workspace(where, toolchain.cargo, args.locked, store.root() / "var" / "cargo");
  cargo::Plan plan = cargo::plan_build(ws, toolchain, args.plan);
  if (args.print_plan) {
    std::cout << plan_json(plan).dump() << std::endl;
    return 0;
  }
  cargo::InstantiatedPlan instantiated =
    cargo::instantiate_plan(store, ws, plan, toolchain, args.plan);
  const auto& units = instantiated.units;

  std::vector<StorePath> targets;
  for (size_t r : plan.roots) {
    targets.push_back(units[r].drv);
  }

  std::vector<std::unique_ptr<CacheClient>> clients;
  BuildOptions options;
  for (const auto& url : settings.substituters) {
    clients.push_back(ctx.open_cache(url));
    options.caches.push_back(clients.back().get());
  }
  options.policy = ctx.trust_policy();
  options.jobs = settings.jobs;
  options.connections = settings.connections;
  options.keep_going = common.keep_going;
  options.timeout = std::chrono::seconds(common.timeout);
  options.max_silent_time = std::chrono::seconds(common.max_silent_time);
  options.jobserver = true;
  cargo::UnitFrontend frontend(store, plan, instantiated, toolchain, settings.jobs);

  // --push-to: each built path goes up as soon as it is built.
  PushCache push_cache(ctx, args.push_to);
  options.push_to = push_cache.target();

  Progress progress(plan, frontend, !ctx.quiet);
  auto build = build_derivations(store, targets, options, frontend, progress);
  progress.done();
  const auto& results = build.steps;
  size_t built = progress.built(), substituted = progress.substituted();
  double downloaded = progress.downloaded_mib();

  int status = 0;
  for (const auto& [drv, result] : results) {
    if (result.status != StepStatus::failed) {
      continue;
    }
    status = 1;
    std::string what = frontend.describe(drv);
    // rustc's diagnostics, as cargo shows them: the whole log of the step.
    std::error_code ec;
    fs::path log = log_path(store, drv);
    std::string log_text;
    if (fs::exists(log, ec)) {
      // Without the builder's messages to kiln.
      std::istringstream lines(read_file(log));
      for (std::string line; std::getline(lines, line);) {
        if (!is_builder_message(line)) {
          log_text += line + "\n";
        }
      }
    }
    if (!log_text.empty()) {
      std::cerr << log_text;
    } else {
      std::cerr << result.error << "\n";
    }
    std::cerr << "kiln: error: could not build " << what << " (log: kiln log " << dir.print(drv)
              << ")\n";
  }
  if (!push_cache.report(build)) {
    status = 1;
  }

  if (common.json) {
    for (size_t i = 0; i < plan.units.size(); ++i) {
      const auto& u = plan.units[i];
      auto r = results.find(units[i].drv);
      std::string st = r != results.end() ? to_string(r->second.status)
                       : store.is_valid(units[i].out) ? "present"
                                                      : "not-needed";
      json j = {{"name", u.package->name},
                {"version", u.package->version},
                {"kind", u.kind_name()},
                {"target", u.target->name},
                {"features", u.features},
                {"drv", dir.print(units[i].drv)},
                {"path", dir.print(units[i].out)},
                {"status", st}};
      if (r != results.end() && !r->second.error.empty()) {
        j["error"] = r->second.error;
      }
      if (auto times = progress.times(units[i].drv)) {
        // When its build or substitution started (since kiln did) and how long it took.
        using seconds = std::chrono::duration<double>;
        auto round = [](double x) { return std::round(x * 1000) / 1000; };
        j["start"] = round(seconds(times->first - started).count());
        j["seconds"] = round(seconds(times->second - times->first).count());
      }
      std::cout << j.dump() << std::endl;
    }
  }
  if (status != 0) {
    return status;
  }

  // Link the products: target/kiln/<profile>/<bin>, each a GC root.
  fs::path out_dir = ws.target_dir / "kiln" / plan.units[plan.roots.front()].profile.dir_name;
  std::optional<fs::path> first;
  for (size_t r : plan.roots) {
    const auto& u = plan.units[r];
    bool bin = u.target->is_bin();
    if (!bin && !(args.link_libs && u.target->is_lib())) {
      continue;
    }
    fs::path product = store.physical_path(units[r].out) / units[r].product;
    std::string name = bin ? u.target->name : fs::path(units[r].product).filename().string();
    if (!common.no_link) {
      fs::create_directories(out_dir);
      fs::path link = out_dir / name;
      store.add_root(link, units[r].out);
      // The root keeps the output alive; the link names the product in it.
      replace_symlink(product, link);
      if (!first) {
        first = link;
      }
    }
    if (!common.json) {
      std::cout << product.string() << "\n";
    }
  }
  if (!common.no_link) {
    size_t root_index = plan.roots.front();
    for (size_t r : plan.roots) {
      if (plan.units[r].target->is_bin()) {
        root_index = r;
        break;
      }
    }
    store.add_root(ws.root / "result", units[root_index].out);
  }
  if (!ctx.quiet) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    char line[256];
    std::snprintf(line, sizeof line,
                  "`%s` profile: %zu units (%zu built, %zu substituted, %zu present or not "
                  "needed; %.1f MiB downloaded) in %.2fs",
                  args.plan.profile.c_str(), plan.units.size(), built, substituted,
                  plan.units.size() - built - substituted,
                  downloaded, secs);
    std::fprintf(stderr, "%12s %s\n", "Finished", line);
  }
  return 0;
}

} // namespace kiln::cli
