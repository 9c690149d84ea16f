// What a declared tool needs to run inside the sandbox.
//
// A tool is a host program (or folder) made visible at its own path. A
// program alone rarely runs: a script needs its "#!" interpreter, a dynamic
// ELF program its ELF interpreter and shared libraries. The dynamic loader
// knows its search rules (ld.so.cache, RUNPATH, $ORIGIN), so we ask it
// rather than re-implement them: the program's own loader (PT_INTERP) run
// once with --list, where ldd would run a shell and four processes to pick
// a loader (~4 ms instead of ~50, on the path to a kiln run's first
// sandbox). Only a system loader is run so (a root-owned file in a system
// library folder): a tool can come from a project, and its PT_INTERP must
// not make kiln run a program of the project's choosing on the host. For
// any other loader, for a shared library (no PT_INTERP) and where a loader
// will not list, ldd, which runs only the system's loaders.
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
#include <bit>
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

// What an ELF file says about how it is loaded.
struct ElfLoading
{
  bool readable = false;    // an ELF file of this host's byte order, headers intact
  bool dynamic = false;     // has a dynamic section (needs libraries)
  std::string interpreter;  // its PT_INTERP, if any (a program, not a library)
};

template <typename Ehdr, typename Phdr>
ElfLoading
loading_of(int fd, const std::string& head)
{
  ElfLoading loading;
  if (head.size() < sizeof(Ehdr)) {
    return loading;
  }
  Ehdr header;
  std::memcpy(&header, head.data(), sizeof header);
  // PN_XNUM (0xffff) and absurd counts: not read here (ldd decides).
  if (header.e_phentsize != sizeof(Phdr) || header.e_phnum == 0 || header.e_phnum > 512) {
    return loading;
  }
  std::vector<Phdr> program_headers(header.e_phnum);
  size_t size = program_headers.size() * sizeof(Phdr);
  if (::pread(fd, program_headers.data(), size, static_cast<off_t>(header.e_phoff)) !=
      static_cast<ssize_t>(size)) {
    return loading;
  }
  for (const auto& ph : program_headers) {
    if (ph.p_type == PT_DYNAMIC) {
      loading.dynamic = true;
    } else if (ph.p_type == PT_INTERP) {
      if (ph.p_filesz == 0 || ph.p_filesz > 4096) {
        return loading;
      }
      std::string interpreter(ph.p_filesz, '\0');
      if (::pread(fd, interpreter.data(), interpreter.size(), static_cast<off_t>(ph.p_offset)) !=
          static_cast<ssize_t>(interpreter.size())) {
        return loading;
      }
      interpreter.resize(std::strlen(interpreter.c_str())); // NUL-terminated, or cut at the size
      if (interpreter.empty()) {
        return loading;
      }
      loading.interpreter = interpreter;
    }
  }
  loading.readable = true;
  return loading;
}

ElfLoading
elf_loading(const fs::path& program)
{
  UniqueFd fd(::open(program.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return {};
  }
  std::string head(sizeof(Elf64_Ehdr), '\0');
  ssize_t got = ::pread(fd.get(), head.data(), head.size(), 0);
  if (got < EI_NIDENT) {
    return {};
  }
  head.resize(static_cast<size_t>(got));
  bool little = head[EI_DATA] == ELFDATA2LSB;
  if (!little && head[EI_DATA] != ELFDATA2MSB) {
    return {};
  }
  if (little != (std::endian::native == std::endian::little)) {
    return {}; // another host's file: its headers would be misread
  }
  if (head[EI_CLASS] == ELFCLASS64) {
    return loading_of<Elf64_Ehdr, Elf64_Phdr>(fd.get(), head);
  }
  if (head[EI_CLASS] == ELFCLASS32) {
    return loading_of<Elf32_Ehdr, Elf32_Phdr>(fd.get(), head);
  }
  return {};
}

// Whether `loader` is the system's: a root-owned regular file that only
// root may change, in a system library folder (symlinks resolved).
bool
system_loader(const std::string& loader)
{
  std::error_code ec;
  fs::path real = fs::canonical(loader, ec);
  if (ec) {
    return false;
  }
  std::string text = real.string();
  bool in_system_folder = false;
  for (const char* folder : {"/lib/", "/lib64/", "/lib32/", "/libx32/", "/usr/lib/",
                             "/usr/lib64/", "/usr/lib32/", "/usr/libx32/"}) {
    in_system_folder = in_system_folder || text.starts_with(folder);
  }
  struct stat st;
  return in_system_folder && ::stat(text.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

// What the dynamic loader lists for `program`, in ldd's format.
std::string
list_libraries(const fs::path& program)
{
  ElfLoading loading = elf_loading(program);
  if (loading.readable && !loading.dynamic && loading.interpreter.empty()) {
    return {}; // static: needs no loader and no libraries
  }
  if (loading.readable && !loading.interpreter.empty()) {
    if (loading.interpreter[0] == '/' && !fs::exists(fs::path(loading.interpreter))) {
      throw SandboxError("tool '" + program.string() + "' names '" + loading.interpreter +
                         "' as its ELF interpreter, which does not exist");
    }
    if (system_loader(loading.interpreter)) {
      ProcessResult listed = run_process({loading.interpreter, "--list", program.string()});
      // glibc's loader lists and exits 0, or lists what it cannot find and
      // exits 127: both are answers. Anything else is left to ldd.
      if (listed.status == 0 || listed.out.find("=> not found") != std::string::npos) {
        return listed.out;
      }
    }
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

} // namespace kiln::sandbox_impl

namespace kiln {

std::vector<std::filesystem::path>
tools_closure(const std::vector<std::filesystem::path>& tools)
{
  namespace fs = std::filesystem;
  using sandbox_impl::is_within;
  using sandbox_impl::needs_of;
  // A file inside a folder tool is part of that folder, which is visible
  // whole and, like every folder tool, not examined: what its programs need
  // beyond it is for the declaration to list. (Asking the loader about each
  // library found inside /usr costs a process per library, per build step.)
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

void
look_at_tools(const std::vector<std::filesystem::path>& tools)
{
  try {
    tools_closure(tools);
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
