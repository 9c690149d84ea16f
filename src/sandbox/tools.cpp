// What a declared tool needs to run inside the sandbox.
//
// A tool is a host program (or folder) made visible at its own path. A
// program alone rarely runs: a script needs its "#!" interpreter, a dynamic
// ELF program its ELF interpreter and shared libraries. The dynamic loader
// already knows its search rules (ld.so.cache, RUNPATH, $ORIGIN), so we ask
// it rather than re-implement them: the program's own loader (PT_INTERP)
// with --list, which is what ldd runs after a few probes of its own (one
// process instead of ldd's shell and four, ~5 ms instead of ~50 on the
// path to every build's first sandbox); ldd where that loader will not
// list. Tools are trusted host programs, so running the loader over them
// is safe.
#include "sandbox_impl.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <optional>

namespace kiln::sandbox_impl {

namespace {

// The first bytes of a file (fewer if it is shorter).
std::string
read_head(const fs::path& path, size_t size)
{
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    throw SandboxError("tool '" + path.string() + "' cannot be read: " + std::strerror(errno));
  }
  std::string head(size, '\0');
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::read(fd.get(), head.data() + got, size - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    got += static_cast<size_t>(n);
  }
  head.resize(got);
  return head;
}

// The ELF interpreter a program names (PT_INTERP), read from `head` (its
// first bytes) and the file; empty for a static program, nullopt where the
// file is not an ELF file this code reads (ldd decides then).
template <typename Ehdr, typename Phdr>
std::optional<std::string>
interpreter_of(int fd, const std::string& head)
{
  if (head.size() < sizeof(Ehdr)) {
    return std::nullopt;
  }
  Ehdr header;
  std::memcpy(&header, head.data(), sizeof header);
  if (header.e_phentsize != sizeof(Phdr) || header.e_phnum == 0 || header.e_phnum > 512) {
    return std::nullopt;
  }
  std::vector<Phdr> program_headers(header.e_phnum);
  size_t size = program_headers.size() * sizeof(Phdr);
  if (::pread(fd, program_headers.data(), size, static_cast<off_t>(header.e_phoff)) !=
      static_cast<ssize_t>(size)) {
    return std::nullopt;
  }
  for (const auto& ph : program_headers) {
    if (ph.p_type != PT_INTERP) {
      continue;
    }
    if (ph.p_filesz == 0 || ph.p_filesz > 4096) {
      return std::nullopt;
    }
    std::string interpreter(ph.p_filesz, '\0');
    if (::pread(fd, interpreter.data(), interpreter.size(), static_cast<off_t>(ph.p_offset)) !=
        static_cast<ssize_t>(interpreter.size())) {
      return std::nullopt;
    }
    interpreter.resize(std::strlen(interpreter.c_str()));
    return interpreter.empty() || interpreter[0] != '/' ? std::nullopt
                                                         : std::optional(interpreter);
  }
  return std::string(); // static: needs no loader and no libraries
}

std::optional<std::string>
elf_interpreter(const fs::path& program)
{
  UniqueFd fd(::open(program.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return std::nullopt;
  }
  std::string head(sizeof(Elf64_Ehdr), '\0');
  ssize_t got = ::pread(fd.get(), head.data(), head.size(), 0);
  if (got < EI_NIDENT) {
    return std::nullopt;
  }
  head.resize(static_cast<size_t>(got));
  if (head[EI_DATA] != ELFDATA2LSB) { // this host's byte order (x86-64, aarch64)
    return std::nullopt;
  }
  if (head[EI_CLASS] == ELFCLASS64) {
    return interpreter_of<Elf64_Ehdr, Elf64_Phdr>(fd.get(), head);
  }
  if (head[EI_CLASS] == ELFCLASS32) {
    return interpreter_of<Elf32_Ehdr, Elf32_Phdr>(fd.get(), head);
  }
  return std::nullopt;
}

// What the dynamic loader lists for `program`, in ldd's format (its exit
// status is ignored where there is a listing: a static program needs
// nothing).
std::string
list_libraries(const fs::path& program)
{
  std::optional<std::string> interpreter = elf_interpreter(program);
  if (interpreter && interpreter->empty()) {
    return {};
  }
  if (interpreter && ::access(interpreter->c_str(), X_OK) == 0) {
    ProcessResult listed = run_process({*interpreter, "--list", program.string()});
    if (listed.status == 0 && !listed.out.empty()) {
      return listed.out;
    }
    // A loader without --list (not glibc's): ldd knows its ways.
  }
  ProcessResult result = run_process({"ldd", program.string()});
  if (result.status == 127 && result.out.empty()) {
    throw SandboxError("running ldd to find the libraries of tool '" + program.string() +
                       "': " + result.err);
  }
  return result.out;
}

// The libraries the loader (or ldd) lists for a dynamic ELF program:
//   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
//   \t/lib64/ld-linux-x86-64.so.2 (0x...)
//   \tlinux-vdso.so.1 (0x...)              (in the kernel: nothing to mount)
//   \tlibfoo.so => not found
std::vector<fs::path>
ldd_libraries(const fs::path& program, const std::string& out)
{
  std::vector<fs::path> libraries;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t end = out.find('\n', pos);
    if (end == std::string::npos) {
      end = out.size();
    }
    std::string line = out.substr(pos, end - pos);
    pos = end + 1;
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos) {
      continue;
    }
    line = line.substr(start);
    std::string path;
    if (auto arrow = line.find(" => "); arrow != std::string::npos) {
      path = line.substr(arrow + 4);
      if (path.rfind("not found", 0) == 0) {
        throw SandboxError("tool '" + program.string() + "' needs " + line.substr(0, arrow) +
                           ", which the dynamic loader cannot find");
      }
    } else {
      path = line;
    }
    if (auto paren = path.find(" ("); paren != std::string::npos) {
      path.resize(paren);
    }
    if (!path.empty() && path[0] == '/') {
      libraries.emplace_back(path);
    }
  }
  return libraries;
}

// The libraries `program` needs (its loader's list), remembered.
std::vector<fs::path>
elf_libraries(const fs::path& program)
{
  // Tools are the same few host programs build after build: remember them
  // (by modification time, so an upgraded program is looked at again). A
  // look that is under way (a warm-up beside the planning) is waited for,
  // not started twice.
  using Libraries = std::shared_future<std::vector<fs::path>>;
  static std::mutex mutex;
  static std::map<std::string, std::pair<int64_t, Libraries>> cache;
  struct stat st;
  if (::stat(program.c_str(), &st) != 0) {
    throw SandboxError("tool '" + program.string() + "': " + std::strerror(errno));
  }
  int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  std::promise<std::vector<fs::path>> mine;
  Libraries known;
  {
    std::lock_guard guard(mutex);
    auto it = cache.find(program.string());
    if (it != cache.end() && it->second.first == mtime) {
      known = it->second.second;
    } else {
      cache[program.string()] = {mtime, mine.get_future().share()};
    }
  }
  if (known.valid()) {
    return known.get();
  }
  try {
    auto libraries = ldd_libraries(program, list_libraries(program));
    mine.set_value(libraries);
    return libraries;
  } catch (...) {
    {
      std::lock_guard guard(mutex);
      cache.erase(program.string()); // asked again next time
    }
    mine.set_exception(std::current_exception());
    throw;
  }
}

// What running `path` needs besides itself.
std::vector<fs::path>
needs_of(const fs::path& path)
{
  std::string head = read_head(path, 256);
  if (head.rfind("#!", 0) == 0) {
    // "#!" interpreter [one argument]; the kernel takes the first word.
    size_t start = head.find_first_not_of(" \t", 2);
    if (start == std::string::npos) {
      return {};
    }
    size_t end = head.find_first_of(" \t\n", start);
    std::string interpreter = head.substr(start, end == std::string::npos ? end : end - start);
    if (interpreter.empty() || interpreter[0] != '/') {
      return {};
    }
    return {fs::path(interpreter)};
  }
  if (head.rfind("\x7f"
                 "ELF",
                 0) == 0) {
    return elf_libraries(path);
  }
  return {};
}

} // namespace

bool
is_within(const std::string& path, const std::string& dir)
{
  if (dir == "/") {
    return true;
  }
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         path[dir.size()] == '/');
}

std::vector<fs::path>
tool_closure(const std::vector<fs::path>& tools)
{
  // A file inside a folder tool is part of that folder, which is visible
  // whole and, like every folder tool, not examined: what its programs need
  // beyond it is for the declaration to list. (Asking ldd about each library
  // found inside /usr costs a few processes per library, per build step.)
  std::vector<std::string> folders;
  for (const auto& tool : tools) {
    struct stat st;
    if (::lstat(tool.c_str(), &st) == 0 && (S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode)) &&
        ::stat(tool.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      folders.push_back(tool.lexically_normal().string());
    }
  }
  auto in_folder_tool = [&](const fs::path& path) {
    std::string text = path.lexically_normal().string();
    return std::any_of(folders.begin(), folders.end(),
                       [&](const std::string& dir) { return is_within(text, dir); });
  };
  std::vector<fs::path> result;
  std::set<std::string> seen;
  std::vector<fs::path> todo(tools.rbegin(), tools.rend());
  while (!todo.empty()) {
    fs::path path = todo.back();
    todo.pop_back();
    if (!path.is_absolute()) {
      throw SandboxError("tool '" + path.string() + "' is not an absolute path");
    }
    if (!seen.insert(path.string()).second) {
      continue;
    }
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      throw SandboxError("tool '" + path.string() + "': " + std::strerror(errno));
    }
    result.push_back(path);
    if (S_ISREG(st.st_mode) && !in_folder_tool(path)) {
      auto needs = needs_of(path);
      todo.insert(todo.end(), needs.rbegin(), needs.rend());
    }
  }
  return result;
}

} // namespace kiln::sandbox_impl

namespace kiln {

std::vector<std::filesystem::path>
tools_closure(const std::vector<std::filesystem::path>& tools)
{
  return sandbox_impl::tool_closure(tools);
}

void
look_at_tools(const std::vector<std::filesystem::path>& tools)
{
  try {
    sandbox_impl::tool_closure(tools);
  } catch (const std::exception&) {
    // The build step that needs the tools says what is wrong with them.
  }
}

} // namespace kiln

namespace kiln::sandbox_impl {

std::vector<std::string>
tool_path_dirs(const std::vector<fs::path>& tools)
{
  std::vector<std::string> dirs;
  for (const auto& tool : tools) {
    std::error_code ec;
    fs::path dir = tool.parent_path();
    if (fs::is_directory(tool, ec)) {
      dir = fs::is_directory(tool / "bin", ec) ? tool / "bin" : tool;
    }
    std::string text = dir.lexically_normal().string();
    if (text.size() > 1 && text.back() == '/') {
      text.pop_back();
    }
    if (std::find(dirs.begin(), dirs.end(), text) == dirs.end()) {
      dirs.push_back(text);
    }
  }
  return dirs;
}

} // namespace kiln::sandbox_impl
