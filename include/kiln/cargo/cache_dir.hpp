// The cache folder's upkeep (`cache-dir`, shared by every store of the
// user): what kiln learned of this machine's files and of cargo's answers,
// a file an answer. Each project, command line and toolchain adds files
// (cargo metadata's answer alone may be half a megabyte), so files no build
// has used for a while are deleted, as cargo's own cache is trimmed.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>

namespace kiln::cargo {

// Files of the cache folder unused for this long are deleted.
inline constexpr std::chrono::hours k_cache_max_unused{24 * 30};

// Read a file of the cache folder, marking it as used (its access and
// modification times, set now if both are a day old: the file system may
// not record reads, e.g. mounted with noatime, and an archive of the folder,
// as CI caches make, keeps only the modification time). Throws as
// read_file() if it cannot be read.
std::string read_cache_file(const std::filesystem::path& path);

// At most once a day (the stamp file `last-trim` says when it last ran):
// delete the files directly in `cache_dir` that no build used for
// k_cache_max_unused (last use: the later of the access and modification
// times), and temporary files a crashed write left a day ago. Also deletes
// the files in which kiln before 2026-12 kept all digests of a kind
// (source-digests.json, toolchain-digests.json) and the one toolchain it
// remembered (toolchain.json). Errors are ignored: it is
// only a cache. Returns how many files were deleted.
size_t upkeep_cache_folder(const std::filesystem::path& cache_dir);

} // namespace kiln::cargo
