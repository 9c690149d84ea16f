#include "support/test_support.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>

extern char** environ;

namespace kiln::test {

TempDir::TempDir()
{
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/kiln-test-XXXXXX";
  if (!::mkdtemp(pattern.data())) {
    throw_errno("creating a temporary folder");
  }
  m_path = pattern;
}

TempDir::~TempDir()
{
  try {
    delete_path(m_path);
  } catch (...) {
  }
}

RunResult
run(const std::vector<std::string>& argv, const RunOptions& options)
{
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw_errno("creating pipes");
  }
  std::string stdin_path;
  std::optional<TempDir> stdin_dir;
  if (options.stdin_file) {
    stdin_path = options.stdin_file->string();
  } else {
    stdin_dir.emplace();
    stdin_path = (stdin_dir->path() / "stdin").string();
    write_file(stdin_path, options.stdin_data);
  }

  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string entry = *e;
    auto eq = entry.find('=');
    if (eq != std::string::npos) {
      env[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
  }
  for (const auto& name : options.unset_env) {
    env.erase(name);
  }
  for (const auto& [k, v] : options.env) {
    env[k] = v;
  }
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) {
    env_strings.push_back(k + "=" + v);
  }
  std::vector<char*> envp;
  for (auto& s : env_strings) {
    envp.push_back(s.data());
  }
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argvp;
  for (auto& s : args) {
    argvp.push_back(s.data());
  }
  argvp.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) {
    throw_errno("fork");
  }
  if (pid == 0) {
    if (options.cwd && ::chdir(options.cwd->c_str()) != 0) {
      _exit(126);
    }
    int in = ::open(stdin_path.c_str(), O_RDONLY);
    ::dup2(in, 0);
    if (options.stdout_file) {
      int out = ::open(options.stdout_file->c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out, 1);
    } else {
      ::dup2(out_pipe[1], 1);
    }
    ::dup2(err_pipe[1], 2);
    ::execvpe(argvp[0], argvp.data(), envp.data());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  RunResult result;
  struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_count = 2;
  char buf[65536];
  while (open_count > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw_errno("poll");
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
        if (n <= 0) {
          ::close(fds[i].fd);
          fds[i].fd = -1;
          --open_count;
        } else {
          (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(n));
        }
      }
    }
  }
  int status = 0;
  struct rusage usage;
  ::wait4(pid, &status, 0, &usage);
  result.max_rss_kib = usage.ru_maxrss;
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string
kiln_binary()
{
  return KILN_BINARY;
}

RunResult
kiln(const std::vector<std::string>& args, const RunOptions& options)
{
  std::vector<std::string> argv = {kiln_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, options);
}

bool
have_program(const std::string& program)
{
  return run({"sh", "-c", "command -v '" + program + "'"}).status == 0;
}

void
write_file(const fs::path& path, const std::string& content, bool executable)
{
  if (path.has_parent_path()) {
    fs::create_directories(path.parent_path());
  }
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                     executable ? 0755 : 0644));
  if (!fd) {
    throw_errno("writing '" + path.string() + "'");
  }
  write_all(fd.get(), content, "writing '" + path.string() + "'");
  ::fchmod(fd.get(), executable ? 0755 : 0644);
}

std::string
output_of(const RunResult& result, const std::string& what)
{
  INFO(what << " stderr: " << result.err);
  REQUIRE(result.status == 0);
  std::string out = result.out;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
    out.pop_back();
  }
  return out;
}

std::string
random_bytes(size_t size, uint64_t seed)
{
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
  }
  for (; i < size; ++i) {
    out[i] = static_cast<char>(rng());
  }
  return out;
}

} // namespace kiln::test
