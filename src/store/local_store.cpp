#include "database.hpp"

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
#include <map>
#include <mutex>
#include <random>

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

  Impl(const LocalStoreConfig& config)
    : store_dir(config.store_dir),
      root(fs::absolute(config.root).lexically_normal())
  {
    if (root.has_filename() == false && root.has_parent_path() && root != root.root_path()) {
      root = root.parent_path();
    }
    objects = root / "store";
    tmp = root / "tmp";
    locks = root / "locks";
    gcroots = root / "gcroots";
    for (const auto& dir : {root, objects, tmp, locks, gcroots, gcroots / "auto", root / "db"}) {
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

  FileLock
  gc_lock(LockMode mode) const
  {
    return FileLock(locks / "gc.lock", mode);
  }

  FileLock
  path_lock(const StorePath& path) const
  {
    return FileLock(locks / (std::string(path.hash_part()) + ".lock"), LockMode::exclusive);
  }

  fs::path
  new_temp_path(const std::string& purpose) const
  {
    static std::atomic<unsigned> counter{0};
    std::random_device rd;
    return tmp / (purpose + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) +
                  "-" + std::to_string(rd() % 1000000));
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
  // The caller holds the shared GC lock.
  void
  commit_temp(const fs::path& temp, const PathInfo& info)
  {
    fs::path final_path = objects / info.path.base();
    if (::access(final_path.c_str(), F_OK) == 0 || errno != ENOENT) {
      // Left over by a killed process: it was never registered.
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
    register_path(info);
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
  collect_roots(const fs::path& dir, bool is_auto,
                std::vector<std::pair<fs::path, StorePath>>& out) const
  {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      auto status = entry.symlink_status();
      if (fs::is_directory(status)) {
        collect_roots(entry.path(), is_auto || entry.path().filename() == "auto", out);
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
      } else if (is_auto && !fs::exists(indirect_status)) {
        fs::remove(entry.path(), ec);
      }
    }
  }

  void
  invalidate(const std::vector<StorePath>& paths)
  {
    Transaction txn(*db);
    Statement id_of(*db, "SELECT id FROM ValidPaths WHERE path = ?");
    Statement drop_refs(*db, "DELETE FROM Refs WHERE referrer = ?");
    Statement drop(*db, "DELETE FROM ValidPaths WHERE id = ?");
    for (const auto& path : paths) {
      id_of.bind(1, path.base());
      if (!id_of.step()) {
        id_of.reset();
        continue;
      }
      int64_t id = id_of.column_int(0);
      id_of.reset();
      drop_refs.bind(1, id).run();
      drop.bind(1, id).run();
    }
    txn.commit();
  }

  // Remove an invalid object from disk: rename it away first so that a
  // half-deleted tree never sits under its store name.
  uint64_t
  remove_from_disk(const fs::path& object)
  {
    uint64_t size = tree_size(object);
    fs::path trash = new_temp_path("trash");
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

LocalStore::~LocalStore() = default;

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
  auto gc = m->shared_gc_lock();
  if (!is_valid(path)) {
    fs::path temp = m->new_temp_path("add");
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
      auto lock = m->path_lock(path);
      if (!is_valid(path)) {
        PathInfo info(path);
        info.nar_hash = ca.hash;
        info.nar_size = nar_size;
        info.ca = ca;
        sync_filesystem_of(temp);
        std::lock_guard guard(m->db_mutex);
        m->commit_temp(temp, info);
      }
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

PreparedPath::PreparedPath(PathInfo info, fs::path temp, std::shared_ptr<void> gc_lock)
  : m_info(std::move(info)), m_temp(std::move(temp)), m_gc_lock(std::move(gc_lock))
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
  auto gc = m->shared_gc_lock();
  fs::path temp = m->new_temp_path("import");
  std::unique_ptr<PreparedPath> prepared(new PreparedPath(info, temp, gc));
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
  const PathInfo& info = prepared.m_info;
  {
    std::lock_guard guard(m->db_mutex);
    m->require_valid_references(info, "cannot add '" + print(info.path) + "'");
  }
  if (is_valid(info.path)) {
    return;
  }
  auto lock = m->path_lock(info.path);
  if (is_valid(info.path)) {
    return;
  }
  std::lock_guard guard(m->db_mutex);
  m->commit_temp(prepared.m_temp, info);
  prepared.m_committed = true;
}

PathInfo
LocalStore::register_output(const StorePath& path, const fs::path& built,
                            const std::set<StorePath>& candidates,
                            const std::optional<StorePath>& deriver, const std::string& build_mode)
{
  auto gc = m->shared_gc_lock();
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
  {
    std::lock_guard guard(m->db_mutex);
    m->require_valid_references(info, "cannot register output '" + print(path) + "'");
  }
  auto lock = m->path_lock(path);
  if (is_valid(path)) {
    delete_path(built);
    return *query_path_info(path);
  }
  sync_filesystem_of(built);
  std::lock_guard guard(m->db_mutex);
  m->commit_temp(built, info);
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
  m->collect_roots(m->gcroots, false, out);
  return out;
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

GcResult
LocalStore::collect_garbage(const GcOptions& options)
{
  GcResult result;
  auto gc = m->gc_lock(LockMode::exclusive);

  std::set<StorePath> roots;
  for (const auto& [link, path] : find_roots()) {
    roots.insert(path);
  }
  for (const auto& extra : options.extra_roots) {
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(extra, ec))) {
      roots.insert(resolve(extra.string()));
      continue;
    }
    if (!fs::exists(extra, ec)) {
      throw UsageError("root file '" + extra.string() + "' does not exist");
    }
    // A file listing store paths, one per line.
    std::string text = read_file(extra);
    size_t line_no = 0;
    size_t pos = 0;
    while (pos <= text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) {
        end = text.size();
      }
      std::string line = text.substr(pos, end - pos);
      ++line_no;
      pos = end + 1;
      if (line.empty() || line[0] == '#') {
        continue;
      }
      try {
        roots.insert(resolve(line));
      } catch (const UsageError& e) {
        throw UsageError(extra.string() + ":" + std::to_string(line_no) + ": " + e.what());
      }
    }
  }
  std::set<StorePath> live_roots;
  for (const auto& root : roots) {
    if (is_valid(root)) {
      live_roots.insert(root);
    }
  }
  result.roots = live_roots.size();
  std::set<StorePath> live = closure(live_roots);
  result.live = live.size();

  // Dead paths, deleted referrers first so that the closure invariant holds
  // after every step, even if GC is interrupted or stopped by --max-freed.
  std::map<StorePath, std::set<StorePath>> dead_referrers;
  for (const auto& path : valid_paths()) {
    if (!live.count(path)) {
      auto refs = referrers(path);
      refs.erase(path);
      dead_referrers[path] = refs;
    }
  }
  std::vector<StorePath> order;
  std::set<StorePath> placed;
  std::vector<StorePath> ready;
  for (const auto& [path, refs] : dead_referrers) {
    if (refs.empty()) {
      ready.push_back(path);
    }
  }
  std::map<StorePath, size_t> pending;
  for (const auto& [path, refs] : dead_referrers) {
    pending[path] = refs.size();
  }
  while (!ready.empty()) {
    StorePath path = ready.back();
    ready.pop_back();
    order.push_back(path);
    auto info = query_path_info(path);
    for (const auto& ref : info->references) {
      if (ref != path && pending.count(ref) && --pending[ref] == 0) {
        ready.push_back(ref);
      }
    }
  }

  for (const auto& path : order) {
    if (options.max_freed && result.bytes_freed >= *options.max_freed) {
      break;
    }
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
    // Nothing is being added (we hold the GC lock exclusively): whatever is
    // on disk but not valid, and every temporary, is debris of a crash.
    std::error_code ec;
    for (const auto& stray : stray_entries()) {
      result.bytes_freed += m->remove_from_disk(stray);
      ++result.strays_removed;
    }
    for (const auto& entry : fs::directory_iterator(m->tmp, ec)) {
      result.bytes_freed += tree_size(entry.path());
      delete_path(entry.path());
    }
    for (const auto& entry : fs::directory_iterator(m->locks, ec)) {
      if (entry.path().filename() != "gc.lock") {
        fs::remove(entry.path(), ec);
      }
    }
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

  if (options.remove_corrupt && !corrupt.empty()) {
    // Removing a path breaks every closure containing it: remove those too.
    std::set<StorePath> doomed;
    std::vector<StorePath> todo = corrupt;
    while (!todo.empty()) {
      StorePath path = todo.back();
      todo.pop_back();
      if (!doomed.insert(path).second) {
        continue;
      }
      for (const auto& referrer : referrers(path)) {
        todo.push_back(referrer);
      }
    }
    std::vector<StorePath> list(doomed.begin(), doomed.end());
    {
      std::lock_guard guard(m->db_mutex);
      m->invalidate(list);
    }
    for (const auto& path : list) {
      m->remove_from_disk(physical_path(path));
    }
    for (auto& problem : result.problems) {
      if (problem.kind == VerifyProblem::Kind::missing ||
          problem.kind == VerifyProblem::Kind::corrupt) {
        problem.fixed = true;
        problem.detail += " (removed, with " + std::to_string(list.size() - 1) +
                          " paths that depended on it or others)";
      }
    }
  }
  return result;
}

} // namespace kiln
