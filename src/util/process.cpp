#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

extern char** environ;

namespace kiln {

namespace fs = std::filesystem;

namespace {

// NUL-terminated arrays of C strings owning their text, made before the
// child starts.
class CStrings
{
public:
  explicit CStrings(std::vector<std::string> items) : m_items(std::move(items))
  {
    for (auto& item : m_items) {
      m_pointers.push_back(item.data());
    }
    m_pointers.push_back(nullptr);
  }
  CStrings(const CStrings&) = delete;
  CStrings& operator=(const CStrings&) = delete;
  char** get() { return m_pointers.data(); }

private:
  std::vector<std::string> m_items;
  std::vector<char*> m_pointers;
};

bool
unset(const std::string& name, const std::vector<std::string>& patterns)
{
  for (const auto& p : patterns) {
    if (p.ends_with('*') ? name.starts_with(std::string_view(p).substr(0, p.size() - 1))
                         : name == p) {
      return true;
    }
  }
  return false;
}

std::vector<std::string>
environment_for(const ProcessOptions& options)
{
  std::map<std::string, std::string> all;
  for (char** e = environ; *e; ++e) {
    std::string entry = *e;
    auto eq = entry.find('=');
    if (eq != std::string::npos && !unset(entry.substr(0, eq), options.unset_env)) {
      all[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
  }
  for (const auto& [k, v] : options.env) {
    all[k] = v;
  }
  std::vector<std::string> items;
  for (const auto& [k, v] : all) {
    items.push_back(k + "=" + v);
  }
  return items;
}

// Reads the child's stdout and stderr as they come, until both close.
class OutputReader
{
public:
  OutputReader(const ProcessOptions& options, ProcessResult& result)
    : m_options(options), m_result(result)
  {
  }

  void
  read(UniqueFd out, UniqueFd err)
  {
    struct pollfd fds[2] = {{out ? out.get() : -1, POLLIN, 0}, {err ? err.get() : -1, POLLIN, 0}};
    int open_fds = (out ? 1 : 0) + (err ? 1 : 0);
    char buffer[65536];
    while (open_fds > 0) {
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) {
          continue;
        }
        throw_errno("waiting for a child's output");
      }
      for (int i = 0; i < 2; ++i) {
        if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
          continue;
        }
        ssize_t n = ::read(fds[i].fd, buffer, sizeof buffer);
        if (n > 0) {
          take(i == 0, std::string_view(buffer, static_cast<size_t>(n)));
        } else if (n == 0 || errno != EINTR) {
          fds[i].fd = -1;
          --open_fds;
        }
      }
    }
    if (!m_pending_line.empty() && m_options.on_stderr_line) {
      m_options.on_stderr_line(m_pending_line);
    }
  }

private:
  void
  take(bool is_stdout, std::string_view data)
  {
    if (!is_stdout && m_options.on_stderr_line) {
      m_pending_line.append(data);
      size_t start = 0;
      for (size_t nl; (nl = m_pending_line.find('\n', start)) != std::string::npos; start = nl + 1) {
        m_options.on_stderr_line(m_pending_line.substr(start, nl - start));
      }
      m_pending_line.erase(0, start);
      return;
    }
    std::string& to = is_stdout ? m_result.out : m_result.err;
    if (to.size() < m_options.max_output) {
      to.append(data.substr(0, m_options.max_output - to.size()));
    }
  }

  const ProcessOptions& m_options;
  ProcessResult& m_result;
  std::string m_pending_line;
};

// posix_spawn's file actions, freed however spawning ends.
class SpawnActions
{
public:
  SpawnActions() { posix_spawn_file_actions_init(&m_actions); }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&m_actions); }
  SpawnActions(const SpawnActions&) = delete;
  SpawnActions& operator=(const SpawnActions&) = delete;
  posix_spawn_file_actions_t* get() { return &m_actions; }

private:
  posix_spawn_file_actions_t m_actions;
};

std::pair<UniqueFd, UniqueFd>
make_pipe()
{
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw_errno("creating a pipe");
  }
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

} // namespace

std::string
ProcessResult::describe() const
{
  return signaled ? "killed by signal " + std::to_string(status - 128)
                  : "exit " + std::to_string(status);
}

std::string
describe_failure(const std::vector<std::string>& argv, const ProcessResult& result)
{
  std::string command;
  for (const auto& a : argv) {
    command += (command.empty() ? "" : " ") + a;
  }
  std::string err = result.err;
  while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) {
    err.pop_back();
  }
  return "`" + command + "` failed (" + result.describe() + ")" + (err.empty() ? "" : ":\n" + err);
}

std::optional<fs::path>
find_program(const std::string& name)
{
  auto executable = [](const fs::path& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
  };
  if (name.find('/') != std::string::npos) {
    return executable(name) ? std::optional<fs::path>(fs::absolute(name)) : std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    fs::path candidate = fs::path(dir.empty() ? "." : dir) / name;
    if (executable(candidate)) {
      return candidate;
    }
  }
  return std::nullopt;
}

ProcessResult
run_process(const std::vector<std::string>& argv, const ProcessOptions& options)
{
  ProcessResult result;
  auto program = argv.empty() ? std::nullopt : find_program(argv[0]);
  if (!program) {
    result.status = 127;
    result.err = "cannot run '" + (argv.empty() ? std::string() : argv[0]) +
                 "': not found" + (argv.empty() || argv[0].find('/') != std::string::npos
                                     ? ""
                                     : " on PATH");
    return result;
  }
  CStrings args(argv);
  CStrings envp(environment_for(options));
  SpawnActions actions;
  posix_spawn_file_actions_addopen(actions.get(), 0, "/dev/null", O_RDONLY, 0);
  auto [out_read, out_write] = make_pipe();
  auto [err_read, err_write] = make_pipe();
  if (options.stdout_file) {
    posix_spawn_file_actions_addopen(actions.get(), 1, options.stdout_file->c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    out_read.reset();
  } else {
    posix_spawn_file_actions_adddup2(actions.get(), out_write.get(), 1);
  }
  posix_spawn_file_actions_adddup2(actions.get(),
                                   options.merge_stderr && !options.stdout_file ? out_write.get()
                                                                                : err_write.get(),
                                   2);
  if (options.merge_stderr && !options.stdout_file) {
    err_read.reset();
  }
  if (options.cwd) {
    posix_spawn_file_actions_addchdir_np(actions.get(), options.cwd->c_str());
  }
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, program->c_str(), actions.get(), nullptr, args.get(), envp.get());
  out_write.reset();
  err_write.reset();
  if (rc != 0) {
    result.status = 127;
    result.err = "cannot run '" + program->string() + "': " + std::strerror(rc);
    return result;
  }
  OutputReader(options, result).read(std::move(out_read), std::move(err_read));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.signaled = WIFSIGNALED(status);
  result.status = result.signaled ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
  return result;
}

} // namespace kiln
