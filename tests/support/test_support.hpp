// Helpers shared by kiln's tests: temporary folders, running programs
// (the real kiln binary, nix, ...), and building file trees.
#pragma once

#include <filesystem>
#include <map>
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

// Path of the kiln binary under test.
std::string kiln_binary();

// Whether `program` is on PATH.
bool have_program(const std::string& program);

// Write `content` to `path` (creating folders), optionally executable.
void write_file(const fs::path& path, const std::string& content, bool executable = false);

// The trimmed stdout of a successful run; fails the test otherwise.
std::string output_of(const RunResult& result, const std::string& what);

// Deterministic pseudo-random bytes.
std::string random_bytes(size_t size, uint64_t seed);

} // namespace kiln::test
