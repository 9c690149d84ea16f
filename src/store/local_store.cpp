// LocalStore's core: opening a store (its folders and database), the locks
// and temporaries every operation uses, where things live (temporary
// folders, build logs, state), claims, and the database of valid paths:
// querying, registering and invalidating them.
//
// The other parts of LocalStore (local_store_impl.hpp lists them):
// local_store_add.cpp, local_store_roots.cpp, local_store_gc.cpp and
// local_store_verify.cpp.
#include "local_store_impl.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/strings.hpp>

#include <unistd.h>

#include <atomic>
#include <ctime>
#include <iostream>
#include <random>
#include <set>

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
  build_mode        TEXT,                  -- how kiln built it: namespaces, clean-env
  local_only        INTEGER NOT NULL DEFAULT 0 -- 1: this machine's alone (built
                                           -- incrementally, or from such a path): never pushed
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

LocalStore::Impl::Impl(const LocalStoreConfig& config)
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
  open_database();
}

// Open (or create) db/db.sqlite, bring its schema up to date, and check
// that it was made for this store directory.
void
LocalStore::Impl::open_database()
{
  db = std::make_unique<Database>(root / "db" / "db.sqlite");
  Transaction txn(*db);
  db->exec(k_schema);
  // Stores made before a column existed get it.
  std::set<std::string> columns;
  Statement table_info(*db, "PRAGMA table_info(ValidPaths)");
  while (table_info.step()) {
    columns.insert(table_info.column_text(1));
  }
  if (!columns.count("build_mode")) {
    db->exec("ALTER TABLE ValidPaths ADD COLUMN build_mode TEXT");
  }
  if (!columns.count("local_only")) {
    db->exec("ALTER TABLE ValidPaths ADD COLUMN local_only INTEGER NOT NULL DEFAULT 0");
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

LockWait
LocalStore::Impl::lock_wait(std::string what, std::chrono::milliseconds announce_after) const
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
LocalStore::Impl::gc_lock(LockMode mode, std::optional<std::chrono::seconds> timeout) const
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
LocalStore::Impl::path_lock(const StorePath& path) const
{
  return FileLock(locks / (std::string(path.hash_part()) + ".lock"), LockMode::exclusive,
                  lock_wait("the lock of '" + store_dir.print(path) + "'", std::chrono::seconds(1)));
}

// Long: held while one process builds or substitutes the path.
FileLock
LocalStore::Impl::claim_lock(const StorePath& path) const
{
  return FileLock(locks / (std::string(path.hash_part()) + ".claim"), LockMode::exclusive,
                  lock_wait("another kiln building " + store_dir.print(path),
                            std::chrono::milliseconds(0)));
}

// The shared GC lock, one per process at a time: every addition holds it
// (so GC never removes a temporary being filled), and a process holding
// many prepared objects needs only one descriptor for them.
std::shared_ptr<FileLock>
LocalStore::Impl::shared_gc_lock()
{
  std::lock_guard guard(lock_mutex);
  auto lock = shared_gc.lock();
  if (!lock) {
    lock = std::make_shared<FileLock>(gc_lock(LockMode::shared));
    shared_gc = lock;
  }
  return lock;
}

// A name under tmp/ for a temporary that is debris if this process dies
// (used while holding the GC lock, or deleted at once).
fs::path
LocalStore::Impl::debris_path(const std::string& purpose) const
{
  static std::atomic<unsigned> counter{0};
  std::random_device rd;
  return tmp / (purpose + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) +
                "-" + std::to_string(rd() % 1000000));
}

// A name under tmp/ for a temporary of this process, which GC leaves alone
// while the process lives: tmp/<pid>-<purpose>-<n>.
fs::path
LocalStore::Impl::owned_temp_path(const std::string& purpose)
{
  become_owner();
  static std::atomic<unsigned> counter{0};
  return tmp / (std::to_string(::getpid()) + "-" + purpose + "-" + std::to_string(counter++));
}

std::optional<int64_t>
LocalStore::Impl::path_id(const StorePath& path) const
{
  Statement q(*db, "SELECT id FROM ValidPaths WHERE path = ?");
  q.bind(1, path.base());
  if (q.step()) {
    return q.column_int(0);
  }
  return std::nullopt;
}

std::optional<PathInfo>
LocalStore::Impl::query(const StorePath& path) const
{
  Statement q(*db, "SELECT id, nar_hash, nar_size, deriver, registration_time, ca, sigs, "
                   "build_mode, local_only FROM ValidPaths WHERE path = ?");
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
  info.local_only = q.column_int(8) != 0;
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
LocalStore::Impl::require_valid_references(const PathInfo& info, const std::string& context) const
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
LocalStore::Impl::register_path(const PathInfo& info)
{
  Transaction txn(*db);
  insert_path(info);
  txn.commit();
}

void
LocalStore::Impl::insert_path(const PathInfo& info)
{
  Statement insert(*db, "INSERT INTO ValidPaths (path, nar_hash, nar_size, deriver, "
                        "registration_time, ca, sigs, build_mode, local_only) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
  insert.bind(1, info.path.base())
    .bind(2, info.nar_hash.to_string(HashFormat::nix32, true))
    .bind(3, static_cast<int64_t>(info.nar_size))
    .bind_optional(4, info.deriver ? std::optional<std::string>(info.deriver->base()) : std::nullopt)
    .bind(5, static_cast<int64_t>(std::time(nullptr)))
    .bind_optional(6, info.ca ? std::optional<std::string>(info.ca->to_string()) : std::nullopt)
    .bind(7, join_signatures(info.signatures))
    .bind_optional(8, info.build_mode.empty() ? std::nullopt
                                              : std::optional<std::string>(info.build_mode))
    .bind(9, static_cast<int64_t>(info.local_only ? 1 : 0));
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
}

// Drop `paths` from the database in one transaction. Every referrer of
// each must be among them (or already invalid): all their references go
// first, so their order does not matter.
void
LocalStore::Impl::invalidate(const std::vector<StorePath>& paths)
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

// Remove an invalid object from disk: rename it away first so that a
// half-deleted tree never sits under its store name.
uint64_t
LocalStore::Impl::remove_from_disk(const fs::path& object)
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

} // namespace kiln
