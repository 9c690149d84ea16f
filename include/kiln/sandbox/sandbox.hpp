// The sandbox: runs one build step hermetically and hands back its outputs.
//
// A build sees an empty build folder at a fixed path, an environment of only
// what its derivation declares plus a fixed allowlist, stdin closed, and —
// where the kernel allows — its own mount, PID, network, IPC and UTS
// namespaces, in which the only files are:
//
//   /kiln/store/<input>     each input (closure) read-only, at its logical path
//   /kiln/store/<output>    written by the builder (the store folder is its own
//                           scratch folder, so outputs may be files, folders
//                           or symlinks)
//   /build                  the build folder, read-write, empty at start
//   <tool paths>            declared host programs, their interpreters and
//                           shared libraries, read-only at their host paths
//   /dev/{null,zero,full,random,urandom,shm}, /proc, /tmp (tmpfs)
//   /etc/{passwd,group,hosts}  generated
//
// Everything else is read-only (the root is a read-only tmpfs), the network
// is a loopback interface only, and the builder runs as uid 1000 / gid 100
// without capabilities. When the builder exits, every process it left behind
// dies with its PID namespace; so does the whole build if kiln dies. A build
// that writes anything but its outputs into the store folder fails.
//
// Where namespaces are unavailable the build runs in "clean-env" mode: same
// environment rules, but on the host file system (no isolation), with the
// logical store prefix rewritten to the physical one in the builder, its
// arguments and its environment; processes left behind are still killed
// (the build runs under a subreaper). `BuildOutcome::mode` records which
// mode built the outputs; the caller stores it in their metadata. Output
// paths (and so hashes) are always the logical ones.
#pragma once

#include <kiln/store/local_store.hpp>
#include <kiln/store/store_path.hpp>
#include <kiln/util/error.hpp>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// --- Interface ---

enum class SandboxMode { namespaces, clean_env };

// "namespaces" or "clean-env" (the form recorded in metadata).
std::string_view to_string(SandboxMode mode);

// The sandbox could not be set up, or the build step is malformed (a tool
// that does not exist, an input that is not valid). Not used for builds that
// fail: those are reported in BuildOutcome.
class SandboxError : public Error
{
public:
  using Error::Error;
};

// One build step, as its derivation declares it.
struct BuildSpec
{
  std::string name;                          // for messages
  std::string builder;                       // absolute: a logical store path or a host tool
  std::vector<std::string> args;
  std::map<std::string, std::string> env;    // as declared (logical paths)
  std::set<StorePath> inputs;                // visible read-only, with their closure
  // Host programs visible read-only at their own paths, with their
  // interpreters ("#!" and ELF) and shared libraries (tools_closure); a folder is
  // visible whole. PATH is their folders (a folder tool's bin/ if it has one).
  std::vector<std::filesystem::path> tools;
  std::map<std::string, StorePath> outputs;  // output name -> logical path
  std::chrono::seconds timeout{0};           // 0 = none
  std::chrono::seconds max_silent_time{0};   // 0 = none
  // Pipelining (namespaces mode only): inputs still being built, each a
  // host folder with the early artifacts it has so far, visible read-only
  // at the input's logical path. Not valid in the store (yet), so not in
  // `inputs`; their own inputs are.
  std::map<StorePath, std::filesystem::path> early_inputs;
  // A jobserver fifo (see kiln/util/jobserver.hpp) the build may take job
  // tokens from: visible in the sandbox and named in CARGO_MAKEFLAGS, where
  // rustc, cargo's build scripts and the cc crate look for it.
  std::optional<std::filesystem::path> jobserver;
  // Host folders the build may write, at their own paths, kept from one
  // build to the next (a compiler's incremental session). Never an output:
  // nothing in them enters the store.
  std::vector<std::filesystem::path> writable_folders;
  // Options for the jemalloc allocator of the step's programs that use it
  // (rustc does), as the target of the /etc/malloc.conf symlink jemalloc
  // reads when it starts; empty = none. Namespaces mode only: clean-env
  // mode has no /etc of its own, and an environment variable would be
  // visible to the code being compiled (option_env!). The link is part of
  // the sandbox like its /etc/passwd: a proc macro could read it, as it
  // could read that; rustc writes the same bytes with or without it.
  std::string jemalloc_conf;
};

struct SandboxOptions
{
  // Default: $KILN_SANDBOX ("off" = clean_env, "on" = namespaces, "auto" or
  // unset = detect_sandbox_support()).
  std::optional<SandboxMode> force_mode;
  // The build folder's path inside the namespaces (NIX_BUILD_TOP, TMPDIR,
  // cwd). In clean-env mode the build folder is a real temporary folder.
  std::string build_dir = "/build";
  // Where to write the log (stdout and stderr of the build, interleaved).
  // Default: build.log in the outcome's work_dir, deleted with it.
  std::optional<std::filesystem::path> log_file;
  size_t log_tail_lines = 25;                // lines kept in BuildOutcome::log_tail
  unsigned build_cores = 1;                  // NIX_BUILD_CORES
  // Host uid and gid the builder runs as, in namespaces mode, when kiln runs
  // as root (without root, a build runs as the user). Inside it is uid 1000,
  // gid 100 — unless the kernel refuses root a user namespace, when it is
  // these. Default: ids no user or container manager hands out (beside
  // Nix's auto-allocated build uids).
  unsigned build_uid = 0x35000000;
  unsigned build_gid = 0x35000000;
  // Called with each chunk of build output as it arrives (e.g. to show it).
  std::function<void(std::string_view)> on_output;
  // Called once the build is set up, before the builder runs: where each
  // output is being written on the host (to read early artifacts from).
  std::function<void(const std::map<std::string, std::filesystem::path>& output_dirs)> on_start;
};

struct BuildOutcome
{
  bool success = false;
  std::string error;                         // why it failed (exit status, signal, timeout, ...)
  SandboxMode mode = SandboxMode::clean_env; // which mode built it: record it with the outputs
  std::filesystem::path log_file;            // the full log
  std::string log_tail;                      // its last lines
  // Where each output was written, ready for the caller to add to the store
  // (on failure: none, the folders are deleted).
  std::map<std::string, std::filesystem::path> output_dirs;
  // The build's private folder under the store's tmp/ (outputs, build
  // folder, log unless placed elsewhere).
  std::filesystem::path work_dir;
  // Owns work_dir, a temporary of this process (LocalStore::make_temp_folder,
  // which GC leaves alone while the process lives): once the last copy of
  // this outcome goes, work_dir is deleted.
  std::shared_ptr<const void> lease;
};

// Run the build step `spec`: inputs are found with `store.physical_path`,
// scratch space is a temporary folder of the store's. Nothing is registered
// in the store. Returns the outcome of the build (success, or why it
// failed); throws SandboxError if the step is malformed or the sandbox
// cannot be set up.
BuildOutcome run_build(const LocalStore& store, const BuildSpec& spec,
                       const SandboxOptions& options = {});

// The mode run_build will use with `options`; throws SandboxError if the
// mode asked for is unavailable.
SandboxMode sandbox_mode(const SandboxOptions& options = {});

// What a sandbox makes visible for these tools, tools first: each tool, a
// script's "#!" interpreter and a dynamic program's loader and shared
// libraries (as the system's loader lists them), transitively; a folder
// tool is visible whole and not looked into. Throws SandboxError naming a
// tool that is missing or not absolute, names an ELF interpreter that does
// not exist, or needs a library the loader cannot find.
std::vector<std::filesystem::path> tools_closure(const std::vector<std::filesystem::path>& tools);

// Learn now what these tools need to run in a sandbox (tools_closure: one
// loader process per program, remembered for the rest of this process), as
// the first build step would, so that it need not: meant to run beside
// other work before the builds start. Errors are left for that build step
// to report.
void look_at_tools(const std::vector<std::filesystem::path>& tools);

// Whether this process can build in namespaces: probed once (by actually
// unsharing mount, PID, network, IPC and UTS namespaces — with a user
// namespace unless running as root — and mounting a tmpfs and a /proc), then
// remembered.
SandboxMode detect_sandbox_support();

} // namespace kiln
