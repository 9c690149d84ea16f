// Cargo commands: cargo's flags → a cargo::CargoRequest → the library's
// build, rendered by CargoOutput; then the products are linked into
// target/kiln/<profile>/ like cargo's own layout.
#include "cmd_cargo.hpp"
#include "cargo_output.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <iostream>

namespace kiln::cli {

namespace fs = std::filesystem;

namespace {

const char* const k_cargo_group = "Cargo";
const char* const k_target_group = "Cargo: target selection";
const char* const k_kiln_cargo_group = "kiln, for Cargo projects";

void
add_value(std::vector<std::string>& argv, const char* flag, const std::optional<std::string>& value)
{
  if (value) {
    argv.insert(argv.end(), {flag, *value});
  }
}

void
add_values(std::vector<std::string>& argv, const char* flag, const std::vector<std::string>& values)
{
  for (const auto& v : values) {
    argv.insert(argv.end(), {flag, v});
  }
}

void
add_flag(std::vector<std::string>& argv, const char* flag, bool on)
{
  if (on) {
    argv.push_back(flag);
  }
}

// Where the products are linked: cargo's target folder, kiln/<profile dir>.
void
link_products(LocalStore& store, const cargo::CargoProject& project, const cargo::CargoBuild& build,
              const CargoArgs& args, const BuildCommonArgs& common)
{
  const cargo::Plan& plan = project.plan();
  if (plan.roots.empty()) {
    return;
  }
  fs::path out_dir =
    project.workspace().target_dir / "kiln" / plan.units[plan.roots.front()].profile.dir_name;
  std::optional<size_t> first_bin;
  for (size_t r : plan.roots) {
    const cargo::Unit& u = plan.units[r];
    const cargo::InstantiatedUnit& made = build.units.units[r];
    bool executable = made.product.starts_with("bin/") && u.mode == cargo::UnitMode::build;
    bool library = u.target.is_lib() && u.mode == cargo::UnitMode::build;
    if (!executable && !(args.link_libs && library)) {
      continue;
    }
    fs::path product = store.physical_path(made.out) / made.product;
    std::string name = executable ? (u.target.is_example() ? "examples/" : "") + u.target.name
                                  : fs::path(made.product).filename().string();
    if (!common.no_link) {
      fs::path link = out_dir / name;
      fs::create_directories(link.parent_path());
      store.add_root(link, made.out);
      // The root keeps the output alive; the link names the product in it.
      replace_symlink(product, link);
    }
    if (executable && !first_bin) {
      first_bin = r;
    }
    if (!common.json && args.message_format.empty()) {
      std::cout << product.string() << "\n";
    }
  }
  if (!common.no_link) {
    store.add_root(project.workspace().root / "result",
                   build.units.units[first_bin.value_or(plan.roots.front())].out);
  }
}

} // namespace

cargo::CargoRequest
CargoArgs::request(cargo::CargoCommand command) const
{
  if (!unstable.empty()) {
    throw UsageError("-Z " + unstable.front() +
                     ": kiln builds what stable cargo builds; unstable -Z options are not honoured");
  }
  if (release && profile && *profile != "release") {
    throw UsageError("--release and --profile " + *profile + " contradict each other");
  }
  cargo::CargoRequest r;
  r.command = command;
  r.cwd = fs::current_path();
  r.env = cargo::current_environment();
  std::vector<std::string> common;
  add_value(common, "--manifest-path",
            manifest_path.empty() ? std::nullopt : std::optional<std::string>(manifest_path));
  add_flag(common, "--locked", locked);
  add_flag(common, "--offline", offline);
  add_flag(common, "--frozen", frozen);
  add_values(common, "--config", config);
  r.metadata_args = common;
  std::vector<std::string>& a = r.cargo_args;
  a = common;
  add_values(a, "-p", packages);
  add_flag(a, "--workspace", workspace);
  add_values(a, "--exclude", exclude);
  add_flag(a, "--lib", lib);
  add_flag(a, "--bins", bins);
  add_values(a, "--bin", bin);
  add_flag(a, "--examples", examples);
  add_values(a, "--example", example);
  add_flag(a, "--tests", tests);
  add_values(a, "--test", test);
  add_flag(a, "--benches", benches);
  add_values(a, "--bench", bench);
  add_flag(a, "--all-targets", all_targets);
  add_values(a, "--features", features);
  add_flag(a, "--all-features", all_features);
  add_flag(a, "--no-default-features", no_default_features);
  add_flag(a, "--release", release);
  add_value(a, "--profile", profile);
  add_value(a, "--target", target);
  add_value(a, "--target-dir", target_dir);
  r.config_args = config;
  r.offline = offline || frozen;
  r.checks_tests = tests || benches || all_targets;
  return r;
}

void
add_cargo_options(CLI::App& c, CargoArgs& a)
{
  c.add_option("-p,--package", a.packages, "Package(s) to build")->group(k_cargo_group);
  c.add_flag("--workspace,--all", a.workspace, "Build every workspace member")->group(k_cargo_group);
  c.add_option("--exclude", a.exclude, "Leave these packages out (with --workspace)")
    ->group(k_cargo_group);
  c.add_flag("--lib", a.lib, "Only the library")->group(k_target_group);
  c.add_flag("--bins", a.bins, "Every binary")->group(k_target_group);
  c.add_option("--bin", a.bin, "Only this binary")->group(k_target_group);
  c.add_flag("--examples", a.examples, "Every example")->group(k_target_group);
  c.add_option("--example", a.example, "Only this example")->group(k_target_group);
  c.add_flag("--tests", a.tests, "Every test target")->group(k_target_group);
  c.add_option("--test", a.test, "Only this test target")->group(k_target_group);
  c.add_flag("--benches", a.benches, "Every bench target")->group(k_target_group);
  c.add_option("--bench", a.bench, "Only this bench target")->group(k_target_group);
  c.add_flag("--all-targets", a.all_targets, "Every target (lib, bins, examples, tests, benches)")
    ->group(k_target_group);
  c.add_option("-F,--features", a.features, "Features to enable (comma or space separated)")
    ->group(k_cargo_group);
  c.add_flag("--all-features", a.all_features, "Enable every feature")->group(k_cargo_group);
  c.add_flag("--no-default-features", a.no_default_features, "Do not enable the default feature")
    ->group(k_cargo_group);
  c.add_flag("-r,--release", a.release, "Build with the release profile")->group(k_cargo_group);
  c.add_option("--profile", a.profile, "Build with this profile")->group(k_cargo_group);
  c.add_option("--target", a.target, "Build for this target triple")->group(k_cargo_group);
  c.add_option("--target-dir", a.target_dir, "Cargo's target folder (kiln links products there)")
    ->group(k_cargo_group);
  c.add_option("--manifest-path", a.manifest_path, "The project's Cargo.toml")->group(k_cargo_group);
  c.add_flag("--locked", a.locked, "Require Cargo.lock to be up to date")->group(k_cargo_group);
  c.add_flag("--offline", a.offline, "Run without accessing the network")->group(k_cargo_group);
  c.add_flag("--frozen", a.frozen, "--locked and --offline")->group(k_cargo_group);
  c.add_option("--config", a.config, "Override a cargo configuration value (KEY=VALUE or FILE)")
    ->group(k_cargo_group);
  c.add_option("-Z", a.unstable, "Unstable cargo flags (refused: kiln builds what stable cargo builds)")
    ->group(k_cargo_group);
  c.add_flag("-v,--verbose", a.verbose, "Show every unit's output (-vv: also kiln's details)")
    ->group(k_cargo_group);
  c.add_option("--message-format", a.message_format,
               "human, short, json, json-render-diagnostics, json-diagnostic-short, "
               "json-diagnostic-rendered-ansi: cargo's JSON messages on stdout")
    ->group(k_cargo_group);
  c.add_option("--timings", a.timings,
               "Write an HTML report of the build's schedule (=json: also one line a unit on stdout)")
    ->expected(0, 1)
    ->default_str("html")
    ->group(k_cargo_group);
  c.add_flag("--unit-graph", a.print_plan,
             "Print cargo's unit graph (what kiln builds) as JSON; build nothing")
    ->group(k_cargo_group);
  c.add_flag("--link-libs", a.link_libs,
             "Also link the selected packages' libraries into target/kiln/<profile>/")
    ->group(k_kiln_cargo_group);
  c.add_option("--push-to", a.push_to,
               "Push every path built (not substituted) to this cache as soon as it is built, "
               "signed with secret-key-file, with the cache's token")
    ->group(k_kiln_cargo_group);
  c.add_option("--explain", a.explain,
               "Say why a package's units are (or are not) built: what changed in their inputs "
               "since the last build; build nothing")
    ->group(k_kiln_cargo_group);
}

bool
cargo_options_given(const CLI::App& command)
{
  for (const auto* option : command.get_options()) {
    std::string group = option->get_group();
    if ((group == k_cargo_group || group == k_target_group ||
         (group == k_kiln_cargo_group && option->get_name() != "--push-to")) &&
        option->count() > 0) {
      return true;
    }
  }
  return false;
}

int
cargo_command(Context& ctx, const CargoArgs& args, const BuildCommonArgs& common,
              cargo::CargoCommand command)
{
  OutputOptions output{ctx.quiet, args.verbose, parse_message_format(args.message_format)};
  cargo::CargoRequest request = args.request(command);
  auto& store = ctx.store();
  auto project = cargo::CargoProject::load(request, store.root() / "var" / "cargo");
  for (const auto& w : project->warnings()) {
    std::cerr << "kiln: warning: " << w << "\n";
  }
  if (args.print_plan) {
    std::cout << project->plan().unit_graph;
    return 0;
  }
  if (args.explain) {
    auto units = project->instantiate(store);
    for (const auto& line : cargo::explain_units(*project, units, store, *args.explain)) {
      std::cout << line << "\n";
    }
    return 0;
  }
  BuildOptions options =
    ctx.build_options(common.keep_going, common.timeout, common.max_silent_time);
  options.jobserver = true;
  // build.jobs in cargo's configuration, unless kiln's own jobs setting says.
  const auto& origins = ctx.settings().origins;
  auto origin = origins.find("jobs");
  auto config_jobs = project->build_config().jobs();
  if (config_jobs && *config_jobs > 0 && (origin == origins.end() || origin->second == "default")) {
    options.jobs = static_cast<unsigned>(*config_jobs);
  }
  PushCache push_cache(ctx, args.push_to);
  options.push_to = push_cache.target();

  CargoOutput out(*project, store, output);
  cargo::CargoBuild build = cargo::build_project(store, *project, options, out);
  cargo::record_build(*project, build.units);
  out.finish(build);
  int status = build.succeeded() ? 0 : 1;
  if (!push_cache.report(build.result)) {
    status = 1;
  }
  if (common.json) {
    out.print_json(build);
  }
  if (args.timings) {
    fs::path report = out.write_timings(build, *args.timings, project->workspace().target_dir / "kiln-timings");
    if (!ctx.quiet) {
      std::cerr << std::string(6, ' ') << "Timing report saved to " << report.string() << "\n";
    }
  }
  if (status != 0) {
    return status;
  }
  link_products(store, *project, build, args, common);
  out.print_finished(build);
  return 0;
}

} // namespace kiln::cli
