// Garbage collection of a binary-cache folder (the files a file:// cache,
// `kiln serve` or a static web server holds): drop the least recently used
// paths, never one that a kept path references.
//
// When a path was last used: the latest access or modification time of its
// narinfo and of its NAR file. Web servers read those files to answer
// queries and downloads, and the kernel records the access (with the default
// `relatime` mount option, at most once a day per file, which is as precise
// as --keep-days needs). On a `noatime` mount the access times stay at the
// upload, and "least recently used" becomes "oldest upload". The collector
// reads narinfos with O_NOATIME where it may, so that it does not count as a
// use itself.
//
// A path's *effective* last use is the latest of its own and that of every
// path that references it (transitively): a path is kept as long as anything
// kept needs it. Paths are dropped in order of effective last use, referrers
// before their references, so that what remains is always a set of whole
// closures: first everything unused for longer than `keep_for`, then more
// until the folder is no larger than `max_size`. Each path goes with its
// narinfo first, then its NAR file (unless another kept narinfo shares it).
//
// NAR files and temporary files that no narinfo names (left by interrupted
// uploads) are removed once they are older than `orphan_grace`, so an upload
// in flight keeps its NAR. The collector does not lock out a concurrent
// push: a push that found a path present and then publishes a referrer of
// it after the collector dropped that path leaves an incomplete closure. Run
// it when no push is running (e.g. from a nightly timer).
#pragma once

#include <kiln/store/store_path.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace kiln {

struct CacheGcOptions
{
  std::optional<std::chrono::seconds> keep_for;   // drop what is unused for longer
  std::optional<uint64_t> max_size;               // drop more until the folder fits
  std::chrono::seconds orphan_grace{24 * 3600};
  bool dry_run = false;
  // "Now", for tests; default: the clock.
  std::optional<std::chrono::system_clock::time_point> now;
};

struct CacheGcPath
{
  StorePath path;
  uint64_t bytes = 0;   // narinfo plus the NAR file (if no kept path shares it)
  std::chrono::system_clock::time_point last_used;   // effective last use
};

struct CacheGcResult
{
  std::string store_dir;              // from the folder's nix-cache-info
  std::vector<CacheGcPath> deleted;   // in the order they went (or would go)
  std::vector<CacheGcPath> kept;
  uint64_t bytes_freed = 0;
  uint64_t bytes_kept = 0;            // narinfos and the NAR files they name
  std::vector<std::string> orphans_removed;   // keys, e.g. "nar/<file>.nar.zst"
  std::vector<std::string> warnings;          // narinfos that could not be read
};

// Collect garbage in the cache folder `folder`. Throws UsageError if it is
// not a cache folder (no nix-cache-info and no narinfo).
CacheGcResult collect_cache_garbage(const std::filesystem::path& folder,
                                    const CacheGcOptions& options);

} // namespace kiln
