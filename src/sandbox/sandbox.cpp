// run_build: from a BuildSpec to outputs on disk. Its steps (BuildRun):
// check the spec, take the closure of the inputs, make the work folder and
// the log, prepare the builder's command line and environment (the new
// root in namespaces mode, physical store paths in clean-env mode), start
// it, supervise it (supervise.cpp) and judge the result.
//
//   <store>/tmp/build-<name>-XXXXXX/     the work folder (WorkDir)
//     build/        the build folder (/build inside the namespaces)
//     store/        the store folder as the build sees it: outputs are
//                   written here; inputs are mounted over empty stand-ins
//     root/         where the new root is mounted (namespaces mode)
//     build.log     stdout and stderr of the build
//
// The work folder is a temporary of this process in the store's tmp/
// (LocalStore::make_temp_folder): garbage collection leaves it alone while
// kiln lives and deletes it once kiln is gone. The inputs are kept from
// collection by the caller (temporary roots), not by the sandbox.
#include "sandbox_impl.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/jobserver.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <optional>

namespace kiln {

using namespace sandbox_impl;

std::string_view
to_string(SandboxMode mode)
{
  return mode == SandboxMode::namespaces ? "namespaces" : "clean-env";
}

SandboxMode
detect_sandbox_support()
{
  return support().namespaces ? SandboxMode::namespaces : SandboxMode::clean_env;
}

namespace {

// 1980-01-01: what nixpkgs sets, the earliest time a zip file can hold.
constexpr const char* k_source_date_epoch = "315532800";

// The build's private folder under the store's tmp/, deleted when the last
// owner lets go.
class WorkDir
{
public:
  WorkDir(const LocalStore& store, const std::string& name)
    : m_folder(store.make_temp_folder("build-" + safe_name(name)))
  {
  }

  const fs::path&
  path() const
  {
    return m_folder->path();
  }

private:
  static std::string
  safe_name(const std::string& name)
  {
    std::string safe;
    for (char ch : name.substr(0, 40)) {
      safe += std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-'
                ? ch
                : '_';
    }
    return safe;
  }

  std::unique_ptr<TempFolder> m_folder;
};

SandboxMode
choose_mode(const SandboxOptions& options)
{
  if (options.force_mode) {
    if (*options.force_mode == SandboxMode::namespaces && !support().namespaces) {
      throw SandboxError("namespaces were asked for, but are unavailable: " + support().reason);
    }
    return *options.force_mode;
  }
  const char* env = std::getenv("KILN_SANDBOX");
  std::string setting = env ? env : "auto";
  if (setting == "off" || setting == "false" || setting == "0") {
    return SandboxMode::clean_env;
  }
  if (setting == "on" || setting == "true" || setting == "1") {
    if (!support().namespaces) {
      throw SandboxError("KILN_SANDBOX=" + setting +
                         " asks for namespaces, but they are unavailable: " + support().reason);
    }
    return SandboxMode::namespaces;
  }
  if (setting != "auto" && !setting.empty()) {
    throw UsageError("KILN_SANDBOX must be 'on', 'off' or 'auto', not '" + setting + "'");
  }
  if (support().namespaces) {
    return SandboxMode::namespaces;
  }
  static std::once_flag warned;
  std::call_once(warned, [] {
    std::cerr << "kiln: warning: namespaces unavailable (" << support().reason
              << "); building without isolation\n";
  });
  return SandboxMode::clean_env;
}

bool
has_nul(const std::string& text)
{
  return text.find('\0') != std::string::npos;
}

void
check_spec(const BuildSpec& spec, const std::string& store_dir, const SandboxOptions& options)
{
  auto bad = [&](const std::string& why) {
    throw SandboxError("build '" + spec.name + "': " + why);
  };
  if (spec.builder.empty() || spec.builder[0] != '/' || has_nul(spec.builder)) {
    bad("the builder must be an absolute path, not '" + spec.builder + "'");
  }
  if (spec.outputs.empty()) {
    bad("it declares no outputs");
  }
  for (const auto& [name, path] : spec.outputs) {
    if (name.empty() || name.find('=') != std::string::npos || has_nul(name)) {
      bad("'" + name + "' is not a valid output name");
    }
    if (spec.inputs.count(path)) {
      bad("output '" + name + "' is also an input");
    }
  }
  for (const auto& [key, value] : spec.env) {
    if (key.empty() || key.find('=') != std::string::npos || has_nul(key) || has_nul(value)) {
      bad("environment variable '" + key + "' cannot be passed to a program");
    }
  }
  for (const auto& arg : spec.args) {
    if (has_nul(arg)) {
      bad("an argument contains a NUL byte");
    }
  }
  for (const auto& folder : spec.writable_folders) {
    std::error_code ec;
    if (!folder.is_absolute() || !fs::is_directory(folder, ec)) {
      bad("writable folder '" + folder.string() + "' is not an absolute path to a folder");
    }
  }
  const std::string& build_dir = options.build_dir;
  if (build_dir.size() < 2 || build_dir[0] != '/' || build_dir.back() == '/' ||
      fs::path(build_dir).lexically_normal().string() != build_dir) {
    throw SandboxError("the sandbox's build folder must be an absolute, normal path other than "
                       "'/', not '" +
                       build_dir + "'");
  }
  for (const std::string& reserved : {store_dir, std::string("/proc"), std::string("/dev"),
                                      std::string("/tmp"), std::string("/etc")}) {
    if (is_within(build_dir, reserved) || is_within(reserved, build_dir)) {
      throw SandboxError("the sandbox's build folder '" + build_dir + "' overlaps '" + reserved +
                         "'");
    }
  }
}

// Replace the logical store folder by physical locations in `text`: an
// output's logical path by where it is being built, any other store path
// (or the bare store folder) by the store's physical folder.
std::string
rewrite_store_paths(std::string_view text, const std::string& store_dir,
                    const std::string& physical_store,
                    const std::map<std::string, std::string>& output_locations)
{
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = text.find(store_dir, pos);
    if (hit == std::string_view::npos) {
      out.append(text.substr(pos));
      return out;
    }
    size_t after = hit + store_dir.size();
    out.append(text.substr(pos, hit - pos));
    if (after < text.size() && text[after] != '/' &&
        (std::isalnum(static_cast<unsigned char>(text[after])) ||
         std::strchr("+-._?=", text[after]))) {
      // "/kiln/storefoo" is not in the store.
      out.append(store_dir);
      pos = after;
      continue;
    }
    if (after < text.size() && text[after] == '/') {
      size_t end = after + 1;
      while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) ||
                                   std::strchr("+-._?=", text[end]))) {
        ++end;
      }
      auto it = output_locations.find(std::string(text.substr(after + 1, end - after - 1)));
      if (it != output_locations.end()) {
        out.append(it->second);
        pos = end;
        continue;
      }
    }
    out.append(physical_store);
    pos = after;
  }
}

// The last `lines` lines of a log file (reading at most its last 64 KiB).
std::string
read_tail(const fs::path& path, size_t lines)
{
  if (lines == 0) {
    return {};
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return {};
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return {};
  }
  off_t size = st.st_size;
  off_t start = size > 65536 ? size - 65536 : 0;
  std::string data(static_cast<size_t>(size - start), '\0');
  ssize_t n = ::pread(fd.get(), data.data(), data.size(), start);
  if (n < 0) {
    return {};
  }
  data.resize(static_cast<size_t>(n));
  if (!data.empty() && data.back() == '\n') {
    data.pop_back();
  }
  size_t cut = data.size();
  for (size_t i = 0; i < lines; ++i) {
    size_t newline = cut == 0 ? std::string::npos : data.rfind('\n', cut - 1);
    if (newline == std::string::npos) {
      return data;
    }
    cut = newline;
  }
  return data.substr(cut + 1);
}

std::string
describe_status(int status)
{
  if (WIFEXITED(status)) {
    return "failed with exit status " + std::to_string(WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* abbrev = ::sigabbrev_np(sig);
    return "was killed by signal " + std::to_string(sig) +
           (abbrev ? " (SIG" + std::string(abbrev) + ")" : "");
  }
  return "ended with wait status " + std::to_string(status);
}

std::string
describe_phase(int32_t phase, const RootPlan* plan)
{
  if (phase >= 0) {
    return plan && static_cast<size_t>(phase) < plan->steps().size()
             ? plan->steps()[static_cast<size_t>(phase)].what
             : "step " + std::to_string(phase);
  }
  switch (phase) {
  case phase_private: return "making mounts private";
  case phase_hostname: return "setting the host name";
  case phase_loopback: return "bringing up the loopback interface";
  case phase_pivot: return "changing into the new root";
  case phase_remount_root: return "making the new root read-only";
  case phase_drop_ids: return "becoming the build user";
  case phase_user_ns: return "entering a user namespace";
  case phase_wait: return "waiting for the parent";
  case phase_chdir: return "changing into the build folder";
  case phase_fds: return "setting up stdin, stdout and stderr";
  case phase_fork: return "starting the builder";
  case phase_caps: return "dropping capabilities";
  case phase_session: return "starting a new session";
  default: return "phase " + std::to_string(phase);
  }
}

struct Pipe
{
  UniqueFd read_end;
  UniqueFd write_end;
};

Pipe
make_pipe(const char* what)
{
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw_errno(std::string("creating the ") + what + " pipe");
  }
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// The environment a build gets: the fixed allowlist, then what the
// derivation declares, then what describes the sandbox itself.
std::map<std::string, std::string>
make_env(const BuildSpec& spec, const std::string& store_dir, const std::string& build_top,
         const std::string& jobserver_inside, const SandboxOptions& options)
{
  std::map<std::string, std::string> env;
  std::string path;
  for (const auto& dir : tool_path_dirs(spec.tools)) {
    path += (path.empty() ? "" : ":") + dir;
  }
  // Nix's value for "no PATH": a path that cannot exist.
  env["PATH"] = path.empty() ? "/path-not-set" : path;
  env["HOME"] = k_home;
  env["TZ"] = "UTC";
  env["LANG"] = "C.UTF-8";
  env["SOURCE_DATE_EPOCH"] = k_source_date_epoch;
  env["NIX_BUILD_CORES"] = std::to_string(options.build_cores);
  for (const auto& [key, value] : spec.env) {
    env[key] = value;
  }
  env["NIX_STORE"] = store_dir;
  if (spec.jobserver) {
    env["CARGO_MAKEFLAGS"] = Jobserver::make_flags(jobserver_inside);
  }
  for (const char* name : {"NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"}) {
    env[name] = build_top;
  }
  std::string outputs;
  for (const auto& [name, path_of] : spec.outputs) {
    env[name] = store_dir + "/" + path_of.base();
    outputs += (outputs.empty() ? "" : " ") + name;
  }
  env["outputs"] = outputs;
  return env;
}

// Strings for exec, and the pointer arrays that point into them.
struct ExecArgs
{
  std::vector<std::string> argv;
  std::vector<std::string> envp;
  std::vector<char*> argv_ptrs;
  std::vector<char*> envp_ptrs;

  void
  seal()
  {
    for (auto& arg : argv) {
      argv_ptrs.push_back(arg.data());
    }
    argv_ptrs.push_back(nullptr);
    for (auto& entry : envp) {
      envp_ptrs.push_back(entry.data());
    }
    envp_ptrs.push_back(nullptr);
  }
};

void
make_owned_dir(const fs::path& path, bool chown_to_builder, const SandboxOptions& options)
{
  if (::mkdir(path.c_str(), 0755) != 0) {
    throw_errno("creating '" + path.string() + "'");
  }
  if (chown_to_builder && ::chown(path.c_str(), options.build_uid, options.build_gid) != 0) {
    throw_errno("giving '" + path.string() + "' to the build user");
  }
}

// Why a build that exited 0 still failed: a declared output is missing or
// not a file, folder or symlink, or something else was written into the
// store folder. Nothing if all is well.
std::optional<std::string>
check_outputs(const BuildSpec& spec, const std::string& store_dir, const fs::path& store_folder,
              const std::set<StorePath>& inputs)
{
  std::set<std::string> known;
  for (const auto& input : inputs) {
    known.insert(input.base());
  }
  for (const auto& [input, folder] : spec.early_inputs) {
    known.insert(input.base());
  }
  for (const auto& [name, path] : spec.outputs) {
    known.insert(path.base());
    fs::path location = store_folder / path.base();
    struct stat st;
    if (::lstat(location.c_str(), &st) != 0) {
      return "builder for '" + spec.name + "' did not produce output '" + name + "' (" +
             store_dir + "/" + path.base() + ")";
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
      return "builder for '" + spec.name + "' made output '" + name + "' (" + store_dir + "/" +
             path.base() + ") something other than a file, folder or symlink";
    }
  }
  std::vector<std::string> strays;
  for (const auto& entry : fs::directory_iterator(store_folder)) {
    std::string name = entry.path().filename().string();
    if (!known.count(name)) {
      strays.push_back(store_dir + "/" + name);
    }
  }
  if (strays.empty()) {
    return std::nullopt;
  }
  std::sort(strays.begin(), strays.end());
  std::string list;
  for (const auto& stray : strays) {
    list += (list.empty() ? "'" : ", '") + stray + "'";
  }
  return "builder for '" + spec.name + "' wrote " + list + " in the store, which " +
         (strays.size() == 1 ? "is not one of its outputs" : "are not its outputs");
}

// One run_build, in steps; the members are what the steps share.
class BuildRun
{
public:
  BuildRun(const LocalStore& store, const BuildSpec& spec, const SandboxOptions& options)
    : m_store(store), m_spec(spec), m_options(options), m_store_dir(store.store_dir().path())
  {
  }

  BuildOutcome
  run()
  {
    check_spec(m_spec, m_store_dir, m_options);
    m_mode = choose_mode(m_options);
    if (!m_spec.early_inputs.empty() && m_mode != SandboxMode::namespaces) {
      throw SandboxError("build '" + m_spec.name + "': early inputs need the namespaces sandbox");
    }
    m_root = ::geteuid() == 0;
    find_inputs();
    make_folders();
    open_log();
    m_builder = m_spec.builder;
    if (m_mode == SandboxMode::namespaces) {
      prepare_namespaces();
    } else {
      prepare_clean_env();
    }
    m_exec.seal();
    Child child(spawn(), m_mode);
    Supervised result = watch(child);
    return judge(result, child);
  }

private:
  // Inputs are made visible with everything they reference, or the build
  // would find dangling paths inside its inputs.
  void
  find_inputs()
  {
    try {
      m_inputs = m_store.closure(m_spec.inputs);
    } catch (const Error& e) {
      throw SandboxError("build '" + m_spec.name + "': its inputs: " + e.what());
    }
  }

  // The work folder, and in it the build folder and the store folder.
  void
  make_folders()
  {
    m_work = std::make_shared<WorkDir>(m_store, m_spec.name);
    m_outcome.mode = m_mode;
    m_outcome.work_dir = m_work->path();
    m_outcome.lease = m_work;
    m_build_folder = m_work->path() / "build";
    m_store_folder = m_work->path() / "store";
    bool give_away = m_mode == SandboxMode::namespaces && m_root;
    make_owned_dir(m_build_folder, give_away, m_options);
    make_owned_dir(m_store_folder, give_away, m_options);
  }

  void
  open_log()
  {
    m_outcome.log_file = m_options.log_file.value_or(m_work->path() / "build.log");
    if (m_outcome.log_file.has_parent_path()) {
      std::error_code ec;
      fs::create_directories(m_outcome.log_file.parent_path(), ec);
      if (ec) {
        throw Error("creating the folder of build log '" + m_outcome.log_file.string() +
                    "': " + ec.message());
      }
    }
    m_log_fd.reset(
      ::open(m_outcome.log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!m_log_fd) {
      throw_errno("opening the build log '" + m_outcome.log_file.string() + "'");
    }
  }

  // The builder runs in the new root, at the logical paths.
  void
  prepare_namespaces()
  {
    const Support& host = support();
    const std::string& build_top = m_options.build_dir;
    auto env = make_env(m_spec, m_store_dir, build_top, k_jobserver_inside, m_options);
    m_exec.argv.push_back(fs::path(m_spec.builder).filename().string());
    m_exec.argv.insert(m_exec.argv.end(), m_spec.args.begin(), m_spec.args.end());
    for (const auto& [key, value] : env) {
      m_exec.envp.push_back(key + "=" + value);
    }
    bool inside_is_1000 = !m_root || host.user_ns;
    unsigned inside_uid = inside_is_1000 ? k_inside_uid : m_options.build_uid;
    unsigned inside_gid = inside_is_1000 ? k_inside_gid : m_options.build_gid;

    m_plan.emplace(plan_new_root(m_store, m_spec, m_inputs, m_work->path(), m_options, inside_uid,
                                 inside_gid));
    // Kept between builds and written by the build user, as the build
    // folder is.
    for (const auto& folder : m_spec.writable_folders) {
      if (m_root && ::chown(folder.c_str(), m_options.build_uid, m_options.build_gid) != 0) {
        throw_errno("giving '" + folder.string() + "' to the build user");
      }
    }

    m_cwd = build_top;
    m_config.steps = &m_plan->steps();
    m_config.new_root = m_plan->new_root().c_str();
    m_config.wait_go_first = !m_root;
    m_config.drop_ids = m_root;
    m_config.uid = m_options.build_uid;
    m_config.gid = m_options.build_gid;
    m_config.user_ns_after_drop = m_root && host.user_ns;
  }

  // The builder runs on the host: store paths in its command line and
  // environment are rewritten to physical ones.
  void
  prepare_clean_env()
  {
    // Tools are not mounted here, but a missing one is still a malformed step.
    for (const auto& tool : m_spec.tools) {
      struct stat st;
      if (!tool.is_absolute() || ::stat(tool.c_str(), &st) != 0) {
        throw SandboxError("build '" + m_spec.name + "': tool '" + tool.string() + "': " +
                           (tool.is_absolute() ? std::strerror(errno) : "not an absolute path"));
      }
    }
    std::map<std::string, std::string> output_locations;
    for (const auto& [name, path] : m_spec.outputs) {
      output_locations[path.base()] = (m_store_folder / path.base()).string();
    }
    std::string physical_store = m_store.physical_path(m_spec.outputs.begin()->second)
                                   .parent_path()
                                   .string();
    auto rewrite = [&](const std::string& text) {
      return rewrite_store_paths(text, m_store_dir, physical_store, output_locations);
    };
    auto env = make_env(m_spec, m_store_dir, m_build_folder.string(),
                        m_spec.jobserver ? m_spec.jobserver->string() : "", m_options);
    m_builder = rewrite(m_spec.builder);
    m_exec.argv.push_back(fs::path(m_builder).filename().string());
    for (const auto& arg : m_spec.args) {
      m_exec.argv.push_back(rewrite(arg));
    }
    for (const auto& [key, value] : env) {
      m_exec.envp.push_back(key + "=" + rewrite(value));
    }
    m_cwd = m_build_folder.string();
  }

  // Start the sandbox's process, with the pipes it reports on.
  pid_t
  spawn()
  {
    m_log_pipe = make_pipe("log");
    m_status_pipe = make_pipe("status");
    m_go_pipe = make_pipe("go");
    m_config.builder = m_builder.c_str();
    m_config.argv = m_exec.argv_ptrs.data();
    m_config.envp = m_exec.envp_ptrs.data();
    m_config.cwd = m_cwd.c_str();
    m_config.log_fd = m_log_pipe.write_end.get();
    m_config.status_fd = m_status_pipe.write_end.get();
    m_config.go_fd = m_go_pipe.read_end.get();
    m_config.parent_pidfd = own_pidfd();
    return m_mode == SandboxMode::namespaces ? spawn_in_namespaces(m_config, !m_root)
                                             : spawn_clean(m_config);
  }

  // Give the child its id maps (now, or when it asks), tell on_start where
  // the outputs go, and supervise the build until it ends.
  Supervised
  watch(Child& child)
  {
    m_log_pipe.write_end.reset();
    m_status_pipe.write_end.reset();
    m_go_pipe.read_end.reset();

    pid_t pid = child.pid();
    auto go = [&]() {
      if (::write(m_go_pipe.write_end.get(), "g", 1) != 1) {
        throw_errno("starting the sandbox");
      }
    };
    if (m_mode == SandboxMode::namespaces && !m_root) {
      write_id_maps(pid, k_inside_uid, ::geteuid(), k_inside_gid, ::getegid());
      go();
    }
    auto on_need_map = [&]() {
      write_id_maps(pid, k_inside_uid, m_options.build_uid, k_inside_gid, m_options.build_gid);
      go();
    };

    if (m_options.on_start) {
      std::map<std::string, fs::path> output_dirs;
      for (const auto& [name, path] : m_spec.outputs) {
        output_dirs[name] = m_store_folder / path.base();
      }
      m_options.on_start(output_dirs);
    }
    return supervise(child, m_mode, m_log_pipe.read_end.get(), m_status_pipe.read_end.get(),
                     m_log_fd.get(), m_spec, m_options, on_need_map);
  }

  // The outcome of a build that ran: failed (why, and the end of its log)
  // or succeeded with its outputs.
  BuildOutcome
  judge(const Supervised& result, const Child& child)
  {
    if (result.setup_failure) {
      throw SandboxError("setting up the sandbox for build '" + m_spec.name + "': " +
                         describe_phase(result.setup_failure->step, m_plan ? &*m_plan : nullptr) +
                         ": " + std::strerror(result.setup_failure->error));
    }
    if (result.exit && result.exit->leftovers) {
      note("the builder left processes running; they were killed");
    }
    if (result.killed == Killed::timeout) {
      return fail("build '" + m_spec.name + "' timed out after " +
                  std::to_string(m_spec.timeout.count()) + " s");
    }
    if (result.killed == Killed::silence) {
      return fail("build '" + m_spec.name + "' produced no output for " +
                  std::to_string(m_spec.max_silent_time.count()) + " s");
    }
    if (result.exec_failure) {
      int error = result.exec_failure->error;
      bool hint = m_mode == SandboxMode::namespaces && (error == ENOENT || error == EACCES);
      return fail("build '" + m_spec.name + "': cannot run builder '" + m_spec.builder +
                  "': " + std::strerror(error) +
                  (hint ? " (only its inputs and tools are visible in the sandbox)" : ""));
    }
    if (!result.exit) {
      return fail("the sandbox of build '" + m_spec.name + "' " +
                  describe_status(child.status()) + " before the builder ended");
    }
    int status = result.exit->status;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return fail("builder for '" + m_spec.name + "' " + describe_status(status));
    }

    if (auto why = check_outputs(m_spec, m_store_dir, m_store_folder, m_inputs)) {
      return fail(*why);
    }

    delete_path(m_build_folder);
    for (const auto& [name, path] : m_spec.outputs) {
      m_outcome.output_dirs[name] = m_store_folder / path.base();
    }
    m_outcome.success = true;
    m_outcome.log_tail = read_tail(m_outcome.log_file, m_options.log_tail_lines);
    return std::move(m_outcome);
  }

  void
  note(const std::string& text)
  {
    write_all(m_log_fd.get(), "kiln: " + text + "\n", "the build log");
  }

  BuildOutcome
  fail(const std::string& why)
  {
    note(why);
    m_outcome.success = false;
    m_outcome.error = why;
    m_outcome.log_tail = read_tail(m_outcome.log_file, m_options.log_tail_lines);
    delete_path(m_build_folder);
    delete_path(m_store_folder);
    return std::move(m_outcome);
  }

  const LocalStore& m_store;
  const BuildSpec& m_spec;
  const SandboxOptions& m_options;
  const std::string& m_store_dir;
  SandboxMode m_mode = SandboxMode::clean_env;
  bool m_root = false;
  std::set<StorePath> m_inputs;
  std::shared_ptr<WorkDir> m_work;
  BuildOutcome m_outcome;
  fs::path m_build_folder;
  fs::path m_store_folder;
  UniqueFd m_log_fd;
  // What the sandbox's process is started with: m_config points into the
  // rest, which stays in place until the build has ended.
  ExecArgs m_exec;
  std::string m_builder;
  std::optional<RootPlan> m_plan;
  ChildConfig m_config;
  std::string m_cwd;
  Pipe m_log_pipe;
  Pipe m_status_pipe;
  Pipe m_go_pipe;
};

} // namespace

SandboxMode
sandbox_mode(const SandboxOptions& options)
{
  return choose_mode(options);
}

BuildOutcome
run_build(const LocalStore& store, const BuildSpec& spec, const SandboxOptions& options)
{
  return BuildRun(store, spec, options).run();
}

} // namespace kiln
