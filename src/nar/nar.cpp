#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace kiln {

namespace fs = std::filesystem;

namespace {

// 128 KiB: large enough for few system calls, small enough to stay in the
// per-core cache while it is hashed.
constexpr size_t k_io_chunk = 128 * 1024;

std::string
base_name(const std::string& path)
{
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string
padding_for(uint64_t size)
{
  return std::string((8 - size % 8) % 8, '\0');
}

} // namespace

// --- NarWriter ---

NarWriter::NarWriter(Sink& out) : m_out(out)
{
  m_buffer.reserve(64 * 1024);
}

NarWriter::~NarWriter() = default;

void
NarWriter::raw(std::string_view s)
{
  if (m_buffer.size() + s.size() > 64 * 1024) {
    flush_buffer();
  }
  if (s.size() >= 64 * 1024) {
    m_out.write(s);
  } else {
    m_buffer.append(s);
  }
}

void
NarWriter::flush_buffer()
{
  if (!m_buffer.empty()) {
    m_out.write(m_buffer);
    m_buffer.clear();
  }
}

void
NarWriter::num(uint64_t n)
{
  char bytes[8];
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>(n >> (8 * i) & 0xff);
  }
  raw(std::string_view(bytes, 8));
}

void
NarWriter::str(std::string_view s)
{
  num(s.size());
  raw(s);
  raw(std::string_view("\0\0\0\0\0\0\0", (8 - s.size() % 8) % 8));
}

void
NarWriter::open_entry(const std::string& path)
{
  if (!m_started) {
    str(k_nar_magic);
    m_started = true;
  }
  if (!path.empty()) {
    str("entry");
    str("(");
    str("name");
    str(base_name(path));
    str("node");
  }
  str("(");
  str("type");
}

void
NarWriter::close_entry(const std::string& path)
{
  str(")");
  if (!path.empty()) {
    str(")");
  }
}

void
NarWriter::create_directory(const std::string& path)
{
  open_entry(path);
  str("directory");
}

void
NarWriter::end_directory(const std::string& path)
{
  close_entry(path);
}

void
NarWriter::begin_regular_file(const std::string& path, bool executable, uint64_t size)
{
  open_entry(path);
  str("regular");
  if (executable) {
    str("executable");
    str("");
  }
  str("contents");
  num(size);
  m_file_size = size;
  m_file_written = 0;
  m_file_path = path;
}

void
NarWriter::file_data(std::string_view chunk)
{
  m_file_written += chunk.size();
  if (m_file_written > m_file_size) {
    throw Error("file '" + m_file_path + "' grew while it was being archived");
  }
  raw(chunk);
}

void
NarWriter::end_regular_file()
{
  if (m_file_written != m_file_size) {
    throw Error("file '" + m_file_path + "' shrank while it was being archived");
  }
  raw(padding_for(m_file_size));
  close_entry(m_file_path);
}

void
NarWriter::create_symlink(const std::string& path, const std::string& target)
{
  open_entry(path);
  str("symlink");
  str("target");
  str(target);
  close_entry(path);
}

void
NarWriter::finish()
{
  flush_buffer();
}

// --- TeeFsObjectSink ---

void
TeeFsObjectSink::create_directory(const std::string& path)
{
  m_a.create_directory(path);
  m_b.create_directory(path);
}

void
TeeFsObjectSink::end_directory(const std::string& path)
{
  m_a.end_directory(path);
  m_b.end_directory(path);
}

void
TeeFsObjectSink::begin_regular_file(const std::string& path, bool executable, uint64_t size)
{
  m_a.begin_regular_file(path, executable, size);
  m_b.begin_regular_file(path, executable, size);
}

void
TeeFsObjectSink::file_data(std::string_view chunk)
{
  m_a.file_data(chunk);
  m_b.file_data(chunk);
}

void
TeeFsObjectSink::end_regular_file()
{
  m_a.end_regular_file();
  m_b.end_regular_file();
}

void
TeeFsObjectSink::create_symlink(const std::string& path, const std::string& target)
{
  m_a.create_symlink(path, target);
  m_b.create_symlink(path, target);
}

// --- walking a tree ---

namespace {

class Walker
{
public:
  Walker(FsObjectSink& sink, std::string display_root, const PathFilter& filter)
    : m_sink(sink), m_root(std::move(display_root)), m_buffer(k_io_chunk), m_filter(filter)
  {
  }

  // Walk the entry `name` of folder `dirfd` (AT_FDCWD for the root).
  void
  walk(int dirfd, const char* name, const std::string& rel, size_t depth)
  {
    struct stat st;
    if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      throw_errno("examining '" + display(rel) + "'");
    }
    if (S_ISREG(st.st_mode)) {
      walk_file(dirfd, name, rel, st);
    } else if (S_ISLNK(st.st_mode)) {
      std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
      ssize_t n = ::readlinkat(dirfd, name, target.data(), target.size());
      if (n < 0) {
        throw_errno("reading symlink '" + display(rel) + "'");
      }
      target.resize(static_cast<size_t>(n));
      m_sink.create_symlink(rel, target);
    } else if (S_ISDIR(st.st_mode)) {
      if (depth >= NarLimits{}.max_depth) {
        throw Error("'" + display(rel) + "' is nested more than " +
                    std::to_string(NarLimits{}.max_depth) + " folders deep");
      }
      walk_directory(dirfd, name, rel, depth);
    } else {
      throw Error("'" + display(rel) + "' has an unsupported file type (" +
                  (S_ISFIFO(st.st_mode)   ? "fifo"
                   : S_ISSOCK(st.st_mode) ? "socket"
                   : S_ISCHR(st.st_mode)  ? "character device"
                   : S_ISBLK(st.st_mode)  ? "block device"
                                          : "unknown") +
                  "); only files, folders and symlinks can be archived");
    }
  }

private:
  std::string
  display(const std::string& rel) const
  {
    return rel.empty() ? m_root : m_root + "/" + rel;
  }

  void
  walk_file(int dirfd, const char* name, const std::string& rel, const struct stat& st)
  {
    UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) {
      throw_errno("opening '" + display(rel) + "'");
    }
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    uint64_t size = static_cast<uint64_t>(st.st_size);
    // Like Nix: only the owner's execute bit counts.
    m_sink.begin_regular_file(rel, (st.st_mode & S_IXUSR) != 0, size);
    uint64_t left = size;
    while (left > 0) {
      ssize_t n = ::read(fd.get(), m_buffer.data(), std::min<uint64_t>(left, m_buffer.size()));
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        throw_errno("reading '" + display(rel) + "'");
      }
      if (n == 0) {
        throw Error("file '" + display(rel) + "' shrank while it was being read");
      }
      m_sink.file_data(std::string_view(m_buffer.data(), static_cast<size_t>(n)));
      left -= static_cast<uint64_t>(n);
    }
    m_sink.end_regular_file();
  }

  void
  walk_directory(int dirfd, const char* name, const std::string& rel, size_t depth)
  {
    UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) {
      throw_errno("opening folder '" + display(rel) + "'");
    }
    std::vector<std::string> names;
    {
      int listing_fd = ::dup(fd.get());
      if (listing_fd < 0) {
        throw_errno("listing '" + display(rel) + "'");
      }
      DIR* dir = ::fdopendir(listing_fd);
      if (!dir) {
        ::close(listing_fd);
        throw_errno("listing '" + display(rel) + "'");
      }
      errno = 0;
      while (struct dirent* entry = ::readdir(dir)) {
        std::string entry_name = entry->d_name;
        if (entry_name != "." && entry_name != "..") {
          names.push_back(std::move(entry_name));
        }
      }
      int saved = errno;
      ::closedir(dir);
      if (saved != 0) {
        throw SystemError("listing '" + display(rel) + "'", saved);
      }
    }
    // std::string compares bytes as unsigned chars: the order Nix uses.
    std::sort(names.begin(), names.end());
    m_sink.create_directory(rel);
    for (const auto& entry_name : names) {
      std::string entry_rel = rel.empty() ? entry_name : rel + "/" + entry_name;
      if (m_filter && !m_filter(entry_rel)) {
        continue;
      }
      walk(fd.get(), entry_name.c_str(), entry_rel, depth + 1);
    }
    m_sink.end_directory(rel);
  }

  FsObjectSink& m_sink;
  std::string m_root;
  std::vector<char> m_buffer;
  const PathFilter& m_filter;
};

} // namespace

void
walk_path(const fs::path& path, FsObjectSink& sink, const PathFilter& filter)
{
  Walker walker(sink, path.string(), filter);
  walker.walk(AT_FDCWD, path.c_str(), "", 0);
}

void
dump_path(const fs::path& path, Sink& out, const PathFilter& filter)
{
  NarWriter writer(out);
  walk_path(path, writer, filter);
  writer.finish();
}

// --- parsing ---

void
check_entry_name(std::string_view name)
{
  if (name.empty()) {
    throw FormatError("empty entry name");
  }
  if (name == "." || name == "..") {
    throw FormatError("entry name '" + std::string(name) + "' is not allowed");
  }
  if (name.find('/') != std::string_view::npos) {
    throw FormatError("entry name '" + std::string(name) + "' contains '/'");
  }
  if (name.find('\0') != std::string_view::npos) {
    throw FormatError("entry name contains a NUL byte");
  }
}

namespace {

class NarParser
{
public:
  NarParser(Source& in, FsObjectSink& sink, const NarLimits& limits)
    : m_in(in),
      m_sink(sink),
      m_limits(limits),
      // Not zeroed: a substitution parses one NAR per path, and a small one
      // touches only the pages it reads into.
      m_buffer(std::make_unique_for_overwrite<char[]>(k_io_chunk))
  {
  }

  uint64_t
  parse(bool require_eof)
  {
    uint64_t start = m_offset;
    std::string magic = read_string(m_limits.max_tag, "archive magic");
    if (magic != k_nar_magic) {
      fail("not a NAR: bad magic '" + printable(magic) + "'", start);
    }
    parse_node("", 0);
    if (require_eof) {
      char c;
      if (read_some(&c, 1) != 0) {
        fail("trailing data after the end of the archive", m_offset - 1);
      }
    }
    return m_offset;
  }

private:
  [[noreturn]] void
  fail(const std::string& message, uint64_t offset)
  {
    throw FormatError("invalid NAR: " + message, offset);
  }

  static std::string
  printable(const std::string& s)
  {
    std::string out;
    for (char c : s.substr(0, 64)) {
      out += (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    return out;
  }

  size_t
  read_some(char* buf, size_t len)
  {
    if (m_pos == m_end) {
      m_pos = 0;
      m_end = m_in.read(m_buffer.get(), k_io_chunk);
      if (m_end == 0) {
        return 0;
      }
    }
    size_t n = std::min(len, m_end - m_pos);
    std::memcpy(buf, m_buffer.get() + m_pos, n);
    m_pos += n;
    m_offset += n;
    return n;
  }

  void
  read_exact(char* buf, size_t len, const char* what)
  {
    while (len > 0) {
      size_t n = read_some(buf, len);
      if (n == 0) {
        fail(std::string("archive is truncated (in ") + what + ")", m_offset);
      }
      buf += n;
      len -= n;
    }
  }

  uint64_t
  read_num(const char* what)
  {
    unsigned char bytes[8];
    read_exact(reinterpret_cast<char*>(bytes), 8, what);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) {
      n = n << 8 | bytes[i];
    }
    return n;
  }

  void
  read_padding(uint64_t size)
  {
    size_t pad = (8 - size % 8) % 8;
    if (pad == 0) {
      return;
    }
    uint64_t at = m_offset;
    char zeros[8];
    read_exact(zeros, pad, "padding");
    for (size_t i = 0; i < pad; ++i) {
      if (zeros[i] != 0) {
        fail("non-zero padding", at + i);
      }
    }
  }

  std::string
  read_string(size_t max_len, const char* what)
  {
    uint64_t at = m_offset;
    uint64_t len = read_num(what);
    if (len > max_len) {
      fail(std::string(what) + " is " + std::to_string(len) + " bytes long; the limit is " +
             std::to_string(max_len),
           at);
    }
    std::string s(len, '\0');
    read_exact(s.data(), len, what);
    read_padding(len);
    return s;
  }

  void
  expect(std::string_view tag)
  {
    uint64_t at = m_offset;
    std::string got = read_string(m_limits.max_tag, "tag");
    if (got != tag) {
      fail("expected tag '" + std::string(tag) + "', got '" + printable(got) + "'", at);
    }
  }

  void
  parse_node(const std::string& path, size_t depth)
  {
    expect("(");
    expect("type");
    uint64_t type_at = m_offset;
    std::string type = read_string(m_limits.max_tag, "node type");
    if (type == "regular") {
      parse_regular(path);
    } else if (type == "symlink") {
      expect("target");
      uint64_t at = m_offset;
      std::string target = read_string(m_limits.max_target, "symlink target");
      if (target.empty()) {
        fail("empty symlink target", at);
      }
      if (target.find('\0') != std::string::npos) {
        fail("symlink target contains a NUL byte", at);
      }
      m_sink.create_symlink(path, target);
      expect(")");
    } else if (type == "directory") {
      parse_directory(path, depth);
    } else {
      fail("unknown node type '" + printable(type) + "'", type_at);
    }
  }

  void
  parse_regular(const std::string& path)
  {
    uint64_t at = m_offset;
    std::string tag = read_string(m_limits.max_tag, "tag");
    bool executable = false;
    if (tag == "executable") {
      uint64_t value_at = m_offset;
      if (!read_string(m_limits.max_tag, "executable marker").empty()) {
        fail("the executable marker must be empty", value_at);
      }
      executable = true;
      at = m_offset;
      tag = read_string(m_limits.max_tag, "tag");
    }
    if (tag != "contents") {
      fail("expected tag 'contents', got '" + printable(tag) + "'", at);
    }
    uint64_t size = read_num("file size");
    m_sink.begin_regular_file(path, executable, size);
    uint64_t left = size;
    while (left > 0) {
      if (m_pos == m_end) {
        m_pos = 0;
        m_end = m_in.read(m_buffer.get(), k_io_chunk);
        if (m_end == 0) {
          fail("archive is truncated (in the contents of '" + path + "')", m_offset);
        }
      }
      size_t n = static_cast<size_t>(std::min<uint64_t>(left, m_end - m_pos));
      m_sink.file_data(std::string_view(m_buffer.get() + m_pos, n));
      m_pos += n;
      m_offset += n;
      left -= n;
    }
    read_padding(size);
    m_sink.end_regular_file();
    expect(")");
  }

  void
  parse_directory(const std::string& path, size_t depth)
  {
    if (depth >= m_limits.max_depth) {
      fail("folders are nested more than " + std::to_string(m_limits.max_depth) + " deep",
           m_offset);
    }
    m_sink.create_directory(path);
    std::string previous;
    bool first = true;
    while (true) {
      uint64_t at = m_offset;
      std::string tag = read_string(m_limits.max_tag, "tag");
      if (tag == ")") {
        break;
      }
      if (tag != "entry") {
        fail("expected tag 'entry' or ')', got '" + printable(tag) + "'", at);
      }
      expect("(");
      expect("name");
      uint64_t name_at = m_offset;
      std::string name = read_string(m_limits.max_name, "entry name");
      try {
        check_entry_name(name);
      } catch (const FormatError& e) {
        fail(e.what(), name_at);
      }
      if (!first && name <= previous) {
        fail(name == previous ? "duplicate entry '" + printable(name) + "'"
                              : "entry '" + printable(name) + "' is out of order (after '" +
                                  printable(previous) + "')",
             name_at);
      }
      first = false;
      previous = name;
      expect("node");
      parse_node(path.empty() ? name : path + "/" + name, depth + 1);
      expect(")");
    }
    m_sink.end_directory(path);
  }

  Source& m_in;
  FsObjectSink& m_sink;
  NarLimits m_limits;
  std::unique_ptr<char[]> m_buffer;
  size_t m_pos = 0;
  size_t m_end = 0;
  uint64_t m_offset = 0;
};

} // namespace

uint64_t
parse_nar(Source& in, FsObjectSink& sink, bool require_eof, const NarLimits& limits)
{
  NarParser parser(in, sink, limits);
  return parser.parse(require_eof);
}

// --- restoring ---

Restorer::Restorer(fs::path target, RestoreSync sync) : m_target(std::move(target)), m_sync(sync)
{
}

Restorer::~Restorer()
{
  for (auto& dir : m_dirs) {
    ::close(dir.second);
  }
}

std::pair<int, std::string>
Restorer::parent_of(const std::string& path)
{
  auto slash = path.rfind('/');
  std::string parent = slash == std::string::npos ? "" : path.substr(0, slash);
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (m_dirs.empty() || m_dirs.back().first != parent) {
    throw Error("restoring '" + path + "': its folder is not open (events out of order)");
  }
  check_entry_name(name);
  return {m_dirs.back().second, name};
}

namespace {

const struct timespec k_store_times[2] = {{1, 0}, {1, 0}};

} // namespace

void
Restorer::create_directory(const std::string& path)
{
  int fd;
  if (path.empty()) {
    if (::mkdir(m_target.c_str(), 0700) != 0) {
      throw_errno("creating folder '" + m_target.string() + "'");
    }
    fd = ::open(m_target.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  } else {
    auto [parent, name] = parent_of(path);
    if (::mkdirat(parent, name.c_str(), 0700) != 0) {
      throw_errno("creating folder '" + (m_target / path).string() + "'");
    }
    fd = ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  }
  if (fd < 0) {
    throw_errno("opening folder '" + (m_target / path).string() + "'");
  }
  m_dirs.emplace_back(path, fd);
}

void
Restorer::end_directory(const std::string& path)
{
  if (m_dirs.empty() || m_dirs.back().first != path) {
    throw Error("restoring '" + path + "': folder ended out of order");
  }
  int fd = m_dirs.back().second;
  if (::fchmod(fd, 0555) != 0 || ::futimens(fd, k_store_times) != 0) {
    throw_errno("setting permissions of '" + (m_target / path).string() + "'");
  }
  if (m_sync == RestoreSync::yes && ::fsync(fd) != 0) {
    throw_errno("syncing '" + (m_target / path).string() + "'");
  }
  ::close(fd);
  m_dirs.pop_back();
}

void
Restorer::begin_regular_file(const std::string& path, bool executable, uint64_t size)
{
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  if (path.empty()) {
    m_file.reset(::open(m_target.c_str(), flags, 0600));
  } else {
    auto [parent, name] = parent_of(path);
    m_file.reset(::openat(parent, name.c_str(), flags, 0600));
  }
  if (!m_file) {
    throw_errno("creating file '" + (m_target / path).string() + "'");
  }
  if (size >= (1 << 20)) {
    // Reserve the space of large files up front so a full disk fails early;
    // not all file systems support it, which is fine.
    ::posix_fallocate(m_file.get(), 0, static_cast<off_t>(size));
  }
  m_file_executable = executable;
  m_file_path = path;
}

void
Restorer::file_data(std::string_view chunk)
{
  try {
    write_all(m_file.get(), chunk, "writing");
  } catch (const SystemError& e) {
    throw SystemError("writing '" + (m_target / m_file_path).string() + "'", e.error_number());
  }
}

void
Restorer::end_regular_file()
{
  if (::fchmod(m_file.get(), m_file_executable ? 0555 : 0444) != 0 ||
      ::futimens(m_file.get(), k_store_times) != 0) {
    throw_errno("setting permissions of '" + (m_target / m_file_path).string() + "'");
  }
  if (m_sync == RestoreSync::yes && ::fsync(m_file.get()) != 0) {
    throw_errno("syncing '" + (m_target / m_file_path).string() + "'");
  }
  if (m_sync == RestoreSync::start) {
    ::sync_file_range(m_file.get(), 0, 0, SYNC_FILE_RANGE_WRITE); // a hint: errors come at the sync
  }
  m_file.reset();
}

void
Restorer::create_symlink(const std::string& path, const std::string& target)
{
  if (path.empty()) {
    if (::symlink(target.c_str(), m_target.c_str()) != 0) {
      throw_errno("creating symlink '" + m_target.string() + "'");
    }
    ::utimensat(AT_FDCWD, m_target.c_str(), k_store_times, AT_SYMLINK_NOFOLLOW);
    return;
  }
  auto [parent, name] = parent_of(path);
  if (::symlinkat(target.c_str(), parent, name.c_str()) != 0) {
    throw_errno("creating symlink '" + (m_target / path).string() + "'");
  }
  ::utimensat(parent, name.c_str(), k_store_times, AT_SYMLINK_NOFOLLOW);
}

void
restore_nar(Source& in, const fs::path& target, RestoreSync sync)
{
  std::error_code ec;
  if (fs::exists(fs::symlink_status(target, ec))) {
    throw Error("cannot restore into '" + target.string() + "': it already exists");
  }
  try {
    Restorer restorer(target, sync);
    parse_nar(in, restorer);
  } catch (...) {
    if (fs::exists(fs::symlink_status(target, ec))) {
      delete_path(target);
    }
    throw;
  }
}

} // namespace kiln
