// kiln.yaml: derivations declared by hand.
//
//   derivations:
//     NAME:
//       builder: /bin/sh              # a declared tool or a store path
//       args: ["-c", "..."]
//       env: {KEY: value}
//       tools: [/bin/sh, /usr/bin/cc] # host programs; their content hash enters the hash
//       srcs: [./src]                 # local files/folders, added to the store by content
//       deps: [OTHER]                 # other entries; the builder sees $OTHER (its output)
//   substituters: [...]               # project settings beside derivations:
//   trusted-public-keys: [...]        #   the same keys as kiln's config file
//   require-sigs: 1
//   jobs: 4
//
// The output is $out; sources are $src (one) or $src_<name>.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace kiln {

struct DerivationSpec
{
  std::string name;
  std::string location;   // "file:line:column" of its entry, for messages
  std::string builder;
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  std::vector<std::filesystem::path> tools;
  std::vector<std::filesystem::path> srcs;   // absolute
  std::vector<std::string> deps;
};

struct BuildFile
{
  std::filesystem::path file;
  std::map<std::string, DerivationSpec> derivations;
  // Project settings (key → value as text, lists space-joined), with where
  // each was set.
  std::map<std::string, std::string> settings;
  std::map<std::string, std::string> setting_origins;
};

// Read and check a build file: unknown keys, missing fields, unknown deps
// and dependency cycles are UsageErrors naming file:line:column.
BuildFile load_build_file(const std::filesystem::path& file);

} // namespace kiln
