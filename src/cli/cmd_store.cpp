// kiln store …, kiln path-info, kiln gc
#include "cli.hpp"

#include <kiln/util/error.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <iostream>

namespace kiln::cli {

namespace {

nlohmann::json
path_info_json(const LocalStore& store, const PathInfo& info)
{
  nlohmann::json j;
  j["path"] = store.print(info.path);
  j["valid"] = true;
  j["narHash"] = info.nar_hash.to_string(HashFormat::sri, true);
  j["narSize"] = info.nar_size;
  auto refs = nlohmann::json::array();
  for (const auto& ref : info.references) {
    refs.push_back(store.print(ref));
  }
  j["references"] = refs;
  j["registrationTime"] = info.registration_time;
  if (info.ca) {
    j["ca"] = info.ca->to_string();
  }
  if (info.deriver) {
    j["deriver"] = store.print(*info.deriver);
  }
  if (!info.signatures.empty()) {
    j["signatures"] = info.signatures;
  }
  if (!info.build_mode.empty()) {
    j["buildMode"] = info.build_mode;
  }
  if (info.local_only) {
    j["localOnly"] = true;
  }
  return j;
}

const char*
problem_kind(VerifyProblem::Kind kind)
{
  switch (kind) {
  case VerifyProblem::Kind::missing:
    return "missing";
  case VerifyProblem::Kind::corrupt:
    return "corrupt";
  case VerifyProblem::Kind::wrong_metadata:
    return "wrong-metadata";
  case VerifyProblem::Kind::bad_content_address:
    return "bad-content-address";
  case VerifyProblem::Kind::stray:
    return "stray";
  case VerifyProblem::Kind::dependent:
    return "dependent";
  }
  return "unknown";
}

// kiln store info: how big the store is, and who keeps what.
void
register_store_info(CLI::App& store_command, Context& ctx)
{
  auto json_output = std::make_shared<bool>(false);
  auto* info = store_command.add_subcommand(
    "info", "Show the store's size, paths and roots, and the projects that keep the most");
  info->add_flag("--json", *json_output, "Print the figures as JSON");
  info->callback([&ctx, json_output] {
    ctx.action = [&ctx, json_output] {
      auto& st = ctx.store();
      StoreStats stats = st.stats();
      auto roots = st.find_roots();
      std::map<std::filesystem::path, std::set<StorePath>> lists;
      for (const auto& [file, path] : st.find_root_lists()) {
        if (st.is_valid(path)) {
          lists[file].insert(path);
        }
      }
      struct Project
      {
        std::filesystem::path file;
        size_t paths;
        uint64_t bytes;
      };
      std::vector<Project> projects;
      for (const auto& [file, paths] : lists) {
        uint64_t bytes = 0;
        auto closure = st.closure(paths);
        for (const auto& p : closure) {
          bytes += st.query_path_info(p)->nar_size;
        }
        projects.push_back({file, closure.size(), bytes});
      }
      std::sort(projects.begin(), projects.end(),
                [](const Project& a, const Project& b) { return a.bytes > b.bytes; });
      const auto& cap = ctx.settings().max_store_size;
      if (*json_output) {
        nlohmann::json j = {{"store", st.root().string()}, {"paths", stats.paths},
                            {"narSize", stats.nar_bytes},  {"roots", roots.size()},
                            {"maxStoreSize", cap ? nlohmann::json(*cap) : nlohmann::json()}};
        j["projects"] = nlohmann::json::array();
        for (const auto& p : projects) {
          j["projects"].push_back({{"rootList", p.file.string()}, {"paths", p.paths},
                                   {"narSize", p.bytes}});
        }
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      std::cout << "store:          " << st.root().string() << "\n"
                << "size:           " << human_size(stats.nar_bytes) << " in " << stats.paths
                << " paths" << (cap ? " (max-store-size " + human_size(*cap) + ")" : "") << "\n"
                << "roots:          " << roots.size() << " links, " << projects.size()
                << " project root lists\n";
      if (!projects.empty()) {
        std::cout << "largest projects (closure of their units):\n";
        for (size_t i = 0; i < projects.size() && i < 10; ++i) {
          std::cout << "  " << human_size(projects[i].bytes) << " in " << projects[i].paths
                    << " paths  " << projects[i].file.string() << "\n";
        }
      }
      return 0;
    };
  });
}

// kiln store add
void
register_store_add(CLI::App& store_command, Context& ctx)
{
  struct AddArgs
  {
    std::vector<std::string> paths;
    std::string name;
    std::string root;
  };
  auto add_args = std::make_shared<AddArgs>();
  auto* add = store_command.add_subcommand(
    "add", "Copy files or folders into the store, content-addressed (as nix-store --add), and "
           "print their store paths");
  add->add_option("PATH", add_args->paths, "What to add")->required()->check(existing_path());
  add->add_option("--name", add_args->name, "Store path name (default: the base name of PATH)");
  add->add_option("--root", add_args->root,
                  "Create this symlink to the result and keep it from garbage collection");
  add->callback([&ctx, add_args] {
    ctx.action = [&ctx, add_args] {
      if (add_args->paths.size() > 1 && (!add_args->name.empty() || !add_args->root.empty())) {
        throw UsageError("--name and --root take a single PATH");
      }
      for (const auto& p : add_args->paths) {
        AddOptions options;
        if (!add_args->name.empty()) {
          options.name = add_args->name;
        }
        if (!add_args->root.empty()) {
          options.root_link = add_args->root;
        }
        auto path = ctx.store().add_path(p, options);
        std::cout << ctx.store().print(path) << std::endl;
      }
      return 0;
    };
  });
}

// kiln store locate
void
register_store_locate(CLI::App& store_command, Context& ctx)
{
  auto locate_args = std::make_shared<std::vector<std::string>>();
  auto* locate = store_command.add_subcommand(
    "locate", "Print where store paths lie on disk (the store may sit anywhere; paths are named "
              "under the logical store directory)");
  locate->add_option("PATH", *locate_args, "Store paths")->required();
  locate->callback([&ctx, locate_args] {
    ctx.action = [&ctx, locate_args] {
      int status = 0;
      for (const auto& text : *locate_args) {
        auto path = ctx.store().resolve(text);
        if (!ctx.store().is_valid(path)) {
          note("error: path '" + ctx.store().print(path) + "' is not valid");
          status = 1;
          continue;
        }
        std::cout << ctx.store().physical_path(path).string() << "\n";
      }
      return status;
    };
  });
}

// kiln store verify
void
register_store_verify(CLI::App& store_command, Context& ctx)
{
  struct VerifyArgs
  {
    bool no_contents = false;
    bool repair = false;
    bool remove_corrupt = false;
    bool json = false;
  };
  auto verify_args = std::make_shared<VerifyArgs>();
  auto* verify = store_command.add_subcommand(
    "verify", "Re-hash every valid path and check the database against the disk; exit 1 if "
              "anything is wrong");
  verify->add_flag("--no-contents", verify_args->no_contents, "Skip re-hashing contents");
  verify->add_flag("--repair", verify_args->repair,
                   "Restore read-only permissions and timestamps of intact paths, and fetch "
                   "corrupt or missing paths again from the substituters (trusted copies of "
                   "the very same contents only)");
  verify->add_flag("--remove-corrupt", verify_args->remove_corrupt,
                   "Invalidate and delete corrupt or missing paths and everything that "
                   "references them");
  verify->add_flag("--json", verify_args->json, "Print the result as JSON");
  verify->callback([&ctx, verify_args] {
    ctx.action = [&ctx, verify_args] {
      VerifyOptions options;
      options.check_contents = !verify_args->no_contents;
      options.repair = verify_args->repair;
      options.remove_corrupt = verify_args->remove_corrupt;
      BuildOptions caches;
      if (options.repair) {
        caches = ctx.build_options(false, 0, 0);
        options.refetch = [&](const PathInfo& info) {
          std::vector<std::string> errors;
          auto prepared = fetch_again(ctx.store(), caches.caches, caches.policy, info, errors);
          for (const auto& e : errors) {
            note("warning: fetching '" + ctx.store().print(info.path) + "' again: " + e);
          }
          return prepared;
        };
      }
      auto result = ctx.store().verify(options);
      if (verify_args->json) {
        nlohmann::json j;
        j["checked"] = result.checked;
        j["ok"] = result.ok();
        j["problems"] = nlohmann::json::array();
        for (const auto& p : result.problems) {
          j["problems"].push_back(
            {{"kind", problem_kind(p.kind)}, {"path", p.path}, {"detail", p.detail},
             {"fixed", p.fixed}});
        }
        std::cout << j.dump(2) << "\n";
      } else {
        size_t strays = 0;
        for (const auto& p : result.problems) {
          if (p.kind == VerifyProblem::Kind::stray) {
            ++strays;
            continue;
          }
          std::cerr << (p.fixed ? "fixed " : "") << problem_kind(p.kind) << ": " << p.path
                    << ": " << p.detail << "\n";
        }
        if (strays > 0 && !ctx.quiet) {
          note(std::to_string(strays) +
               " stray entries in the store folder (not valid; `kiln gc` removes them)");
        }
        size_t fixed = std::count_if(result.problems.begin(), result.problems.end(),
                                     [](const VerifyProblem& p) {
                                       return p.fixed && p.kind != VerifyProblem::Kind::stray;
                                     });
        std::string outcome = result.ok() ? "all good" : "problems found";
        if (fixed > 0) {
          outcome = (verify_args->remove_corrupt ? "removed " : "repaired ") +
                    std::to_string(fixed) + " corrupt paths" +
                    (result.ok() ? "" : "; problems remain");
        }
        if (!ctx.quiet || fixed > 0) {
          note("checked " + std::to_string(result.checked) + " paths: " + outcome);
        }
      }
      return result.ok() ? 0 : 1;
    };
  });
}

// kiln path-info
void
register_path_info(CLI::App& app, Context& ctx)
{
  struct InfoArgs
  {
    std::vector<std::string> paths;
    bool json = false;
    bool closure = false;
    bool size = false;
  };
  auto info_args = std::make_shared<InfoArgs>();
  auto* info = app.add_subcommand(
    "path-info", "Show what the store knows about paths; exit 1 if any is not valid");
  info->add_option("PATH", info_args->paths, "Store paths (or links to them)")->required();
  info->add_flag("--json", info_args->json,
                 "Print a JSON array (path, narHash, narSize, references, ca, ...)");
  info->add_flag("-r,--closure", info_args->closure, "Include everything the paths reference");
  info->add_flag("-s,--size", info_args->size, "Print the NAR size beside each path");
  info->callback([&ctx, info_args] {
    ctx.action = [&ctx, info_args] {
      auto& st = ctx.store();
      int status = 0;
      std::vector<StorePath> wanted;
      auto out = nlohmann::json::array();
      for (const auto& text : info_args->paths) {
        StorePath path = st.resolve(text);
        if (!st.is_valid(path)) {
          status = 1;
          if (info_args->json) {
            out.push_back({{"path", st.print(path)}, {"valid", false}});
          } else {
            note("error: path '" + st.print(path) + "' is not valid");
          }
          continue;
        }
        wanted.push_back(path);
      }
      std::vector<StorePath> shown = wanted;
      if (info_args->closure) {
        auto all = st.closure(std::set<StorePath>(wanted.begin(), wanted.end()));
        shown.assign(all.begin(), all.end());
      }
      for (const auto& path : shown) {
        auto pi = st.query_path_info(path);
        if (!pi) {
          continue;
        }
        if (info_args->json) {
          out.push_back(path_info_json(st, *pi));
        } else if (info_args->size) {
          std::cout << st.print(path) << "\t" << pi->nar_size << "\n";
        } else {
          std::cout << st.print(path) << "\n";
        }
      }
      if (info_args->json) {
        std::cout << out.dump() << "\n";
      }
      return status;
    };
  });
}

// kiln gc
void
register_gc(CLI::App& app, Context& ctx)
{
  struct GcArgs
  {
    std::string max_freed;
    std::string max_size;
    bool dry_run = false;
    bool print_roots = false;
    bool json = false;
    std::vector<std::string> roots;
    unsigned timeout = 0;
  };
  auto gc_args = std::make_shared<GcArgs>();
  auto* gc = app.add_subcommand(
    "gc", "Delete store paths that no GC root reaches (roots: symlinks in <store>/gcroots, links "
          "made with --root, and --root files)");
  gc->add_option("--max-freed", gc_args->max_freed, "Stop after freeing this much (e.g. 500M)");
  gc->add_option("--max-size", gc_args->max_size,
                 "Delete only until the store is this small (e.g. 20G), least recently used "
                 "first; projects' root lists give way, other roots do not");
  gc->add_flag("-n,--dry-run", gc_args->dry_run, "Only print what would be deleted");
  gc->add_flag("--print-roots", gc_args->print_roots, "List the GC roots and exit");
  gc->add_option("--root", gc_args->roots,
                 "Also keep what this symlink points to, or the store paths listed in this "
                 "file (one per line)");
  gc->add_flag("--json", gc_args->json, "Print the result as JSON");
  gc->add_option("--timeout", gc_args->timeout,
                 "Fail if the store's GC lock (held by kiln processes adding paths) is not "
                 "free within this many seconds (default: lock-timeout)");
  gc->callback([&ctx, gc_args] {
    ctx.action = [&ctx, gc_args] {
      auto& st = ctx.store();
      if (gc_args->print_roots) {
        for (const auto& [link, path] : st.find_roots()) {
          std::cout << link.string() << " -> " << st.print(path) << "\n";
        }
        for (const auto& [file, path] : st.find_root_lists()) {
          std::cout << file.string() << " -> " << st.print(path) << " (root list)\n";
        }
        return 0;
      }
      GcOptions options;
      options.dry_run = gc_args->dry_run;
      if (gc_args->timeout > 0) {
        options.timeout = std::chrono::seconds(gc_args->timeout);
      }
      if (!gc_args->max_freed.empty()) {
        options.max_freed = parse_size(gc_args->max_freed);
      }
      if (!gc_args->max_size.empty()) {
        options.max_size = parse_size(gc_args->max_size);
      }
      for (const auto& r : gc_args->roots) {
        options.extra_roots.emplace_back(r);
      }
      auto result = st.collect_garbage(options);
      if (gc_args->json) {
        nlohmann::json j;
        j["dryRun"] = options.dry_run;
        j["roots"] = result.roots;
        j["live"] = result.live;
        j["bytesFreed"] = result.bytes_freed;
        j["straysRemoved"] = result.strays_removed;
        j["tempRoots"] = result.temp_roots;
        j["deleted"] = nlohmann::json::array();
        for (const auto& p : result.deleted) {
          j["deleted"].push_back(st.print(p));
        }
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      for (const auto& p : result.deleted) {
        std::cout << (options.dry_run ? "would delete " : "deleted ") << st.print(p) << "\n";
      }
      if (!ctx.quiet) {
        note(std::string(options.dry_run ? "would delete " : "deleted ") +
             std::to_string(result.deleted.size()) + " paths" +
             (result.strays_removed ? " and " + std::to_string(result.strays_removed) + " strays"
                                    : "") +
             ", " + (options.dry_run ? "freeing " : "freed ") + human_size(result.bytes_freed) +
             "; " + std::to_string(result.live) + " paths kept alive by " +
             std::to_string(result.roots) + " roots");
      }
      return 0;
    };
  });
}

} // namespace

void
register_store_commands(CLI::App& app, Context& ctx)
{
  auto* store = app.add_subcommand("store", "Manage the local store");
  store->require_subcommand(1);
  register_store_info(*store, ctx);
  register_store_add(*store, ctx);
  register_store_locate(*store, ctx);
  register_store_verify(*store, ctx);
  register_path_info(app, ctx);
  register_gc(app, ctx);
}

void
register_config_commands(CLI::App& app, Context& ctx)
{
  auto* config = app.add_subcommand("config", "Show kiln's settings");
  config->require_subcommand(1);
  auto json = std::make_shared<bool>(false);
  auto* show = config->add_subcommand(
    "show", "Print every setting, its value and where the value came from");
  show->add_flag("--json", *json, "Print as JSON");
  show->callback([&ctx, json] {
    ctx.action = [&ctx, json] {
      const auto& s = ctx.settings();
      auto join = [](const std::vector<std::string>& v) {
        std::string out;
        for (const auto& x : v) {
          out += (out.empty() ? "" : " ") + x;
        }
        return out;
      };
      std::map<std::string, std::string> values = {
        {"store", s.store.string()},
        {"store-dir", s.store_dir},
        {"cache-dir", s.cache_dir.string()},
        {"substituters", join(s.substituters)},
        {"trusted-public-keys", join(s.trusted_public_keys)},
        {"require-sigs", std::to_string(s.require_sigs)},
        {"secret-key-file", s.secret_key_file},
        {"token", s.token.empty() ? "" : "(set, hidden)"},
        {"jobs", std::to_string(s.jobs)},
        {"connections", std::to_string(s.connections)},
        {"negative-ttl", std::to_string(s.negative_ttl)},
        {"lock-timeout", std::to_string(s.lock_timeout)},
        {"max-store-size", s.max_store_size ? std::to_string(*s.max_store_size) : ""},
      };
      nlohmann::json j = nlohmann::json::object();
      for (const auto& settingInfo : Settings::table()) {
        std::string key = settingInfo.key;
        std::string origin = s.origins.count(key) ? s.origins.at(key) : "default";
        if (*json) {
          j[key] = {{"value", values[key]}, {"origin", origin}, {"env", settingInfo.env}};
        } else {
          std::cout << key << " = " << values[key] << "    # " << origin << "\n";
        }
      }
      if (*json) {
        std::cout << j.dump(2) << "\n";
      }
      return 0;
    };
  });
}

} // namespace kiln::cli
