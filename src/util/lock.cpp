#include <kiln/util/error.hpp>
#include <kiln/util/lock.hpp>

#include <fcntl.h>
#include <sys/file.h>

#include <cerrno>

namespace kiln {

namespace {

UniqueFd
open_lock_file(const std::filesystem::path& path)
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

} // namespace

FileLock::FileLock(const std::filesystem::path& path, LockMode mode) : m_fd(open_lock_file(path))
{
  while (::flock(m_fd.get(), flock_op(mode)) != 0) {
    if (errno != EINTR) {
      throw_errno("locking '" + path.string() + "'");
    }
  }
}

FileLock
FileLock::try_lock(const std::filesystem::path& path, LockMode mode)
{
  FileLock lock;
  UniqueFd fd = open_lock_file(path);
  if (::flock(fd.get(), flock_op(mode) | LOCK_NB) == 0) {
    lock.m_fd = std::move(fd);
  } else if (errno != EWOULDBLOCK) {
    throw_errno("locking '" + path.string() + "'");
  }
  return lock;
}

} // namespace kiln
