// What build scripts were seen to read of the host — environment variables
// they declare (cargo::rerun-if-env-changed) or were traced looking up, and
// host files they name (cargo::rerun-if-changed with an absolute path) or
// were traced reading — learned, by package,
// from the directives of their runs and kept in the project's state. A
// run's identity then includes those variables' values (when set) and those
// files' contents: cargo passes the caller's whole environment and the
// host's files to a build script; kiln passes what the script is known to
// read, and learns more from each run.
#pragma once

#include <kiln/cargo/digest_cache.hpp>

#include <kiln/cargo/config.hpp>

#include <filesystem>
#include <map>
#include <set>
#include <string>

namespace kiln::cargo {

struct HostReads
{
  std::set<std::string> env;     // variable names
  std::set<std::string> files;   // absolute host paths whose content was read
  std::set<std::string> probes;  // absolute host paths only looked at
};

class HostReadsRecord
{
public:
  explicit HostReadsRecord(std::filesystem::path file);
  // What runs of `package` ("name version") were seen to read.
  const HostReads& of(const std::string& package) const;
  // Learn from a run's directives file (in `run_output`); true if anything
  // new was learned that would change the identity of a run of `package`
  // under `env` (a newly known variable that is set, or a new file).
  bool learn(const std::string& package, const std::filesystem::path& run_output,
             const std::string& store_dir, const Environment& env);
  void save() const;

private:
  std::filesystem::path m_file;
  std::map<std::string, HostReads> m_reads;
  HostReads m_none;
  bool m_dirty = false;
};

} // namespace kiln::cargo
