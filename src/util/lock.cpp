#include <kiln/util/error.hpp>
#include <kiln/util/lock.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

namespace kiln {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

UniqueFd
open_lock_file(const fs::path& path)
{
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) {
    throw_errno("opening lock file '" + path.string() + "'");
  }
  return fd;
}

int
flock_op(LockMode mode)
{
  return mode == LockMode::shared ? LOCK_SH : LOCK_EX;
}

// A lock taken on a file that was deleted meanwhile guards nothing: the
// next process opens a new file of that name.
bool
is_unlinked(int fd, const fs::path& path)
{
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    throw_errno("examining lock file '" + path.string() + "'");
  }
  return st.st_nlink == 0;
}

// One attempt: a locked descriptor, or none if someone else holds the lock.
UniqueFd
attempt(const fs::path& path, LockMode mode, bool block)
{
  while (true) {
    UniqueFd fd = open_lock_file(path);
    int op = flock_op(mode) | (block ? 0 : LOCK_NB);
    int r;
    while ((r = ::flock(fd.get(), op)) != 0 && errno == EINTR) {
    }
    if (r != 0) {
      if (errno == EWOULDBLOCK) {
        return UniqueFd();
      }
      throw_errno("locking '" + path.string() + "'");
    }
    if (!is_unlinked(fd.get(), path)) {
      return fd;
    }
  }
}

} // namespace

FileLock::FileLock(const fs::path& path, LockMode mode) : m_fd(attempt(path, mode, true))
{
}

FileLock::FileLock(const fs::path& path, LockMode mode, const LockWait& wait)
{
  m_fd = attempt(path, mode, false);
  if (m_fd) {
    return;
  }
  auto start = Clock::now();
  bool announced = !wait.on_wait;
  auto pause = std::chrono::milliseconds(5);
  while (!(m_fd = attempt(path, mode, false))) {
    auto waited = Clock::now() - start;
    if (!announced && waited >= wait.announce_after) {
      announced = true;
      wait.on_wait("waiting for " + wait.what + " (held by " +
                   describe_holders(lock_holders(path)) + ")");
    }
    if (wait.timeout.count() > 0 && waited >= wait.timeout) {
      throw LockTimeout("timed out after " +
                        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                         wait.timeout).count()) +
                        " s waiting for " + wait.what + " (held by " +
                        describe_holders(lock_holders(path)) + "; lock file '" + path.string() +
                        "')");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
}

FileLock
FileLock::try_lock(const fs::path& path, LockMode mode)
{
  FileLock lock;
  lock.m_fd = attempt(path, mode, false);
  return lock;
}

bool
FileLock::remove_if_unused(const fs::path& path)
{
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    return false;
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    return false;
  }
  // Unlinked while held: whoever opened it before takes it after us, sees
  // it is gone and opens a new one.
  return ::unlink(path.c_str()) == 0;
}

std::vector<pid_t>
lock_holders(const fs::path& path)
{
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return {};
  }
  char device[32];
  std::snprintf(device, sizeof device, "%02x:%02x:", major(st.st_dev), minor(st.st_dev));
  std::string inode = ":" + std::to_string(st.st_ino);
  // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->".
  // Some file systems (overlayfs) show another device there than stat():
  // then the inode alone has to do.
  std::vector<pid_t> same_file, same_inode;
  std::ifstream locks("/proc/locks");
  for (std::string line; std::getline(locks, line);) {
    std::istringstream fields(line);
    std::string number, type, advisory, mode, file;
    long pid = 0;
    if (line.find("->") != std::string::npos ||
        !(fields >> number >> type >> advisory >> mode >> pid >> file) || pid <= 0 ||
        !file.ends_with(inode)) {
      continue;
    }
    (file == device + std::to_string(st.st_ino) ? same_file : same_inode)
      .push_back(static_cast<pid_t>(pid));
  }
  return same_file.empty() ? same_inode : same_file;
}

std::string
describe_holders(const std::vector<pid_t>& pids)
{
  if (pids.empty()) {
    return "an unknown process";
  }
  std::string out;
  for (pid_t pid : pids) {
    out += (out.empty() ? "pid " : ", pid ") + std::to_string(pid);
  }
  return out;
}

} // namespace kiln
