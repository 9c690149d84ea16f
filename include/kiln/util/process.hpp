// Running a program and reading what it prints: the one way kiln starts a
// helper program (cargo, rustc, ldd, a compiler's --version, a build step's
// tools) outside the sandbox.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kiln {

// --- Interface ---

struct ProcessOptions
{
  std::optional<std::filesystem::path> cwd;
  // Added to (or overriding) this process's environment.
  std::map<std::string, std::string> env;
  // Removed from it: exact names, or prefixes ending in '*' ("KILN_UNIT_*").
  std::vector<std::string> unset_env;
  // stderr goes to stdout (as a terminal would show both).
  bool merge_stderr = false;
  // stdout goes to this file instead of being captured.
  std::optional<std::filesystem::path> stdout_file;
  // Each line of stderr as it comes (then not captured).
  std::function<void(const std::string& line)> on_stderr_line;
  // Captured output beyond this many bytes (per stream) is dropped.
  size_t max_output = size_t{64} << 20;
};

struct ProcessResult
{
  int status = -1;     // the exit status, or 128 + the signal that killed it
  bool signaled = false;
  std::string out;     // stdout (unless sent to a file)
  std::string err;     // stderr (unless merged or passed to on_stderr_line)

  bool ok() const { return status == 0 && !signaled; }
  // "exit 101", "killed by signal 9"
  std::string describe() const;
};

// Run `argv` (argv[0] looked up on PATH when it holds no '/'), stdin
// /dev/null, and wait for it. A program that cannot be started gives status
// 127 and the reason in `err`.
ProcessResult run_process(const std::vector<std::string>& argv, const ProcessOptions& options = {});

// The text of a failed run for an error message: "`cargo metadata` failed
// (exit 101):\n<stderr>".
std::string describe_failure(const std::vector<std::string>& argv, const ProcessResult& result);

// `name` on PATH (or `name` itself when it holds a '/'), if it is an
// executable file.
std::optional<std::filesystem::path> find_program(const std::string& name);

} // namespace kiln
