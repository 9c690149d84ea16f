// Adding objects to a LocalStore: a folder (add_path), a text (add_text), a
// NAR from elsewhere (add_nar, or prepare_nar + commit), and what a build
// wrote (register_output: made canonical, its references scanned). Each is
// written under tmp/, synced, renamed into store/ and registered.
#include "local_store_impl.hpp"

#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/strings.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <stdexcept>

namespace kiln {

namespace fs = std::filesystem;

namespace {

// How what lies at `path` is made durable before the database says it is
// valid. A small tree (a build's or a download's few files) is fsynced file
// by file: only kiln's own data is waited for. A large one (a source tree)
// takes one syncfs, cheaper than thousands of fsyncs but a wait for every
// writer of the file system.
struct SyncPlan
{
  fs::path path;
  bool nothing = false;              // a symlink at the top: its folder is synced by the caller
  bool whole_file_system = false;    // large: syncfs
  std::vector<fs::path> entries;     // small: files first, then folders, deepest first
};

SyncPlan
plan_sync(const fs::path& path)
{
  constexpr size_t k_fsync_limit = 64;
  SyncPlan plan;
  plan.path = path;
  std::error_code ec;
  auto status = fs::symlink_status(path, ec);
  if (ec || fs::is_symlink(status)) {
    plan.nothing = true;
    return plan;
  }
  plan.entries.push_back(path);
  if (fs::is_directory(status)) {
    for (auto it = fs::recursive_directory_iterator(path, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (plan.entries.size() > k_fsync_limit) {
        plan.whole_file_system = true;
        break;
      }
      if (!it->is_symlink(ec)) {
        plan.entries.push_back(it->path());
      }
    }
  }
  if (ec) {
    plan.whole_file_system = true;
  }
  if (plan.whole_file_system) {
    plan.entries.clear();
    return plan;
  }
  std::stable_partition(plan.entries.begin(), plan.entries.end(),
                        [](const fs::path& p) { return !fs::is_directory(fs::symlink_status(p)); });
  auto folders = std::find_if(plan.entries.begin(), plan.entries.end(), [](const fs::path& p) {
    return fs::is_directory(fs::symlink_status(p));
  });
  std::reverse(folders, plan.entries.end());
  return plan;
}

// Start writing a small tree's files to disk without waiting, so that the
// disk works while the output is hashed and scanned and sync() waits for
// less (a linked binary is tens of MB). Only a hint: errors come at sync().
void
start_writeback(const SyncPlan& plan)
{
  for (const auto& entry : plan.entries) {
    UniqueFd fd(::open(entry.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd) {
      ::sync_file_range(fd.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
    }
  }
}

void
sync(const SyncPlan& plan)
{
  if (plan.nothing) {
    return;
  }
  if (!plan.whole_file_system) {
    for (const auto& entry : plan.entries) {
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
  UniqueFd fd(::open(plan.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_DIRECTORY));
  if (!fd) {
    fd.reset(::open(plan.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  }
  if (!fd) {
    return;
  }
  if (::syncfs(fd.get()) != 0) {
    throw_errno("syncing '" + plan.path.string() + "'");
  }
}

void
sync_filesystem_of(const fs::path& path)
{
  sync(plan_sync(path));
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

// Move a finished, synced temporary object into place and register it.
// The caller holds the shared GC lock and the path's lock.
void
LocalStore::Impl::commit_temp(const fs::path& temp, const PathInfo& info)
{
  move_into_store(temp, info.path);
  register_path(info);
}

// Rename a temporary object to its place in the objects folder (whatever
// lies there is debris of a killed process: never registered).
void
LocalStore::Impl::move_into_store(const fs::path& temp, const StorePath& path, bool sync)
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
  if (sync) {
    fsync_directory(objects);
  }
}

// Make the finished, synced temporary `temp` the valid path `info.path`,
// unless that is valid already (then false). Its references must be
// valid. The path becomes a temporary root either way.
bool
LocalStore::Impl::commit_if_new(const fs::path& temp, const PathInfo& info)
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
  // case for a build tool) then costs one read and no writes. A caller that
  // knows the path (from digests it remembers) spares that read: the copy's
  // own hash must then give the same path.
  ContentAddress ca{ContentAddress::Method::recursive, Hash()};
  std::optional<StorePath> known = options.expected;
  if (known && known->name() != name) {
    throw std::invalid_argument("add_path: '" + print(*known) + "' is not named '" + name + "'");
  }
  if (!known) {
    HashSink hash;
    dump_path(source, hash, options.filter);
    ca.hash = hash.finish();
  }
  StorePath path = known ? *known : m->store_dir.make_fixed_output_path(name, ca);
  m->add_temp_roots({path});
  if (!is_valid(path)) {
    fs::path temp = m->owned_temp_path("add");
    try {
      // Copy while hashing again, so that what is stored is exactly what was
      // hashed, even if the source changes meanwhile.
      HashSink hash;
      NarWriter nar(hash);
      Restorer copy(temp, RestoreSync::start);
      TeeFsObjectSink both(nar, copy);
      walk_path(source, both, options.filter);
      nar.finish();
      uint64_t nar_size = hash.bytes_written();
      ca.hash = hash.finish();
      if (m->store_dir.make_fixed_output_path(name, ca) != path) {
        throw Error("'" + source.string() + "' changed while it was being added (its copy is not '" +
                    print(path) + "'); try again");
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
    restore_nar(checked, temp, RestoreSync::start);
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

void
LocalStore::commit(const std::vector<PreparedPath*>& batch)
{
  if (batch.empty()) {
    return;
  }
  std::set<StorePath> paths;
  for (const PreparedPath* p : batch) {
    paths.insert(p->m_info.path);
  }
  auto gc = m->shared_gc_lock();
  m->add_temp_roots(paths);
  // Each path's lock, in one order (std::set's) for every process.
  std::vector<FileLock> locks;
  locks.reserve(paths.size());
  for (const auto& path : paths) {
    locks.push_back(m->path_lock(path));
  }
  std::lock_guard guard(m->db_mutex);
  std::set<StorePath> added;
  std::vector<PreparedPath*> todo;
  for (PreparedPath* p : batch) {
    const PathInfo& info = p->m_info;
    if (added.count(info.path) || m->path_id(info.path)) {
      continue;   // valid already (another process), or twice in the batch
    }
    for (const auto& ref : info.references) {
      if (ref != info.path && !added.count(ref) && !m->path_id(ref)) {
        throw Error("cannot add '" + m->store_dir.print(info.path) + "': its reference '" +
                    m->store_dir.print(ref) + "' is not valid");
      }
    }
    added.insert(info.path);
    todo.push_back(p);
  }
  for (PreparedPath* p : todo) {
    m->move_into_store(p->m_temp, p->m_info.path, false);
  }
  fsync_directory(m->objects);
  detail::Transaction txn(*m->db);
  for (PreparedPath* p : todo) {
    m->insert_path(p->m_info);
  }
  txn.commit();
  for (PreparedPath* p : todo) {
    p->m_committed = true;
  }
}

PathInfo
LocalStore::register_output(const StorePath& path, const fs::path& built,
                            const std::set<StorePath>& candidates,
                            const std::optional<StorePath>& deriver, const std::string& build_mode,
                            bool local_only)
{
  canonicalise(built);
  SyncPlan durable = plan_sync(built);
  start_writeback(durable);
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
  info.local_only = local_only;
  sync(durable);
  if (!m->commit_if_new(built, info)) {
    delete_path(built); // registered by another process meanwhile
    return *query_path_info(path);
  }
  return info;
}

} // namespace kiln
