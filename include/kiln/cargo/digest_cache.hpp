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
#include <optional>
#include <set>
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
  // Remembered in `folder`, a file a tree: `<prefix><32 hex digits of the
  // tree's key>.json` (damaged or missing: the tree is hashed again). One
  // file for all trees grew with every project and toolchain ever seen, was
  // read whole by every build (1.6 MB, 8,000 trees, 50–100 ms on a
  // developer's machine), and two builds saving at once lost each other's
  // entries.
  DigestCache(std::filesystem::path folder, std::string prefix);
  // The digest of `root` (a folder, file or symlink) less what `filter`
  // leaves out. `filter_id` names the filter: the same tree under another
  // filter is another entry. Thread-safe.
  TreeDigest digest(const std::filesystem::path& root, const PathFilter& filter = {},
                    const std::string& filter_id = "");
  // Write what was learned, if anything (errors ignored: it is only a cache).
  void save();
  // How many trees digest() had to read (not remembered, or changed).
  size_t trees_hashed() const;

private:
  struct Entry
  {
    std::string fingerprint;
    TreeDigest digest;
  };
  std::filesystem::path file_of(const std::string& key) const;
  std::optional<Entry> load(const std::string& key) const;

  std::filesystem::path m_folder;
  std::string m_prefix;
  mutable std::mutex m_mutex;
  std::map<std::string, Entry> m_entries; // key → entry, as read or learned
  std::set<std::string> m_dirty;          // keys learned since the last save
  size_t m_trees_hashed = 0;
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
