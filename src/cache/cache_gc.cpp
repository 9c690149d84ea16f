// Garbage collection of a binary-cache folder (see cache_gc.hpp for the
// policy and what "last used" means).
#include <kiln/cache/cache_gc.hpp>
#include <kiln/cache/binary_cache.hpp>
#include <kiln/cache/narinfo.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>

namespace kiln {

namespace fs = std::filesystem;
using Clock = std::chrono::system_clock;

namespace {

Clock::time_point
to_time_point(const struct timespec& ts)
{
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
    std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
}

struct FileStat
{
  uint64_t size = 0;
  Clock::time_point last_used;   // the later of access and modification
  Clock::time_point modified;
};

std::optional<FileStat>
stat_file(const fs::path& path)
{
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return std::nullopt;
    }
    throw_errno("reading the status of '" + path.string() + "'");
  }
  FileStat out;
  out.size = static_cast<uint64_t>(st.st_size);
  out.modified = to_time_point(st.st_mtim);
  out.last_used = std::max(to_time_point(st.st_atim), out.modified);
  return out;
}

// The "URL:" line of a narinfo that does not parse, so that its NAR is not
// taken for an orphan.
std::optional<std::string>
salvage_url(const std::string& text)
{
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) {
      end = text.size();
    }
    std::string_view line(text.data() + pos, end - pos);
    if (line.starts_with("URL: ")) {
      return std::string(line.substr(5));
    }
    pos = end + 1;
  }
  return std::nullopt;
}

bool
is_temporary(const std::string& name)
{
  return name.find(".tmp.") != std::string::npos;
}

void
remove_file(const fs::path& path)
{
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw_errno("deleting '" + path.string() + "'");
  }
}

struct Entry
{
  explicit Entry(StorePath p) : path(std::move(p))
  {
  }

  StorePath path;
  std::string narinfo_name;
  uint64_t narinfo_bytes = 0;
  std::string nar_key;              // empty if the NAR is missing
  uint64_t nar_bytes = 0;
  Clock::time_point effective;      // own last use, then that of its referrers too
  std::vector<std::string> reference_hashes;   // without itself
  std::vector<size_t> referrers;    // indices of entries referencing it
  bool pinned = false;              // in or below a reference cycle: never dropped
};

// Indices of `entries`, referrers before their references (Kahn's
// algorithm); entries in or below a cycle are pinned and come last.
std::vector<size_t>
referrers_first(std::vector<Entry>& entries, const std::map<std::string, size_t>& by_hash)
{
  std::vector<size_t> pending(entries.size(), 0);   // referrers not yet placed
  for (size_t i = 0; i < entries.size(); ++i) {
    for (const auto& hash : entries[i].reference_hashes) {
      if (auto it = by_hash.find(hash); it != by_hash.end()) {
        entries[it->second].referrers.push_back(i);
        ++pending[it->second];
      }
    }
  }
  std::vector<size_t> order;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (pending[i] == 0) {
      order.push_back(i);
    }
  }
  for (size_t next = 0; next < order.size(); ++next) {
    const Entry& e = entries[order[next]];
    for (const auto& hash : e.reference_hashes) {
      auto it = by_hash.find(hash);
      if (it != by_hash.end() && --pending[it->second] == 0) {
        order.push_back(it->second);
      }
    }
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    if (pending[i] > 0) {
      entries[i].pinned = true;
      order.push_back(i);
    }
  }
  return order;
}

// What a cache folder holds: every narinfo, how many narinfos name each NAR
// file, and the debris of interrupted writes.
struct CacheScan
{
  std::vector<Entry> entries;
  std::map<std::string, size_t> by_hash;
  std::map<std::string, size_t> nar_users;
  std::vector<fs::path> temporaries;
};

CacheScan
scan_cache(const fs::path& folder, const StoreDir& store_dir, CacheGcResult& result)
{
  CacheScan scan;
  for (const auto& dirent : fs::directory_iterator(folder)) {
    std::string name = dirent.path().filename().string();
    if (is_temporary(name)) {
      scan.temporaries.push_back(dirent.path());
      continue;
    }
    if (!name.ends_with(".narinfo") || !dirent.is_regular_file()) {
      continue;
    }
    auto narinfo_stat = stat_file(dirent.path());
    if (!narinfo_stat) {
      continue;   // removed meanwhile
    }
    std::string text = read_file(dirent.path(), true);
    std::optional<NarInfo> narinfo;
    try {
      narinfo = NarInfo::parse(text, store_dir, dirent.path().string());
      check_cache_key(narinfo->url);
    } catch (const FormatError& e) {
      result.warnings.push_back(std::string(e.what()) + " (left alone)");
      if (auto url = salvage_url(text)) {
        ++scan.nar_users[*url];   // never released: its NAR stays
      }
      continue;
    }
    Entry entry{narinfo->info.path};
    entry.narinfo_name = name;
    entry.narinfo_bytes = narinfo_stat->size;
    entry.effective = narinfo_stat->last_used;
    if (auto nar = stat_file(folder / narinfo->url)) {
      entry.nar_key = narinfo->url;
      entry.nar_bytes = nar->size;
      entry.effective = std::max(entry.effective, nar->last_used);
      ++scan.nar_users[entry.nar_key];
    } else {
      result.warnings.push_back(dirent.path().string() + " names '" + narinfo->url +
                                "', which is missing");
    }
    for (const auto& ref : narinfo->info.references) {
      if (ref != narinfo->info.path) {
        entry.reference_hashes.emplace_back(ref.hash_part());
      }
    }
    scan.by_hash[std::string(entry.path.hash_part())] = scan.entries.size();
    scan.entries.push_back(std::move(entry));
  }
  return scan;
}

// The entries in the order they may go: least recently used first (a path's
// use counts for everything it references), never one that is pinned.
std::vector<size_t>
eviction_order(std::vector<Entry>& entries, const std::map<std::string, size_t>& by_hash)
{
  // Effective last use flows from referrers to references.
  std::vector<size_t> order = referrers_first(entries, by_hash);
  for (size_t i : order) {
    for (size_t r : entries[i].referrers) {
      entries[i].effective = std::max(entries[i].effective, entries[r].effective);
      entries[i].pinned = entries[i].pinned || entries[r].pinned;
    }
  }
  // Least recently used first; among equals, referrers first (the order of
  // `order`), so that every prefix leaves whole closures behind.
  std::vector<size_t> rank(entries.size());
  for (size_t k = 0; k < order.size(); ++k) {
    rank[order[k]] = k;
  }
  std::vector<size_t> victims = order;
  std::stable_sort(victims.begin(), victims.end(), [&](size_t a, size_t b) {
    if (entries[a].pinned != entries[b].pinned) {
      return !entries[a].pinned;
    }
    if (entries[a].effective != entries[b].effective) {
      return entries[a].effective < entries[b].effective;
    }
    return rank[a] < rank[b];
  });

  return victims;
}

// Drops paths in eviction order while they are too old or the cache too big.
void
drop_paths(const fs::path& folder, CacheScan& scan, const std::vector<size_t>& victims,
           const CacheGcOptions& options, Clock::time_point now, CacheGcResult& result)
{
  uint64_t total = 0;
  {
    std::set<std::string> counted;
    for (const auto& e : scan.entries) {
      total += e.narinfo_bytes;
      if (!e.nar_key.empty() && counted.insert(e.nar_key).second) {
        total += e.nar_bytes;
      }
    }
  }
  std::optional<Clock::time_point> cutoff;
  if (options.keep_for) {
    cutoff = now - *options.keep_for;
  }
  size_t dropped = 0;
  for (size_t i : victims) {
    const Entry& e = scan.entries[i];
    bool too_old = cutoff && e.effective < *cutoff;
    bool too_big = options.max_size && total > *options.max_size;
    if (e.pinned || !(too_old || too_big)) {
      break;
    }
    CacheGcPath gone{e.path, e.narinfo_bytes, e.effective};
    bool last_user = !e.nar_key.empty() && --scan.nar_users[e.nar_key] == 0;
    if (last_user) {
      gone.bytes += e.nar_bytes;
    }
    if (!options.dry_run) {
      // The narinfo first: a reader never finds one without its NAR.
      remove_file(folder / e.narinfo_name);
      if (last_user) {
        remove_file(folder / e.nar_key);
      }
    }
    total -= gone.bytes;
    result.bytes_freed += gone.bytes;
    result.deleted.push_back(std::move(gone));
    ++dropped;
  }
  for (size_t k = dropped; k < victims.size(); ++k) {
    const Entry& e = scan.entries[victims[k]];
    result.kept.push_back({e.path, e.narinfo_bytes + e.nar_bytes, e.effective});
  }
  result.bytes_kept = total;

}

// NAR files no narinfo names, and debris of interrupted writes, once they
// are older than any upload in flight could be.
void
remove_orphans(const fs::path& folder, CacheScan& scan, const CacheGcOptions& options,
               Clock::time_point now, CacheGcResult& result)
{
  std::error_code ec;
  const Clock::time_point orphan_cutoff = now - options.orphan_grace;
  if (fs::is_directory(folder / "nar", ec)) {
    for (const auto& dirent : fs::directory_iterator(folder / "nar")) {
      std::string key = "nar/" + dirent.path().filename().string();
      // scan.nar_users still lists the NARs that went with their paths.
      if (!scan.nar_users.count(key) && dirent.is_regular_file()) {
        scan.temporaries.push_back(dirent.path());
      }
    }
  }
  for (const auto& path : scan.temporaries) {
    auto st = stat_file(path);
    if (st && st->modified < orphan_cutoff) {
      if (!options.dry_run) {
        remove_file(path);
      }
      result.bytes_freed += st->size;
      result.orphans_removed.push_back(path.lexically_relative(folder).string());
    }
  }
}

} // namespace

CacheGcResult
collect_cache_garbage(const fs::path& folder, const CacheGcOptions& options)
{
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) {
    throw UsageError("'" + folder.string() + "' is not a folder");
  }
  const Clock::time_point now = options.now.value_or(Clock::now());
  CacheGcResult result;

  CacheInfo info;
  bool has_cache_info = false;
  if (fs::exists(folder / "nix-cache-info", ec)) {
    info = CacheInfo::parse(read_file(folder / "nix-cache-info", true),
                            (folder / "nix-cache-info").string());
    has_cache_info = true;
  }
  result.store_dir = info.store_dir;
  StoreDir store_dir(info.store_dir);

  CacheScan scan = scan_cache(folder, store_dir, result);
  if (!has_cache_info && scan.entries.empty()) {
    throw UsageError("'" + folder.string() +
                     "' is not a binary cache folder (no nix-cache-info, no narinfo)");
  }
  std::vector<size_t> victims = eviction_order(scan.entries, scan.by_hash);
  drop_paths(folder, scan, victims, options, now, result);
  remove_orphans(folder, scan, options, now, result);
  return result;
}

} // namespace kiln
