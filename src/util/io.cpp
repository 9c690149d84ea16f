#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <random>

namespace kiln {

namespace fs = std::filesystem;

UniqueFd&
UniqueFd::operator=(UniqueFd&& other) noexcept
{
  if (this != &other) {
    reset(other.release());
  }
  return *this;
}

UniqueFd::~UniqueFd()
{
  reset();
}

int
UniqueFd::release()
{
  int fd = m_fd;
  m_fd = -1;
  return fd;
}

void
UniqueFd::reset(int fd)
{
  if (m_fd >= 0) {
    ::close(m_fd);
  }
  m_fd = fd;
}

FdSink::FdSink(int fd, size_t buffer_size) : m_fd(fd), m_buffer(buffer_size)
{
}

FdSink::~FdSink()
{
  try {
    flush();
  } catch (...) {
    // A destructor must not throw; callers that care call flush() first.
  }
}

void
FdSink::write(std::string_view data)
{
  if (m_used + data.size() > m_buffer.size()) {
    flush();
    if (data.size() >= m_buffer.size()) {
      write_all(m_fd, data, "writing output");
      return;
    }
  }
  std::memcpy(m_buffer.data() + m_used, data.data(), data.size());
  m_used += data.size();
}

void
FdSink::flush()
{
  if (m_used > 0) {
    size_t used = m_used;
    m_used = 0;
    write_all(m_fd, std::string_view(m_buffer.data(), used), "writing output");
  }
}

size_t
FdSource::read(char* buf, size_t len)
{
  while (true) {
    ssize_t n = ::read(m_fd, buf, len);
    if (n >= 0) {
      return static_cast<size_t>(n);
    }
    if (errno != EINTR) {
      throw_errno("reading input");
    }
  }
}

size_t
StringSource::read(char* buf, size_t len)
{
  size_t n = std::min(len, m_data.size() - m_pos);
  std::memcpy(buf, m_data.data() + m_pos, n);
  m_pos += n;
  return n;
}

void
write_all(int fd, std::string_view data, std::string_view what)
{
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw_errno(std::string(what));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

std::string
read_file(const fs::path& path, bool keep_atime)
{
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | (keep_atime ? O_NOATIME : 0)));
  if (!fd && keep_atime && errno == EPERM) {
    fd = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  }
  if (!fd) {
    throw_errno("opening '" + path.string() + "'");
  }
  std::string result;
  char buf[65536];
  FdSource source(fd.get());
  while (size_t n = source.read(buf, sizeof buf)) {
    result.append(buf, n);
  }
  return result;
}

namespace {

// `data` into a new temporary file beside `path`, synced if `sync`, then
// renamed over `path`.
void
write_then_rename(const fs::path& path, std::string_view data, unsigned mode, bool sync)
{
  std::random_device rd;
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) {
    throw_errno("creating '" + tmp.string() + "'");
  }
  try {
    write_all(fd.get(), data, "writing '" + tmp.string() + "'");
    if (sync && ::fsync(fd.get()) != 0) {
      throw_errno("syncing '" + tmp.string() + "'");
    }
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw_errno("renaming '" + tmp.string() + "' to '" + path.string() + "'");
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

} // namespace

void
write_file_atomic(const fs::path& path, std::string_view data, unsigned mode)
{
  write_then_rename(path, data, mode, true);
  // The rename itself must survive a crash before anything relies on it
  // (a narinfo is published only after its NAR).
  fsync_directory(path.has_parent_path() ? path.parent_path() : fs::path("."));
}

void
replace_file(const fs::path& path, std::string_view data, unsigned mode)
{
  write_then_rename(path, data, mode, false);
}

void
replace_symlink(const fs::path& target, const fs::path& link)
{
  fs::path tmp = link;
  tmp += ".tmp-kiln-" + std::to_string(::getpid());
  ::unlink(tmp.c_str());
  if (::symlink(target.c_str(), tmp.c_str()) != 0) {
    throw_errno("creating symlink '" + tmp.string() + "'");
  }
  if (::rename(tmp.c_str(), link.c_str()) != 0) {
    int saved = errno;
    ::unlink(tmp.c_str());
    throw SystemError("replacing symlink '" + link.string() + "'", saved);
  }
}

TempFolder::TempFolder(const fs::path& parent, const std::string& prefix, const std::string& what)
{
  std::string pattern = (parent / (prefix + "XXXXXX")).string();
  if (!::mkdtemp(pattern.data())) {
    throw_errno("creating " + what + " in '" + parent.string() + "'");
  }
  m_path = pattern;
}

TempFolder::~TempFolder()
{
  try {
    delete_path(m_path);
  } catch (...) {
    // Left behind: debris, never an error while unwinding.
  }
}

void
delete_path(const fs::path& path)
{
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return;
    }
    throw_errno("examining '" + path.string() + "'");
  }
  if (S_ISDIR(st.st_mode)) {
    if ((st.st_mode & 0700) != 0700 && ::chmod(path.c_str(), 0700) != 0) {
      throw_errno("making '" + path.string() + "' writable");
    }
    for (const auto& entry : fs::directory_iterator(path)) {
      delete_path(entry.path());
    }
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT) {
      throw_errno("removing '" + path.string() + "'");
    }
  } else if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw_errno("removing '" + path.string() + "'");
  }
}

uint64_t
tree_size(const fs::path& path)
{
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return 0;
  }
  if (!S_ISDIR(st.st_mode)) {
    return static_cast<uint64_t>(st.st_size);
  }
  uint64_t total = 0;
  for (const auto& entry : fs::directory_iterator(path)) {
    total += tree_size(entry.path());
  }
  return total;
}

void
fsync_directory(const fs::path& dir)
{
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) {
    throw_errno("opening folder '" + dir.string() + "'");
  }
  if (::fsync(fd.get()) != 0) {
    throw_errno("syncing folder '" + dir.string() + "'");
  }
}

std::string
human_size(uint64_t bytes)
{
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", value, units[unit]);
  }
  return buf;
}

uint64_t
parse_size(std::string_view text)
{
  std::string s(text);
  size_t pos = 0;
  double number = 0;
  try {
    number = std::stod(s, &pos);
  } catch (...) {
    throw UsageError("invalid size '" + s + "': expected a number such as 500M or 2G");
  }
  std::string suffix = s.substr(pos);
  if (!suffix.empty() && (suffix.back() == 'B' || suffix.back() == 'b')) {
    suffix.pop_back();
  }
  if (!suffix.empty() && suffix.back() == 'i') {
    suffix.pop_back();
  }
  double factor = 1;
  if (suffix.empty()) {
    factor = 1;
  } else if (suffix == "K" || suffix == "k") {
    factor = 1024.0;
  } else if (suffix == "M" || suffix == "m") {
    factor = 1024.0 * 1024;
  } else if (suffix == "G" || suffix == "g") {
    factor = 1024.0 * 1024 * 1024;
  } else if (suffix == "T" || suffix == "t") {
    factor = 1024.0 * 1024 * 1024 * 1024;
  } else {
    throw UsageError("invalid size '" + s + "': unknown unit '" + suffix + "'");
  }
  if (number < 0 || !std::isfinite(number)) {
    throw UsageError("invalid size '" + s + "': must be a non-negative number");
  }
  return static_cast<uint64_t>(number * factor);
}

} // namespace kiln
