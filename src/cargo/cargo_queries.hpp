// Asking cargo what it knows — `cargo metadata`, `cargo <command>
// --unit-graph` — and remembering its answers by everything they depend on:
// the command line, the folder, the environment cargo reads, the toolchain,
// and the metadata of every file cargo read (manifests, lock file,
// configuration files, toolchain files), so that an unchanged project does
// not run cargo at all.
#pragma once

#include <kiln/cargo/config.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace kiln::cargo {

// Cargo answered a query with an error: which query, and what cargo said.
class CargoQueryError : public CargoError
{
public:
  CargoQueryError(const std::string& message, size_t query, std::string said)
    : CargoError(message), query(query), said(std::move(said))
  {
  }
  size_t query;
  std::string said;   // cargo's stderr
};

struct CargoQuery
{
  std::vector<std::string> argv;              // the whole command, cargo first
  std::map<std::string, std::string> env;     // set for cargo (besides the caller's)
};

class CargoQueries
{
public:
  // `toolchain` is the toolchain's identity; `files` the files every answer
  // depends on (configuration, toolchain files), found or not.
  CargoQueries(std::filesystem::path cache_dir, std::filesystem::path cwd, const Environment& env,
               std::string toolchain, std::vector<std::filesystem::path> files);

  // The answers to each query (run at once when not remembered); a failure
  // is a CargoError with cargo's message (or a hint, when `offline` and
  // something is not downloaded). `more_files` gives the files query `q`'s
  // answer depends on besides the common ones (the manifests it names),
  // from the answers so far (those of earlier queries are all there).
  std::vector<std::string>
  answers(const std::vector<CargoQuery>& queries, bool offline,
          const std::function<std::vector<std::filesystem::path>(
            size_t q, const std::vector<std::string>& answers)>& more_files);

private:
  std::filesystem::path m_cache_dir;
  std::filesystem::path m_cwd;
  Environment m_env;
  std::string m_toolchain;
  std::vector<std::filesystem::path> m_files;
};

// Metadata of files (size, times, inode; missing ones count), hashed.
std::string files_fingerprint(const std::vector<std::filesystem::path>& files);

} // namespace kiln::cargo
