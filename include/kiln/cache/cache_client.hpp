// Talking to one binary cache as a store: its nix-cache-info, narinfo
// look-ups (remembering "not there" briefly), NAR downloads into the local
// store, and uploads. And the two operations on top: substitute (pull the
// closures of paths from several caches at once) and push.
#pragma once

#include <kiln/cache/binary_cache.hpp>
#include <kiln/cache/narinfo.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/store/local_store.hpp>
#include <kiln/util/parallel.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <set>

namespace kiln {

// "Not in this cache" answers, remembered on disk for a while so that a
// build does not ask again for every path; never consulted with --refresh.
class NegativeCache
{
public:
  NegativeCache(std::filesystem::path dir, std::chrono::seconds ttl);
  bool is_missing(const std::string& cache_url, const StorePath& path) const;
  void record_missing(const std::string& cache_url, const StorePath& path);
  void forget(const std::string& cache_url, const StorePath& path);

private:
  std::filesystem::path file_for(const std::string& cache_url, const StorePath& path) const;
  std::filesystem::path m_dir;
  std::chrono::seconds m_ttl;
};

class CacheClient
{
public:
  CacheClient(std::unique_ptr<BinaryCache> backend, StoreDir store_dir,
              NegativeCache* negative_cache = nullptr);

  const std::string&
  url() const
  {
    return m_backend->url();
  }
  BinaryCache&
  backend()
  {
    return *m_backend;
  }
  // nix-cache-info; a cache without one is treated as empty defaults. A
  // cache for another store directory is an error.
  const CacheInfo& cache_info();
  // Create nix-cache-info if the cache has none (before the first upload).
  void ensure_cache_info();

  std::optional<NarInfo> query(const StorePath& path, bool refresh = false);
  // Download the NAR `narinfo` describes and add it to `store`, checking
  // NAR hash and size while streaming. Returns the bytes transferred.
  uint64_t fetch_into(LocalStore& store, const NarInfo& narinfo);
  // The same, stopping short of making it valid (see LocalStore::commit):
  // downloads of a closure can then run in any order. `bytes` receives the
  // size transferred.
  std::unique_ptr<PreparedPath> fetch_prepared(LocalStore& store, const NarInfo& narinfo,
                                               uint64_t& bytes);
  // Restore the NAR `narinfo` describes at `target` (which must not exist),
  // outside any store, checking its NAR hash and size: to look at what a
  // cache holds (kiln cache check compares it with a rebuild).
  void fetch_to_folder(const NarInfo& narinfo, const std::filesystem::path& target);
  // Create or replace the narinfo of `narinfo.info.path`.
  void put_narinfo(const NarInfo& narinfo);

  // --- Never silent: what this cache could not give, said once a run ---

  // Where the lines below go (the CLI prints them); none by default.
  using Reporter = std::function<void(const std::string& line)>;
  void set_reporter(Reporter reporter);
  // Count `path` as not taken from this cache for `reason` (one kind of
  // reason, without the path: "signed only by ci-old (…)").
  void reject(const StorePath& path, const std::string& reason);
  // Say each reason once, with its count ("warning: cache URL: 74 paths
  // …; not using them"), and forget them. Also done when the client goes.
  void report();
  // A failure at the transport level (refused, DNS, TLS, 5xx after
  // retries, a stall): the cache is not asked again in this run, and one
  // line says so. Later calls throw CacheError at once.
  void disable(const std::string& why);
  bool disabled() const;
  ~CacheClient();

private:
  std::unique_ptr<BinaryCache> m_backend;
  StoreDir m_store_dir;
  NegativeCache* m_negative;
  // Calls the backend; a CacheError disables this cache.
  template <typename F>
  auto guarded(F call) -> decltype(call());
  void check_enabled() const;

  std::mutex m_mutex;
  std::optional<CacheInfo> m_info;
  mutable std::mutex m_health_mutex;
  Reporter m_reporter;
  std::map<std::string, std::set<StorePath>> m_rejected;   // reason → paths
  std::optional<std::string> m_disabled;
};

// Can every path of `paths` be substituted from `caches` under `policy`,
// the valid signatures for one NAR being combined across the caches that
// hold it? (The build's substitution hook; rejections are counted.)
bool can_substitute(const std::vector<CacheClient*>& caches, const TrustPolicy& policy,
                    const StoreDir& store_dir, const std::vector<StorePath>& paths);

// May `info`, as a cache describes it, be taken under `policy`? Yes if it is
// signed by enough distinct trusted keys, if the policy needs no signature,
// or if it is content-addressed (its path vouches for its content).
bool is_trusted(const TrustPolicy& policy, const StoreDir& store_dir, const PathInfo& info);

using ProgressFn = std::function<void(const std::string&)>;

struct SubstituteOptions
{
  unsigned connections = 16;
  bool refresh = false;
  ProgressFn progress;   // one line per event ("fetched …", "skipping …")
};

struct SubstituteResult
{
  std::vector<StorePath> fetched;
  std::vector<StorePath> already_valid;
  std::map<StorePath, std::string> failed;   // path → why
  uint64_t bytes_downloaded = 0;
};

// Make the closures of `paths` valid in `store`, downloading from `caches`.
// Every cache is asked about every path at once; among answers trusted by
// `policy` (or content-addressed, which vouches for itself), the cache with
// the best (lowest) priority is used, the others being fallbacks if a
// download fails. Nothing unverified is ever registered.
SubstituteResult substitute(LocalStore& store, const std::vector<CacheClient*>& caches,
                            const TrustPolicy& policy, const std::vector<StorePath>& paths,
                            const SubstituteOptions& options = {});

// A fresh copy of the valid path `info.path` (for `kiln store verify
// --repair`): from the first of `caches` whose narinfo is trusted by
// `policy` and names the NAR hash and size the store registered, prepared
// (downloaded and checked) but not yet in place; nullptr if none has it.
// A cache that fails is skipped; the errors are in `errors`.
std::unique_ptr<PreparedPath> fetch_again(LocalStore& store,
                                          const std::vector<CacheClient*>& caches,
                                          const TrustPolicy& policy, const PathInfo& info,
                                          std::vector<std::string>& errors);

struct PushOptions
{
  std::string compression = "zstd";
  const SecretKey* key = nullptr;   // sign narinfos (and the local paths) with this
  unsigned connections = 16;
  bool closure = true;
  ProgressFn progress;
};

struct PushResult
{
  std::vector<StorePath> uploaded;
  std::vector<StorePath> already_present;
  std::vector<StorePath> signed_in_cache;   // already there; this store's signatures added
  uint64_t bytes_uploaded = 0;
};

// Upload what `cache` lacks of (the closures of) `paths`: ask about all of
// them first, in parallel; upload NARs, largest first; then narinfos, each
// only after those of its references (the cache never holds an incomplete
// closure). A narinfo already there for the same NAR gains the local
// signatures and `options.key`'s (never losing one); one for another NAR
// hash is an Error naming both hashes (a build that is not reproducible).
PushResult push(LocalStore& store, CacheClient& cache, const std::vector<StorePath>& paths,
                const PushOptions& options = {});

// Add the local store's signatures of `cached.info.path` (and `key`'s, if
// given) to the narinfo `cached` that `cache` holds; false if it had them
// all. The same NAR hash, size and references, or an Error naming both.
bool add_signatures_in_cache(LocalStore& store, CacheClient& cache, const NarInfo& cached,
                             const SecretKey* key);

// `kiln sign`: add `key`'s signature to `paths` in the local store and,
// with a `cache`, to their narinfos there (a path the cache lacks is an
// Error). Returns the paths that gained a signature.
std::vector<StorePath> sign_paths(LocalStore& store, CacheClient* cache,
                                  const std::vector<StorePath>& paths, const SecretKey& key,
                                  unsigned connections = 16);

} // namespace kiln
