// kiln hash …, kiln nar …
#include "cli.hpp"

#include <kiln/hash/hash.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>

#include <unistd.h>

#include <iostream>

namespace kiln::cli {

namespace {

struct HashOptions
{
  std::vector<std::string> paths;
  bool base32 = false;
  bool hex = false;
  bool sri = false;
  bool base64 = false;
  std::string algo = "sha256";
};

void
add_hash_options(CLI::App* cmd, HashOptions& opts)
{
  cmd->add_option("PATH", opts.paths, "What to hash")->required()->check(existing_path());
  auto* group = cmd->add_option_group("format", "Output format (default: SRI)");
  group->add_flag("--base32,--nix32", opts.base32, "Nix base-32, as nix-hash --base32");
  group->add_flag("--hex,--base16", opts.hex, "Lower-case hexadecimal");
  group->add_flag("--sri", opts.sri, "SRI: sha256-<base64>");
  group->add_flag("--base64", opts.base64, "Plain base64");
  group->require_option(0, 1);
  cmd->add_option("--type", opts.algo, "Hash algorithm: md5, sha1, sha256, sha512")
    ->capture_default_str();
}

std::string
format_hash(const Hash& hash, const HashOptions& opts)
{
  if (opts.base32) {
    return hash.to_string(HashFormat::nix32, false);
  }
  if (opts.hex) {
    return hash.to_string(HashFormat::base16, false);
  }
  if (opts.base64) {
    return hash.to_string(HashFormat::base64, false);
  }
  return hash.to_string(HashFormat::sri, true);
}

HashAlgo
algo_of(const HashOptions& opts)
{
  try {
    return parse_hash_algo(opts.algo);
  } catch (const FormatError& e) {
    throw UsageError(std::string(e.what()) + " (use md5, sha1, sha256 or sha512)");
  }
}

} // namespace

void
register_hash_commands(CLI::App& app, Context& ctx)
{
  auto* hash = app.add_subcommand("hash", "Compute the hashes Nix and kiln use");
  hash->require_subcommand(1);

  auto path_opts = std::make_shared<HashOptions>();
  auto* path = hash->add_subcommand(
    "path", "Hash the NAR serialisation of files, folders or symlinks (as nix-hash --type sha256)");
  add_hash_options(path, *path_opts);
  path->callback([&ctx, path_opts] {
    ctx.action = [path_opts] {
      HashAlgo algo = algo_of(*path_opts);
      for (const auto& p : path_opts->paths) {
        HashSink sink(algo);
        dump_path(p, sink);
        std::cout << format_hash(sink.finish(), *path_opts) << "\n";
      }
      return 0;
    };
  });

  auto file_opts = std::make_shared<HashOptions>();
  auto* file =
    hash->add_subcommand("file", "Hash the bytes of regular files (as nix-hash --flat)");
  add_hash_options(file, *file_opts);
  file->callback([&ctx, file_opts] {
    ctx.action = [file_opts] {
      HashAlgo algo = algo_of(*file_opts);
      for (const auto& p : file_opts->paths) {
        std::cout << format_hash(hash_file(algo, p), *file_opts) << "\n";
      }
      return 0;
    };
  });
}

void
register_nar_commands(CLI::App& app, Context& ctx)
{
  auto* nar = app.add_subcommand("nar", "Write and read NAR archives");
  nar->require_subcommand(1);

  auto dump_path_arg = std::make_shared<std::string>();
  auto* dump = nar->add_subcommand(
    "dump", "Write the NAR of a file, folder or symlink to stdout (as nix-store --dump)");
  dump->add_option("PATH", *dump_path_arg, "What to archive")->required();
  dump->callback([&ctx, dump_path_arg] {
    ctx.action = [dump_path_arg] {
      if (::isatty(STDOUT_FILENO)) {
        throw UsageError("refusing to write a binary archive to a terminal; redirect stdout");
      }
      FdSink out(STDOUT_FILENO);
      dump_path(*dump_path_arg, out);
      out.flush();
      return 0;
    };
  });

  auto restore_target = std::make_shared<std::string>();
  auto* restore = nar->add_subcommand(
    "restore", "Unpack the NAR read from stdin at DIR, which must not exist (as nix-store --restore)");
  restore->add_option("DIR", *restore_target, "Where to create the object")->required();
  restore->callback([&ctx, restore_target] {
    ctx.action = [restore_target] {
      FdSource in(STDIN_FILENO);
      restore_nar(in, *restore_target);
      return 0;
    };
  });
}

} // namespace kiln::cli
