// Supervising a running build: its output copied into the log (and to
// SandboxOptions::on_output), its timeouts enforced, the messages of its
// sandbox's processes read from the status pipe, until it ends; and Child,
// the process that is killed and reaped if kiln leaves before it ends.
#include "sandbox_impl.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>

namespace kiln::sandbox_impl {

Child::Child(pid_t pid, SandboxMode mode) : m_pid(pid), m_mode(mode)
{
}

Child::~Child()
{
  if (!m_reaped) {
    kill_hard();
    int status;
    while (::waitpid(m_pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

pid_t
Child::pid() const
{
  return m_pid;
}

void
Child::stop()
{
  if (m_mode == SandboxMode::namespaces) {
    ::kill(m_pid, SIGKILL);
  } else {
    ::kill(m_pid, SIGTERM);
  }
}

void
Child::kill_hard()
{
  if (m_reaped) {
    return;
  }
  if (m_mode == SandboxMode::clean_env) {
    ::kill(-m_pid, SIGKILL);
  }
  ::kill(m_pid, SIGKILL);
}

bool
Child::poll_exit()
{
  if (!m_reaped) {
    int status;
    pid_t r = ::waitpid(m_pid, &status, WNOHANG);
    if (r == m_pid) {
      m_reaped = true;
      m_status = status;
    }
  }
  return m_reaped;
}

void
Child::wait()
{
  while (!m_reaped) {
    int status;
    pid_t r = ::waitpid(m_pid, &status, 0);
    if (r == m_pid) {
      m_reaped = true;
      m_status = status;
    } else if (r < 0 && errno != EINTR) {
      throw_errno("waiting for the build process");
    }
  }
}

int
Child::status() const
{
  return m_status;
}

namespace {

using Clock = std::chrono::steady_clock;

// One supervise call: the state its steps share.
class Supervisor
{
public:
  Supervisor(Child& child, SandboxMode mode, int log_read, int status_read, int log_fd,
             const BuildSpec& spec, const SandboxOptions& options,
             const std::function<void()>& on_need_map)
    : m_child(child), m_mode(mode), m_log_read(log_read), m_status_read(status_read),
      m_log_fd(log_fd), m_spec(spec), m_options(options), m_on_need_map(on_need_map),
      m_start(Clock::now()), m_last_output(m_start)
  {
  }

  Supervised
  run()
  {
    while (m_log_open || m_status_open) {
      Deadlines deadlines = next_deadlines();
      wait_for_pipes(deadlines.wait_ms);
      enforce(deadlines);
      if (m_child.poll_exit() && (m_log_open || m_status_open)) {
        drain();
        break;
      }
    }
    m_child.wait();
    return m_result;
  }

private:
  // When the next poll must end, and the deadlines as they were before it.
  struct Deadlines
  {
    int wait_ms = 0;
    std::optional<Clock::time_point> timeout;
    std::optional<Clock::time_point> silence;
  };

  Deadlines
  next_deadlines() const
  {
    Deadlines out;
    auto now = Clock::now();
    // Wake at least every 200 ms: if the sandbox process is gone while
    // something it could not kill still holds a pipe, stop waiting for it.
    auto wake = now + std::chrono::milliseconds(200);
    if (m_result.killed == Killed::no) {
      if (m_spec.timeout.count() > 0) {
        out.timeout = m_start + m_spec.timeout;
        wake = std::min(wake, *out.timeout);
      }
      if (m_spec.max_silent_time.count() > 0) {
        out.silence = m_last_output + m_spec.max_silent_time;
        wake = std::min(wake, *out.silence);
      }
    }
    out.wait_ms = static_cast<int>(std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count() + 1));
    return out;
  }

  // Wait up to `wait_ms` for either pipe, and read what it has.
  void
  wait_for_pipes(int wait_ms)
  {
    struct pollfd fds[2];
    nfds_t count = 0;
    int log_index = -1;
    int status_index = -1;
    if (m_log_open) {
      log_index = static_cast<int>(count);
      fds[count++] = {m_log_read, POLLIN, 0};
    }
    if (m_status_open) {
      status_index = static_cast<int>(count);
      fds[count++] = {m_status_read, POLLIN, 0};
    }
    int ready = ::poll(fds, count, wait_ms);
    if (ready < 0 && errno != EINTR) {
      throw_errno("waiting for the build");
    }
    if (ready > 0) {
      if (log_index >= 0 && fds[log_index].revents) {
        read_log();
      }
      if (status_index >= 0 && fds[status_index].revents) {
        read_status();
      }
    }
  }

  // Kill the build once past a deadline, and the whole session once it
  // ignored SIGTERM too long.
  void
  enforce(const Deadlines& deadlines)
  {
    auto now = Clock::now();
    if (m_result.killed == Killed::no) {
      if (deadlines.timeout && now >= *deadlines.timeout) {
        kill_for(Killed::timeout);
      } else if (deadlines.silence && now >= *deadlines.silence) {
        kill_for(Killed::silence);
      }
    }
    if (m_hard_kill_pending && now >= m_hard_kill_at) {
      m_child.kill_hard();
      m_hard_kill_pending = false;
    }
  }

  // The sandbox process has ended: take what is already in the pipes, but
  // do not wait for more.
  void
  drain()
  {
    for (int round = 0; round < 1024 && (m_log_open || m_status_open); ++round) {
      struct pollfd left[2];
      nfds_t n = 0;
      if (m_log_open) {
        left[n++] = {m_log_read, POLLIN, 0};
      }
      if (m_status_open) {
        left[n++] = {m_status_read, POLLIN, 0};
      }
      if (::poll(left, n, 0) <= 0) {
        break;
      }
      bool any = false;
      for (nfds_t i = 0; i < n; ++i) {
        if (left[i].revents) {
          any = true;
          left[i].fd == m_log_read ? read_log() : read_status();
        }
      }
      if (!any) {
        break;
      }
    }
  }

  // Read what pipe `fd` holds into `buf`: how many bytes, 0 if interrupted
  // or if the pipe is closed (then `open` becomes false).
  static size_t
  read_pipe(int fd, char* buf, size_t size, bool& open, const char* what)
  {
    ssize_t n = ::read(fd, buf, size);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        return 0;
      }
      throw_errno(what);
    }
    if (n == 0) {
      open = false;
    }
    return static_cast<size_t>(n);
  }

  void
  read_log()
  {
    size_t n = read_pipe(m_log_read, m_buf, sizeof m_buf, m_log_open, "reading the build's output");
    if (n == 0) {
      return;
    }
    std::string_view chunk(m_buf, n);
    write_all(m_log_fd, chunk, "the build log");
    if (m_options.on_output) {
      m_options.on_output(chunk);
    }
    m_last_output = Clock::now();
  }

  void
  read_status()
  {
    char bytes[256];
    size_t n = read_pipe(m_status_read, bytes, sizeof bytes, m_status_open,
                         "reading the sandbox's status");
    if (n == 0) {
      return;
    }
    m_status_bytes.append(bytes, n);
    while (m_status_bytes.size() >= sizeof(ChildMessage)) {
      ChildMessage message;
      std::memcpy(&message, m_status_bytes.data(), sizeof message);
      m_status_bytes.erase(0, sizeof message);
      switch (message.kind) {
      case ChildMessage::need_map: m_on_need_map(); break;
      case ChildMessage::setup_failed: m_result.setup_failure = message; break;
      case ChildMessage::exec_failed: m_result.exec_failure = message; break;
      case ChildMessage::exited: m_result.exit = message; break;
      default: break;
      }
    }
  }

  void
  kill_for(Killed why)
  {
    m_result.killed = why;
    m_child.stop();
    if (m_mode == SandboxMode::clean_env) {
      m_hard_kill_pending = true;
      m_hard_kill_at = Clock::now() + std::chrono::seconds(5);
    }
  }

  Child& m_child;
  SandboxMode m_mode;
  int m_log_read;
  int m_status_read;
  int m_log_fd;
  const BuildSpec& m_spec;
  const SandboxOptions& m_options;
  const std::function<void()>& m_on_need_map;
  Supervised m_result;
  Clock::time_point m_start;
  Clock::time_point m_last_output;
  // Clean-env mode: when to kill the whole session if SIGTERM was not enough.
  bool m_hard_kill_pending = false;
  Clock::time_point m_hard_kill_at{};
  bool m_log_open = true;
  bool m_status_open = true;
  std::string m_status_bytes;
  char m_buf[65536];
};

} // namespace

Supervised
supervise(Child& child, SandboxMode mode, int log_read, int status_read, int log_fd,
          const BuildSpec& spec, const SandboxOptions& options,
          const std::function<void()>& on_need_map)
{
  return Supervisor(child, mode, log_read, status_read, log_fd, spec, options, on_need_map).run();
}

} // namespace kiln::sandbox_impl
