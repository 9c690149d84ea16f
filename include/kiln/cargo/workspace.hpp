// A Cargo workspace as kiln sees it: packages and targets from
// `cargo metadata`, plus what metadata leaves out and rustc needs (the
// `[lints]` of path packages, `harness` of test targets).
#pragma once

#include <kiln/cargo/error.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

struct CargoTarget
{
  std::string name;                       // "my-app", "build-script-build"
  std::vector<std::string> kind;          // "lib", "bin", "proc-macro", "custom-build", "test", ...
  std::vector<std::string> crate_types;   // --crate-type values
  std::filesystem::path src_path;         // absolute
  std::string edition;
  std::vector<std::string> required_features;
  bool test = true;                       // built by `cargo test`
  bool doc = false;
  bool doctest = false;
  bool harness = true;                    // false: `--cfg test` instead of `--test`

  bool has_kind(const std::string& k) const;
  bool has_crate_type(const std::string& type) const;
  bool is_lib() const;             // lib, rlib, dylib, ... or proc-macro
  bool is_proc_macro() const;
  bool is_bin() const;
  bool is_custom_build() const;
  bool is_example() const;
  bool is_test() const;            // an integration test (tests/)
  bool is_bench() const;
  std::string crate_name() const;  // name with '-' → '_'
};

struct CargoDependency
{
  std::string name;                       // the package name
  std::optional<std::string> rename;
  std::string kind;                       // "" (normal), "dev", "build"
  std::optional<std::string> platform;    // "cfg(unix)" or a triple
  bool optional = false;
};

struct CargoPackage
{
  std::string id;                         // cargo's package id spec
  std::string name;
  std::string version;
  std::optional<std::string> source;      // null for path packages
  std::string edition;
  std::optional<std::string> links;
  std::filesystem::path manifest_path;
  std::map<std::string, std::vector<std::string>> features;
  std::vector<CargoDependency> dependencies;
  std::vector<CargoTarget> targets;
  std::vector<std::string> authors;
  std::string description, homepage, repository, license, license_file, readme, rust_version;
  bool is_member = false;
  // rustc's flags for the manifest's [lints] (path packages; cargo gives
  // them to no other package's units, which get --cap-lints allow).
  std::vector<std::string> lint_flags;

  std::filesystem::path root() const { return manifest_path.parent_path(); }
  bool is_local() const { return !source.has_value(); }
  const CargoTarget* lib() const;
  const CargoTarget* build_script() const;
  const CargoTarget* target(const std::string& name, const std::vector<std::string>& kind) const;
};

struct Workspace
{
  std::filesystem::path root;             // the workspace root folder
  std::filesystem::path target_dir;
  std::map<std::string, CargoPackage> packages;          // by id
  std::vector<std::string> members;
  std::vector<std::string> default_members;

  const CargoPackage& package(const std::string& id) const;
};

// The workspace described by `cargo metadata`'s JSON output; [lints] and
// harness are read from the path packages' manifests. Throws CargoError
// naming the manifest that cannot be read.
Workspace parse_workspace(const std::string& metadata_json);

// [lints] of a manifest (or the workspace's, with `lints.workspace = true`)
// as rustc flags, in cargo's order: by priority, then by name (descending).
std::vector<std::string> lint_flags(const std::filesystem::path& manifest,
                                    const std::filesystem::path& workspace_manifest);

// Is `dir` (or a folder above it) part of a Cargo project?
std::optional<std::filesystem::path> find_manifest(const std::filesystem::path& dir);

} // namespace kiln::cargo
