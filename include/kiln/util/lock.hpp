// Advisory file locks (flock), held for the lifetime of the object.
//
// A lock file may be deleted while it is not held (kiln gc tidies locks/):
// a lock taken on a file that was unlinked meanwhile is dropped and taken
// again on the new file, so two processes never both believe they hold it.
#pragma once

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace kiln {

enum class LockMode { shared, exclusive };

// How to wait for a lock someone else holds.
struct LockWait
{
  // What the lock guards, for messages: "the garbage collector's lock".
  std::string what;
  // Give up (throw LockTimeout) after this long; zero: wait as long as it takes.
  std::chrono::milliseconds timeout{0};
  // Told once, when the lock is still held after `announce_after`, who holds
  // it: "waiting for <what> (held by pid 123)". Unset: nothing is said.
  std::function<void(const std::string& message)> on_wait;
  std::chrono::milliseconds announce_after{0};
};

// A lock was not free within LockWait::timeout.
class LockTimeout : public Error
{
public:
  using Error::Error;
};

class FileLock
{
public:
  // Open (creating if needed) `path` and lock it, waiting as long as it takes.
  FileLock(const std::filesystem::path& path, LockMode mode);
  // The same, waiting as `wait` says.
  FileLock(const std::filesystem::path& path, LockMode mode, const LockWait& wait);
  // Try once; returns an unlocked object if someone else holds the lock.
  static FileLock try_lock(const std::filesystem::path& path, LockMode mode);

  FileLock(FileLock&&) = default;
  FileLock& operator=(FileLock&&) = default;

  bool
  locked() const
  {
    return static_cast<bool>(m_fd);
  }
  // The locked file, open for reading and writing.
  int fd() const { return m_fd.get(); }

  // Delete the lock file at `path` if nobody holds or waits to take it now
  // (waiters that opened it already take the new file instead). True if
  // it was deleted.
  static bool remove_if_unused(const std::filesystem::path& path);

private:
  FileLock() = default;
  UniqueFd m_fd;
};

// The processes holding a lock on the file at `path` (from /proc/locks);
// empty if none, or if that cannot be known.
std::vector<pid_t> lock_holders(const std::filesystem::path& path);

// "pid 12, pid 40" (or "an unknown process").
std::string describe_holders(const std::vector<pid_t>& pids);

} // namespace kiln
