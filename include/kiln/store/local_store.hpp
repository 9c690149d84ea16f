// The local store: immutable objects on disk plus a SQLite database of which
// of them are valid, what they reference and how they hash.
//
// On disk, below the store root (see store/README.md):
//   store/<hash>-<name>   the objects, read-only
//   db/db.sqlite          valid paths and references (WAL mode)
//   gcroots/              symlinks to objects (or to links elsewhere: auto/)
//   locks/                gc.lock, per-path locks and claims
//   temproots/<pid>       the temporary roots of each running kiln process
//   tmp/<pid>-…           temporaries of the process <pid>
//   logs/, var/<module>/  build logs; state that only saves time
//
// Invariants, kept across crashes and concurrent kiln processes:
//  - a path is valid only once its content is complete, synced, and every
//    path it references is valid;
//  - adding is atomic: build under tmp/, sync, rename into store/, register;
//  - two processes adding the same path do the work once (per-path lock);
//  - garbage collection runs exclusively; additions hold a shared lock;
//  - what a running process made or is about to use is a temporary root,
//    and its temporaries are its own: both go when the process does.
#pragma once

#include <kiln/hash/hash.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/store/store_path.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/lock.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kiln {

struct PathInfo
{
  explicit PathInfo(StorePath p) : path(std::move(p))
  {
  }

  StorePath path;
  Hash nar_hash{HashAlgo::sha256};
  uint64_t nar_size = 0;
  std::set<StorePath> references;
  std::optional<StorePath> deriver;
  std::set<std::string> signatures;
  int64_t registration_time = 0;
  std::optional<ContentAddress> ca;
  std::string build_mode; // kiln-built outputs: "namespaces" or "clean-env"
  // Built for this machine alone (compiled incrementally, or from such a
  // path): never to leave it (`kiln push` refuses it).
  bool local_only = false;
};

// The text a signature covers (Nix's ValidPathInfo::fingerprint):
//   1;<store path>;sha256:<nix32 NAR hash>;<NAR size>;<sorted, comma-joined reference paths>
std::string path_fingerprint(const StoreDir& store_dir, const PathInfo& info);

// The path `info.ca` (which must be set) gives an object of `info`'s name and
// references; a content-addressed path is valid only if it equals this.
StorePath content_address_path(const StoreDir& store_dir, const PathInfo& info);

struct LocalStoreConfig
{
  std::filesystem::path root;                       // where the store lives on disk
  std::string store_dir{k_default_store_dir};       // the logical store directory
  // How long to wait for another process's lock (the GC lock, a path another
  // kiln is building) before giving up with LockTimeout; zero: as long as it
  // takes.
  std::chrono::seconds lock_timeout{0};
  // Told when this store waits for another process ("waiting for another
  // kiln building /kiln/store/… (held by pid 12)"). Unset: printed to
  // stderr, prefixed "kiln: ".
  std::function<void(const std::string& message)> on_wait{};
};

struct AddOptions
{
  std::optional<std::string> name;                  // default: base name of the source
  std::optional<std::filesystem::path> root_link;   // make this symlink a GC root
  PathFilter filter;                                 // entries to leave out (default: none)
  // The path the caller computed for it (e.g. from remembered digests): no
  // hashing pass before the copy; the copy must hash to this path, or
  // add_path throws and adds nothing.
  std::optional<StorePath> expected;
};

struct GcOptions
{
  std::vector<std::filesystem::path> extra_roots;   // symlinks, or files listing paths
  std::optional<uint64_t> max_freed;                // stop once this much is freed
  // The size cap: delete only until the valid paths' NAR sizes add up to at
  // most this, least recently used first, what no root keeps before what
  // only a root list keeps (nothing else a root keeps ever goes).
  std::optional<uint64_t> max_size;
  bool dry_run = false;
  // Give up if the GC lock is not free within this long (instead of the
  // store's lock_timeout).
  std::optional<std::chrono::seconds> timeout;
};

struct GcResult
{
  std::vector<StorePath> deleted;                   // or would be, with dry_run
  uint64_t bytes_freed = 0;
  size_t roots = 0;
  size_t live = 0;
  size_t strays_removed = 0;
  size_t temp_roots = 0;                            // paths running processes hold
};

struct StoreStats
{
  size_t paths = 0;
  uint64_t nar_bytes = 0;                           // the valid paths' NAR sizes added up
};

class PreparedPath;

struct VerifyOptions
{
  bool check_contents = true;   // re-hash every valid path
  bool repair = false;          // fix permissions and timestamps of intact paths
  bool remove_corrupt = false;  // invalidate and delete corrupt paths and their referrers
  // With repair: fetch a corrupt or missing path again (whole, checked against
  // its registered NAR hash) into the prepared object returned, or nullptr
  // when no cache has it. Unset: corrupt paths are only reported.
  std::function<std::unique_ptr<PreparedPath>(const PathInfo& info)> refetch;
};

struct VerifyProblem
{
  // dependent: valid, but it references a corrupt path (reported when it is
  // removed with it).
  enum class Kind { missing, corrupt, wrong_metadata, bad_content_address, stray, dependent };
  Kind kind;
  std::string path;     // logical path, or the on-disk name for strays
  std::string detail;
  bool fixed = false;
};

struct VerifyResult
{
  size_t checked = 0;
  std::vector<VerifyProblem> problems;
  // True when nothing is wrong with valid paths (strays are harmless: GC
  // removes them).
  bool ok() const;
};

// An object restored from a NAR into the store's temporary folder, checked
// against its NAR hash and size and synced, but not yet valid. Preparing
// needs no references; committing does. Dropped uncommitted, it is deleted.
class PreparedPath
{
public:
  ~PreparedPath();
  PreparedPath(const PreparedPath&) = delete;
  PreparedPath& operator=(const PreparedPath&) = delete;
  const PathInfo&
  info() const
  {
    return m_info;
  }

private:
  friend class LocalStore;
  PreparedPath(PathInfo info, std::filesystem::path temp);
  PathInfo m_info;
  std::filesystem::path m_temp; // this process's own, under tmp/: GC leaves it
  bool m_committed = false;
};

// Held while this process builds or substitutes paths (LocalStore::claim):
// another kiln process that wants one of them waits until it is dropped.
class PathClaim
{
public:
  explicit PathClaim(std::vector<FileLock> locks) : m_locks(std::move(locks)) {}

private:
  std::vector<FileLock> m_locks;
};

class LocalStore
{
public:
  explicit LocalStore(LocalStoreConfig config);
  ~LocalStore();
  LocalStore(const LocalStore&) = delete;
  LocalStore& operator=(const LocalStore&) = delete;

  const StoreDir& store_dir() const;
  const std::filesystem::path& root() const;
  std::filesystem::path physical_path(const StorePath& path) const;
  std::string print(const StorePath& path) const;

  // --- Where things live (store/README.md): no one else composes these ---

  // A new folder under tmp/ for this process (tmp/<pid>-<purpose>-XXXXXX),
  // deleted when the object goes. GC leaves it alone while this process
  // lives and deletes it once the process is gone.
  std::unique_ptr<TempFolder> make_temp_folder(const std::string& purpose) const;
  // A fresh name under tmp/ for a temporary file of this process (a fifo, a
  // NAR being uploaded), held against GC likewise; nothing is created.
  std::filesystem::path new_temp_path(const std::string& purpose) const;
  // The build log of `drv`: logs/<drv>.log (the folder exists).
  std::filesystem::path build_log_path(const StorePath& drv) const;
  // Where `module` keeps its state (var/<module>/: caches that only save
  // time, safe to delete). Created if missing.
  std::filesystem::path state_dir(const std::string& module) const;

  // --- Temporary roots and claims ---

  // Keep `paths` (and so their closures) from garbage collection until this
  // process ends. Call it before relying on a path being valid: a path that
  // is valid after this call stays valid. What this process adds, imports
  // or registers is rooted so already.
  void add_temp_roots(const std::set<StorePath>& paths);
  // Claim `paths` for building or substituting them here. If another kiln
  // process holds one, wait for it (saying "waiting for another kiln
  // building …") up to the lock timeout; check afterwards whether they
  // became valid meanwhile.
  std::unique_ptr<PathClaim> claim(const std::vector<StorePath>& paths);

  // Resolve user input to a store path: a logical path (possibly with a
  // sub-path), a base name, a physical path into the store, or a symlink to
  // any of those. Throws UsageError naming the input.
  StorePath resolve(const std::string& text) const;

  // Copy `source` into the store, content-addressed as `nix-store --add`
  // does (NAR sha256, no references). Returns its path.
  StorePath add_path(const std::filesystem::path& source, const AddOptions& options = {});

  // Add a text object (a single file, such as a .drv) with references,
  // content-addressed as Nix's text objects are. Returns its path.
  StorePath add_text(const std::string& name, std::string_view contents,
                     const std::set<StorePath>& references);

  // Import an object from a NAR stream. Its NAR hash and size must match
  // `info`, its references must be valid, a content address must match the
  // path. Nothing is left behind on failure.
  void add_nar(const PathInfo& info, Source& nar);

  // The two halves of add_nar, so that many objects can be downloaded and
  // checked in parallel and then made valid in dependency order.
  std::unique_ptr<PreparedPath> prepare_nar(const PathInfo& info, Source& nar);
  // Make a prepared object valid; its references must be valid already.
  // Committing an object that became valid meanwhile is a no-op.
  void commit(PreparedPath& prepared);
  // Make several prepared objects valid at once: one sync of the objects
  // folder and one database transaction for all (a download of many small
  // paths otherwise waits for a folder sync per path). Each one's
  // references must be valid already or come earlier in `batch`; on an
  // error none of them is valid (those renamed into place are debris).
  void commit(const std::vector<PreparedPath*>& batch);

  // Register what a build wrote at `built` (a folder under the store's
  // tmp/) as the output `path`: its metadata is made canonical in place, its
  // references are those of `candidates` (and `path` itself) whose hash part
  // occurs in it, and it is moved into the store. Returns its info.
  PathInfo register_output(const StorePath& path, const std::filesystem::path& built,
                           const std::set<StorePath>& candidates,
                           const std::optional<StorePath>& deriver,
                           const std::string& build_mode, bool local_only = false);

  std::optional<PathInfo> query_path_info(const StorePath& path) const;
  bool is_valid(const StorePath& path) const;
  std::vector<StorePath> valid_paths() const;
  // Add signatures to a valid path's metadata.
  void add_signatures(const StorePath& path, const std::set<std::string>& signatures);
  // The paths and everything they reference, transitively.
  std::set<StorePath> closure(const std::set<StorePath>& paths) const;
  // Paths that reference `path`.
  std::set<StorePath> referrers(const StorePath& path) const;

  // Make `link` a symlink to `path` and register it as an indirect GC root.
  void add_root(const std::filesystem::path& link, const StorePath& path);
  // All GC roots: the link and what it keeps alive.
  std::vector<std::pair<std::filesystem::path, StorePath>> find_roots() const;
  // Write `file` listing `paths` and register it as a root list: gc keeps
  // them while the file exists (a project's units, in its target folder);
  // the size cap may take them, least recently used first.
  void add_root_list(const std::filesystem::path& file, const std::set<StorePath>& paths);
  // Every root list's entries: the file and a path it keeps.
  std::vector<std::pair<std::filesystem::path, StorePath>> find_root_lists() const;
  // Write down when this process last used the paths it rooted (for the
  // size cap); also done by collect_garbage and when the object goes.
  void flush_uses();
  StoreStats stats() const;

  GcResult collect_garbage(const GcOptions& options);
  // Make a prepared object (its NAR hash equal to the one registered) the
  // contents of the valid path it names, replacing what is on disk.
  void replace_contents(PreparedPath& prepared);
  // Entries of the objects folder that are not valid paths: debris of
  // interrupted additions or removals.
  std::vector<std::filesystem::path> stray_entries() const;
  VerifyResult verify(const VerifyOptions& options);

private:
  struct Impl;
  std::unique_ptr<Impl> m;
};

} // namespace kiln
