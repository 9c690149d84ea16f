// A Cargo workspace as kiln sees it: packages, targets and the resolved
// dependency graph from `cargo metadata`, the profiles of the root manifest,
// the Rust toolchain that will compile it, and `cfg(...)` expressions
// evaluated against a target's configuration.
#pragma once

#include <kiln/util/error.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kiln::cargo {

// Something about the project (manifest, lock file, toolchain) kiln cannot
// work with; the message names the file or command.
class CargoError : public Error
{
public:
  using Error::Error;
};

struct CargoTarget
{
  std::string name;                       // "my-app", "build-script-build"
  std::vector<std::string> kind;          // "lib", "bin", "proc-macro", "custom-build", ...
  std::vector<std::string> crate_types;   // --crate-type values
  std::filesystem::path src_path;         // absolute
  std::string edition;
  std::vector<std::string> required_features;

  bool has_kind(const std::string& k) const;
  bool has_crate_type(const std::string& type) const;
  bool is_lib() const;             // lib, rlib, dylib, ... or proc-macro
  bool is_proc_macro() const;
  bool is_bin() const;
  bool is_custom_build() const;
  std::string crate_name() const;  // name with '-' → '_'
};

struct CargoDependency
{
  std::string name;                       // the package name
  std::optional<std::string> rename;
  std::string kind;                       // "" (normal), "dev", "build"
  std::optional<std::string> platform;    // "cfg(unix)" or a triple
  bool optional = false;
  bool uses_default_features = true;
  std::vector<std::string> features;

  // The name the dependency has in the manifest (and in features: "dep:x").
  const std::string& name_in_toml() const { return rename ? *rename : name; }
};

struct CargoPackage
{
  std::string id;
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

  std::filesystem::path root() const { return manifest_path.parent_path(); }
  bool is_local() const { return !source.has_value(); }
  const CargoTarget* lib() const;
  const CargoTarget* build_script() const;
};

// One edge of the resolved graph: `pkg` under the extern name `name`.
struct ResolvedDep
{
  std::string name;
  std::string pkg;
  struct Kind
  {
    std::string kind;                     // "", "dev", "build"
    std::optional<std::string> platform;
  };
  std::vector<Kind> dep_kinds;
};

// One [profile.*] table (or a part of one) as written; unset fields inherit.
struct ProfileToml
{
  std::optional<std::string> opt_level;
  std::optional<std::string> debug;       // "0", "1", "2", "line-tables-only", ...
  std::optional<bool> debug_assertions;
  std::optional<bool> overflow_checks;
  std::optional<std::string> lto;         // "false", "true", "thin", "fat", "off"
  std::optional<std::string> panic;
  std::optional<int> codegen_units;
  std::optional<bool> incremental;
  std::optional<std::string> strip;       // "none", "debuginfo", "symbols"
  std::optional<bool> rpath;
  std::optional<std::string> inherits;
  std::map<std::string, ProfileToml> package;   // by package name, or "*"
  std::shared_ptr<ProfileToml> build_override;

  void merge(const ProfileToml& over);    // fields set in `over` win
};

struct Workspace
{
  std::filesystem::path root;             // the workspace root folder
  std::filesystem::path target_dir;
  std::map<std::string, CargoPackage> packages;          // by id
  std::map<std::string, std::vector<ResolvedDep>> resolve; // by id
  std::vector<std::string> members;
  std::vector<std::string> default_members;
  std::string resolver = "2";             // "1", "2" or "3" (3 resolves features as 2)
  std::map<std::string, ProfileToml> profiles;           // from the root Cargo.toml

  const CargoPackage& package(const std::string& id) const;
  // The package of this workspace named `spec` ("name" or "name@version").
  const CargoPackage& find_package(const std::string& spec) const;
};

// Find the workspace containing `dir` and load it with `cargo metadata`
// (offline; `locked` adds --locked). `cargo` is the cargo to run. With a
// `cache_dir`, cargo's answer is remembered there, keyed by the metadata of
// every manifest, the lock file and cargo's configuration files, so that an
// unchanged project does not run cargo at all.
Workspace load_workspace(const std::filesystem::path& dir, const std::filesystem::path& cargo,
                         bool locked,
                         const std::optional<std::filesystem::path>& cache_dir = std::nullopt);

// Is `dir` (or a folder above it) part of a Cargo project?
std::optional<std::filesystem::path> find_manifest(const std::filesystem::path& dir);

// --- cfg(...) expressions ---

// A target's configuration: `rustc --print cfg` lines parsed (name → values;
// a bare name has one empty value).
using CfgSet = std::multimap<std::string, std::string>;
CfgSet parse_cfg_lines(const std::string& text);

// Does the platform string of a dependency ("cfg(unix)", or a target triple)
// apply to `triple` with configuration `cfg`? Malformed → CargoError.
bool platform_matches(const std::string& platform, const std::string& triple, const CfgSet& cfg);

// --- the toolchain ---

struct Toolchain
{
  std::filesystem::path rustc;            // <sysroot>/bin/rustc, not rustup's proxy
  std::filesystem::path rustdoc;
  std::filesystem::path cargo;
  std::filesystem::path sysroot;
  std::string version;                    // `rustc -vV`
  std::string host;                       // host triple
  // What enters every unit's hash: the version text and a digest of the
  // sysroot's target libraries (names and sizes), so a changed standard
  // library changes every key.
  std::string identity;
  // The C compiler driver rustc links with, and its version line.
  std::filesystem::path linker;
  std::string linker_identity;

  // `rustc --print cfg` for a triple (with these flags), remembered.
  const CfgSet& cfg(const std::string& triple, const std::vector<std::string>& rustflags) const;

  // Where `cfg` answers are remembered between runs (empty: not at all).
  std::filesystem::path cfg_cache_dir;

private:
  mutable std::map<std::string, CfgSet> m_cfg;
};

// Find rustc (from $RUSTC, else PATH), cargo (from $CARGO, else PATH) and
// cc; run them once to learn their identity. Results are remembered in
// `cache_file` keyed by the programs' metadata.
Toolchain detect_toolchain(const std::filesystem::path& cache_file);

// Files whose change would change `cargo metadata`'s answer, and a digest of
// their metadata (size, modification time, inode; missing files count).
std::string files_fingerprint(const std::vector<std::filesystem::path>& files);

// Run a program and return its stdout; a failure is a CargoError quoting
// stderr. `env` entries are added to the environment.
std::string run_capture(const std::vector<std::string>& argv,
                        const std::optional<std::filesystem::path>& cwd = std::nullopt,
                        const std::map<std::string, std::string>& env = {});

} // namespace kiln::cargo
