#include <kiln/cargo/digest_cache.hpp>

#include <kiln/cargo/cache_dir.hpp>
#include <kiln/util/io.hpp>

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <vector>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string
stat_line(const std::string& rel, const struct stat& st)
{
  return rel + " " + std::to_string(st.st_mode) + " " + std::to_string(st.st_size) + " " +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + " " +
         std::to_string(st.st_ino) + " " + std::to_string(st.st_ctim.tv_sec) + "." +
         std::to_string(st.st_ctim.tv_nsec);
}

} // namespace

std::string
tree_fingerprint(const fs::path& root, const PathFilter& filter)
{
  std::vector<std::string> lines;
  struct stat top;
  if (::lstat(root.c_str(), &top) != 0) {
    return "missing";
  }
  lines.push_back(stat_line("", top));
  std::vector<std::string> todo;
  if (S_ISDIR(top.st_mode)) {
    todo.push_back("");
  }
  while (!todo.empty()) {
    std::string rel = todo.back();
    todo.pop_back();
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(rel.empty() ? root : root / rel, ec)) {
      std::string entry_rel = (rel.empty() ? "" : rel + "/") + entry.path().filename().string();
      if (filter && !filter(entry_rel)) {
        continue;
      }
      struct stat st;
      if (::lstat(entry.path().c_str(), &st) != 0) {
        continue;
      }
      lines.push_back(stat_line(entry_rel, st));
      if (S_ISDIR(st.st_mode)) {
        todo.push_back(entry_rel);
      }
    }
  }
  std::sort(lines.begin(), lines.end());
  std::string all;
  for (const auto& l : lines) {
    all += l + "\n";
  }
  return hash_string(HashAlgo::sha256, all).to_string(HashFormat::base16, false);
}

DigestCache::DigestCache(fs::path folder, std::string prefix)
  : m_folder(std::move(folder)), m_prefix(std::move(prefix))
{
}

fs::path
DigestCache::file_of(const std::string& key) const
{
  return m_folder / keyed_file_name(m_prefix, key, ".json");
}

std::optional<DigestCache::Entry>
DigestCache::load(const std::string& key) const
{
  try {
    json e = json::parse(read_cache_file(file_of(key)));
    if (e.at("key").get<std::string>() != key) {
      return std::nullopt;
    }
    Entry entry;
    entry.fingerprint = e.at("fingerprint").get<std::string>();
    entry.digest.nar_hash = Hash::parse_any(e.at("hash").get<std::string>(), HashAlgo::sha256);
    entry.digest.nar_size = e.at("size").get<uint64_t>();
    return entry;
  } catch (const std::exception&) {
    return std::nullopt; // missing or damaged: only a cache
  }
}

TreeDigest
DigestCache::digest(const fs::path& root, const PathFilter& filter, const std::string& filter_id)
{
  std::string key = root.string() + (filter_id.empty() ? "" : "\n" + filter_id);
  std::string fingerprint = tree_fingerprint(root, filter);
  std::optional<Entry> known;
  {
    std::lock_guard guard(m_mutex);
    if (auto it = m_entries.find(key); it != m_entries.end()) {
      known = it->second;
    }
  }
  if (!known) {
    known = load(key); // (outside the lock: other trees are looked up meanwhile)
  }
  if (known && known->fingerprint == fingerprint) {
    std::lock_guard guard(m_mutex);
    m_entries.try_emplace(key, *known);
    return known->digest;
  }
  HashSink hash;
  dump_path(root, hash, filter);
  TreeDigest d;
  d.nar_size = hash.bytes_written();
  d.nar_hash = hash.finish();
  std::lock_guard guard(m_mutex);
  m_entries[key] = {fingerprint, d};
  m_dirty.insert(key);
  ++m_trees_hashed;
  return d;
}

void
DigestCache::save()
{
  std::lock_guard guard(m_mutex);
  if (m_dirty.empty()) {
    return;
  }
  std::error_code ec;
  fs::create_directories(m_folder, ec);
  for (const auto& key : m_dirty) {
    const Entry& e = m_entries.at(key);
    json record = {{"key", key},
                   {"fingerprint", e.fingerprint},
                   {"hash", e.digest.nar_hash.to_string(HashFormat::nix32, true)},
                   {"size", e.digest.nar_size}};
    try {
      // Not synced: a digest lost in a crash is computed again.
      replace_file(file_of(key), record.dump());
    } catch (const std::exception&) {
      // Only a cache.
    }
  }
  m_dirty.clear();
}

size_t
DigestCache::trees_hashed() const
{
  std::lock_guard guard(m_mutex);
  return m_trees_hashed;
}

std::string
keyed_file_name(const std::string& prefix, std::string_view key, const std::string& suffix)
{
  return prefix +
         hash_string(HashAlgo::sha256, key).to_string(HashFormat::base16, false).substr(0, 32) +
         suffix;
}

} // namespace kiln::cargo
