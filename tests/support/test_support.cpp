#include "support/test_support.hpp"

#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <poll.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <chrono>
#include <random>
#include <regex>
#include <thread>

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

namespace {
std::vector<std::string>&
skip_list()
{
  static std::vector<std::string> list;
  return list;
}
} // namespace

void
skip(const std::string& reason)
{
  WARN("skipped: " << reason);
  skip_list().push_back(reason);
}

const std::vector<std::string>&
skips()
{
  return skip_list();
}

std::string
kiln_binary()
{
  return KILN_BINARY;
}

RunOptions
in_dir(const std::filesystem::path& dir)
{
  RunOptions options;
  options.cwd = dir;
  return options;
}

uint64_t
closure_nar_size(const LocalStore& store, const std::set<StorePath>& paths)
{
  uint64_t total = 0;
  for (const auto& p : store.closure(paths)) {
    total += store.query_path_info(p)->nar_size;
  }
  return total;
}

RunResult
kiln(const std::vector<std::string>& args, const RunOptions& options)
{
  std::vector<std::string> argv = {kiln_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, options);
}

RunResult
kiln_in(const fs::path& cwd, const std::vector<std::string>& args,
        const std::map<std::string, std::string>& env)
{
  RunOptions options;
  options.cwd = cwd;
  options.env = env;
  return kiln(args, options);
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

std::string
nar_of(const fs::path& path)
{
  StringSink sink;
  dump_path(path, sink);
  return sink.s;
}

StorePath
add_test_object(LocalStore& store, const std::string& name, const std::string& contents,
                const std::set<StorePath>& refs)
{
  TempDir dir;
  std::string body = contents;
  for (const auto& r : refs) {
    body += "\n" + store.print(r);
  }
  write_file(dir / "f", body);
  std::string nar = nar_of(dir / "f");
  StorePath path = store.store_dir().make_store_path(
    "output:out", hash_string(HashAlgo::sha256, name + body), name);
  PathInfo info(path);
  info.nar_hash = hash_string(HashAlgo::sha256, nar);
  info.nar_size = nar.size();
  info.references = refs;
  StringSource in(nar);
  store.add_nar(info, in);
  return path;
}

int
connect_loopback(int port)
{
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in addr {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  struct timeval timeout = {10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  return fd;
}

const char* const k_two_step_project = R"(derivations:
  header:
    builder: /bin/sh
    tools: [/bin/sh, /bin/busybox]
    args: ["-c", "busybox mkdir -p $out/include && busybox echo '#define GREETING 1' > $out/include/greeting.h"]
  app:
    builder: /bin/sh
    tools: [/bin/sh, /bin/busybox]
    srcs: [./src]
    deps: [header]
    env: {MODE: release}
    args: ["-c", "busybox mkdir $out && busybox cat $header/include/greeting.h $src/main.c > $out/main.c && busybox echo $header > $out/uses && busybox echo $MODE > $out/mode"]
)";

int
free_port()
{
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

BackgroundProcess::BackgroundProcess(const std::vector<std::string>& argv, const fs::path& log)
  : m_log(log)
{
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (auto& a : copy) {
    args.push_back(a.data());
  }
  args.push_back(nullptr);
  m_pid = ::fork();
  if (m_pid == 0) {
    int null = ::open("/dev/null", O_RDWR);
    int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(null, 0);
    ::dup2(err, 1);
    ::dup2(err, 2);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
}

BackgroundProcess::~BackgroundProcess()
{
  if (!m_stopped && m_pid > 0) {
    stop();
  }
}

std::string
BackgroundProcess::stderr_text() const
{
  try {
    return read_file(m_log);
  } catch (...) {
    return {};
  }
}

bool
BackgroundProcess::wait_for_stderr(const std::string& text, int seconds)
{
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (stderr_text().find(text) != std::string::npos) {
      return true;
    }
    int status = 0;
    if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
      m_stopped = true;
      m_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return stderr_text().find(text) != std::string::npos;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

int
BackgroundProcess::stop()
{
  if (m_stopped) {
    return m_status;
  }
  ::kill(m_pid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 500; ++i) {
    if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
      m_stopped = true;
      m_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return m_status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(m_pid, SIGKILL);
  ::waitpid(m_pid, &status, 0);
  m_stopped = true;
  m_status = 128 + SIGKILL;
  return m_status;
}

PrivateNix::PrivateNix()
{
  INFO("these tests need Debian's nix-bin (./setup installs it)");
  REQUIRE(have_program("nix"));
  for (const char* d : {"home", "cache", "state", "log"}) {
    fs::create_directories(m_dir / d);
  }
}

std::string
PrivateNix::store() const
{
  return "local?root=" + (m_dir / "root").string() + "&store=/kiln/store";
}

fs::path
PrivateNix::physical(const std::string& store_path) const
{
  // Nix 2.8 keeps a chroot store's objects under <root>/nix/store whatever
  // the logical store directory.
  return m_dir / "root" / "nix" / "store" / fs::path(store_path).filename();
}

KilnServe::KilnServe(std::vector<std::string> args, const fs::path& log_file)
{
  args.insert(args.begin(), {kiln_binary(), "serve"});
  args.insert(args.end(), {"--listen", "127.0.0.1:0"});
  m_process = std::make_unique<BackgroundProcess>(args, log_file);
  bool ready = m_process->wait_for_stderr("listening on http", 20);
  INFO(m_process->stderr_text());
  REQUIRE(ready);
  std::smatch m;
  std::string text = m_process->stderr_text();
  REQUIRE(std::regex_search(text, m, std::regex("listening on https?://127\\.0\\.0\\.1:(\\d+)")));
  port = std::stoi(m[1]);
  url = "http://127.0.0.1:" + std::to_string(port);
}

KilnServe::KilnServe(const fs::path& config, const fs::path& log_file)
  : KilnServe(std::vector<std::string>{"--config", config.string()}, log_file)
{
}

RunResult
PrivateNix::run(std::vector<std::string> args) const
{
  if (args[0] == "nix") {
    args.insert(args.begin() + 1, {"--extra-experimental-features", "nix-command"});
  }
  RunOptions o;
  o.env = {{"HOME", (m_dir / "home").string()},
           {"XDG_CACHE_HOME", (m_dir / "cache").string()},
           {"NIX_STORE_DIR", "/kiln/store"},
           {"NIX_STATE_DIR", (m_dir / "state").string()},
           {"NIX_LOG_DIR", (m_dir / "log").string()},
           // Builds run as the caller: Debian's nix-bin creates no nixbld
           // group unless nix-setup-systemd (a Recommends) is installed.
           {"NIX_CONFIG", "build-users-group =\n"}};
  o.unset_env = {"NIX_REMOTE", "NIX_PATH"};
  o.cwd = m_dir.path();
  return test::run(args, o);
}

Nginx::Nginx(const fs::path& root)
  : Nginx([root](int port) {
      return "server {\n"
             "  listen 127.0.0.1:" + std::to_string(port) + ";\n"
             "  root " + root.string() + ";\n"
             "  location / {\n"
             "    dav_methods PUT;\n"
             "    create_full_put_path on;\n"
             "    dav_access user:rw group:r all:r;\n"
             "  }\n"
             "}\n";
    })
{
}

Nginx::Nginx(const std::function<std::string(int port)>& site) : m_port(free_port())
{
  fs::create_directories(m_dir / "logs");
  fs::create_directories(m_dir / "tmp");
  write_file(m_dir / "nginx.conf",
             "daemon off;\n"
             "worker_processes 1;\n"
             "user root;\n"
             "error_log " + (m_dir / "logs" / "error.log").string() + ";\n"
             "pid " + (m_dir / "nginx.pid").string() + ";\n"
             "worker_rlimit_nofile 8192;\n"
             "events { worker_connections 4096; }\n"
             "http {\n"
             "  access_log off;\n"
             "  client_body_temp_path " + (m_dir / "tmp").string() + ";\n"
             "  client_max_body_size 0;\n" +
             site(m_port) +
             "}\n");
  m_process = std::make_unique<BackgroundProcess>(
    std::vector<std::string>{"nginx", "-p", m_dir.path().string(), "-c",
                             (m_dir / "nginx.conf").string()},
    m_dir / "stderr.log");
  // Ready once it accepts connections.
  for (int i = 0; i < 500; ++i) {
    if (run({"bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(m_port)}).status == 0) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw Error("nginx did not start: " + m_process->stderr_text() + error_log());
}

std::string
Nginx::error_log() const
{
  try {
    return read_file(m_dir / "logs" / "error.log");
  } catch (...) {
    return {};
  }
}

} // namespace kiln::test
