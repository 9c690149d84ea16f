// The processes that run a build, and the probe for namespaces.
//
// Everything here between fork()/clone() and exec() runs in a copy of a
// possibly multi-threaded process, where another thread may have held the
// allocator's lock at the moment of the copy: that code makes system calls
// only — no allocation, no exceptions, no stdio — and reports failures to
// the parent as fixed-size ChildMessages. Nor may it call glibc's fork()
// (it takes the allocator's locks for its atfork handlers) or its set*id()
// (they signal every thread glibc believes in, under glibc's own locks):
// after clone() glibc still believes in the parent's threads, so those are
// raw system calls here.
//
// Namespaces mode (spawn_in_namespaces):
//
//   parent ──clone(NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS[|NEWUSER])──► init (PID 1)
//     init: mounts private, replays the RootPlan, hostname, loopback up,
//           pivot_root, root read-only, drops ids (root) or capabilities,
//           [user namespace], stdin /dev/null, stdout+stderr the log pipe
//     init ──fork──► builder (PID 2) ──exec──► the derivation's builder
//     init reaps everything until the builder exits, reports its status and
//     exits; the kernel then kills whatever is left in the PID namespace.
//
// Clean-env mode (spawn_clean): the same without namespaces; the first
// process leads a new session and is the subreaper of the build, so that
// even daemons that double-fork and setsid() end up its children and are
// killed when the builder exits.
#include "sandbox_impl.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kiln::sandbox_impl {

namespace {

// --- Async-signal-safe helpers (child side) ---

void
send_message(int fd, const ChildMessage& message)
{
  const char* p = reinterpret_cast<const char*>(&message);
  size_t left = sizeof message;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

[[noreturn]] void
fail(int status_fd, int32_t step, int error)
{
  ChildMessage message;
  message.kind = ChildMessage::setup_failed;
  message.step = step;
  message.error = error;
  send_message(status_fd, message);
  ::_exit(1);
}

// Decimal digits of `value` into `out` (room for 21 bytes), NUL-terminated;
// returns the end.
char*
format_uint(char* out, unsigned long value)
{
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value > 0);
  char* p = out;
  while (n > 0) {
    *p++ = digits[--n];
  }
  *p = '\0';
  return p;
}

// Write `text` to an existing file (a /proc control file); false with errno.
bool
write_proc_file(const char* path, const char* text)
{
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  size_t len = std::strlen(text);
  ssize_t n = ::write(fd, text, len);
  int saved = errno;
  ::close(fd);
  errno = saved;
  return n == static_cast<ssize_t>(len);
}

// "<inside> <outside> 1\n"
void
format_map(char* out, unsigned long inside, unsigned long outside)
{
  char* p = format_uint(out, inside);
  *p++ = ' ';
  p = format_uint(p, outside);
  std::memcpy(p, " 1\n", 4);
}

// Block until the parent writes the go byte; false if it closed the pipe
// or kiln ended. Both are watched: a sibling sandbox forked meanwhile holds
// a copy of the pipe's write end, so the pipe alone may never close, and
// changing credentials has disarmed the parent-death signal by now (two
// siblings waiting so outlived a killed kiln, each holding the other's pipe).
bool
wait_go(int fd, int parent_pidfd)
{
  while (true) {
    struct pollfd watched[2] = {{fd, POLLIN, 0}, {parent_pidfd, POLLIN, 0}};
    int n = ::poll(watched, parent_pidfd >= 0 ? 2 : 1, -1);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 || (parent_pidfd >= 0 && watched[1].revents != 0)) {
      return false;
    }
    char byte;
    ssize_t got = ::read(fd, &byte, 1);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    return got == 1;
  }
}

int
run_step(const SetupStep& step)
{
  const char* target = step.target.c_str();
  switch (step.kind) {
  case SetupStep::Kind::mkdir:
    if (::mkdir(target, step.mode) != 0 && errno != EEXIST) {
      return errno;
    }
    return 0;
  case SetupStep::Kind::touch: {
    int fd = ::open(target, O_WRONLY | O_CREAT | O_CLOEXEC, step.mode);
    if (fd < 0) {
      return errno;
    }
    ::close(fd);
    return 0;
  }
  case SetupStep::Kind::symlink:
    if (::symlink(step.source.c_str(), target) != 0 && errno != EEXIST) {
      return errno;
    }
    return 0;
  case SetupStep::Kind::bind:
    if (::mount(step.source.c_str(), target, nullptr, MS_BIND, nullptr) != 0) {
      return errno;
    }
    return 0;
  case SetupStep::Kind::remount:
    if (::mount(nullptr, target, nullptr, MS_REMOUNT | MS_BIND | step.flags, nullptr) != 0) {
      return errno;
    }
    return 0;
  case SetupStep::Kind::mount:
    if (::mount(step.source.c_str(), target, step.fs_type.c_str(), step.flags,
                step.data.empty() ? nullptr : step.data.c_str()) != 0) {
      return errno;
    }
    return 0;
  case SetupStep::Kind::write: {
    int fd = ::open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, step.mode);
    if (fd < 0) {
      return errno;
    }
    const char* p = step.source.data();
    size_t left = step.source.size();
    while (left > 0) {
      ssize_t n = ::write(fd, p, left);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        int saved = errno;
        ::close(fd);
        return saved ? saved : EIO;
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
    ::close(fd);
    return 0;
  }
  }
  return EINVAL;
}

// The network namespace starts with a loopback interface that is down;
// builds may talk to themselves over it (test suites do), never further.
int
bring_up_loopback()
{
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return errno;
  }
  struct ifreq request;
  std::memset(&request, 0, sizeof request);
  std::memcpy(request.ifr_name, "lo", 3);
  int rc = ::ioctl(fd, SIOCGIFFLAGS, &request);
  if (rc == 0) {
    request.ifr_flags |= IFF_UP | IFF_RUNNING;
    rc = ::ioctl(fd, SIOCSIFFLAGS, &request);
  }
  int saved = rc == 0 ? 0 : errno;
  ::close(fd);
  return saved;
}

int
drop_capabilities()
{
  struct __user_cap_header_struct header;
  header.version = _LINUX_CAPABILITY_VERSION_3;
  header.pid = 0;
  struct __user_cap_data_struct data[2];
  std::memset(data, 0, sizeof data);
  if (::syscall(SYS_capset, &header, data) != 0) {
    return errno;
  }
  return 0;
}

// Whether the parent has closed its end of the go pipe (it has died).
bool
parent_gone(int go_fd)
{
  struct pollfd pfd = {go_fd, POLLIN, 0};
  return ::poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

// Whether kiln has ended. The parent-death signal comes only for a death
// after it was armed: a child checks this once it is, so that it never
// outlives a kiln that died while it was starting (another child's copy
// of the go pipe would hide that from parent_gone).
bool
kiln_died(int parent_pidfd)
{
  struct pollfd pfd = {parent_pidfd, POLLIN, 0};
  return parent_pidfd >= 0 && ::poll(&pfd, 1, 0) == 1;
}

// fork() without glibc's atfork machinery (see above).
pid_t
raw_fork()
{
  return static_cast<pid_t>(::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
}

void
close_from(int first)
{
  if (::syscall(SYS_close_range, first, ~0U, 0) == 0) {
    return;
  }
  struct rlimit limit;
  rlim_t max = ::getrlimit(RLIMIT_NOFILE, &limit) == 0 ? limit.rlim_cur : 1024;
  if (max > 65536) {
    max = 65536;
  }
  for (int fd = first; fd < static_cast<int>(max); ++fd) {
    ::close(fd);
  }
}

[[noreturn]] void
exec_builder(const ChildConfig& config, pid_t supervisor)
{
  // Nothing of the parent's signal state may leak into the build: kiln
  // ignores SIGPIPE, and ignored signals survive exec.
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    ::sigaction(sig, &action, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::umask(022);
  // If the supervising process dies, so does the builder (in namespaces
  // mode the kernel sees to the rest; in clean-env mode this is all we get).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != supervisor) {
    ::_exit(1); // the supervisor died before the signal was armed
  }
  struct rlimit no_core = {0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  // The status pipe is fd 3: closed by a successful exec, there to report
  // a failed one.
  ::fcntl(3, F_SETFD, FD_CLOEXEC);
  ::execve(config.builder, config.argv, config.envp);
  ChildMessage message;
  message.kind = ChildMessage::exec_failed;
  message.error = errno;
  send_message(3, message);
  ::_exit(127);
}

volatile sig_atomic_t g_terminate = 0;

void
on_terminate(int)
{
  g_terminate = 1;
}

// Kill every process left below this one (a subreaper, so orphans of the
// build are reparented here) until none is left.
void
kill_descendants()
{
  char path[64] = "/proc/self/task/";
  char* p = format_uint(path + std::strlen(path), static_cast<unsigned long>(::getpid()));
  std::memcpy(p, "/children", 10);
  for (int round = 0; round < 100000; ++round) {
    int status;
    while (::waitpid(-1, &status, WNOHANG) > 0) {
    }
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return;
    }
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    ::close(fd);
    if (n <= 0) {
      return;
    }
    // "pid pid pid ": a number counts only with its space after it, so a
    // list cut short by the buffer never yields a wrong pid.
    int killed = 0;
    long pid = 0;
    bool in_number = false;
    for (ssize_t i = 0; i < n; ++i) {
      char ch = buf[i];
      if (ch >= '0' && ch <= '9') {
        pid = pid * 10 + (ch - '0');
        in_number = true;
      } else {
        if (in_number && ch == ' ' && pid > 0) {
          ::kill(static_cast<pid_t>(pid), SIGKILL);
          ++killed;
        }
        pid = 0;
        in_number = false;
      }
    }
    if (killed == 0) {
      return;
    }
    ::waitpid(-1, &status, 0);
  }
}

// Common to both modes, once set up: standard fds, fork the builder, reap
// until it exits, report. Never returns.
[[noreturn]] void
supervise_builder(const ChildConfig& config, bool subreaper)
{
  int status_fd = config.status_fd;
  if (::chdir(config.cwd) != 0) {
    fail(status_fd, phase_chdir, errno);
  }
  int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd < 0) {
    fail(status_fd, phase_fds, errno);
  }
  // Move everything above the standard fds first, so that the dup2s below
  // cannot overwrite one another.
  int status_high = ::fcntl(status_fd, F_DUPFD_CLOEXEC, 10);
  int log_high = ::fcntl(config.log_fd, F_DUPFD_CLOEXEC, 10);
  int null_high = ::fcntl(null_fd, F_DUPFD_CLOEXEC, 10);
  if (status_high < 0 || log_high < 0 || null_high < 0 || ::dup2(null_high, 0) < 0 ||
      ::dup2(log_high, 1) < 0 || ::dup2(log_high, 2) < 0 || ::dup2(status_high, 3) < 0) {
    fail(status_fd, phase_fds, errno);
  }
  status_fd = 3;
  close_from(4);

  pid_t supervisor = ::getpid();
  pid_t builder = raw_fork();
  if (builder < 0) {
    fail(status_fd, phase_fork, errno);
  }
  if (builder == 0) {
    exec_builder(config, supervisor);
  }
  // The log pipe must close once the build's processes are gone.
  ::close(0);
  ::close(1);
  ::close(2);

  int builder_status = 0;
  bool killed = false;
  while (true) {
    if (g_terminate && !killed) {
      ::kill(builder, SIGKILL);
      killed = true;
    }
    int status;
    pid_t pid = ::waitpid(-1, &status, 0);
    if (pid == builder) {
      builder_status = status;
      break;
    }
    if (pid < 0 && errno != EINTR) {
      break;
    }
  }
  int leftovers = 0;
  while (true) {
    int status;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      continue;
    }
    leftovers = pid == 0 ? 1 : 0;
    break;
  }
  if (subreaper && leftovers) {
    kill_descendants();
  }
  ChildMessage message;
  message.kind = ChildMessage::exited;
  message.status = builder_status;
  message.leftovers = leftovers;
  send_message(status_fd, message);
  // In namespaces mode, this exit takes everything left with it.
  ::_exit(0);
}

// Overwrite this process's command line and environment strings (fields
// 48–51 of /proc/self/stat give where they lie) so that /proc/1/cmdline
// shows only "kiln-sandbox".
void
scrub_command_line()
{
  ::prctl(PR_SET_NAME, "kiln-sandbox", 0, 0, 0);
  int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return;
  }
  char buf[2048];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) {
    return;
  }
  buf[n] = '\0';
  // The command name (field 2) may contain anything but ends at the last ')'.
  char* p = nullptr;
  for (ssize_t i = n - 1; i >= 0; --i) {
    if (buf[i] == ')') {
      p = buf + i + 1;
      break;
    }
  }
  if (!p) {
    return;
  }
  unsigned long fields[52] = {};
  int field = 2;
  while (*p && field < 51) {
    while (*p == ' ') {
      ++p;
    }
    ++field;
    unsigned long value = 0;
    while (*p >= '0' && *p <= '9') {
      value = value * 10 + static_cast<unsigned long>(*p - '0');
      ++p;
    }
    while (*p && *p != ' ') {
      ++p;
    }
    fields[field] = value;
  }
  if (field < 51) {
    return;
  }
  auto blank = [](unsigned long start, unsigned long end) {
    if (start == 0 || end <= start || end - start > (64UL << 20)) {
      return;
    }
    volatile char* q = reinterpret_cast<volatile char*>(start);
    for (unsigned long i = 0; i < end - start; ++i) {
      q[i] = '\0';
    }
  };
  blank(fields[50], fields[51]);
  blank(fields[48], fields[49]);
  const char name[] = "kiln-sandbox";
  if (fields[49] - fields[48] >= sizeof name) {
    volatile char* q = reinterpret_cast<volatile char*>(fields[48]);
    for (size_t i = 0; i < sizeof name; ++i) {
      q[i] = name[i];
    }
  }
}

[[noreturn]] void
namespace_child(const ChildConfig& config)
{
  int status_fd = config.status_fd;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (kiln_died(config.parent_pidfd)) {
    ::_exit(1);
  }
  // Modes in the plan are meant as written.
  ::umask(0);
  if (config.wait_go_first && !wait_go(config.go_fd, config.parent_pidfd)) {
    ::_exit(1);
  }
  // Nothing mounted here may propagate back to the host.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    fail(status_fd, phase_private, errno);
  }
  const auto& steps = *config.steps;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (int error = run_step(steps[i]); error != 0) {
      fail(status_fd, static_cast<int32_t>(i), error);
    }
  }
  if (::sethostname("localhost", 9) != 0 || ::setdomainname("(none)", 6) != 0) {
    fail(status_fd, phase_hostname, errno);
  }
  if (int error = bring_up_loopback(); error != 0) {
    fail(status_fd, phase_loopback, error);
  }
  if (::chdir(config.new_root) != 0) {
    fail(status_fd, phase_pivot, errno);
  }
  // pivot_root(".", ".") stacks the old root under the new one; detaching
  // it leaves the new root alone. Where pivot_root is refused (a root on
  // rootfs), move the new root over the old and chroot into it.
  if (::syscall(SYS_pivot_root, ".", ".") == 0) {
    if (::umount2(".", MNT_DETACH) != 0) {
      fail(status_fd, phase_pivot, errno);
    }
  } else if (::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0 || ::chroot(".") != 0) {
    fail(status_fd, phase_pivot, errno);
  }
  if (::chdir("/") != 0) {
    fail(status_fd, phase_pivot, errno);
  }
  if (::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
              nullptr) != 0) {
    fail(status_fd, phase_remount_root, errno);
  }
  if (config.drop_ids) {
    if (::syscall(SYS_setgroups, 0, nullptr) != 0 ||
        ::syscall(SYS_setresgid, config.gid, config.gid, config.gid) != 0 ||
        ::syscall(SYS_setresuid, config.uid, config.uid, config.uid) != 0) {
      fail(status_fd, phase_drop_ids, errno);
    }
  }
  if (config.user_ns_after_drop) {
    if (::unshare(CLONE_NEWUSER) != 0) {
      fail(status_fd, phase_user_ns, errno);
    }
    ChildMessage message;
    message.kind = ChildMessage::need_map;
    send_message(status_fd, message);
    if (!wait_go(config.go_fd, config.parent_pidfd)) {
      ::_exit(1);
    }
  }
  // Changing credentials clears the parent-death signal: arm it again, and
  // make sure the parent did not die meanwhile (it holds the go pipe's
  // write end open until the build is over).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (parent_gone(config.go_fd) || kiln_died(config.parent_pidfd)) {
    ::_exit(1);
  }
  // A user namespace gives this process every capability in it; the build
  // needs none (exec would drop them for uid 1000 anyway: belt and braces).
  if (int error = drop_capabilities(); error != 0) {
    fail(status_fd, phase_caps, error);
  }
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  // This process is a copy of kiln, whose environment and command line the
  // build could otherwise read through /proc/1: make it non-dumpable (its
  // /proc files become unreadable to the builder) and blank both.
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  scrub_command_line();
  // No controlling terminal.
  if (::setsid() < 0) {
    fail(status_fd, phase_session, errno);
  }
  supervise_builder(config, false);
}

[[noreturn]] void
clean_child(const ChildConfig& config)
{
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (kiln_died(config.parent_pidfd)) {
    ::_exit(1);
  }
  if (::setsid() < 0) {
    fail(config.status_fd, phase_session, errno);
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  // The parent asks for the build to end (timeout) with SIGTERM.
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = on_terminate;
  ::sigaction(SIGTERM, &action, nullptr);
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ::sigprocmask(SIG_UNBLOCK, &term, nullptr);
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  supervise_builder(config, true);
}

// --- The probe ---

struct ProbeResult
{
  int32_t step = -1;   // 0 = everything worked
  int32_t error = 0;
  int32_t user_ns = 0;
};

[[noreturn]] void
probe_report(int fd, int32_t step, int error, int32_t user_ns = 0)
{
  ProbeResult result;
  result.step = step;
  result.error = error;
  result.user_ns = user_ns;
  ssize_t n = ::write(fd, &result, sizeof result);
  (void)n;
  ::_exit(0);
}

// Do, in a throw-away process, what a build's setup does.
[[noreturn]] void
probe_child(int fd, bool root)
{
  uid_t uid = ::geteuid();
  gid_t gid = ::getegid();
  int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
  if (!root) {
    flags |= CLONE_NEWUSER;
  }
  if (::unshare(flags) != 0) {
    probe_report(fd, 1, errno);
  }
  if (!root) {
    char map[64];
    if (!write_proc_file("/proc/self/setgroups", "deny") && errno != ENOENT) {
      probe_report(fd, 2, errno);
    }
    format_map(map, k_inside_uid, uid);
    if (!write_proc_file("/proc/self/uid_map", map)) {
      probe_report(fd, 2, errno);
    }
    format_map(map, k_inside_gid, gid);
    if (!write_proc_file("/proc/self/gid_map", map)) {
      probe_report(fd, 2, errno);
    }
  }
  pid_t child = ::fork();
  if (child < 0) {
    probe_report(fd, 3, errno);
  }
  if (child == 0) {
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      probe_report(fd, 4, errno);
    }
    if (::mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") != 0) {
      probe_report(fd, 5, errno);
    }
    if (::mkdir("/tmp/proc", 0755) != 0 ||
        ::mount("proc", "/tmp/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
      probe_report(fd, 6, errno);
    }
    int32_t user_ns = 0;
    if (root) {
      pid_t unprivileged = ::fork();
      if (unprivileged == 0) {
        if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
            ::setresuid(65534, 65534, 65534) != 0) {
          ::_exit(1);
        }
        ::_exit(::unshare(CLONE_NEWUSER) == 0 ? 0 : 1);
      }
      int status = 0;
      user_ns = unprivileged > 0 && ::waitpid(unprivileged, &status, 0) == unprivileged &&
                WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    probe_report(fd, 0, 0, user_ns);
  }
  int status;
  ::waitpid(child, &status, 0);
  ::_exit(0);
}

Support
probe()
{
  Support support;
  bool root = ::geteuid() == 0;
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    support.reason = std::string("creating a pipe: ") + std::strerror(errno);
    return support;
  }
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);
  pid_t pid = ::fork();
  if (pid < 0) {
    support.reason = std::string("fork: ") + std::strerror(errno);
    return support;
  }
  if (pid == 0) {
    probe_child(write_end.get(), root);
  }
  write_end.reset();
  ProbeResult result;
  ssize_t n;
  do {
    n = ::read(read_end.get(), &result, sizeof result);
  } while (n < 0 && errno == EINTR);
  int status;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(sizeof result)) {
    support.reason = "the probe process died";
    return support;
  }
  static const char* const k_steps[] = {
    "",
    root ? "unshare(CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWNET|CLONE_NEWIPC|CLONE_NEWUTS)"
         : "unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWNET|CLONE_NEWIPC|"
           "CLONE_NEWUTS)",
    "writing the user namespace's id maps",
    "fork",
    "making mounts private",
    "mounting a tmpfs",
    "mounting /proc",
  };
  if (result.step != 0) {
    int step = result.step >= 1 && result.step <= 6 ? result.step : 0;
    support.reason = std::string(k_steps[step]) + ": " + std::strerror(result.error);
    return support;
  }
  support.namespaces = true;
  support.user_ns = root ? result.user_ns != 0 : true;
  return support;
}

} // namespace

const Support&
support()
{
  static const Support k_support = probe();
  return k_support;
}

int
own_pidfd()
{
  static const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0));
  return pidfd;
}

pid_t
spawn_in_namespaces(const ChildConfig& config, bool user_ns_first)
{
  int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | SIGCHLD;
  if (user_ns_first) {
    flags |= CLONE_NEWUSER;
  }
  // Like fork(): the child continues on its copy of this stack (a stack of
  // its own would only confuse AddressSanitizer), but without glibc's fork
  // handlers (see the top of this file).
  pid_t pid = static_cast<pid_t>(::syscall(SYS_clone, flags, 0, 0, 0, 0));
  if (pid < 0) {
    throw_errno("starting the sandbox (clone)");
  }
  if (pid == 0) {
    namespace_child(config);
  }
  return pid;
}

pid_t
spawn_clean(const ChildConfig& config)
{
  pid_t pid = ::fork();
  if (pid < 0) {
    throw_errno("starting the build (fork)");
  }
  if (pid == 0) {
    clean_child(config);
  }
  return pid;
}

void
write_id_maps(pid_t pid, uid_t inside_uid, uid_t outside_uid, gid_t inside_gid,
              gid_t outside_gid)
{
  std::string proc = "/proc/" + std::to_string(pid) + "/";
  auto write = [&](const std::string& name, const std::string& text, bool optional) {
    std::string path = proc + name;
    if (!write_proc_file(path.c_str(), text.c_str()) && !(optional && errno == ENOENT)) {
      throw_errno("writing '" + path + "' for the sandbox's user namespace");
    }
  };
  // setgroups must be denied before an unprivileged process may write
  // gid_map; denying it also keeps the build from changing its groups.
  write("setgroups", "deny", true);
  write("uid_map", std::to_string(inside_uid) + " " + std::to_string(outside_uid) + " 1\n", false);
  write("gid_map", std::to_string(inside_gid) + " " + std::to_string(outside_gid) + " 1\n", false);
}

} // namespace kiln::sandbox_impl
