#include "temp_roots.hpp"

#include <kiln/util/error.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <map>

namespace kiln::detail {

namespace fs = std::filesystem;

namespace {

// Is the roots file at `path` held by a live process? A file we can lock
// ourselves (even shared) has no owner.
bool
held_by_someone(const fs::path& path)
{
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return false;
  }
  if (::flock(fd.get(), LOCK_SH | LOCK_NB) == 0) {
    return false;
  }
  return errno == EWOULDBLOCK;
}

} // namespace

pid_t
temp_owner(const std::string& name)
{
  pid_t pid = 0;
  auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), pid);
  if (ec != std::errc() || end == name.data() || end == name.data() + name.size() || *end != '-') {
    return 0;
  }
  return pid;
}

std::shared_ptr<TempRoots>
TempRoots::of(const fs::path& dir)
{
  static std::mutex mutex;
  static std::map<fs::path, std::weak_ptr<TempRoots>> by_dir;
  std::lock_guard guard(mutex);
  auto& slot = by_dir[dir];
  auto roots = slot.lock();
  if (!roots) {
    roots = std::make_shared<TempRoots>(dir);
    slot = roots;
  }
  return roots;
}

TempRoots::TempRoots(fs::path dir) : m_dir(std::move(dir))
{
}

TempRoots::~TempRoots()
{
  if (m_own) {
    ::unlink((m_dir / std::to_string(::getpid())).c_str()); // while still holding it
  }
}

bool
TempRoots::ensure_owner(const std::function<void()>& on_first)
{
  std::lock_guard guard(m_mutex);
  if (m_own) {
    return false;
  }
  fs::path file = m_dir / std::to_string(::getpid());
  m_own.emplace(file, LockMode::exclusive);
  // What a dead process of the same pid wrote is no root of ours.
  if (::ftruncate(m_own->fd(), 0) != 0) {
    throw_errno("emptying the temporary roots file '" + file.string() + "'");
  }
  // Still under the mutex: another thread's first temporary must not be
  // made before a dead namesake's are gone, or it would go with them.
  if (on_first) {
    on_first();
  }
  return true;
}

void
TempRoots::add(const std::vector<std::string>& names)
{
  ensure_owner();
  std::lock_guard guard(m_mutex);
  std::string lines;
  for (const auto& name : names) {
    if (m_recorded.insert(name).second) {
      lines += name + "\n";
    }
  }
  if (lines.empty()) {
    return;
  }
  if (::lseek(m_own->fd(), 0, SEEK_END) < 0) {
    throw_errno("appending to the temporary roots file in '" + m_dir.string() + "'");
  }
  write_all(m_own->fd(), lines, "the temporary roots file in '" + m_dir.string() + "'");
}

bool
TempRoots::owner_alive(pid_t pid) const
{
  return pid == ::getpid() || held_by_someone(m_dir / std::to_string(pid));
}

std::set<std::string>
TempRoots::others_roots()
{
  std::set<std::string> roots;
  std::string own = std::to_string(::getpid());
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(m_dir, ec)) {
    std::string name = entry.path().filename().string();
    if (name == own) {
      continue;
    }
    if (!held_by_someone(entry.path())) {
      fs::remove(entry.path(), ec); // its process is gone, and its roots with it
      continue;
    }
    std::string text;
    try {
      text = read_file(entry.path());
    } catch (const SystemError& e) {
      if (e.error_number() != ENOENT) {
        throw;
      }
      continue; // its process ended meanwhile and removed it: its roots went with it
    }
    size_t start = 0;
    for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
      roots.insert(text.substr(start, nl - start));
    }
  }
  return roots;
}

} // namespace kiln::detail
