// Byte streams (Source/Sink) and small POSIX file helpers.
//
// Everything that moves archive bytes in kiln streams through these two
// interfaces so that no component ever needs a whole NAR in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// --- Interface ---

// Receives bytes, in order.
class Sink
{
public:
  virtual ~Sink() = default;
  virtual void write(std::string_view data) = 0;
};

// Produces bytes, in order.
class Source
{
public:
  virtual ~Source() = default;
  // Read up to `len` bytes into `buf`; returns 0 only at end of input.
  virtual size_t read(char* buf, size_t len) = 0;
};

// Owns a file descriptor and closes it on destruction.
class UniqueFd
{
public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : m_fd(fd)
  {
  }
  UniqueFd(UniqueFd&& other) noexcept : m_fd(other.release())
  {
  }
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int
  get() const
  {
    return m_fd;
  }
  explicit operator bool() const
  {
    return m_fd >= 0;
  }
  int release();
  void reset(int fd = -1);

private:
  int m_fd = -1;
};

// Writes to a file descriptor, buffered. Call flush() before relying on the
// bytes being written; the destructor flushes but swallows errors.
class FdSink : public Sink
{
public:
  explicit FdSink(int fd, size_t buffer_size = 64 * 1024);
  ~FdSink() override;
  void write(std::string_view data) override;
  void flush();

private:
  int m_fd;
  std::vector<char> m_buffer;
  size_t m_used = 0;
};

// Reads from a file descriptor.
class FdSource : public Source
{
public:
  explicit FdSource(int fd) : m_fd(fd)
  {
  }
  size_t read(char* buf, size_t len) override;

private:
  int m_fd;
};

// Appends to a string (tests and small objects only).
class StringSink : public Sink
{
public:
  void
  write(std::string_view data) override
  {
    s.append(data);
  }
  std::string s;
};

// Reads from a string (tests and small objects only).
class StringSource : public Source
{
public:
  explicit StringSource(std::string_view data) : m_data(data)
  {
  }
  size_t read(char* buf, size_t len) override;

private:
  std::string_view m_data;
  size_t m_pos = 0;
};

// Forwards writes to two sinks.
class TeeSink : public Sink
{
public:
  TeeSink(Sink& a, Sink& b) : m_a(a), m_b(b)
  {
  }
  void
  write(std::string_view data) override
  {
    m_a.write(data);
    m_b.write(data);
  }

private:
  Sink& m_a;
  Sink& m_b;
};

// Write all of `data` to `fd`, retrying on short writes and EINTR.
void write_all(int fd, std::string_view data, std::string_view what);

// Read a whole (small) file. With `keep_atime`, without marking it as
// accessed where the kernel lets us (O_NOATIME: the file's owner, or root).
std::string read_file(const std::filesystem::path& path, bool keep_atime = false);

// Write `data` to `path` atomically: temporary file in the same folder,
// fsync, rename over `path`, fsync the folder. The file gets `mode` (less
// the umask) from its creation on.
void write_file_atomic(const std::filesystem::path& path, std::string_view data,
                       unsigned mode = 0644);

// Replace `path` with `data` in one step (a temporary file renamed over it),
// not synced: for caches, which a crash may lose or leave empty, but which a
// reader never sees half written.
void replace_file(const std::filesystem::path& path, std::string_view data, unsigned mode = 0644);

// Make `link` a symlink to `target`, replacing whatever link was there in one
// step (temporary link + rename), so readers never see it missing.
void replace_symlink(const std::filesystem::path& target, const std::filesystem::path& link);

// Delete `path` and everything below it, making read-only folders writable
// first (store objects are read-only). Missing paths are not an error.
void delete_path(const std::filesystem::path& path);

// A new folder `<parent>/<prefix>XXXXXX` (mkdtemp), deleted with all it holds
// when this goes; if deleting fails, it is left as debris (the store's GC
// clears its tmp/). `what` names it in the error if it cannot be made.
class TempFolder
{
public:
  TempFolder(const std::filesystem::path& parent, const std::string& prefix,
             const std::string& what);
  ~TempFolder();
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  const std::filesystem::path& path() const { return m_path; }

private:
  std::filesystem::path m_path;
};

// Disk usage in bytes of a tree (apparent sizes of regular files and links).
uint64_t tree_size(const std::filesystem::path& path);

// Flush a directory entry to disk.
void fsync_directory(const std::filesystem::path& dir);

// Format a byte count for people: "1.5 MiB".
std::string human_size(uint64_t bytes);

// Parse "100", "10K", "1.5M", "2G", "3GiB" into bytes; throws UsageError.
uint64_t parse_size(std::string_view text);

} // namespace kiln
