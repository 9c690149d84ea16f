// `kiln install`: what `cargo install` does, through kiln's Cargo build.
//
// A registry crate is planned as cargo install plans it (see plan_install):
// the version cargo resolves, the crate's own manifest (its [profile]
// tables, resolver, features), a fresh resolution or its published
// Cargo.lock, the release profile, lints capped, cargo's configuration as
// read from $CARGO_HOME; its units are then built, cached and substituted as
// any Cargo build's. `--path` plans the package in that folder.
//
// The binaries are not copied: ROOT/bin/NAME is a link to the product in
// the store, and a GC root. ROOT/.kiln-installs.json records what kiln
// installed (as cargo's .crates2.json does for cargo), for --list,
// uninstall and reinstalls.
#pragma once

#include <kiln/cargo/project.hpp>
#include <kiln/store/local_store.hpp>
#include <kiln/util/lock.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

// What to install, as `cargo install`'s arguments say it.
struct InstallSpec
{
  // A registry crate and a version requirement ("0.8.0" means exactly that
  // version, as for cargo install; none: the newest that is not a
  // pre-release).
  std::string crate;
  std::optional<std::string> version;
  // Or the package in this folder (--path).
  std::optional<std::filesystem::path> path;
  std::vector<std::string> features;
  bool no_default_features = false;
  bool locked = false;                    // resolve with the package's own Cargo.lock
  std::vector<std::string> bins;          // only these binaries (default: every one)
  std::vector<std::string> config_args;   // --config
};

// "hexyl" or "hexyl@0.8.0" into `spec`; a version given both ways is a
// UsageError.
void parse_crate_spec(const std::string& text, InstallSpec& spec);

// Where installs go: `given` (--root), else $CARGO_INSTALL_ROOT, else
// install.root in cargo's configuration as cargo install reads it (from
// $CARGO_HOME), else $CARGO_HOME. Binaries go to its bin/.
std::filesystem::path install_root(const std::optional<std::filesystem::path>& given,
                                   const Environment& env);

// How to plan an install.
struct InstallPlan
{
  CargoRequest request;
  // The registry the crate comes from ("registry+https://…"); none for
  // --path (the package's folder says).
  std::optional<std::string> source;
};

// Plan `spec` as cargo install builds it. A registry crate: cargo picks the
// version (the newest matching, afresh; `cargo metadata` on a throwaway
// package in `scratch`), its sources are copied once into `scratch` (kept
// between installs, so that cargo's answers are remembered while nothing
// changes) without dev-dependencies, its lock file made afresh, or taken
// from the crate's own Cargo.lock with `locked`; it is built from there in
// the release profile of its own manifest, every package's lints capped as
// for registry packages, configuration read from $CARGO_HOME as cargo
// install does. `--path`: the package in that folder, configuration from
// there. Things the user should know (no Cargo.lock published) are added
// to `notes`. A crate that does not exist, or a --locked resolution that
// needs a change, is an Error with cargo's words.
InstallPlan plan_install(const InstallSpec& spec, const std::filesystem::path& scratch,
                         const Environment& env, std::vector<std::string>& notes);

// One package kiln installed, as ROOT/.kiln-installs.json records it.
struct InstalledPackage
{
  std::string name;
  std::string version;
  std::string source;                     // "registry+https://…", "path+file:///…"
  std::optional<std::string> version_req;
  // Each binary and the store path of the output it is in.
  std::map<std::string, std::string> bins;
  std::vector<std::string> features;
  bool no_default_features = false;
  std::string profile = "release";
  std::string target;                     // the host triple
  std::string rustc;                      // `rustc -vV`
  std::string store;                      // the store (its folder) holding the outputs

  // "hexyl 0.8.0 (registry+https://…)", as cargo's install records key it.
  std::string key() const;
  // "hexyl v0.8.0", with " (/path)" for a path package.
  std::string describe() const;
};

// ROOT/.kiln-installs.json, read at construction and locked (ROOT/.kiln-
// installs.lock) until the object goes, so that installs into one root take
// turns.
class InstallRecords
{
public:
  explicit InstallRecords(const std::filesystem::path& root);
  const std::filesystem::path& root() const { return m_root; }
  std::filesystem::path bin_dir() const { return m_root / "bin"; }
  // By name; the entries are in key order.
  const std::vector<InstalledPackage>& packages() const { return m_packages; }
  const InstalledPackage* find(const std::string& name) const;
  // Replace the entry of the same name, or add it.
  void put(InstalledPackage package);
  bool remove(const std::string& name);
  // The package whose entry names binary `bin`, if any.
  const InstalledPackage* owner_of(const std::string& bin) const;
  // Write the file back (atomically).
  void save() const;

private:
  std::filesystem::path m_root;
  FileLock m_lock;
  std::vector<InstalledPackage> m_packages;
};

// What installing a package did to ROOT/bin.
struct InstallChanges
{
  std::vector<std::string> added;         // binaries new in ROOT/bin
  std::vector<std::string> replaced;      // binaries that were there (an older install, --force)
  std::optional<InstalledPackage> previous;   // the entry of the same name it replaced
  bool unchanged = false;                 // the same outputs were installed already
};

// Link each product (binary name → its file in the store, below the
// output `package.bins` names) as ROOT/bin/NAME, each a GC root of `store`,
// and record `package`, replacing an earlier install of a package of the
// same name. A file already at ROOT/bin/NAME that kiln did not install
// for this package (cargo's, another package's) is an Error naming it,
// unless `force`. With the same outputs installed and their links in
// place, nothing is done (unchanged) unless `force`.
InstallChanges install_package(LocalStore& store, InstallRecords& records, InstalledPackage package,
                               const std::map<std::string, std::filesystem::path>& products,
                               bool force);

// Remove the binaries of the package `name` (all, or `bins`) from ROOT/bin
// and its entry (or those binaries from it). Links that no longer point
// into the recorded output are left alone. Returns the files removed; an
// Error if no such package is installed.
std::vector<std::filesystem::path> uninstall_package(InstallRecords& records,
                                                     const std::string& name,
                                                     const std::vector<std::string>& bins = {});

} // namespace kiln::cargo
