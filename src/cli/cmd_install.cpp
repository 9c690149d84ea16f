// kiln install, kiln uninstall: cargo install through kiln (see
// kiln/cargo/install.hpp). The build is a Cargo build like any other, shown
// as one; the binaries become links into the store under ROOT/bin.
#include "cargo_output.hpp"
#include "cli.hpp"
#include "cmd_cargo.hpp"

#include <kiln/cargo/install.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/lock.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

namespace kiln::cli {

namespace fs = std::filesystem;

namespace {

struct InstallArgs
{
  std::vector<std::string> crates;
  std::optional<std::string> version;
  std::optional<std::string> path;
  std::vector<std::string> features;
  bool no_default_features = false;
  bool locked = false;
  bool offline = false;
  std::vector<std::string> bins;
  std::optional<std::string> root;
  bool force = false;
  bool list = false;
  std::vector<std::string> config;
  std::string push_to;
  bool push_drvs = false;
  int verbose = 0;
  BuildCommonArgs common;
};

void
status_line(bool quiet, const char* verb, const std::string& text)
{
  if (!quiet) {
    std::fprintf(stderr, "%12s %s\n", verb, text.c_str());
  }
}

std::string
executables(const std::vector<std::string>& bins)
{
  std::string list;
  for (const auto& b : bins) {
    list += (list.empty() ? "`" : ", `") + b + "`";
  }
  return (bins.size() == 1 ? "executable " : "executables ") + list;
}

// Is `dir` on $PATH?
bool
on_path(const fs::path& dir)
{
  const char* path = std::getenv("PATH");
  std::string entries = path ? path : "";
  std::error_code ec;
  for (size_t start = 0; start <= entries.size();) {
    size_t end = entries.find(':', start);
    std::string entry = entries.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!entry.empty() && fs::equivalent(entry, dir, ec)) {
      return true;
    }
    if (end == std::string::npos) {
      break;
    }
    start = end + 1;
  }
  return false;
}

int
list_installs(const InstallArgs& args)
{
  auto env = cargo::current_environment();
  cargo::InstallRecords records(cargo::install_root(args.root ? std::optional<fs::path>(*args.root)
                                                              : std::nullopt,
                                                    env));
  if (args.common.json) {
    nlohmann::json all = nlohmann::json::array();
    for (const auto& p : records.packages()) {
      nlohmann::json bins = nlohmann::json::object();
      for (const auto& [bin, out] : p.bins) {
        bins[bin] = {{"link", (records.bin_dir() / bin).string()}, {"path", out}};
      }
      all.push_back({{"name", p.name}, {"version", p.version}, {"source", p.source}, {"bins", bins}});
    }
    std::cout << all.dump() << "\n";
    return 0;
  }
  for (const auto& p : records.packages()) {
    std::cout << p.describe() << ":\n";
    for (const auto& [bin, out] : p.bins) {
      std::cout << "    " << bin << "\n";
    }
  }
  return 0;
}

// What to install, as cargo install's arguments say.
cargo::InstallSpec
install_spec(const InstallArgs& args, const std::optional<std::string>& crate)
{
  cargo::InstallSpec spec;
  if (crate) {
    spec.version = args.version;
    cargo::parse_crate_spec(*crate, spec);
  } else {
    spec.path = fs::path(*args.path);
  }
  spec.features = args.features;
  spec.no_default_features = args.no_default_features;
  spec.locked = args.locked;
  spec.bins = args.bins;
  spec.config_args = args.config;
  if (args.offline) {
    spec.config_args.push_back("net.offline=true");
  }
  return spec;
}

// Link the built binaries into ROOT/bin, record the package and say what
// changed, as cargo install does.
int
link_installed(Context& ctx, const InstallArgs& args, cargo::InstallRecords& records,
               cargo::InstalledPackage& installed, const std::map<std::string, fs::path>& products,
               int status)
{
  std::vector<std::string> names;
  for (const auto& [bin, out_path] : installed.bins) {
    names.push_back(bin);
  }
  std::string described = installed.describe();
  auto changes = cargo::install_package(ctx.store(), records, installed, products, args.force);
  if (changes.unchanged) {
    status_line(ctx.quiet, "Ignored",
                "package `" + described + "` is already installed, use --force to override");
    return status;
  }
  for (const auto& bin : changes.added) {
    status_line(ctx.quiet, "Installing", (records.bin_dir() / bin).string());
  }
  for (const auto& bin : changes.replaced) {
    status_line(ctx.quiet, "Replacing", (records.bin_dir() / bin).string());
  }
  if (changes.previous && changes.previous->version != installed.version) {
    status_line(ctx.quiet, "Replaced",
                "package `" + changes.previous->describe() + "` with `" + described + "` (" +
                  executables(names) + ")");
  } else {
    status_line(ctx.quiet, "Installed", "package `" + described + "` (" + executables(names) + ")");
  }
  if (!ctx.quiet && !on_path(records.bin_dir())) {
    std::cerr << "kiln: warning: be sure to add `" << records.bin_dir().string()
              << "` to your PATH to be able to run the installed binaries\n";
  }
  return status;
}

// Install one crate (or the package at --path).
int
install_one(Context& ctx, const InstallArgs& args, const std::optional<std::string>& crate)
{
  auto env = cargo::current_environment();
  cargo::InstallSpec spec = install_spec(args, crate);
  fs::path root = cargo::install_root(args.root ? std::optional<fs::path>(*args.root) : std::nullopt, env);
  cargo::InstallRecords records(root);

  auto& store = ctx.store();
  // The crate's copy and lock file stay from one install to the next (any
  // store's): cargo's answers about them are then remembered.
  fs::path scratch = ctx.cargo_cache_dir() / "install" / (crate ? spec.crate : "path");
  fs::create_directories(scratch.parent_path());
  FileLock scratch_lock(scratch.string() + ".lock", LockMode::exclusive);
  std::vector<std::string> notes;
  cargo::InstallPlan install = cargo::plan_install(spec, scratch, env, notes);
  const cargo::CargoRequest& request = install.request;
  for (const auto& n : notes) {
    std::cerr << "kiln: warning: " << n << "\n";
  }
  auto project = cargo::CargoProject::load(request, store.state_dir("cargo"), ctx.cargo_cache_dir());
  for (const auto& w : project->warnings()) {
    std::cerr << "kiln: warning: " << w << "\n";
  }
  const cargo::Plan& plan = project->plan();
  std::vector<size_t> bin_roots;
  for (size_t r : plan.roots) {
    const cargo::Unit& u = plan.units[r];
    if (u.mode == cargo::UnitMode::build && u.target.is_bin()) {
      bin_roots.push_back(r);
    }
  }
  std::string what = crate ? spec.crate : spec.path->string();
  if (bin_roots.empty()) {
    throw Error("there is nothing to install in `" + what + "`, because it has no binaries");
  }
  const cargo::CargoPackage& package = *plan.units[bin_roots.front()].package;
  cargo::InstalledPackage installed;
  installed.name = package.name;
  installed.version = package.version;
  installed.source = install.source ? *install.source : "path+file://" + package.root().string();
  installed.version_req = crate ? spec.version : std::nullopt;
  installed.features = spec.features;
  installed.no_default_features = spec.no_default_features;
  installed.target = project->toolchain().host;
  installed.rustc = project->toolchain().version;
  installed.store = store.root().string();
  status_line(ctx.quiet, "Installing", installed.describe());

  BuildOptions options = cargo_build_options(ctx, *project, args.common.keep_going,
                                             args.common.timeout, args.common.max_silent_time);
  PushCache push_cache(ctx, args.push_to);
  options.push_to = push_cache.target();
  CargoOutput out(*project, store,
                  OutputOptions{ctx.quiet, args.verbose, MessageFormat::human, args.common.json});
  cargo::CargoBuild build = cargo::build_project(store, *project, options, out);
  out.finish(build);
  int status = build.succeeded() ? 0 : 1;
  if (!push_cache.report(build.result)) {
    status = 1;
  }
  if (args.push_drvs && build.succeeded() &&
      !push_cache.push_derivations(cargo::write_unit_derivations(store, build))) {
    status = 1;
  }
  if (args.common.json) {
    out.print_json(build);
  }
  if (!build.succeeded()) {
    std::cerr << "kiln: error: failed to compile `" << installed.describe() << "`\n";
    return 1;
  }
  out.print_finished(build);

  std::map<std::string, fs::path> products;
  for (size_t r : bin_roots) {
    const cargo::InstantiatedUnit& made = build.units.units[r];
    installed.bins[plan.units[r].target.name] = store.print(made.out);
    products[plan.units[r].target.name] = store.physical_path(made.out) / made.product;
  }
  return link_installed(ctx, args, records, installed, products, status);
}

} // namespace

void
register_install_commands(CLI::App& app, Context& ctx)
{
  auto args = std::make_shared<InstallArgs>();
  auto* c = app.add_subcommand(
    "install",
    "Install a crate's binaries as `cargo install` does, through kiln: every unit cached and "
    "substituted; the binaries are links into the store under ROOT/bin, each a GC root");
  c->add_option("CRATE", args->crates, "Crates to install (NAME or NAME@VERSION), from the registry "
                                       "cargo's configuration names");
  c->add_option("--version", args->version, "The version (or a requirement) to install")
    ->type_name("VERSION");
  c->add_option("--path", args->path, "Install the package in this folder");
  c->add_option("-F,--features", args->features, "Features to enable (comma or space separated)");
  c->add_flag("--no-default-features", args->no_default_features,
              "Do not enable the default feature");
  c->add_flag("--locked", args->locked, "Use the versions of the package's own Cargo.lock");
  c->add_flag("--offline", args->offline, "Run without accessing the network");
  c->add_option("--bin", args->bins, "Only this binary (repeatable)");
  c->add_option("--root", args->root,
                "Install into ROOT/bin (default: $CARGO_INSTALL_ROOT, install.root, $CARGO_HOME)")
    ->type_name("DIR");
  c->add_flag("-f,--force", args->force,
              "Install even if the package is installed, or its binaries are in the way");
  c->add_flag("--list", args->list, "List what kiln installed in ROOT");
  c->add_option("--config", args->config, "Override a cargo configuration value (KEY=VALUE or FILE)");
  c->add_option("--push-to", args->push_to,
                "Push every path built (not substituted) to this cache as soon as it is built, "
                "signed with secret-key-file");
  c->add_flag("--push-drvs", args->push_drvs,
              "With --push-to: also push every unit's derivation (.drv) and sources (for "
              "kiln cache check)");
  c->add_flag("-v,--verbose", args->verbose, "Show every unit's output");
  c->add_flag("--json", args->common.json,
              "One JSON object a line per unit: name, kind, drv, path, status (as kiln build)");
  c->add_flag("-k,--keep-going", args->common.keep_going,
              "After a failure, build everything that does not depend on it");
  c->add_option("--timeout", args->common.timeout, "Kill a build step after this many seconds");
  c->add_option("--max-silent-time", args->common.max_silent_time,
                "Kill a build step silent for this many seconds");
  c->callback([&ctx, args, c] {
    ctx.action = [&ctx, args, c] {
      if (args->list) {
        return list_installs(*args);
      }
      if (args->path && !args->crates.empty()) {
        throw UsageError("give crates or --path, not both");
      }
      if (!args->path && args->crates.empty()) {
        throw UsageError("name a crate to install (kiln install CRATE), or give --path DIR");
      }
      if (args->version && args->crates.size() > 1) {
        throw UsageError("--version applies to one crate only");
      }
      (void)c;
      if (args->push_drvs && args->push_to.empty()) {
        throw UsageError("--push-drvs goes with --push-to CACHE");
      }
      if (args->path) {
        return install_one(ctx, *args, std::nullopt);
      }
      int status = 0;
      for (const auto& crate : args->crates) {
        status = std::max(status, install_one(ctx, *args, crate));
      }
      return status;
    };
  });

  struct UninstallArgs
  {
    std::vector<std::string> crates;
    std::vector<std::string> bins;
    std::optional<std::string> root;
  };
  auto un = std::make_shared<UninstallArgs>();
  auto* u = app.add_subcommand("uninstall",
                               "Remove the binaries `kiln install` installed (their store paths "
                               "stay until garbage collection)");
  u->add_option("CRATE", un->crates, "Packages to uninstall")->required();
  u->add_option("--bin", un->bins, "Only this binary (repeatable)");
  u->add_option("--root", un->root, "The root they were installed into")->type_name("DIR");
  u->callback([&ctx, un] {
    ctx.action = [&ctx, un] {
      auto env = cargo::current_environment();
      cargo::InstallRecords records(
        cargo::install_root(un->root ? std::optional<fs::path>(*un->root) : std::nullopt, env));
      for (const auto& crate : un->crates) {
        for (const auto& removed : cargo::uninstall_package(records, crate, un->bins)) {
          status_line(ctx.quiet, "Removing", removed.string());
        }
      }
      return 0;
    };
  });
}

} // namespace kiln::cli
