// Cargo commands: cargo's flags → a cargo::CargoRequest → the library's
// build, rendered by CargoOutput; then the products are linked into
// target/kiln/<profile>/ like cargo's own layout.
#include "cmd_cargo.hpp"
#include "cargo_output.hpp"
#include "check_report.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include <chrono>
#include <iostream>

#include <unistd.h>

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
              const CargoArgs& args, const BuildCommonArgs& common, bool quiet_paths)
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
    if (!common.json && args.message_format.empty() && !quiet_paths) {
      std::cout << product.string() << "\n";
    }
  }
  if (!common.no_link) {
    store.add_root(project.workspace().root / "result",
                   build.units.units[first_bin.value_or(plan.roots.front())].out);
  }
}

// Every unit output of this build that is in the store, listed in the
// target folder as a root list: `kiln gc` keeps a project's compiled
// dependencies while its target/kiln/ exists (the size cap may still take
// them, least recently used first).
void
keep_project_units(LocalStore& store, const cargo::CargoProject& project,
                   const cargo::CargoBuild& build, cargo::CargoCommand command)
{
  const cargo::Plan& plan = project.plan();
  if (plan.roots.empty()) {
    return;
  }
  std::set<StorePath> kept;
  for (const auto& made : build.units.units) {
    if (store.is_valid(made.out)) {
      kept.insert(made.out);
    }
  }
  std::string name = std::string(cargo::to_string(command)) + "-" +
                     plan.units[plan.roots.front()].profile.dir_name;
  store.add_root_list(project.workspace().target_dir / "kiln" / "roots" / name, kept);
  // The whole project was used now, also the units this build did not need
  // to look at (a build script whose run is present): under the size cap a
  // project is kept or given up whole, least recently built first.
  store.add_temp_roots(kept);
}

} // namespace

namespace {
// `kiln run`: the one executable the plan built, run with the arguments
// after `--` in the folder kiln was started in, as `cargo run` does.
int
run_product(LocalStore& store, const cargo::CargoProject& project, const cargo::CargoBuild& build,
            const CargoArgs& args)
{
  std::vector<size_t> executables;
  for (size_t r : project.plan().roots) {
    if (build.units.units[r].product.starts_with("bin/")) {
      executables.push_back(r);
    }
  }
  if (executables.size() != 1) {
    std::string names;
    for (size_t r : executables) {
      names += (names.empty() ? "" : ", ") + project.plan().units[r].target.name;
    }
    throw UsageError(executables.empty()
                       ? "no executable to run (a package with a bin target, or --bin / --example)"
                       : "could not determine which binary to run; use --bin NAME (one of: " +
                           names + ")");
  }
  const cargo::Unit& unit = project.plan().units[executables.front()];
  fs::path program = store.physical_path(build.units.units[executables.front()].out) /
                     build.units.units[executables.front()].product;
  std::vector<std::string> argv;
  auto cfg = project.toolchain().cfg(unit.triple, {});
  if (auto runner = project.build_config().runner(unit.triple, cfg)) {
    argv = *runner;
  }
  argv.push_back(program.string());
  argv.insert(argv.end(), args.after_dashes.begin(), args.after_dashes.end());
  // What cargo run sets for the program (Compilation::fill_env).
  const cargo::CargoPackage& pkg = *unit.package;
  ::setenv("CARGO_MANIFEST_DIR", pkg.root().c_str(), 1);
  ::setenv("CARGO_MANIFEST_PATH", pkg.manifest_path.c_str(), 1);
  ::setenv("CARGO_PKG_NAME", pkg.name.c_str(), 1);
  ::setenv("CARGO_PKG_VERSION", pkg.version.c_str(), 1);
  ::setenv("CARGO", project.toolchain().cargo.c_str(), 1);
  for (const auto& [k, v] : project.build_config().env_for_process({})) {
    ::setenv(k.c_str(), v.c_str(), 1);
  }
  std::vector<char*> c_argv;
  for (auto& a : argv) {
    c_argv.push_back(a.data());
  }
  c_argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  ::execvp(c_argv[0], c_argv.data());
  throw SystemError("running " + argv[0], errno);
}

// `kiln test --no-sandbox-for-tests`: each harness run as cargo runs it, in
// its package's folder with the caller's environment; nothing is cached.
int
run_tests_outside(LocalStore& store, const cargo::CargoProject& project,
                  const cargo::CargoBuild& build, const CargoArgs& args)
{
  int status = 0;
  for (size_t r : project.plan().roots) {
    const cargo::Unit& u = project.plan().units[r];
    if (u.mode != cargo::UnitMode::test) {
      continue;
    }
    const cargo::InstantiatedUnit& made = build.units.units[r];
    fs::path harness = store.physical_path(made.out) / made.product;
    std::fprintf(stderr, "%12s %s (%s, outside the sandbox)\n", "Running",
                 u.target.src_path.lexically_relative(u.package->root()).c_str(),
                 cargo::describe(u).c_str());
    std::vector<std::string> argv = {harness.string()};
    argv.insert(argv.end(), args.after_dashes.begin(), args.after_dashes.end());
    ProcessOptions options;
    options.cwd = u.package->root();
    for (const auto& [name, out] : made.inputs.bin_exes) {
      options.env["CARGO_BIN_EXE_" + name] = store.physical_path(store.store_dir().parse(out)).string() + "/bin/" + name;
    }
    options.env["CARGO_MANIFEST_DIR"] = u.package->root().string();
    options.merge_stderr = true;
    ProcessResult result = run_process(argv, options);
    std::cout << result.out << std::flush;
    if (!result.ok()) {
      std::cerr << "error: test failed (" << result.describe() << ")\n";
      status = 101;
      if (!args.no_fail_fast) {
        break;
      }
    }
  }
  return status;
}

// kiln build --check: every unit built again and compared.
int
check_build(Context& ctx, const cargo::CargoProject& project, const cargo::CargoBuild& build,
            const BuildOptions& options, bool json)
{
  auto& store = ctx.store();
  std::map<StorePath, size_t> unit_of;
  for (size_t i = 0; i < build.units.units.size(); ++i) {
    unit_of.emplace(build.units.units[i].drv, i);
  }
  auto describe = [&](const StorePath& drv) {
    auto it = unit_of.find(drv);
    return it == unit_of.end() ? std::string(drv.name())
                               : cargo::describe(project.plan().units[it->second]) + " [" +
                                   cargo::to_string(project.plan().units[it->second].mode) + "]";
  };
  CheckOptions check;
  if (!ctx.quiet && !json) {
    check.progress = check_progress(describe);
  }
  CheckResult result = cargo::check_units(store, project, build, options, check);
  if (json) {
    for (const auto& [drv, c] : result.checks) {
      nlohmann::json j = {{"name", describe(drv)}, {"drv", store.print(drv)}};
      j.update(check_json(c, store.store_dir()));
      std::cout << j.dump() << std::endl;
    }
  }
  return report_checks(result, store.store_dir(), describe, ctx.quiet);
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
  add_flag(a, "--doc", doc);
  r.config_args = config;
  r.offline = offline || frozen;
  r.checks_tests = tests || benches || all_targets;
  if (command == cargo::CargoCommand::test) {
    r.test_args = after_dashes;
    r.no_run = no_run || no_sandbox_for_tests;
    if (rerun) {
      r.rerun = std::to_string(std::chrono::system_clock::now().time_since_epoch().count()) + "-" +
                std::to_string(::getpid());
    }
  } else if (command == cargo::CargoCommand::clippy) {
    r.clippy_args = after_dashes;
    r.clippy_no_deps = no_deps;
  }
  return r;
}

void
add_build_common_options(CLI::App& c, BuildCommonArgs& args)
{
  c.add_flag("--json", args.json,
             "One JSON object a line per unit: name, kind, drv, path, status (kiln's; "
             "--message-format json gives cargo's messages)");
  c.add_flag("-k,--keep-going", args.keep_going,
             "After a failure, build everything that does not depend on it");
  c.add_flag("--no-link", args.no_link, "Do not create result links");
  c.add_option("--timeout", args.timeout, "Kill a build step after this many seconds");
  c.add_option("--max-silent-time", args.max_silent_time,
               "Kill a build step silent for this many seconds");
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
  c.add_flag("--push-drvs", a.push_drvs,
             "With --push-to: also push every derivation (.drv) and the sources it builds from, "
             "so that anyone can build it again and compare (kiln cache check)")
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
         (group == k_kiln_cargo_group && option->get_name() != "--push-to" &&
          option->get_name() != "--push-drvs")) &&
        option->count() > 0) {
      return true;
    }
  }
  return false;
}

BuildOptions
cargo_build_options(Context& ctx, const cargo::CargoProject& project, bool keep_going,
                    unsigned timeout, unsigned max_silent_time)
{
  BuildOptions options = ctx.build_options(keep_going, timeout, max_silent_time);
  options.jobserver = true;
  const auto& origins = ctx.settings().origins;
  auto origin = origins.find("jobs");
  auto config_jobs = project.build_config().jobs();
  if (config_jobs && *config_jobs > 0 && (origin == origins.end() || origin->second == "default")) {
    options.jobs = static_cast<unsigned>(*config_jobs);
  }
  return options;
}

int
cargo_command(Context& ctx, const CargoArgs& args, const BuildCommonArgs& common,
              cargo::CargoCommand command)
{
  OutputOptions output{ctx.quiet, args.verbose, parse_message_format(args.message_format),
                       common.json};
  if (args.push_drvs && args.push_to.empty()) {
    throw UsageError("--push-drvs goes with --push-to CACHE");
  }
  cargo::CargoRequest request = args.request(command);
  // What is pushed or checked must be what any machine builds clean.
  request.incremental = args.push_to.empty() && !common.check;
  auto& store = ctx.store();
  auto project = cargo::CargoProject::load(request, store.state_dir("cargo"), ctx.cargo_cache_dir());
  for (const auto& w : project->warnings()) {
    std::cerr << "kiln: warning: " << w << "\n";
  }
  if (args.print_plan) {
    std::cout << project->plan().unit_graph;
    return 0;
  }
  if (args.explain) {
    // As the build would plan them (without asking caches: --explain is local).
    auto units = cargo::instantiate_for_build(store, *project, BuildOptions{});
    for (const auto& line : cargo::explain_units(*project, units, store, *args.explain)) {
      std::cout << line << "\n";
    }
    return 0;
  }
  BuildOptions options = cargo_build_options(ctx, *project, common.keep_going || args.no_fail_fast,
                                             common.timeout, common.max_silent_time);
  PushCache push_cache(ctx, args.push_to);
  options.push_to = push_cache.target();

  CargoOutput out(*project, store, output);
  cargo::CargoBuild build = cargo::build_project(store, *project, options, out);
  cargo::record_build(*project, build.units);
  out.finish(build);
  // cargo's own status for its commands (101); kiln build keeps kiln's 1.
  int failure = command == cargo::CargoCommand::build ? 1 : 101;
  int status = build.succeeded() ? 0 : failure;
  if (command == cargo::CargoCommand::test && !args.no_run) {
    if (args.no_sandbox_for_tests) {
      status = std::max(status, run_tests_outside(store, *project, build, args));
    } else if (!out.report_tests(build)) {
      status = failure;
    }
  }
  if (!push_cache.report(build.result)) {
    status = failure;
  }
  if (args.push_drvs && build.succeeded() &&
      !push_cache.push_derivations(cargo::write_unit_derivations(store, build))) {
    status = failure;
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
  if (common.check) {
    status = check_build(ctx, *project, build, options, common.json);
  }
  // Not `kiln run`'s: its stdout is the program's.
  link_products(store, *project, build, args, common, command == cargo::CargoCommand::run);
  if (!common.no_link) {
    keep_project_units(store, *project, build, command);
  }
  out.print_finished(build);
  ctx.apply_size_cap();
  if (command == cargo::CargoCommand::run) {
    return run_product(store, *project, build, args);
  }
  return status;
}

namespace {

void
add_cargo_command(CLI::App& app, Context& ctx, cargo::CargoCommand command, const char* help)
{
  auto args = std::make_shared<CargoArgs>();
  auto common = std::make_shared<BuildCommonArgs>();
  auto* c = app.add_subcommand(cargo::to_string(command), help);
  add_cargo_options(*c, *args);
  add_build_common_options(*c, *common);
  if (command == cargo::CargoCommand::test) {
    c->add_flag("--no-run", args->no_run, "Compile the tests, do not run them");
    c->add_flag("--doc", args->doc, "Only the library's documentation tests");
    c->add_flag("--no-fail-fast", args->no_fail_fast,
                "Run every test binary, whatever fails");
    c->add_flag("--rerun,--no-cached-results", args->rerun,
                "Run every test again, even those whose result is in the store or a cache");
    c->add_flag("--no-sandbox-for-tests", args->no_sandbox_for_tests,
                "Run the tests as cargo does, outside the sandbox, in the package's folder "
                "(for tests that need the network or $HOME); their results are not cached");
    c->footer("Arguments after `--` go to the test harnesses (filters, --ignored, --nocapture, ...).");
  } else if (command == cargo::CargoCommand::clippy) {
    c->add_flag("--no-deps", args->no_deps, "Lint only the selected packages");
    c->footer("Arguments after `--` go to clippy (-D warnings, -W clippy::pedantic, ...).");
  } else if (command == cargo::CargoCommand::run) {
    c->footer("Arguments after `--` go to the program.");
  }
  c->callback([&ctx, args, common, command] {
    ctx.action = [&ctx, args, common, command] {
      args->after_dashes = ctx.after_dashes;
      return cargo_command(ctx, *args, *common, command);
    };
  });
}

} // namespace

void
register_cargo_commands(CLI::App& app, Context& ctx)
{
  add_cargo_command(app, ctx, cargo::CargoCommand::check,
                    "Check a Cargo project as `cargo check` does (metadata only), every unit cached "
                    "and substituted");
  add_cargo_command(app, ctx, cargo::CargoCommand::test,
                    "Build and run a Cargo project's tests as `cargo test` does; passing results "
                    "are cached (an unchanged crate's tests are not run again)");
  add_cargo_command(app, ctx, cargo::CargoCommand::clippy,
                    "Lint a Cargo project as `cargo clippy` does, every unit cached and its "
                    "diagnostics replayed");
  add_cargo_command(app, ctx, cargo::CargoCommand::run,
                    "Build one binary (or --example) of a Cargo project and run it, as `cargo run`");
}

} // namespace kiln::cli
