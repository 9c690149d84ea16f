#include <kiln/nar/tree_diff.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>
#include <vector>

namespace kiln {

namespace fs = std::filesystem;

namespace {

enum class Kind { missing, regular, directory, symlink, other };

struct Entry
{
  Kind kind = Kind::missing;
  bool executable = false;
  uint64_t size = 0;
};

Entry
entry_of(const fs::path& path)
{
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return {};
    }
    throw_errno("reading '" + path.string() + "'");
  }
  Entry e;
  e.size = static_cast<uint64_t>(st.st_size);
  if (S_ISREG(st.st_mode)) {
    e.kind = Kind::regular;
    e.executable = (st.st_mode & S_IXUSR) != 0;
  } else if (S_ISDIR(st.st_mode)) {
    e.kind = Kind::directory;
  } else if (S_ISLNK(st.st_mode)) {
    e.kind = Kind::symlink;
  } else {
    e.kind = Kind::other;
  }
  return e;
}

const char*
kind_name(Kind kind)
{
  switch (kind) {
  case Kind::regular:
    return "a file";
  case Kind::directory:
    return "a folder";
  case Kind::symlink:
    return "a symlink";
  case Kind::other:
    return "a special file";
  case Kind::missing:
    break;
  }
  return "nothing";
}

// The offset of the first byte where two files differ; nullopt if equal.
std::optional<uint64_t>
first_difference(const fs::path& a, const fs::path& b)
{
  UniqueFd fa(::open(a.c_str(), O_RDONLY | O_CLOEXEC));
  UniqueFd fb(::open(b.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fa) {
    throw_errno("opening '" + a.string() + "'");
  }
  if (!fb) {
    throw_errno("opening '" + b.string() + "'");
  }
  std::vector<char> ba(1 << 16), bb(1 << 16);
  uint64_t offset = 0;
  for (;;) {
    auto read_full = [](int fd, std::vector<char>& buf, const fs::path& p) {
      size_t got = 0;
      while (got < buf.size()) {
        ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
        if (n < 0) {
          if (errno == EINTR) {
            continue;
          }
          throw_errno("reading '" + p.string() + "'");
        }
        if (n == 0) {
          break;
        }
        got += static_cast<size_t>(n);
      }
      return got;
    };
    size_t na = read_full(fa.get(), ba, a), nb = read_full(fb.get(), bb, b);
    size_t common = std::min(na, nb);
    auto mismatch = std::mismatch(ba.begin(), ba.begin() + static_cast<long>(common), bb.begin());
    if (mismatch.first != ba.begin() + static_cast<long>(common)) {
      return offset + static_cast<uint64_t>(mismatch.first - ba.begin());
    }
    if (na != nb) {
      return offset + common;
    }
    if (na == 0) {
      return std::nullopt;
    }
    offset += na;
  }
}

class Differ
{
public:
  explicit Differ(size_t max) : m_max(max) {}

  void
  compare(const fs::path& a, const fs::path& b, const std::string& rel)
  {
    if (full()) {
      return;
    }
    Entry ea = entry_of(a), eb = entry_of(b);
    if (ea.kind == Kind::missing || eb.kind == Kind::missing) {
      if (ea.kind != eb.kind) {
        add(rel, ea.kind == Kind::missing ? "only in the second" : "only in the first");
      }
      return;
    }
    if (ea.kind != eb.kind) {
      add(rel, std::string(kind_name(ea.kind)) + " in the first, " + kind_name(eb.kind) +
                 " in the second");
      return;
    }
    switch (ea.kind) {
    case Kind::regular: {
      if (ea.executable != eb.executable) {
        add(rel, ea.executable ? "executable in the first only" : "executable in the second only");
      }
      if (auto at = first_difference(a, b)) {
        add(rel, "contents differ from byte " + std::to_string(*at) +
                   (ea.size == eb.size ? " (both " + std::to_string(ea.size) + " bytes)"
                                       : " (" + std::to_string(ea.size) + " and " +
                                           std::to_string(eb.size) + " bytes)"));
      }
      break;
    }
    case Kind::symlink: {
      auto ta = fs::read_symlink(a), tb = fs::read_symlink(b);
      if (ta != tb) {
        add(rel, "symlink to '" + ta.string() + "' in the first, to '" + tb.string() +
                   "' in the second");
      }
      break;
    }
    case Kind::directory: {
      // NAR order: names by their bytes.
      std::set<std::string> names;
      for (const auto* dir : {&a, &b}) {
        for (const auto& child : fs::directory_iterator(*dir)) {
          names.insert(child.path().filename().string());
        }
      }
      for (const auto& name : names) {
        compare(a / name, b / name, rel.empty() ? name : rel + "/" + name);
      }
      break;
    }
    default:
      add(rel, "a special file (not in a NAR)");
    }
  }

  std::vector<TreeDifference> take() { return std::move(m_found); }

private:
  bool full() const { return m_max != 0 && m_found.size() >= m_max; }
  void
  add(const std::string& rel, std::string what)
  {
    if (!full()) {
      m_found.push_back({rel, std::move(what)});
    }
  }
  size_t m_max;
  std::vector<TreeDifference> m_found;
};

} // namespace

std::vector<TreeDifference>
diff_trees(const fs::path& first, const fs::path& second, size_t max)
{
  Differ differ(max);
  differ.compare(first, second, "");
  return differ.take();
}

} // namespace kiln
