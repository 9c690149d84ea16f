// Content digests of file trees (NAR sha256), remembered by the metadata of
// every file in them: a tree whose files' names, modes, sizes, times and
// inodes are unchanged is not read again. Used for package sources and for
// the toolchain, so that a no-op build reads no file contents.
#pragma once

#include <kiln/hash/hash.hpp>
#include <kiln/nar/nar.hpp>

#include <filesystem>
#include <map>
#include <mutex>
#include <string>

namespace kiln::cargo {

struct TreeDigest
{
  Hash nar_hash{HashAlgo::sha256};
  uint64_t nar_size = 0;
};

class DigestCache
{
public:
  // Remembered in `file` (a JSON state file; damaged or missing: start over).
  explicit DigestCache(std::filesystem::path file);
  // The digest of `root` (a folder, file or symlink) less what `filter`
  // leaves out. `filter_id` names the filter: the same tree under another
  // filter is another entry. Thread-safe.
  TreeDigest digest(const std::filesystem::path& root, const PathFilter& filter = {},
                    const std::string& filter_id = "");
  // Write what was learned, if anything (errors ignored: it is only a cache).
  void save();

private:
  std::filesystem::path m_file;
  std::mutex m_mutex;
  std::map<std::string, std::pair<std::string, TreeDigest>> m_entries; // key → (fingerprint, digest)
  bool m_dirty = false;
};

// The metadata of every entry a filtered walk of `root` includes, hashed:
// if it is unchanged, so is the tree's NAR.
std::string tree_fingerprint(const std::filesystem::path& root, const PathFilter& filter);

// The name of the file that keeps what is remembered under `key` (in the
// cache folder, or a project's state): `prefix`, the first 32 hex digits of
// the key's SHA-256, `suffix`.
std::string keyed_file_name(const std::string& prefix, std::string_view key,
                            const std::string& suffix = "");

} // namespace kiln::cargo
