// kiln derivation …, kiln why-rebuild
#include "cli.hpp"

#include <kiln/cargo/inputs.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/util/error.hpp>

#include <nlohmann/json.hpp>

#include <iostream>

namespace kiln::cli {

namespace {

// The JSON shape of `nix show-derivation`.
nlohmann::json
derivation_json(const Derivation& drv, const StoreDir& dir)
{
  nlohmann::json outputs = nlohmann::json::object();
  for (const auto& [name, out] : drv.outputs) {
    nlohmann::json o = {{"path", out.path}};
    if (!out.hash_algo.empty()) {
      o["hashAlgo"] = out.hash_algo;
      o["hash"] = out.hash;
    }
    outputs[name] = o;
  }
  nlohmann::json input_drvs = nlohmann::json::object();
  for (const auto& [path, names] : drv.input_drvs) {
    input_drvs[dir.print(path)] = names;
  }
  nlohmann::json input_srcs = nlohmann::json::array();
  for (const auto& src : drv.input_srcs) {
    input_srcs.push_back(dir.print(src));
  }
  // Nix (2.8 as newer) names the platform "system"; "platform" is given too,
  // for scripts written against the field's name in the .drv grammar.
  return {{"outputs", outputs},   {"inputSrcs", input_srcs}, {"inputDrvs", input_drvs},
          {"system", drv.platform}, {"platform", drv.platform}, {"builder", drv.builder},
          {"args", drv.args},       {"env", drv.env}};
}

StorePath
resolve_drv(Context& ctx, const std::string& text)
{
  auto path = ctx.store().resolve(text);
  if (!std::string(path.name()).ends_with(".drv")) {
    throw UsageError("'" + text + "' is not a derivation (.drv) path");
  }
  return path;
}

// `kiln derivation show` without --json: one line per field.
void
print_derivation(const LocalStore& store, const StorePath& path, const Derivation& drv)
{
  std::cout << store.print(path) << "\n";
  for (const auto& [name, out] : drv.outputs) {
    std::cout << "  output " << name << ": " << out.path << "\n";
  }
  std::cout << "  platform: " << drv.platform << "\n  builder: " << drv.builder << "\n";
  for (const auto& a : drv.args) {
    std::cout << "  arg: " << a << "\n";
  }
  for (const auto& [k, v] : drv.env) {
    std::cout << "  env " << k << "=" << v << "\n";
  }
  for (const auto& [input, names] : drv.input_drvs) {
    std::cout << "  input derivation: " << store.print(input) << "\n";
  }
  for (const auto& src : drv.input_srcs) {
    std::cout << "  input source: " << store.print(src) << "\n";
  }
}

void
register_derivation_add(CLI::App& derivation, Context& ctx)
{
  auto add_files = std::make_shared<std::vector<std::string>>();
  auto* add = derivation.add_subcommand(
    "add", "Check .drv files and add them to the store (inputs first); print their store paths");
  add->add_option("FILE", *add_files, ".drv files (ATerm)")->required()->check(existing_path());
  add->callback([&ctx, add_files] {
    ctx.action = [&ctx, add_files] {
      for (const auto& file : *add_files) {
        std::string name = std::filesystem::path(file).filename().string();
        if (!name.ends_with(".drv")) {
          throw UsageError("'" + file + "' is not a .drv file");
        }
        name = name.substr(0, name.size() - 4);
        // A file copied out of a store keeps its hash part; drop it.
        if (name.size() > 33 && name[32] == '-') {
          try {
            name = std::string(StorePath(name + ".drv").name());
            name = name.substr(0, name.size() - 4);
          } catch (const FormatError&) {
          }
        }
        Derivation drv;
        try {
          drv = Derivation::parse(read_file(file), ctx.store().store_dir(), name);
        } catch (const FormatError& e) {
          throw FormatError(file + ": " + e.what());
        }
        std::cout << ctx.store().print(add_derivation(ctx.store(), drv)) << "\n";
      }
      return 0;
    };
  });
}

void
register_derivation_show(CLI::App& derivation, Context& ctx)
{
  struct ShowArgs
  {
    std::vector<std::string> paths;
    bool json = false;
    bool recursive = false;
  };
  auto show_args = std::make_shared<ShowArgs>();
  auto* show = derivation.add_subcommand("show", "Print derivations");
  show->add_option("PATH", show_args->paths, ".drv store paths")->required();
  show->add_flag("--json", show_args->json,
                 "As JSON, in the shape of nix show-derivation ({drv path: {outputs, inputSrcs, "
                 "inputDrvs, platform, builder, args, env}})");
  show->add_flag("-r,--recursive", show_args->recursive, "Include every input derivation");
  show->callback([&ctx, show_args] {
    ctx.action = [&ctx, show_args] {
      auto& store = ctx.store();
      std::vector<StorePath> todo;
      for (const auto& t : show_args->paths) {
        todo.push_back(resolve_drv(ctx, t));
      }
      std::set<StorePath> done;
      nlohmann::json all = nlohmann::json::object();
      while (!todo.empty()) {
        StorePath path = todo.back();
        todo.pop_back();
        if (!done.insert(path).second) {
          continue;
        }
        Derivation drv = read_derivation(store, path);
        if (show_args->recursive) {
          for (const auto& [input, names] : drv.input_drvs) {
            todo.push_back(input);
          }
        }
        if (show_args->json) {
          all[store.print(path)] = derivation_json(drv, store.store_dir());
          continue;
        }
        print_derivation(store, path, drv);
      }
      if (show_args->json) {
        std::cout << all.dump(2) << "\n";
      }
      return 0;
    };
  });
}

void
register_why_rebuild(CLI::App& app, Context& ctx)
{
  auto why_args = std::make_shared<std::pair<std::string, std::string>>();
  auto* why = app.add_subcommand(
    "why-rebuild", "Explain, input by input, why two derivations (say, before and after "
                   "`cargo update`) differ; exit 0 if they are the same, 1 if they differ");
  why->add_option("A", why_args->first, "The first .drv")->required();
  why->add_option("B", why_args->second, "The second .drv")->required();
  why->callback([&ctx, why_args] {
    ctx.action = [&ctx, why_args] {
      auto& store = ctx.store();
      auto a = resolve_drv(ctx, why_args->first);
      auto b = resolve_drv(ctx, why_args->second);
      if (a == b) {
        std::cout << "the derivations are the same\n";
        return 0;
      }
      auto lines =
        explain_difference(read_derivation(store, a), read_derivation(store, b),
                           store.store_dir(), [&](const StorePath& p) { return read_derivation(store, p); },
                           {cargo::k_unit_env});
      std::cout << store.print(a) << "\n  vs " << store.print(b) << ":\n";
      for (const auto& line : lines) {
        std::cout << "  " << line << "\n";
      }
      return 1;
    };
  });
}

} // namespace

void
register_derivation_commands(CLI::App& app, Context& ctx)
{
  auto* derivation = app.add_subcommand("derivation", "Import and inspect derivations (.drv)");
  derivation->require_subcommand(1);

  register_derivation_add(*derivation, ctx);
  register_derivation_show(*derivation, ctx);
  register_why_rebuild(app, ctx);
}

} // namespace kiln::cli
