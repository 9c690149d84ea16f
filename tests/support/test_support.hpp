// Helpers shared by kiln's tests: temporary folders, running programs
// (the real kiln binary, nix, ...), and building file trees.
#pragma once

#include <kiln/store/local_store.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <optional>
#include <string>
#include <vector>

namespace kiln::test {

namespace fs = std::filesystem;

// A fresh folder under $TMPDIR, deleted (even if read-only inside) at scope end.
class TempDir
{
public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path&
  path() const
  {
    return m_path;
  }
  fs::path
  operator/(const std::string& name) const
  {
    return m_path / name;
  }

private:
  fs::path m_path;
};

struct RunResult
{
  int status = -1;        // exit status, or 128 + signal
  std::string out;
  std::string err;
  long max_rss_kib = 0;   // peak resident memory of the child
};

struct RunOptions
{
  std::string stdin_data;
  std::optional<fs::path> stdin_file;
  std::optional<fs::path> stdout_file;       // send stdout here instead of capturing
  std::map<std::string, std::string> env;    // added to (or overriding) the environment
  std::vector<std::string> unset_env;
  std::optional<fs::path> cwd;
};

// Run `argv` (argv[0] looked up in PATH) and wait for it.
RunResult run(const std::vector<std::string>& argv, const RunOptions& options = {});

// Run the kiln binary under test with `args`.
RunResult kiln(const std::vector<std::string>& args, const RunOptions& options = {});
// kiln run in `cwd` (a project's folder), with `env` added to the environment.
RunResult kiln_in(const fs::path& cwd, const std::vector<std::string>& args,
                  const std::map<std::string, std::string>& env = {});
// Options that run a program in `dir`.
RunOptions in_dir(const std::filesystem::path& dir);
// The NAR sizes of `paths` and everything they reference, added up.
uint64_t closure_nar_size(const LocalStore& store, const std::set<StorePath>& paths);

// Path of the kiln binary under test.
std::string kiln_binary();

// Record that this test skips work it cannot do on this machine (and WARN):
// the run then exits 77, which ctest reports as a skip, not a pass.
void skip(const std::string& reason);
const std::vector<std::string>& skips();

// Whether `program` is on PATH.
bool have_program(const std::string& program);

// Write `content` to `path` (creating folders), optionally executable.
void write_file(const fs::path& path, const std::string& content, bool executable = false);

// The trimmed stdout of a successful run; fails the test otherwise.
std::string output_of(const RunResult& result, const std::string& what);

// Deterministic pseudo-random bytes.
std::string random_bytes(size_t size, uint64_t seed);

// Add an input-addressed object (a file holding `contents` and the paths of
// `refs`) with those references, as a build would produce. Its path is
// named by a hash of name and contents, not of the NAR, so no signature
// can be skipped for it.
StorePath add_test_object(LocalStore& store, const std::string& name, const std::string& contents,
                          const std::set<StorePath>& refs = {});

// The NAR of `path`.
std::string nar_of(const fs::path& path);

// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();

// A TCP connection to 127.0.0.1:`port` whose reads time out after 10 s;
// -1 if refused.
int connect_loopback(int port);

// A kiln.yaml of two steps (header, then app, which refers to it and reads
// ./src/main.c), built with busybox: for builds, pushes and substitutions.
extern const char* const k_two_step_project;

// A process started in the background, killed (SIGTERM, then SIGKILL) at
// scope end. stderr goes to a file that `wait_for_stderr` reads.
class BackgroundProcess
{
public:
  BackgroundProcess(const std::vector<std::string>& argv, const fs::path& log_file);
  ~BackgroundProcess();
  // Wait until stderr contains `text`; false after `seconds`.
  bool wait_for_stderr(const std::string& text, int seconds = 20);
  std::string stderr_text() const;
  // Send SIGTERM and wait; returns the exit status (128+signal if killed).
  int stop();
  int
  pid() const
  {
    return m_pid;
  }

private:
  int m_pid = -1;
  fs::path m_log;
  bool m_stopped = false;
  int m_status = -1;
};

// A private Nix (Debian's nix-bin): its store (logical /kiln/store, on disk
// under a temporary folder), state and caches, touching nothing outside.
class PrivateNix
{
public:
  PrivateNix();
  // The --store argument for this Nix's store.
  std::string store() const;
  // Run nix, nix-store, nix-build, ... in this Nix's environment (the new
  // CLI gets --extra-experimental-features nix-command).
  RunResult run(std::vector<std::string> args) const;
  const TempDir&
  dir() const
  {
    return m_dir;
  }
  // Where this Nix keeps the object `store_path` on disk.
  fs::path physical(const std::string& store_path) const;

private:
  TempDir m_dir;
};

// `kiln serve ARGS --listen 127.0.0.1:0` in the background, its stderr in
// `log_file`; stopped with SIGTERM at scope end.
class KilnServe
{
public:
  KilnServe(std::vector<std::string> args, const fs::path& log_file);
  // `kiln serve --config CONFIG`.
  KilnServe(const fs::path& config, const fs::path& log_file);
  std::string log() const { return m_process->stderr_text(); }
  int pid() const { return m_process->pid(); }
  // SIGTERM, and the exit status.
  int stop() { return m_process->stop(); }

  int port = 0;
  std::string url;   // http://127.0.0.1:PORT

private:
  std::unique_ptr<BackgroundProcess> m_process;
};

// Debian's nginx on 127.0.0.1, serving `root` with WebDAV PUT enabled; or
// running `site` (what a sites-available/ file holds: server blocks, maps),
// made for the port it is given, inside its http block.
class Nginx
{
public:
  explicit Nginx(const fs::path& root);
  explicit Nginx(const std::function<std::string(int port)>& site);
  // nginx's error log, for messages when a test fails.
  std::string error_log() const;
  std::string
  url() const
  {
    return "http://127.0.0.1:" + std::to_string(m_port);
  }

private:
  TempDir m_dir;
  int m_port;
  std::unique_ptr<BackgroundProcess> m_process;
};

} // namespace kiln::test
