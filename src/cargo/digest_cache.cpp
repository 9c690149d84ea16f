#include "digest_cache.hpp"

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

DigestCache::DigestCache(fs::path file) : m_file(std::move(file))
{
  std::error_code ec;
  if (!fs::exists(m_file, ec)) {
    return;
  }
  try {
    json entries = json::parse(read_file(m_file));
    for (const auto& [key, e] : entries.items()) {
      TreeDigest d;
      d.nar_hash = Hash::parse_any(e.at("hash").get<std::string>(), HashAlgo::sha256);
      d.nar_size = e.at("size").get<uint64_t>();
      m_entries[key] = {e.at("fingerprint").get<std::string>(), d};
    }
  } catch (const std::exception&) {
    m_entries.clear(); // only a cache
  }
}

TreeDigest
DigestCache::digest(const fs::path& root, const PathFilter& filter, const std::string& filter_id)
{
  std::string key = root.string() + (filter_id.empty() ? "" : "\n" + filter_id);
  std::string fingerprint = tree_fingerprint(root, filter);
  {
    std::lock_guard guard(m_mutex);
    auto it = m_entries.find(key);
    if (it != m_entries.end() && it->second.first == fingerprint) {
      return it->second.second;
    }
  }
  HashSink hash;
  dump_path(root, hash, filter);
  TreeDigest d;
  d.nar_size = hash.bytes_written();
  d.nar_hash = hash.finish();
  std::lock_guard guard(m_mutex);
  m_entries[key] = {fingerprint, d};
  m_dirty = true;
  return d;
}

void
DigestCache::save()
{
  std::lock_guard guard(m_mutex);
  if (!m_dirty) {
    return;
  }
  json entries = json::object();
  for (const auto& [key, e] : m_entries) {
    entries[key] = {{"fingerprint", e.first},
                    {"hash", e.second.nar_hash.to_string(HashFormat::nix32, true)},
                    {"size", e.second.nar_size}};
  }
  try {
    fs::create_directories(m_file.parent_path());
    write_file_atomic(m_file, entries.dump());
    m_dirty = false;
  } catch (const std::exception&) {
    // Only a cache.
  }
}

std::string
keyed_file_name(const std::string& prefix, std::string_view key, const std::string& suffix)
{
  return prefix +
         hash_string(HashAlgo::sha256, key).to_string(HashFormat::base16, false).substr(0, 32) +
         suffix;
}

} // namespace kiln::cargo
