#include "database.hpp"
#include "temp_roots.hpp"

#include <kiln/nar/nar.hpp>
#include <kiln/store/local_store.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/lock.hpp>
#include <kiln/util/strings.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <ctime>
#include <iostream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <tuple>

namespace kiln {

namespace fs = std::filesystem;
using detail::Database;
using detail::Statement;
using detail::Transaction;

namespace {

constexpr int k_schema_version = 1;

const char* const k_schema = R"sql(
CREATE TABLE IF NOT EXISTS Meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ValidPaths (
  id                INTEGER PRIMARY KEY AUTOINCREMENT,
  path              TEXT UNIQUE NOT NULL,  -- base name <hash>-<name>
  nar_hash          TEXT NOT NULL,         -- sha256:<nix32>
  nar_size          INTEGER NOT NULL,
  deriver           TEXT,                  -- base name of a .drv
  registration_time INTEGER NOT NULL,
  ca                TEXT,                  -- content address, if any
  sigs              TEXT NOT NULL DEFAULT '', -- space-separated name:base64
  build_mode        TEXT                   -- how kiln built it: namespaces, clean-env
);
CREATE TABLE IF NOT EXISTS Refs (
  referrer  INTEGER NOT NULL REFERENCES ValidPaths(id) ON DELETE CASCADE,
  reference INTEGER NOT NULL REFERENCES ValidPaths(id) ON DELETE RESTRICT,
  PRIMARY KEY (referrer, reference)
);
CREATE INDEX IF NOT EXISTS RefsByReference ON Refs(reference);
CREATE TABLE IF NOT EXISTS LastUse (      -- for the size cap: least recently used goes first
  path INTEGER PRIMARY KEY REFERENCES ValidPaths(id) ON DELETE CASCADE,
  time INTEGER NOT NULL                   -- milliseconds since the epoch
);
)sql";

std::string
join_signatures(const std::set<std::string>& sigs)
{
  std::string out;
  for (const auto& s : sigs) {
    out += (out.empty() ? "" : " ") + s;
  }
  return out;
}

// Make what lies at `path` durable before the database says it is valid.
// A small tree (a build's or a download's few files) is fsynced file by file:
// only kiln's own data is waited for. A large one (a source tree) takes one
// syncfs, cheaper than thousands of fsyncs but a wait for every writer of
// the file system.
void
sync_filesystem_of(const fs::path& path)
{
  constexpr size_t k_fsync_limit = 64;
  std::vector<fs::path> entries;
  std::error_code ec;
  auto status = fs::symlink_status(path, ec);
  if (ec || fs::is_symlink(status)) {
    // A symlink at the top: its folder is synced by the caller.
    return;
  }
  entries.push_back(path);
  bool small = true;
  if (fs::is_directory(status)) {
    for (auto it = fs::recursive_directory_iterator(path, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (entries.size() > k_fsync_limit) {
        small = false;
        break;
      }
      if (!it->is_symlink(ec)) {
        entries.push_back(it->path());
      }
    }
  }
  if (small && !ec) {
    // Files first, then the folders that name them, deepest first.
    std::stable_partition(entries.begin(), entries.end(),
                          [](const fs::path& p) { return !fs::is_directory(fs::symlink_status(p)); });
    auto folders = std::find_if(entries.begin(), entries.end(), [](const fs::path& p) {
      return fs::is_directory(fs::symlink_status(p));
    });
    std::reverse(folders, entries.end());
    for (const auto& entry : entries) {
      UniqueFd fd(::open(entry.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      if (!fd) {
        throw_errno("opening '" + entry.string() + "' to sync it");
      }
      if (::fsync(fd.get()) != 0) {
        throw_errno("syncing '" + entry.string() + "'");
      }
    }
    return;
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_DIRECTORY));
  if (!fd) {
    fd.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  }
  if (!fd) {
    return;
  }
  if (::syncfs(fd.get()) != 0) {
    throw_errno("syncing '" + path.string() + "'");
  }
}

// Check (and with `repair` restore) the canonical store metadata below `path`.
// Returns a description of the first problem found, or "".
std::string
check_metadata(const fs::path& path, bool repair)
{
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return "cannot examine '" + path.string() + "'";
  }
  std::string problem;
  if (!S_ISLNK(st.st_mode)) {
    mode_t expected = S_ISDIR(st.st_mode) || (st.st_mode & S_IXUSR) ? 0555 : 0444;
    if ((st.st_mode & 07777) != expected) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "mode %04o instead of %04o", st.st_mode & 07777, expected);
      problem = "'" + path.string() + "' has " + buf;
      if (repair) {
        ::chmod(path.c_str(), expected);
      }
    }
  }
  if (S_ISDIR(st.st_mode)) {
    for (const auto& entry : fs::directory_iterator(path)) {
      std::string inner = check_metadata(entry.path(), repair);
      if (problem.empty()) {
        problem = inner;
      }
    }
  }
  if (st.st_mtime != 1) {
    if (problem.empty()) {
      problem = "'" + path.string() + "' has a modification time other than 1";
    }
    if (repair) {
      const struct timespec times[2] = {{1, 0}, {1, 0}};
      ::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW);
    }
  }
  return problem;
}

// Finds which of a set of store path hash parts occur in a byte stream (the
// way Nix finds an output's references: by scanning for them).
class ReferenceScanner : public Sink
{
public:
  explicit ReferenceScanner(const std::set<std::string>& hashes) : m_hashes(hashes)
  {
  }
  void
  write(std::string_view data) override
  {
    // Windows that straddle the previous chunk and this one.
    if (!m_tail.empty()) {
      std::string joined = m_tail + std::string(data.substr(0, StorePath::k_hash_len - 1));
      scan(joined, m_tail.size());
    }
    scan(data, data.size());
    size_t keep = std::min(data.size(), StorePath::k_hash_len - 1);
    m_tail.assign(data.substr(data.size() - keep));
  }
  const std::set<std::string>&
  found() const
  {
    return m_found;
  }

private:
  // Look at every 32-character window of nix32 characters starting before
  // `limit`. As Nix's scanner: test a window from its end, and on a byte
  // that is not nix32, skip every window that holds it — most of a binary
  // is passed over without looking at each byte.
  void
  scan(std::string_view s, size_t limit)
  {
    static const std::array<bool, 256> nix32 = [] {
      std::array<bool, 256> table{};
      for (int c = 0; c < 256; ++c) {
        table[static_cast<size_t>(c)] = is_nix32_char(static_cast<char>(c));
      }
      return table;
    }();
    const size_t len = StorePath::k_hash_len;
    size_t i = 0;
    while (i < limit && i + len <= s.size()) {
      size_t j = len;
      while (j > 0 && nix32[static_cast<unsigned char>(s[i + j - 1])]) {
        --j;
      }
      if (j > 0) {
        i += j; // the byte at i + j - 1 is in no window before i + j
        continue;
      }
      std::string window(s.substr(i, len));
      if (m_hashes.count(window)) {
        m_found.insert(std::move(window));
      }
      ++i;
    }
  }

  const std::set<std::string>& m_hashes;
  std::set<std::string> m_found;
  std::string m_tail;
};

// Give a build's output the metadata of a store object: owned by root when
// kiln runs as root, read-only (0444, or 0555 with the owner's x bit,
// folders 0555), mtime 1.
void
canonicalise(const fs::path& path)
{
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    throw_errno("examining build output '" + path.string() + "'");
  }
  if (::geteuid() == 0 && (st.st_uid != 0 || st.st_gid != 0)) {
    if (::lchown(path.c_str(), 0, 0) != 0) {
      throw_errno("taking ownership of build output '" + path.string() + "'");
    }
  }
  const struct timespec times[2] = {{1, 0}, {1, 0}};
  if (S_ISLNK(st.st_mode)) {
    ::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW);
    return;
  }
  if (S_ISDIR(st.st_mode)) {
    ::chmod(path.c_str(), 0755);
    for (const auto& entry : fs::directory_iterator(path)) {
      canonicalise(entry.path());
    }
  }
  mode_t mode = S_ISDIR(st.st_mode) || (st.st_mode & S_IXUSR) ? 0555 : 0444;
  if (::chmod(path.c_str(), mode) != 0 || ::utimensat(AT_FDCWD, path.c_str(), times, 0) != 0) {
    throw_errno("making build output '" + path.string() + "' read-only");
  }
}

} // namespace

std::string
path_fingerprint(const StoreDir& store_dir, const PathInfo& info)
{
  if (info.nar_size == 0) {
    throw Error("cannot make the fingerprint of '" + store_dir.print(info.path) +
                "': its NAR size is unknown");
  }
  std::string refs;
  for (const auto& ref : info.references) { // std::set: sorted
    refs += (refs.empty() ? "" : ",") + store_dir.print(ref);
  }
  return "1;" + store_dir.print(info.path) + ";" + info.nar_hash.to_string(HashFormat::nix32, true) +
         ";" + std::to_string(info.nar_size) + ";" + refs;
}

StorePath
content_address_path(const StoreDir& store_dir, const PathInfo& info)
{
  auto refs = info.references;
  bool self = refs.erase(info.path) > 0;
  return store_dir.make_fixed_output_path(info.path.name(), *info.ca, refs, self);
}

bool
VerifyResult::ok() const
{
  for (const auto& p : problems) {
    if (p.kind != VerifyProblem::Kind::stray && !p.fixed) {
      return false;
    }
  }
  return true;
}

struct LocalStore::Impl
{
  StoreDir store_dir;
  fs::path root;
  fs::path objects;
  fs::path tmp;
  fs::path locks;
  fs::path gcroots;
  std::unique_ptr<Database> db;
  mutable std::mutex db_mutex; // one connection, shared by this object's threads
  std::mutex lock_mutex;
  std::weak_ptr<FileLock> shared_gc;
  std::chrono::seconds lock_timeout;
  std::function<void(const std::string&)> on_wait;
  std::shared_ptr<detail::TempRoots> temp_roots;
  // Paths this process used since the last flush_uses (base names).
  std::mutex uses_mutex;
  std::set<std::string> pending_uses;

  Impl(const LocalStoreConfig& config)
    : store_dir(config.store_dir),
      root(fs::absolute(config.root).lexically_normal()),
      lock_timeout(config.lock_timeout),
      on_wait(config.on_wait ? config.on_wait : [](const std::string& message) {
        std::cerr << "kiln: " << message << "\n";
      })
  {
    if (root.has_filename() == false && root.has_parent_path() && root != root.root_path()) {
      root = root.parent_path();
    }
    objects = root / "store";
    tmp = root / "tmp";
    locks = root / "locks";
    gcroots = root / "gcroots";
    temp_roots = detail::TempRoots::of(root / "temproots");
    for (const auto& dir : {root, objects, tmp, locks, gcroots, gcroots / "auto", root / "db",
                            root / "temproots"}) {
      std::error_code ec;
      fs::create_directories(dir, ec);
      if (ec) {
        throw Error("creating store folder '" + dir.string() + "': " + ec.message());
      }
    }
    db = std::make_unique<Database>(root / "db" / "db.sqlite");
    {
      Transaction txn(*db);
      db->exec(k_schema);
      // Stores made before build_mode existed get the column.
      bool has_build_mode = false;
      Statement columns(*db, "PRAGMA table_info(ValidPaths)");
      while (columns.step()) {
        has_build_mode = has_build_mode || columns.column_text(1) == "build_mode";
      }
      if (!has_build_mode) {
        db->exec("ALTER TABLE ValidPaths ADD COLUMN build_mode TEXT");
      }
      Statement get(*db, "SELECT value FROM Meta WHERE key = ?");
      get.bind(1, "store_dir");
      if (get.step()) {
        std::string recorded = get.column_text(0);
        if (recorded != store_dir.path()) {
          throw UsageError("the store at '" + root.string() + "' was made for store directory '" +
                           recorded + "', not '" + store_dir.path() +
                           "' (set --store-dir or KILN_STORE_DIR to match)");
        }
      } else {
        Statement put(*db, "INSERT INTO Meta (key, value) VALUES (?, ?)");
        put.bind(1, "store_dir").bind(2, store_dir.path()).run();
        put.bind(1, "schema_version").bind(2, std::to_string(k_schema_version)).run();
      }
      txn.commit();
    }
  }

  LockWait
  lock_wait(std::string what, std::chrono::milliseconds announce_after) const
  {
    LockWait wait;
    wait.what = std::move(what);
    wait.timeout = lock_timeout;
    wait.on_wait = on_wait;
    wait.announce_after = announce_after;
    return wait;
  }

  // Exclusive: collecting garbage. Shared: adding, or rooting, briefly.
  FileLock
  gc_lock(LockMode mode, std::optional<std::chrono::seconds> timeout = std::nullopt) const
  {
    auto wait = lock_wait(mode == LockMode::exclusive ? "the store's GC lock"
                                                      : "the garbage collector",
                          std::chrono::seconds(1));
    if (timeout) {
      wait.timeout = *timeout;
    }
    return FileLock(locks / "gc.lock", mode, wait);
  }

  // Short: held while one process registers the path.
  FileLock
  path_lock(const StorePath& path) const
  {
    return FileLock(locks / (std::string(path.hash_part()) + ".lock"), LockMode::exclusive,
                    lock_wait("the lock of '" + store_dir.print(path) + "'", std::chrono::seconds(1)));
  }

  // Long: held while one process builds or substitutes the path.
  FileLock
  claim_lock(const StorePath& path) const
  {
    return FileLock(locks / (std::string(path.hash_part()) + ".claim"), LockMode::exclusive,
                    lock_wait("another kiln building " + store_dir.print(path),
                              std::chrono::milliseconds(0)));
  }

  // A name under tmp/ for a temporary that is debris if this process dies
  // (used while holding the GC lock, or deleted at once).
  fs::path
  debris_path(const std::string& purpose) const
  {
    static std::atomic<unsigned> counter{0};
    std::random_device rd;
    return tmp / (purpose + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) +
                  "-" + std::to_string(rd() % 1000000));
  }

  // A name under tmp/ for a temporary of this process, which GC leaves alone
  // while the process lives: tmp/<pid>-<purpose>-<n>.
  fs::path
  owned_temp_path(const std::string& purpose)
  {
    become_owner();
    static std::atomic<unsigned> counter{0};
    return tmp / (std::to_string(::getpid()) + "-" + purpose + "-" + std::to_string(counter++));
  }

  // This process's temporary roots file exists and is locked. A temporary
  // named for this pid that is older than the file was a dead process's.
  void
  become_owner()
  {
    auto gc = shared_gc_lock();
    temp_roots->ensure_owner([&] {
      std::error_code ec;
      for (const auto& entry : fs::directory_iterator(tmp, ec)) {
        if (detail::temp_owner(entry.path().filename().string()) == ::getpid()) {
          delete_path(entry.path());
        }
      }
    });
  }

  void
  add_temp_roots(const std::set<StorePath>& paths)
  {
    std::vector<std::string> names;
    for (const auto& path : paths) {
      names.push_back(path.base());
    }
    become_owner();
    auto gc = shared_gc_lock();
    temp_roots->add(names);
    // What a process roots is what it uses: the size cap's "last used".
    std::lock_guard guard(uses_mutex);
    pending_uses.insert(names.begin(), names.end());
  }

  void
  flush_uses()
  {
    std::set<std::string> names;
    {
      std::lock_guard guard(uses_mutex);
      names.swap(pending_uses);
    }
    if (names.empty()) {
      return;
    }
    int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
    std::lock_guard guard(db_mutex);
    Transaction txn(*db);
    Statement upsert(*db, "INSERT INTO LastUse (path, time) SELECT id, ? FROM ValidPaths "
                          "WHERE path = ? ON CONFLICT (path) DO UPDATE SET time = excluded.time");
    for (const auto& name : names) {
      upsert.bind(1, now).bind(2, name).run();
    }
    txn.commit();
  }

  std::optional<int64_t>
  path_id(const StorePath& path) const
  {
    Statement q(*db, "SELECT id FROM ValidPaths WHERE path = ?");
    q.bind(1, path.base());
    if (q.step()) {
      return q.column_int(0);
    }
    return std::nullopt;
  }

  std::optional<PathInfo>
  query(const StorePath& path) const
  {
    Statement q(*db, "SELECT id, nar_hash, nar_size, deriver, registration_time, ca, sigs, "
                     "build_mode FROM ValidPaths WHERE path = ?");
    q.bind(1, path.base());
    if (!q.step()) {
      return std::nullopt;
    }
    PathInfo info(path);
    int64_t id = q.column_int(0);
    info.nar_hash = Hash::parse_prefixed(q.column_text(1));
    info.nar_size = static_cast<uint64_t>(q.column_int(2));
    if (auto d = q.column_optional_text(3)) {
      info.deriver = StorePath(*d);
    }
    info.registration_time = q.column_int(4);
    if (auto ca = q.column_optional_text(5)) {
      info.ca = ContentAddress::parse(*ca);
    }
    auto sigs = split_words(q.column_text(6));
    info.signatures = std::set<std::string>(sigs.begin(), sigs.end());
    info.build_mode = q.column_text(7);
    Statement refs(*db, "SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference "
                        "WHERE r.referrer = ?");
    refs.bind(1, id);
    while (refs.step()) {
      info.references.insert(StorePath(refs.column_text(0)));
    }
    return info;
  }

  // Throw unless every reference of `info` but itself is valid; `context`
  // starts the message ("cannot add '…'").
  void
  require_valid_references(const PathInfo& info, const std::string& context) const
  {
    for (const auto& ref : info.references) {
      if (ref != info.path && !path_id(ref)) {
        throw Error(context + ": its reference '" + store_dir.print(ref) + "' is not valid");
      }
    }
  }

  // Record `info` as valid. Its references must be valid already (or be the
  // path itself).
  void
  register_path(const PathInfo& info)
  {
    Transaction txn(*db);
    Statement insert(*db, "INSERT INTO ValidPaths (path, nar_hash, nar_size, deriver, "
                          "registration_time, ca, sigs, build_mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    insert.bind(1, info.path.base())
      .bind(2, info.nar_hash.to_string(HashFormat::nix32, true))
      .bind(3, static_cast<int64_t>(info.nar_size))
      .bind_optional(4, info.deriver ? std::optional<std::string>(info.deriver->base()) : std::nullopt)
      .bind(5, static_cast<int64_t>(std::time(nullptr)))
      .bind_optional(6, info.ca ? std::optional<std::string>(info.ca->to_string()) : std::nullopt)
      .bind(7, join_signatures(info.signatures))
      .bind_optional(8, info.build_mode.empty() ? std::nullopt
                                                : std::optional<std::string>(info.build_mode));
    insert.run();
    int64_t id = db->last_insert_id();
    Statement add_ref(*db, "INSERT INTO Refs (referrer, reference) VALUES (?, ?)");
    for (const auto& ref : info.references) {
      auto ref_id = ref == info.path ? std::optional<int64_t>(id) : path_id(ref);
      if (!ref_id) {
        throw Error("cannot register '" + store_dir.print(info.path) + "': its reference '" +
                    store_dir.print(ref) + "' is not valid");
      }
      add_ref.bind(1, id).bind(2, *ref_id).run();
    }
    txn.commit();
  }

  // The shared GC lock, one per process at a time: every addition holds it
  // (so GC never removes a temporary being filled), and a process holding
  // many prepared objects needs only one descriptor for them.
  std::shared_ptr<FileLock>
  shared_gc_lock()
  {
    std::lock_guard guard(lock_mutex);
    auto lock = shared_gc.lock();
    if (!lock) {
      lock = std::make_shared<FileLock>(gc_lock(LockMode::shared));
      shared_gc = lock;
    }
    return lock;
  }

  // Move a finished, synced temporary object into place and register it.
  // The caller holds the shared GC lock and the path's lock.
  void
  commit_temp(const fs::path& temp, const PathInfo& info)
  {
    move_into_store(temp, info.path);
    register_path(info);
  }

  // Rename a temporary object to its place in the objects folder (whatever
  // lies there is debris of a killed process: never registered).
  void
  move_into_store(const fs::path& temp, const StorePath& path)
  {
    fs::path final_path = objects / path.base();
    if (::access(final_path.c_str(), F_OK) == 0 || errno != ENOENT) {
      delete_path(final_path);
    }
    // Moving a folder to another parent rewrites its "..", which needs write
    // permission on it when we are not root: open it up for the move only.
    struct stat st;
    bool read_only_dir = ::lstat(temp.c_str(), &st) == 0 && S_ISDIR(st.st_mode) &&
                         (st.st_mode & S_IWUSR) == 0;
    if (read_only_dir) {
      ::chmod(temp.c_str(), 0755);
    }
    if (::rename(temp.c_str(), final_path.c_str()) != 0) {
      int saved = errno;
      if (read_only_dir) {
        ::chmod(temp.c_str(), st.st_mode & 07777);
      }
      throw SystemError("moving '" + temp.string() + "' to '" + final_path.string() + "'", saved);
    }
    if (read_only_dir) {
      ::chmod(final_path.c_str(), st.st_mode & 07777);
      const struct timespec times[2] = {{1, 0}, {1, 0}};
      ::utimensat(AT_FDCWD, final_path.c_str(), times, 0);
    }
    fsync_directory(objects);
  }

  // Make the finished, synced temporary `temp` the valid path `info.path`,
  // unless that is valid already (then false). Its references must be
  // valid. The path becomes a temporary root either way.
  bool
  commit_if_new(const fs::path& temp, const PathInfo& info)
  {
    auto gc = shared_gc_lock();
    add_temp_roots({info.path});
    {
      std::lock_guard guard(db_mutex);
      require_valid_references(info, "cannot add '" + store_dir.print(info.path) + "'");
      if (path_id(info.path)) {
        return false;
      }
    }
    auto lock = path_lock(info.path);
    std::lock_guard guard(db_mutex);
    if (path_id(info.path)) {
      return false;
    }
    commit_temp(temp, info);
    return true;
  }

  std::optional<StorePath>
  store_path_of_target(const std::string& target) const
  {
    std::string objects_prefix = objects.string() + "/";
    if (target.starts_with(objects_prefix)) {
      return store_dir.try_parse_prefix(store_dir.path() + "/" +
                                        target.substr(objects_prefix.size()));
    }
    if (target.starts_with(store_dir.path() + "/")) {
      return store_dir.try_parse_prefix(target);
    }
    return std::nullopt;
  }

  void
  collect_roots(const fs::path& dir, bool is_auto, std::vector<std::pair<fs::path, StorePath>>& out,
                std::vector<std::pair<fs::path, StorePath>>* lists) const
  {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      auto status = entry.symlink_status();
      if (fs::is_directory(status)) {
        collect_roots(entry.path(), is_auto || entry.path().filename() == "auto", out, lists);
        continue;
      }
      if (!fs::is_symlink(status)) {
        continue;
      }
      std::string target = fs::read_symlink(entry.path(), ec).string();
      if (ec) {
        continue;
      }
      if (auto path = store_path_of_target(target)) {
        out.emplace_back(entry.path(), *path);
        continue;
      }
      // An indirect root: a link elsewhere (e.g. a `result` symlink) that
      // points into the store. It stops being a root when removed.
      fs::path indirect = target;
      auto indirect_status = fs::symlink_status(indirect, ec);
      if (fs::is_symlink(indirect_status)) {
        std::string final_target = fs::read_symlink(indirect, ec).string();
        if (!ec) {
          if (auto path = store_path_of_target(final_target)) {
            out.emplace_back(indirect, *path);
          }
        }
      } else if (fs::is_regular_file(indirect_status)) {
        // A root list (add_root_list): a project's units, one path a line.
        if (lists) {
          for (const auto& path : read_root_list(indirect)) {
            lists->emplace_back(indirect, path);
          }
        }
      } else if (is_auto && !fs::exists(indirect_status)) {
        fs::remove(entry.path(), ec);
      }
    }
  }

  // The store paths a root list names; lines that name none are skipped
  // (the file is kiln's own, but it lives in the user's tree).
  std::vector<StorePath>
  read_root_list(const fs::path& file) const
  {
    std::vector<StorePath> paths;
    std::string text;
    try {
      text = read_file(file);
    } catch (const std::exception&) {
      return paths;
    }
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
      if (auto path = store_path_of_target(line)) {
        paths.push_back(*path);
      }
    }
    return paths;
  }

  // Drop `paths` from the database in one transaction. Every referrer of
  // each must be among them (or already invalid): all their references go
  // first, so their order does not matter.
  void
  invalidate(const std::vector<StorePath>& paths)
  {
    Transaction txn(*db);
    std::vector<int64_t> ids;
    for (const auto& path : paths) {
      if (auto id = path_id(path)) {
        ids.push_back(*id);
      }
    }
    Statement drop_refs(*db, "DELETE FROM Refs WHERE referrer = ?");
    for (int64_t id : ids) {
      drop_refs.bind(1, id).run();
    }
    Statement drop(*db, "DELETE FROM ValidPaths WHERE id = ?");
    for (int64_t id : ids) {
      drop.bind(1, id).run();
    }
    txn.commit();
  }

  struct GcRoots
  {
    std::set<StorePath> hard;    // links, --root, temporary roots: never deleted
    std::set<StorePath> listed;  // in root lists: kept by gc, given up under the size cap
  };
  GcRoots gc_roots(const LocalStore& store, const GcOptions& options,
                               GcResult& result);
  std::vector<StorePath> deletion_order(const LocalStore& store, const std::set<StorePath>& live);
  void order_for_size_cap(const LocalStore& store, const std::set<StorePath>& listed_live,
                          std::vector<StorePath>& order);
  void remove_debris(const LocalStore& store, GcResult& result);
  void refetch_corrupt(LocalStore& store, const VerifyOptions& options,
                       std::vector<StorePath>& corrupt, VerifyResult& result);
  void remove_corrupt(LocalStore& store, const std::vector<StorePath>& corrupt,
                      VerifyResult& result);

  // Remove an invalid object from disk: rename it away first so that a
  // half-deleted tree never sits under its store name.
  uint64_t
  remove_from_disk(const fs::path& object)
  {
    uint64_t size = tree_size(object);
    fs::path trash = debris_path("trash");
    if (::rename(object.c_str(), trash.c_str()) != 0) {
      if (errno == ENOENT) {
        return 0;
      }
      throw_errno("moving '" + object.string() + "' out of the store");
    }
    delete_path(trash);
    return size;
  }
};

LocalStore::LocalStore(LocalStoreConfig config) : m(std::make_unique<Impl>(config))
{
}

LocalStore::~LocalStore()
{
  try {
    m->flush_uses();
  } catch (const std::exception&) {
    // Only the size cap's ordering: never worth failing for.
  }
}

const StoreDir&
LocalStore::store_dir() const
{
  return m->store_dir;
}

const fs::path&
LocalStore::root() const
{
  return m->root;
}

fs::path
LocalStore::physical_path(const StorePath& path) const
{
  return m->objects / path.base();
}

std::string
LocalStore::print(const StorePath& path) const
{
  return m->store_dir.print(path);
}

std::unique_ptr<TempFolder>
LocalStore::make_temp_folder(const std::string& purpose) const
{
  m->become_owner();
  return std::make_unique<TempFolder>(m->tmp, std::to_string(::getpid()) + "-" + purpose + "-",
                                      "a temporary folder (" + purpose + ")");
}

fs::path
LocalStore::new_temp_path(const std::string& purpose) const
{
  return m->owned_temp_path(purpose);
}

fs::path
LocalStore::build_log_path(const StorePath& drv) const
{
  fs::path logs = m->root / "logs";
  std::error_code ec;
  fs::create_directories(logs, ec);
  if (ec) {
    throw Error("creating the build log folder '" + logs.string() + "': " + ec.message());
  }
  return logs / (drv.base() + ".log");
}

fs::path
LocalStore::state_dir(const std::string& module) const
{
  fs::path dir = m->root / "var" / module;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    throw Error("creating the state folder '" + dir.string() + "': " + ec.message());
  }
  return dir;
}

void
LocalStore::add_temp_roots(const std::set<StorePath>& paths)
{
  m->add_temp_roots(paths);
}

std::unique_ptr<PathClaim>
LocalStore::claim(const std::vector<StorePath>& paths)
{
  // In one order everywhere, so that two processes claiming overlapping sets
  // never wait for each other in a circle.
  std::set<StorePath> sorted(paths.begin(), paths.end());
  std::vector<FileLock> locks;
  for (const auto& path : sorted) {
    locks.push_back(m->claim_lock(path));
  }
  return std::make_unique<PathClaim>(std::move(locks));
}

void
LocalStore::replace_contents(PreparedPath& prepared)
{
  const PathInfo& info = prepared.m_info;
  auto gc = m->shared_gc_lock();
  auto lock = m->path_lock(info.path);
  auto registered = query_path_info(info.path);
  if (!registered || !(registered->nar_hash == info.nar_hash) ||
      registered->nar_size != info.nar_size) {
    throw Error("cannot repair '" + print(info.path) +
                "': the fetched copy is not what the store registered for it");
  }
  m->remove_from_disk(physical_path(info.path));
  m->move_into_store(prepared.m_temp, info.path);
  prepared.m_committed = true;
}

StorePath
LocalStore::resolve(const std::string& text) const
{
  if (auto path = m->store_path_of_target(text)) {
    return *path;
  }
  std::error_code ec;
  fs::path p(text);
  if (fs::is_symlink(fs::symlink_status(p, ec))) {
    auto target = fs::read_symlink(p, ec);
    if (!ec) {
      if (target.is_relative()) {
        target = p.parent_path() / target;
      }
      auto absolute = fs::absolute(target, ec).lexically_normal();
      if (auto path = m->store_path_of_target(absolute.string())) {
        return *path;
      }
      if (auto path = m->store_path_of_target(target.string())) {
        return *path;
      }
    }
  }
  auto absolute = fs::absolute(p, ec).lexically_normal();
  if (!ec) {
    if (auto path = m->store_path_of_target(absolute.string())) {
      return *path;
    }
  }
  if (text.find('/') == std::string::npos) {
    try {
      return StorePath(text);
    } catch (const FormatError&) {
    }
  }
  throw UsageError("'" + text + "' is not a store path (expected " + m->store_dir.path() +
                   "/<hash>-<name>, a base name, or a path into " + m->objects.string() + ")");
}

StorePath
LocalStore::add_path(const fs::path& source, const AddOptions& options)
{
  std::string name = options.name ? *options.name : source.filename().string();
  if (name.empty()) {
    name = fs::absolute(source).lexically_normal().parent_path().filename().string();
  }
  try {
    check_store_path_name(name);
  } catch (const FormatError& e) {
    throw UsageError(std::string(e.what()) + " (choose another with --name)");
  }
  struct stat st;
  if (::lstat(source.c_str(), &st) != 0) {
    throw_errno("cannot add '" + source.string() + "'");
  }

  // Hash first, reading only: adding what is already there (the common
  // case for a build tool) then costs one read and no writes.
  ContentAddress ca{ContentAddress::Method::recursive, Hash()};
  {
    HashSink hash;
    dump_path(source, hash, options.filter);
    ca.hash = hash.finish();
  }
  StorePath path = m->store_dir.make_fixed_output_path(name, ca);
  m->add_temp_roots({path});
  if (!is_valid(path)) {
    fs::path temp = m->owned_temp_path("add");
    try {
      // Copy while hashing again, so that what is stored is exactly what was
      // hashed, even if the source changes meanwhile.
      HashSink hash;
      NarWriter nar(hash);
      Restorer copy(temp);
      TeeFsObjectSink both(nar, copy);
      walk_path(source, both, options.filter);
      nar.finish();
      uint64_t nar_size = hash.bytes_written();
      if (!(hash.finish() == ca.hash)) {
        throw Error("'" + source.string() + "' changed while it was being added; try again");
      }
      PathInfo info(path);
      info.nar_hash = ca.hash;
      info.nar_size = nar_size;
      info.ca = ca;
      sync_filesystem_of(temp);
      m->commit_if_new(temp, info);
      delete_path(temp);
    } catch (...) {
      delete_path(temp);
      throw;
    }
  }
  if (options.root_link) {
    add_root(*options.root_link, path);
  }
  return path;
}

StorePath
LocalStore::add_text(const std::string& name, std::string_view contents,
                     const std::set<StorePath>& references)
{
  Hash content_hash = hash_string(HashAlgo::sha256, contents);
  StorePath path = m->store_dir.make_text_path(name, content_hash, references);
  m->add_temp_roots({path});
  if (is_valid(path)) {
    return path;
  }
  StringSink nar;
  {
    NarWriter writer(nar);
    writer.begin_regular_file("", false, contents.size());
    writer.file_data(contents);
    writer.end_regular_file();
    writer.finish();
  }
  PathInfo info(path);
  info.nar_hash = hash_string(HashAlgo::sha256, nar.s);
  info.nar_size = nar.s.size();
  info.references = references;
  info.ca = ContentAddress{ContentAddress::Method::text, content_hash};
  StringSource in(nar.s);
  add_nar(info, in);
  return path;
}

PreparedPath::PreparedPath(PathInfo info, fs::path temp)
  : m_info(std::move(info)), m_temp(std::move(temp))
{
}

PreparedPath::~PreparedPath()
{
  if (!m_committed) {
    try {
      delete_path(m_temp);
    } catch (...) {
      // Debris in tmp/ is removed by the next GC.
    }
  }
}

void
LocalStore::add_nar(const PathInfo& info, Source& nar)
{
  {
    std::lock_guard guard(m->db_mutex);
    m->require_valid_references(info, "cannot add '" + print(info.path) + "'");
  }
  m->add_temp_roots({info.path});
  if (is_valid(info.path)) {
    return;
  }
  auto prepared = prepare_nar(info, nar);
  commit(*prepared);
}

std::unique_ptr<PreparedPath>
LocalStore::prepare_nar(const PathInfo& info, Source& nar)
{
  if (info.ca) {
    auto expected = content_address_path(m->store_dir, info);
    if (expected != info.path) {
      throw Error("'" + print(info.path) + "' does not match its content address " +
                  info.ca->to_string() + " (that would be '" + print(expected) + "')");
    }
  }
  fs::path temp = m->owned_temp_path("import");
  std::unique_ptr<PreparedPath> prepared(new PreparedPath(info, temp));
  // Capped at NarSize: a lying cache cannot fill tmp/ before the check.
  ValidatingSource checked(nar, info.nar_hash.algo(), info.nar_size);
  try {
    restore_nar(checked, temp);
    checked.verify(info.nar_size, info.nar_hash);
  } catch (const FormatError& e) {
    throw Error("cannot import '" + print(info.path) + "': " + e.what());
  }
  sync_filesystem_of(temp);
  return prepared;
}

void
LocalStore::commit(PreparedPath& prepared)
{
  if (m->commit_if_new(prepared.m_temp, prepared.m_info)) {
    prepared.m_committed = true;
  }
}

PathInfo
LocalStore::register_output(const StorePath& path, const fs::path& built,
                            const std::set<StorePath>& candidates,
                            const std::optional<StorePath>& deriver, const std::string& build_mode)
{
  canonicalise(built);
  std::set<std::string> hashes = {std::string(path.hash_part())};
  for (const auto& c : candidates) {
    hashes.insert(std::string(c.hash_part()));
  }
  HashSink hash;
  ReferenceScanner scanner(hashes);
  TeeSink both(hash, scanner);
  dump_path(built, both);
  PathInfo info(path);
  info.nar_size = hash.bytes_written();
  info.nar_hash = hash.finish();
  for (const auto& c : candidates) {
    if (scanner.found().count(std::string(c.hash_part()))) {
      info.references.insert(c);
    }
  }
  if (scanner.found().count(std::string(path.hash_part()))) {
    info.references.insert(path);
  }
  info.deriver = deriver;
  info.build_mode = build_mode;
  sync_filesystem_of(built);
  if (!m->commit_if_new(built, info)) {
    delete_path(built); // registered by another process meanwhile
    return *query_path_info(path);
  }
  return info;
}

std::optional<PathInfo>
LocalStore::query_path_info(const StorePath& path) const
{
  std::lock_guard guard(m->db_mutex);
  return m->query(path);
}

bool
LocalStore::is_valid(const StorePath& path) const
{
  std::lock_guard guard(m->db_mutex);
  return m->path_id(path).has_value();
}

std::vector<StorePath>
LocalStore::valid_paths() const
{
  std::lock_guard guard(m->db_mutex);
  Statement q(*m->db, "SELECT path FROM ValidPaths ORDER BY path");
  std::vector<StorePath> out;
  while (q.step()) {
    out.emplace_back(q.column_text(0));
  }
  return out;
}

void
LocalStore::add_signatures(const StorePath& path, const std::set<std::string>& signatures)
{
  std::lock_guard guard(m->db_mutex);
  Transaction txn(*m->db);
  auto info = m->query(path);
  if (!info) {
    throw Error("cannot sign '" + print(path) + "': it is not valid");
  }
  auto all = info->signatures;
  all.insert(signatures.begin(), signatures.end());
  Statement update(*m->db, "UPDATE ValidPaths SET sigs = ? WHERE path = ?");
  update.bind(1, join_signatures(all)).bind(2, path.base()).run();
  txn.commit();
}

std::set<StorePath>
LocalStore::closure(const std::set<StorePath>& paths) const
{
  std::set<StorePath> done;
  std::vector<StorePath> todo(paths.begin(), paths.end());
  while (!todo.empty()) {
    StorePath path = todo.back();
    todo.pop_back();
    if (done.count(path)) {
      continue;
    }
    auto info = query_path_info(path);
    if (!info) {
      throw Error("path '" + print(path) + "' is not valid");
    }
    done.insert(path);
    for (const auto& ref : info->references) {
      if (!done.count(ref)) {
        todo.push_back(ref);
      }
    }
  }
  return done;
}

std::set<StorePath>
LocalStore::referrers(const StorePath& path) const
{
  std::lock_guard guard(m->db_mutex);
  Statement q(*m->db, "SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.referrer "
                      "JOIN ValidPaths t ON t.id = r.reference WHERE t.path = ?");
  q.bind(1, path.base());
  std::set<StorePath> out;
  while (q.step()) {
    out.emplace(q.column_text(0));
  }
  return out;
}

void
LocalStore::add_root(const fs::path& link, const StorePath& path)
{
  std::error_code ec;
  fs::path absolute_link = fs::absolute(link, ec).lexically_normal();
  replace_symlink(physical_path(path), absolute_link);
  // Links inside gcroots/ are roots themselves; others are registered by an
  // indirection, named by a hash of their location.
  std::string gcroots_prefix = m->gcroots.string() + "/";
  if (!absolute_link.string().starts_with(gcroots_prefix)) {
    std::string id =
      nix32_encode(compress_hash(hash_string(HashAlgo::sha256, absolute_link.string()).bytes(), 20));
    replace_symlink(absolute_link, m->gcroots / "auto" / id);
  }
}

std::vector<std::pair<fs::path, StorePath>>
LocalStore::find_roots() const
{
  std::vector<std::pair<fs::path, StorePath>> out;
  m->collect_roots(m->gcroots, false, out, nullptr);
  return out;
}

void
LocalStore::add_root_list(const fs::path& file, const std::set<StorePath>& paths)
{
  std::error_code ec;
  fs::path absolute = fs::absolute(file, ec).lexically_normal();
  std::string text = "# kiln: store paths kept from garbage collection while this file exists\n";
  for (const auto& path : paths) {
    text += print(path) + "\n";
  }
  std::string before;
  try {
    before = read_file(absolute);
  } catch (const std::exception&) {
    // Not there yet.
  }
  // A no-op build finds its list as it left it: no write, no sync.
  if (before != text) {
    fs::create_directories(absolute.parent_path());
    write_file_atomic(absolute, text);
  }
  std::string id =
    nix32_encode(compress_hash(hash_string(HashAlgo::sha256, absolute.string()).bytes(), 20));
  replace_symlink(absolute, m->gcroots / "auto" / id);
}

std::vector<std::pair<fs::path, StorePath>>
LocalStore::find_root_lists() const
{
  std::vector<std::pair<fs::path, StorePath>> links, lists;
  m->collect_roots(m->gcroots, false, links, &lists);
  return lists;
}

void
LocalStore::flush_uses()
{
  m->flush_uses();
}

StoreStats
LocalStore::stats() const
{
  StoreStats stats;
  std::lock_guard guard(m->db_mutex);
  Statement q(*m->db, "SELECT COUNT(*), COALESCE(SUM(nar_size), 0) FROM ValidPaths");
  if (q.step()) {
    stats.paths = static_cast<size_t>(q.column_int(0));
    stats.nar_bytes = static_cast<uint64_t>(q.column_int(1));
  }
  return stats;
}

std::vector<fs::path>
LocalStore::stray_entries() const
{
  std::vector<fs::path> strays;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(m->objects, ec)) {
    bool valid = false;
    try {
      valid = is_valid(StorePath(entry.path().filename().string()));
    } catch (const FormatError&) {
      // Not even a store path name: certainly not valid.
    }
    if (!valid) {
      strays.push_back(entry.path());
    }
  }
  return strays;
}

namespace {

// The paths an --root argument keeps: what a symlink points to, or the
// paths a file lists (one a line, # comments).
std::set<StorePath>
extra_roots(const LocalStore& store, const fs::path& extra)
{
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(extra, ec))) {
    return {store.resolve(extra.string())};
  }
  if (!fs::exists(extra, ec)) {
    throw UsageError("root file '" + extra.string() + "' does not exist");
  }
  std::set<StorePath> roots;
  std::string text = read_file(extra);
  size_t line_no = 0;
  for (size_t pos = 0; pos <= text.size();) {
    size_t end = std::min(text.find('\n', pos), text.size());
    std::string line = text.substr(pos, end - pos);
    ++line_no;
    pos = end + 1;
    if (line.empty() || line[0] == '#') {
      continue;
    }
    try {
      roots.insert(store.resolve(line));
    } catch (const UsageError& e) {
      throw UsageError(extra.string() + ":" + std::to_string(line_no) + ": " + e.what());
    }
  }
  return roots;
}

} // namespace

LocalStore::Impl::GcRoots
LocalStore::Impl::gc_roots(const LocalStore& store, const GcOptions& options, GcResult& result)
{
  std::set<StorePath> roots;
  std::vector<std::pair<fs::path, StorePath>> links, lists;
  collect_roots(gcroots, false, links, &lists);
  for (const auto& [link, path] : links) {
    roots.insert(path);
  }
  for (const auto& extra : options.extra_roots) {
    roots.merge(extra_roots(store, extra));
  }
  for (const auto& name : temp_roots->others_roots()) {
    try {
      if (roots.insert(StorePath(name)).second) {
        ++result.temp_roots;
      }
    } catch (const FormatError&) {
      // Not a store path: nothing to keep.
    }
  }
  GcRoots out;
  for (const auto& root : roots) {
    if (store.is_valid(root)) {
      out.hard.insert(root);
    }
  }
  for (const auto& [file, path] : lists) {
    if (!out.hard.count(path) && store.is_valid(path)) {
      out.listed.insert(path);
    }
  }
  result.roots = out.hard.size() + out.listed.size();
  return out;
}

// Dead paths in an order that deletes referrers first, so that the closure
// invariant holds after every step, even if GC is interrupted or stopped by
// --max-freed.
std::vector<StorePath>
LocalStore::Impl::deletion_order(const LocalStore& store, const std::set<StorePath>& live)
{
  std::map<StorePath, size_t> pending; // dead referrers not deleted yet
  std::vector<StorePath> ready;
  for (const auto& path : store.valid_paths()) {
    if (!live.count(path)) {
      auto refs = store.referrers(path);
      refs.erase(path);
      pending[path] = refs.size();
      if (refs.empty()) {
        ready.push_back(path);
      }
    }
  }
  std::vector<StorePath> order;
  while (!ready.empty()) {
    StorePath path = ready.back();
    ready.pop_back();
    order.push_back(path);
    auto info = store.query_path_info(path);
    for (const auto& ref : info->references) {
      if (ref != path && pending.count(ref) && --pending[ref] == 0) {
        ready.push_back(ref);
      }
    }
  }
  return order;
}

// With the GC lock held exclusively nothing is being added: whatever is in
// the objects folder but not valid is debris of a crash, and so is every
// temporary whose owner is gone and every lock file nobody holds.
void
LocalStore::Impl::remove_debris(const LocalStore& store, GcResult& result)
{
  for (const auto& stray : store.stray_entries()) {
    result.bytes_freed += remove_from_disk(stray);
    ++result.strays_removed;
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(tmp, ec)) {
    pid_t owner = detail::temp_owner(entry.path().filename().string());
    if (owner != 0 && temp_roots->owner_alive(owner)) {
      continue;
    }
    result.bytes_freed += tree_size(entry.path());
    delete_path(entry.path());
  }
  for (const auto& entry : fs::directory_iterator(locks, ec)) {
    if (entry.path().filename() != "gc.lock") {
      FileLock::remove_if_unused(entry.path());
    }
  }
}

// Under the size cap: what no root keeps before what only a root list
// keeps, each least recently used first. A path counts as used as recently
// as its most recent dead referrer, which must go before it.
void
LocalStore::Impl::order_for_size_cap(const LocalStore& store, const std::set<StorePath>& listed_live,
                                     std::vector<StorePath>& order)
{
  std::map<StorePath, int64_t> used;
  {
    std::lock_guard guard(db_mutex);
    Statement q(*db, "SELECT v.path, u.time FROM LastUse u JOIN ValidPaths v ON v.id = u.path");
    while (q.step()) {
      used[StorePath(q.column_text(0))] = q.column_int(1);
    }
  }
  std::set<StorePath> dead(order.begin(), order.end());
  struct Key
  {
    bool listed;
    int64_t used;
    size_t position;   // in `order`, which deletes referrers first
  };
  std::map<StorePath, Key> keys;
  for (size_t i = 0; i < order.size(); ++i) {
    const StorePath& path = order[i];
    Key key{listed_live.count(path) > 0, used.count(path) ? used[path] : 0, i};
    for (const auto& referrer : store.referrers(path)) {
      if (referrer != path && dead.count(referrer)) {
        key.listed = key.listed || keys.at(referrer).listed;
        key.used = std::max(key.used, keys.at(referrer).used);
      }
    }
    keys.emplace(path, key);
  }
  std::stable_sort(order.begin(), order.end(), [&](const StorePath& a, const StorePath& b) {
    const Key& x = keys.at(a);
    const Key& y = keys.at(b);
    return std::tie(x.listed, x.used, x.position) < std::tie(y.listed, y.used, y.position);
  });
}

GcResult
LocalStore::collect_garbage(const GcOptions& options)
{
  GcResult result;
  m->flush_uses();
  auto gc = m->gc_lock(LockMode::exclusive, options.timeout);
  auto roots = m->gc_roots(*this, options, result);
  std::set<StorePath> hard_live = closure(roots.hard);
  std::set<StorePath> all_roots = roots.hard;
  all_roots.insert(roots.listed.begin(), roots.listed.end());
  std::set<StorePath> live = closure(all_roots);
  uint64_t over = 0;
  std::vector<StorePath> order;
  if (options.max_size) {
    // Only as much as brings the store under the cap, in the cap's order;
    // root lists give way to it, nothing else does.
    uint64_t size = stats().nar_bytes;
    over = size > *options.max_size ? size - *options.max_size : 0;
    std::set<StorePath> listed_live;
    std::set_difference(live.begin(), live.end(), hard_live.begin(), hard_live.end(),
                        std::inserter(listed_live, listed_live.end()));
    order = m->deletion_order(*this, hard_live);
    m->order_for_size_cap(*this, listed_live, order);
    live = hard_live;
  } else {
    order = m->deletion_order(*this, live);
  }
  result.live = live.size();
  uint64_t freed_nar = 0;
  for (const auto& path : order) {
    if ((options.max_freed && result.bytes_freed >= *options.max_freed) ||
        (options.max_size && freed_nar >= over)) {
      break;
    }
    auto info = query_path_info(path);
    freed_nar += info ? info->nar_size : 0;
    result.deleted.push_back(path);
    if (options.dry_run) {
      result.bytes_freed += tree_size(physical_path(path));
      continue;
    }
    {
      std::lock_guard guard(m->db_mutex);
      m->invalidate({path});
    }
    result.bytes_freed += m->remove_from_disk(physical_path(path));
  }
  if (!options.dry_run) {
    m->remove_debris(*this, result);
  }
  return result;
}

VerifyResult
LocalStore::verify(const VerifyOptions& options)
{
  VerifyResult result;
  // Shared: additions may go on, but nothing valid disappears under us.
  auto gc = m->gc_lock(LockMode::shared);
  std::vector<StorePath> corrupt;
  for (const auto& path : valid_paths()) {
    ++result.checked;
    auto info = query_path_info(path);
    if (!info) {
      continue;
    }
    fs::path physical = physical_path(path);
    std::error_code ec;
    if (!fs::exists(fs::symlink_status(physical, ec))) {
      result.problems.push_back({VerifyProblem::Kind::missing, print(path),
                                 "registered as valid but missing from " + m->objects.string()});
      corrupt.push_back(path);
      continue;
    }
    if (info->ca && info->ca->method == ContentAddress::Method::recursive) {
      if (content_address_path(m->store_dir, *info) != path ||
          !(info->ca->hash == info->nar_hash)) {
        result.problems.push_back({VerifyProblem::Kind::bad_content_address, print(path),
                                   "its content address " + info->ca->to_string() +
                                     " does not match the path"});
      }
    }
    if (options.check_contents) {
      HashSink hash(info->nar_hash.algo());
      try {
        dump_path(physical, hash);
      } catch (const Error& e) {
        result.problems.push_back({VerifyProblem::Kind::corrupt, print(path), e.what()});
        corrupt.push_back(path);
        continue;
      }
      uint64_t size = hash.bytes_written();
      Hash got = hash.finish();
      if (!(got == info->nar_hash) || size != info->nar_size) {
        result.problems.push_back(
          {VerifyProblem::Kind::corrupt, print(path),
           "contents changed: NAR hash " + got.to_string(HashFormat::nix32, true) + " (" +
             std::to_string(size) + " bytes), expected " +
             info->nar_hash.to_string(HashFormat::nix32, true) + " (" +
             std::to_string(info->nar_size) + " bytes)"});
        corrupt.push_back(path);
        continue;
      }
    }
    std::string metadata = check_metadata(physical, options.repair);
    if (!metadata.empty()) {
      result.problems.push_back(
        {VerifyProblem::Kind::wrong_metadata, print(path), metadata, options.repair});
    }
  }

  for (const auto& stray : stray_entries()) {
    result.problems.push_back({VerifyProblem::Kind::stray, stray.string(),
                               "on disk but not valid (left by an interrupted addition or "
                               "removal; `kiln gc` deletes it)"});
  }

  if (options.repair && options.refetch) {
    m->refetch_corrupt(*this, options, corrupt, result);
  }
  if (options.remove_corrupt && !corrupt.empty()) {
    m->remove_corrupt(*this, corrupt, result);
  }
  return result;
}

namespace {

// The problem reported for `printed` (a corrupt or missing path).
VerifyProblem*
problem_of(VerifyResult& result, const std::string& printed)
{
  for (auto& problem : result.problems) {
    if (problem.path == printed && (problem.kind == VerifyProblem::Kind::missing ||
                                    problem.kind == VerifyProblem::Kind::corrupt)) {
      return &problem;
    }
  }
  return nullptr;
}

} // namespace

// --repair: fetch each corrupt path again, as `nix store repair` does; what
// no cache has stays corrupt (and in `corrupt`).
void
LocalStore::Impl::refetch_corrupt(LocalStore& store, const VerifyOptions& options,
                                  std::vector<StorePath>& corrupt, VerifyResult& result)
{
  std::vector<StorePath> left;
  for (const auto& path : corrupt) {
    VerifyProblem* problem = problem_of(result, store.print(path));
    try {
      auto info = store.query_path_info(path);
      auto prepared = info ? options.refetch(*info) : nullptr;
      if (!prepared) {
        problem->detail += " (no trusted cache has it)";
        left.push_back(path);
        continue;
      }
      store.replace_contents(*prepared);
      problem->fixed = true;
      problem->detail += " (fetched again from a cache)";
    } catch (const std::exception& e) {
      problem->detail += " (fetching it again failed: " + std::string(e.what()) + ")";
      left.push_back(path);
    }
  }
  corrupt = std::move(left);
}

// --remove-corrupt: a corrupt path goes with every path that references it,
// transitively (their closures are incomplete without it), each reported.
void
LocalStore::Impl::remove_corrupt(LocalStore& store, const std::vector<StorePath>& corrupt,
                                 VerifyResult& result)
{
  std::map<StorePath, StorePath> doomed; // path -> the corrupt path it goes with
  std::vector<std::pair<StorePath, StorePath>> todo;
  for (const auto& path : corrupt) {
    todo.emplace_back(path, path);
  }
  while (!todo.empty()) {
    auto [path, cause] = todo.back();
    todo.pop_back();
    if (!doomed.emplace(path, cause).second) {
      continue;
    }
    for (const auto& referrer : store.referrers(path)) {
      todo.emplace_back(referrer, cause);
    }
  }
  std::vector<StorePath> list;
  for (const auto& [path, cause] : doomed) {
    list.push_back(path);
  }
  {
    std::lock_guard guard(db_mutex);
    invalidate(list);
  }
  for (const auto& [path, cause] : doomed) {
    std::string removed = "removed";
    try {
      remove_from_disk(store.physical_path(path));
    } catch (const std::exception& e) {
      removed = "invalidated, but not deleted (" + std::string(e.what()) + "; `kiln gc` will)";
    }
    if (VerifyProblem* problem = problem_of(result, store.print(path))) {
      problem->fixed = true;
      problem->detail += " (" + removed + ")";
      continue;
    }
    result.problems.push_back({VerifyProblem::Kind::dependent, store.print(path),
                               "references the corrupt '" + store.print(cause) + "' (" +
                                 removed + " with it)",
                               true});
  }
}

} // namespace kiln
