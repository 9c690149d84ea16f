// Private parts of the sandbox module, shared by its .cpp files.
//
//   sandbox.cpp     run_build: the work folder, environment, path rewriting,
//                   starting the build and judging it
//   supervise.cpp   supervising the running build (log, timeouts, status)
//   tools.cpp       what a tool needs to run: interpreters and libraries
//   root_plan.cpp   the new root, planned as a list of steps
//   process.cpp     the processes that run a build, probing for namespaces
#pragma once

#include <kiln/sandbox/sandbox.hpp>

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kiln::sandbox_impl {

namespace fs = std::filesystem;

// The build user's home, which does not exist (as Nix's).
inline constexpr const char* k_home = "/homeless";
// Where a build sees the jobserver fifo.
inline constexpr const char* k_jobserver_inside = "/.kiln/jobserver";

// --- tools.cpp ---

// (What `tools` need to run is kiln::tools_closure, in sandbox.hpp.)

// PATH entries for `tools`: a program's folder, a folder tool's bin/ (or the
// folder itself when it has none); in order, without repeats.
std::vector<std::string> tool_path_dirs(const std::vector<fs::path>& tools);

// Whether `path` is `dir` or lies below it (both absolute and normal).
bool is_within(const std::string& path, const std::string& dir);

// --- root_plan.cpp ---

// One step of building the sandbox's root. Steps are made by the parent and
// carried out by the child between clone() and exec(), where it must not
// allocate: the child only reads these strings.
struct SetupStep
{
  enum class Kind { mkdir, touch, symlink, bind, remount, mount, write };
  Kind kind;
  std::string target;      // host path below the new root
  std::string source;      // bind: host path; symlink: link text; mount: source; write: contents
  std::string fs_type;     // mount
  std::string data;        // mount options
  unsigned long flags = 0; // mount flags
  mode_t mode = 0755;      // mkdir, touch, write
  std::string what;        // what the step does, for error messages
};

// The new root, described as inside paths and turned into steps.
class RootPlan
{
public:
  explicit RootPlan(fs::path new_root);

  // A folder (and its parents) on the root's tmpfs.
  void add_dir(const std::string& inside, mode_t mode = 0755);
  // A symlink `inside` -> `text`.
  void add_symlink(const std::string& inside, const std::string& text);
  // A generated file.
  void add_file(const std::string& inside, const std::string& contents, mode_t mode = 0644);
  // `host` (file or folder) bind-mounted at `inside`; read-only ones also
  // get nosuid and nodev. `remount` = false keeps a writable bind exactly as
  // the source is (device nodes).
  void add_bind(const fs::path& host, const std::string& inside, bool read_only,
                bool remount = true);
  // A file system (tmpfs, proc) mounted at `inside`.
  void add_mount(const std::string& fs_type, const std::string& inside, unsigned long flags,
                 const std::string& data);
  // `host` visible read-only at its own path: each symlink on the way is
  // recreated and followed, and what it finally names is bind-mounted.
  void expose(const fs::path& host);
  // Whether `inside` lies in a folder that is bind-mounted whole (a folder
  // tool): what is there is the host's, and nothing can be added to it.
  bool covered(const std::string& inside) const;

  const fs::path&
  new_root() const
  {
    return m_root;
  }
  const std::vector<SetupStep>&
  steps() const
  {
    return m_steps;
  }

private:
  enum class Entry { dir, symlink, file_mount, dir_mount };
  void expose(const fs::path& host, int depth);
  // Record what `inside` will be; false if it is planned already as that,
  // throws SandboxError if it is planned as something else.
  bool claim(const std::string& inside, Entry entry);
  std::string host_target(const std::string& inside) const;

  fs::path m_root;
  std::vector<SetupStep> m_steps;
  std::map<std::string, Entry> m_entries;
};

// The new root of namespaces mode for `spec`, made at `work`/root: the
// store folder with the `inputs` (a closure) over it, the build folder, a
// minimal /dev, /proc, /tmp, the tools, and /etc naming the build user
// (`inside_uid`, `inside_gid`).
RootPlan plan_new_root(const LocalStore& store, const BuildSpec& spec,
                       const std::set<StorePath>& inputs, const fs::path& work,
                       const SandboxOptions& options, unsigned inside_uid, unsigned inside_gid);

// --- process.cpp ---

// Messages from the sandbox's processes to the parent, on the status pipe.
// Each is written with one write() (well under PIPE_BUF), so never torn.
struct ChildMessage
{
  enum Kind : int32_t { need_map = 1, setup_failed = 2, exec_failed = 3, exited = 4 };
  int32_t kind = 0;
  int32_t step = 0;       // setup_failed: index in the steps, or a Phase
  int32_t error = 0;      // errno
  int32_t status = 0;     // exited: the builder's wait status
  int32_t leftovers = 0;  // exited: processes were still running after the builder
};

// Setup phases outside the plan's steps, as negative step numbers.
enum Phase : int32_t {
  phase_private = -1,
  phase_hostname = -2,
  phase_loopback = -3,
  phase_pivot = -4,
  phase_remount_root = -5,
  phase_drop_ids = -6,
  phase_user_ns = -7,
  phase_wait = -8,
  phase_chdir = -9,
  phase_fds = -10,
  phase_fork = -11,
  phase_caps = -12,
  phase_session = -13,
};

// What the host supports, probed once.
struct Support
{
  bool namespaces = false;
  // As root: the builder can also get a user namespace after dropping to
  // the build uid (so that it is uid 1000 inside whatever the host uid).
  bool user_ns = false;
  std::string reason; // why namespaces are unavailable
};
const Support& support();

// What the child runs. All pointers stay valid (owned by the parent's
// vectors) until the child has exec'd: the child only reads them.
struct ChildConfig
{
  const std::vector<SetupStep>* steps = nullptr;  // namespaces mode
  const char* new_root = nullptr;                 // namespaces mode
  const char* builder = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;
  int log_fd = -1;        // stdout and stderr of the builder
  int status_fd = -1;     // ChildMessages
  int go_fd = -1;         // the parent writes a byte once the id maps are written
  // A pidfd of kiln (readable once it has ended): a child that finds it
  // readable after arming its parent-death signal was orphaned before.
  int parent_pidfd = -1;
  bool wait_go_first = false;      // unprivileged: the user namespace comes with clone()
  bool drop_ids = false;           // root: become uid/gid after setting up
  uid_t uid = 0;
  gid_t gid = 0;
  bool user_ns_after_drop = false; // root: then enter a user namespace
};

// A pidfd of this process, for ChildConfig::parent_pidfd; -1 where the
// kernel has none.
int own_pidfd();

// Start a build in new namespaces (namespaces mode): the returned process is
// PID 1 of the build's PID namespace; killing it kills the build.
pid_t spawn_in_namespaces(const ChildConfig& config, bool user_ns_first);

// Start a build on the host (clean-env mode): the returned process leads a
// new session, is the subreaper of everything the builder starts and kills
// all of it once the builder exits, or on SIGTERM.
pid_t spawn_clean(const ChildConfig& config);

// Write a user namespace's uid and gid maps (a single id each).
void write_id_maps(pid_t pid, uid_t inside_uid, uid_t outside_uid, gid_t inside_gid,
                   gid_t outside_gid);

// The uid and gid a builder has inside the namespaces.
inline constexpr uid_t k_inside_uid = 1000;
inline constexpr gid_t k_inside_gid = 100;

// --- supervise.cpp ---

// A running sandbox process: killed (the whole build with it) and reaped
// if we leave before it ends.
class Child
{
public:
  Child(pid_t pid, SandboxMode mode);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const;
  // Ask the build to end now. PID 1 of the namespace takes everything with
  // it; the clean-env supervisor kills its descendants on SIGTERM.
  void stop();
  // Everything in the build's session (clean-env), or its namespace.
  void kill_hard();
  // Reap without blocking; true once it has ended.
  bool poll_exit();
  void wait();
  int status() const;

private:
  pid_t m_pid;
  SandboxMode m_mode;
  bool m_reaped = false;
  int m_status = 0;
};

enum class Killed { no, timeout, silence };

// What supervise saw of a build: how its sandbox's processes reported,
// and whether it was killed.
struct Supervised
{
  std::optional<ChildMessage> setup_failure;
  std::optional<ChildMessage> exec_failure;
  std::optional<ChildMessage> exit;
  Killed killed = Killed::no;
};

// Copy the build's output from `log_read` into `log_fd` (and to
// `options.on_output`) until it ends, enforcing `spec`'s timeouts, reading
// the ChildMessages from `status_read` and calling `on_need_map` when the
// child asks for its id maps. Reaps `child`.
Supervised supervise(Child& child, SandboxMode mode, int log_read, int status_read, int log_fd,
                     const BuildSpec& spec, const SandboxOptions& options,
                     const std::function<void()>& on_need_map);

} // namespace kiln::sandbox_impl
