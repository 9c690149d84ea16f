// Verifying a LocalStore: every valid path is on disk, matches its content
// address, (with check_contents) still hashes to its NAR hash, and has the
// canonical metadata; entries that are not valid are reported as strays.
// Repair: metadata restored in place, corrupt paths fetched again
// (replace_contents) or removed with everything referencing them.
#include "local_store_impl.hpp"

#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>

#include <fcntl.h>
#include <sys/stat.h>

#include <cstdio>
#include <map>
#include <mutex>

namespace kiln {

namespace fs = std::filesystem;

namespace {

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

} // namespace

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
