// The sandbox's root, planned in the parent as a list of steps (RootPlan),
// and what the root of namespaces mode holds (plan_new_root).
//
// Planning happens in the parent, where allocating, throwing and reading
// the host's file system are fine; the child, forked from a possibly
// multi-threaded process, only replays the steps with system calls.
#include "sandbox_impl.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>

namespace kiln::sandbox_impl {

namespace {

// Flags of the mount `host` lies on that a read-only remount must keep:
// in a user namespace the kernel refuses to clear nosuid, nodev, noexec or
// the atime flags of a mount inherited from the host ("locked" flags).
unsigned long
locked_flags(const fs::path& host)
{
  struct statvfs st;
  if (::statvfs(host.c_str(), &st) != 0) {
    return 0;
  }
  unsigned long flags = 0;
  if (st.f_flag & ST_NOSUID) {
    flags |= MS_NOSUID;
  }
  if (st.f_flag & ST_NODEV) {
    flags |= MS_NODEV;
  }
  if (st.f_flag & ST_NOEXEC) {
    flags |= MS_NOEXEC;
  }
  if (st.f_flag & ST_NOATIME) {
    flags |= MS_NOATIME;
  }
  if (st.f_flag & ST_NODIRATIME) {
    flags |= MS_NODIRATIME;
  }
  if (st.f_flag & ST_RELATIME) {
    flags |= MS_RELATIME;
  }
  return flags;
}

std::string
parent_of(const std::string& inside)
{
  auto slash = inside.rfind('/');
  return slash == 0 || slash == std::string::npos ? "/" : inside.substr(0, slash);
}

} // namespace

RootPlan::RootPlan(fs::path new_root) : m_root(std::move(new_root))
{
  // The root itself: a tmpfs, so that nothing of the host shows through,
  // remounted read-only once everything is in place.
  m_steps.push_back({SetupStep::Kind::mount, m_root.string(), "tmpfs", "tmpfs", "mode=0755",
                     MS_NOSUID | MS_NODEV, 0, "mounting a tmpfs at '" + m_root.string() + "'"});
  m_entries["/"] = Entry::dir;
}

std::string
RootPlan::host_target(const std::string& inside) const
{
  return m_root.string() + inside;
}

bool
RootPlan::claim(const std::string& inside, Entry entry)
{
  auto [it, inserted] = m_entries.emplace(inside, entry);
  if (inserted) {
    return true;
  }
  if (it->second != entry) {
    throw SandboxError("the sandbox needs '" + inside +
                       "' to be two different things (a tool's path conflicts with another "
                       "path in the sandbox)");
  }
  return false;
}

bool
RootPlan::covered(const std::string& inside) const
{
  for (std::string dir = inside; dir != "/"; dir = parent_of(dir)) {
    auto it = m_entries.find(dir);
    if (it != m_entries.end() && it->second == Entry::dir_mount) {
      return true;
    }
  }
  return false;
}

void
RootPlan::add_dir(const std::string& inside, mode_t mode)
{
  if (inside == "/" || covered(inside)) {
    return;
  }
  add_dir(parent_of(inside));
  if (claim(inside, Entry::dir)) {
    m_steps.push_back({SetupStep::Kind::mkdir, host_target(inside), "", "", "", 0, mode,
                       "creating folder '" + inside + "'"});
  }
}

void
RootPlan::add_symlink(const std::string& inside, const std::string& text)
{
  add_dir(parent_of(inside));
  if (claim(inside, Entry::symlink)) {
    m_steps.push_back({SetupStep::Kind::symlink, host_target(inside), text, "", "", 0, 0,
                       "creating symlink '" + inside + "' -> '" + text + "'"});
  }
}

void
RootPlan::add_file(const std::string& inside, const std::string& contents, mode_t mode)
{
  add_dir(parent_of(inside));
  claim(inside, Entry::file_mount);
  m_steps.push_back({SetupStep::Kind::write, host_target(inside), contents, "", "", 0, mode,
                     "writing '" + inside + "'"});
}

void
RootPlan::add_bind(const fs::path& host, const std::string& inside, bool read_only, bool remount)
{
  struct stat st;
  if (::stat(host.c_str(), &st) != 0) {
    throw SandboxError("cannot make '" + host.string() + "' visible in the sandbox: " +
                       std::strerror(errno));
  }
  bool dir = S_ISDIR(st.st_mode);
  add_dir(parent_of(inside));
  if (!claim(inside, dir ? Entry::dir_mount : Entry::file_mount)) {
    return;
  }
  std::string target = host_target(inside);
  if (dir) {
    m_steps.push_back({SetupStep::Kind::mkdir, target, "", "", "", 0, 0755,
                       "creating folder '" + inside + "'"});
  } else {
    m_steps.push_back({SetupStep::Kind::touch, target, "", "", "", 0, 0644,
                       "creating file '" + inside + "'"});
  }
  std::string what = "bind-mounting '" + host.string() + "' at '" + inside + "'";
  m_steps.push_back({SetupStep::Kind::bind, target, host.string(), "", "", 0, 0, what});
  if (remount) {
    // A bind mount takes the flags of its source until remounted; only a
    // remount makes it read-only.
    unsigned long flags = MS_NOSUID | MS_NODEV | locked_flags(host);
    if (read_only) {
      flags |= MS_RDONLY;
    }
    m_steps.push_back({SetupStep::Kind::remount, target, "", "", "", flags, 0,
                       what + (read_only ? " (making it read-only)" : " (remounting it)")});
  }
}

void
RootPlan::add_mount(const std::string& fs_type, const std::string& inside, unsigned long flags,
                    const std::string& data)
{
  // Planned as a plain folder: what is mounted there is empty, so what
  // lies below it (a tool in /tmp) is still to be created.
  add_dir(inside);
  m_steps.push_back({SetupStep::Kind::mount, host_target(inside), fs_type, fs_type, data, flags,
                     0, "mounting " + fs_type + " at '" + inside + "'"});
}

void
RootPlan::expose(const fs::path& host)
{
  expose(host, 0);
}

void
RootPlan::expose(const fs::path& host, int depth)
{
  // Symlink chains on merged-/usr systems are short (/bin -> usr/bin,
  // /lib64/ld-linux… -> /lib/x86_64-linux-gnu/…); 40 is the kernel's limit.
  if (depth > 40) {
    throw SandboxError("too many levels of symlinks in tool path '" + host.string() + "'");
  }
  std::vector<std::string> parts;
  for (const auto& part : host.relative_path()) {
    if (!part.empty()) {
      parts.push_back(part.string());
    }
  }
  // `current` never contains a symlink: each one met is recreated and its
  // target followed, so ".." can be resolved textually against it.
  std::string current = "/";
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    if (part == ".") {
      continue;
    }
    if (part == "..") {
      current = parent_of(current);
      continue;
    }
    std::string next = current == "/" ? "/" + part : current + "/" + part;
    if (covered(next)) {
      return;
    }
    struct stat st;
    if (::lstat(next.c_str(), &st) != 0) {
      throw SandboxError("cannot make '" + host.string() + "' visible in the sandbox: '" + next +
                         "': " + std::strerror(errno));
    }
    bool last = i + 1 == parts.size();
    if (S_ISLNK(st.st_mode)) {
      std::error_code ec;
      fs::path text = fs::read_symlink(next, ec);
      if (ec) {
        throw SandboxError("reading symlink '" + next + "': " + ec.message());
      }
      add_symlink(next, text.string());
      fs::path resolved = text.is_absolute() ? text : fs::path(current) / text;
      for (size_t j = i + 1; j < parts.size(); ++j) {
        resolved /= parts[j];
      }
      expose(resolved, depth + 1);
      return;
    }
    if (last) {
      add_bind(next, next, true);
      return;
    }
    if (!S_ISDIR(st.st_mode)) {
      throw SandboxError("cannot make '" + host.string() + "' visible in the sandbox: '" + next +
                         "' is not a folder");
    }
    add_dir(next);
    current = next;
  }
}

RootPlan
plan_new_root(const LocalStore& store, const BuildSpec& spec, const std::set<StorePath>& inputs,
              const fs::path& work, const SandboxOptions& options, unsigned inside_uid,
              unsigned inside_gid)
{
  const std::string& store_dir = store.store_dir().path();
  const std::string& build_top = options.build_dir;
  fs::path new_root = work / "root";
  if (::mkdir(new_root.c_str(), 0755) != 0) {
    throw_errno("creating '" + new_root.string() + "'");
  }
  RootPlan plan(new_root);
  // The store folder is the build's own scratch folder (so that outputs can
  // be files, folders or symlinks); each input is mounted over a stand-in.
  plan.add_bind(work / "store", store_dir, false);
  for (const auto& input : inputs) {
    fs::path physical = store.physical_path(input);
    std::string inside = store_dir + "/" + input.base();
    struct stat st;
    if (::lstat(physical.c_str(), &st) != 0) {
      throw SandboxError("build '" + spec.name + "': input '" + inside + "' is missing from '" +
                         physical.string() + "': " + std::strerror(errno));
    }
    if (S_ISLNK(st.st_mode)) {
      // A mount would follow the link: recreate it instead.
      plan.add_symlink(inside, fs::read_symlink(physical).string());
    } else {
      plan.add_bind(physical, inside, true);
    }
  }
  for (const auto& [input, folder] : spec.early_inputs) {
    plan.add_bind(folder, store_dir + "/" + input.base(), true);
  }
  if (spec.jobserver) {
    plan.add_bind(*spec.jobserver, k_jobserver_inside, false);
  }
  plan.add_bind(work / "build", build_top, false);
  for (const char* device : {"null", "zero", "full", "random", "urandom"}) {
    std::string path = std::string("/dev/") + device;
    plan.add_bind(path, path, false, false);
  }
  plan.add_mount("tmpfs", "/dev/shm", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777");
  plan.add_symlink("/dev/fd", "/proc/self/fd");
  plan.add_symlink("/dev/stdin", "/proc/self/fd/0");
  plan.add_symlink("/dev/stdout", "/proc/self/fd/1");
  plan.add_symlink("/dev/stderr", "/proc/self/fd/2");
  plan.add_mount("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
  plan.add_mount("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=1777");
  // What the sandbox has its own of: a host path there cannot be shown.
  auto refuse_reserved = [&](const std::string& what, const std::string& text) {
    for (const std::string& reserved :
         {store_dir, build_top, std::string("/proc"), std::string("/dev")}) {
      if (is_within(text, reserved)) {
        throw SandboxError("build '" + spec.name + "': " + what + " '" + text + "' lies in '" +
                           reserved + "', which the sandbox has its own of" +
                           (reserved == store_dir && what == "tool"
                              ? " (declare store paths as inputs)"
                              : ""));
      }
    }
  };
  for (const auto& tool : tools_closure(spec.tools)) {
    refuse_reserved("tool", tool.lexically_normal().string());
    plan.expose(tool);
  }
  for (const auto& folder : spec.writable_folders) {
    std::string text = folder.lexically_normal().string();
    refuse_reserved("writable folder", text);
    plan.add_bind(folder, text, false);
  }
  // Programs that look up their user (id, ssh, some test suites) need one.
  plan.add_file("/etc/passwd", "root:x:0:0:root:" + std::string(k_home) +
                                 ":/noshell\nkiln:x:" + std::to_string(inside_uid) + ":" +
                                 std::to_string(inside_gid) + ":kiln build user:" + k_home +
                                 ":/noshell\nnobody:x:65534:65534:nobody:/:/noshell\n");
  plan.add_file("/etc/group",
                "root:x:0:\nkiln:!:" + std::to_string(inside_gid) + ":\nnogroup:x:65534:\n");
  plan.add_file("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n");
  // Where a folder tool covers these paths, the host's stand (the options
  // only speed rustc up; a build must not fail for them).
  if (!spec.jemalloc_conf.empty() && !plan.covered("/etc/malloc.conf")) {
    plan.add_symlink("/etc/malloc.conf", spec.jemalloc_conf);
    // jemalloc reads the kernel's THP mode here before it uses huge pages
    // (without it, it takes them to be unsupported): a copy of the host's,
    // written like /etc/passwd, so that nothing of sysfs is mounted.
    // Read once per process, not once per build step.
    const char* thp_mode = "/sys/kernel/mm/transparent_hugepage/enabled";
    static const std::string mode = [&] {
      try {
        return read_file(thp_mode);
      } catch (const std::exception&) {
        return std::string(); // no THP in this kernel: jemalloc uses none, as without the file
      }
    }();
    if (!mode.empty() && !plan.covered(thp_mode)) {
      plan.add_file(thp_mode, mode);
    }
  }
  return plan;
}

} // namespace kiln::sandbox_impl
