// Advisory file locks (flock), held for the lifetime of the object.
#pragma once

#include <kiln/util/io.hpp>

#include <filesystem>

namespace kiln {

enum class LockMode { shared, exclusive };

class FileLock
{
public:
  // Open (creating if needed) `path` and lock it, waiting as long as it takes.
  FileLock(const std::filesystem::path& path, LockMode mode);
  // Try once; returns an unlocked object if someone else holds the lock.
  static FileLock try_lock(const std::filesystem::path& path, LockMode mode);

  FileLock(FileLock&&) = default;
  FileLock& operator=(FileLock&&) = default;

  bool
  locked() const
  {
    return static_cast<bool>(m_fd);
  }

private:
  FileLock() = default;
  UniqueFd m_fd;
};

} // namespace kiln
