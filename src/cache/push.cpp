// Uploading to a binary cache: push (NARs, then narinfos in closure order)
// and signing what a cache already holds. A narinfo already there for the
// same NAR gains this store's signatures (so two builders reach k-of-n);
// one for another NAR is an error naming both hashes.
#include <kiln/cache/cache_client.hpp>
#include <kiln/cache/compression.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

namespace kiln {

namespace fs = std::filesystem;

namespace {

// A file of this process's in the store's tmp/, deleted when this object
// goes away; if the process is killed first, the next `kiln gc` deletes it.
class TempFile
{
public:
  explicit TempFile(const LocalStore& store) : m_path(store.new_temp_path("push-nar"))
  {
    m_fd.reset(::open(m_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!m_fd) {
      throw_errno("creating the temporary file '" + m_path.string() + "'");
    }
  }
  ~TempFile()
  {
    ::unlink(m_path.c_str());
  }
  int
  fd() const
  {
    return m_fd.get();
  }
  const fs::path&
  path() const
  {
    return m_path;
  }

private:
  UniqueFd m_fd;
  fs::path m_path;
};

std::string
describe_nar(const PathInfo& info)
{
  return info.nar_hash.to_string(HashFormat::nix32, true) + " (" + std::to_string(info.nar_size) +
         " bytes)";
}

// The signatures `local` (plus `key`'s) would add to `cached`; throws if
// the cache holds another NAR for the path.
std::set<std::string>
signatures_to_add(const StoreDir& store_dir, const std::string& url, const PathInfo& cached,
                  const PathInfo& local, const SecretKey* key)
{
  if (!(cached.nar_hash == local.nar_hash) || cached.nar_size != local.nar_size ||
      cached.references != local.references) {
    throw Error("'" + store_dir.print(local.path) + "' differs between " + url + " (NAR hash " +
                describe_nar(cached) + ") and the local store (NAR hash " + describe_nar(local) +
                "): its build is not reproducible; not replacing it");
  }
  std::set<std::string> wanted = local.signatures;
  if (key) {
    wanted.insert(key->sign(path_fingerprint(store_dir, local)).to_string());
  }
  std::set<std::string> added;
  for (const auto& sig : wanted) {
    if (!cached.signatures.count(sig)) {
      added.insert(sig);
    }
  }
  return added;
}

// Upload the narinfos of `narinfos`, in waves: each after the narinfos of
// its references (`done` holds those already in the cache).
void
upload_narinfos_in_order(LocalStore& store, CacheClient& cache, std::map<StorePath, NarInfo> narinfos,
                         std::set<StorePath> done, const PushOptions& options, PushResult& result)
{
  const StoreDir& store_dir = store.store_dir();
  while (!narinfos.empty()) {
    std::vector<StorePath> wave;
    for (const auto& entry : narinfos) {
      const StorePath& path = entry.first;
      const auto& refs = entry.second.info.references;
      if (std::all_of(refs.begin(), refs.end(),
                      [&](const StorePath& ref) { return ref == path || done.count(ref); })) {
        wave.push_back(path);
      }
    }
    if (wave.empty()) {
      throw Error("cannot push: the references of the remaining paths are not in the cache");
    }
    parallel_for(wave.size(), options.connections, [&](size_t i) {
      cache.put_narinfo(narinfos.at(wave[i]));
    });
    for (const auto& p : wave) {
      if (options.progress) {
        options.progress("pushed " + store_dir.print(p));
      }
      result.uploaded.push_back(p);
      done.insert(p);
      narinfos.erase(p);
    }
  }
}

// Compress `info`'s NAR into a temporary file and upload it unless the
// cache has that file; returns its narinfo (signed with `options.key`).
NarInfo
upload_nar(LocalStore& store, CacheClient& cache, const PathInfo& info, const PushOptions& options)
{
  const StoreDir& store_dir = store.store_dir();
  TempFile file(store);
  HashSink file_hash;
  HashSink nar_hash;
  {
    FdSink file_sink(file.fd(), 256 * 1024);
    TeeSink compressed_out(file_sink, file_hash);
    auto compressor = make_compression_sink(options.compression, compressed_out);
    TeeSink nar_out(*compressor, nar_hash);
    dump_path(store.physical_path(info.path), nar_out);
    compressor->finish();
    file_sink.flush();
  }
  uint64_t nar_size = nar_hash.bytes_written();
  if (!(nar_hash.finish() == info.nar_hash) || nar_size != info.nar_size) {
    throw Error("not pushing '" + store_dir.print(info.path) +
                "': its contents no longer match its NAR hash (run 'kiln store verify')");
  }
  NarInfo narinfo(info);
  narinfo.compression = options.compression;
  narinfo.file_size = file_hash.bytes_written();
  narinfo.file_hash = file_hash.finish();
  narinfo.url = "nar/" + narinfo.file_hash->to_string(HashFormat::nix32, false) +
                nar_extension(options.compression);
  if (!cache.backend().file_exists(narinfo.url)) {
    cache.backend().upsert_file_from(narinfo.url, file.path(), "application/x-nix-nar");
  }
  if (options.key) {
    auto sig = options.key->sign(path_fingerprint(store_dir, info)).to_string();
    narinfo.info.signatures.insert(sig);
    store.add_signatures(info.path, {sig});
  }
  return narinfo;
}

} // namespace

void
CacheClient::put_narinfo(const NarInfo& narinfo)
{
  m_backend->upsert_file(std::string(narinfo.info.path.hash_part()) + ".narinfo",
                         narinfo.to_string(m_store_dir), "text/x-nix-narinfo");
}

bool
add_signatures_in_cache(LocalStore& store, CacheClient& cache, const NarInfo& cached,
                        const SecretKey* key)
{
  auto local = store.query_path_info(cached.info.path);
  if (!local) {
    throw Error("'" + store.print(cached.info.path) + "' is not valid in the local store");
  }
  auto added = signatures_to_add(store.store_dir(), cache.url(), cached.info, *local, key);
  if (key) {
    store.add_signatures(local->path, {key->sign(path_fingerprint(store.store_dir(), *local))
                                         .to_string()});
  }
  if (added.empty()) {
    return false;
  }
  // A server merges on its side too; a file cache takes the union we send.
  NarInfo merged = cached;
  merged.info.signatures.insert(added.begin(), added.end());
  cache.put_narinfo(merged);
  return true;
}

namespace {

// A path built for this machine alone (compiled incrementally, or from such
// a path) must not reach a cache: others would take it for a clean build.
void
refuse_local_only(const LocalStore& store, const std::vector<StorePath>& paths)
{
  for (const auto& p : paths) {
    auto info = store.query_path_info(p);
    if (info && info->local_only) {
      throw Error("cannot push '" + store.store_dir().print(p) +
                  "': it was built for this machine only (compiled incrementally, or from a "
                  "crate that was); build without incremental compilation to push it "
                  "(`kiln build --push-to`, or CARGO_INCREMENTAL=0)");
    }
  }
}

} // namespace

PushResult
push(LocalStore& store, CacheClient& cache, const std::vector<StorePath>& paths,
     const PushOptions& options)
{
  PushResult result;
  const StoreDir& store_dir = store.store_dir();
  cache.ensure_cache_info();

  std::set<StorePath> wanted(paths.begin(), paths.end());
  for (const auto& p : wanted) {
    if (!store.is_valid(p)) {
      throw Error("cannot push '" + store_dir.print(p) + "': it is not valid in the local store");
    }
  }
  std::set<StorePath> all = options.closure ? store.closure(wanted) : wanted;
  std::vector<StorePath> list(all.begin(), all.end());
  refuse_local_only(store, list);

  // 1. Ask about everything at once; a narinfo already there may still
  //    lack this store's signatures.
  std::vector<std::optional<NarInfo>> cached(list.size());
  std::vector<char> signed_more(list.size(), 0);
  parallel_for(list.size(), options.connections, [&](size_t i) {
    cached[i] = cache.query(list[i], /*refresh=*/true);
    if (cached[i]) {
      signed_more[i] = add_signatures_in_cache(store, cache, *cached[i], options.key);
    }
  });
  std::vector<PathInfo> missing;
  for (size_t i = 0; i < list.size(); ++i) {
    if (!cached[i]) {
      missing.push_back(*store.query_path_info(list[i]));
    } else if (signed_more[i]) {
      result.signed_in_cache.push_back(list[i]);
    } else {
      result.already_present.push_back(list[i]);
    }
  }
  std::sort(missing.begin(), missing.end(),
            [](const PathInfo& a, const PathInfo& b) { return a.nar_size > b.nar_size; });

  // 2. NARs, largest first (compression runs on its own threads).
  std::map<StorePath, NarInfo> narinfos;
  std::mutex mutex;
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  parallel_for(missing.size(), std::min(options.connections, cores), [&](size_t i) {
    NarInfo narinfo = upload_nar(store, cache, missing[i], options);
    std::lock_guard guard(mutex);
    result.bytes_uploaded += *narinfo.file_size;
    narinfos.emplace(narinfo.info.path, std::move(narinfo));
  });

  // 3. narinfos, each after those of its references.
  std::set<StorePath> done(result.already_present.begin(), result.already_present.end());
  done.insert(result.signed_in_cache.begin(), result.signed_in_cache.end());
  upload_narinfos_in_order(store, cache, std::move(narinfos), std::move(done), options, result);
  return result;
}

std::vector<StorePath>
sign_paths(LocalStore& store, CacheClient* cache, const std::vector<StorePath>& paths,
           const SecretKey& key, unsigned connections)
{
  std::vector<StorePath> changed;
  std::vector<char> added(paths.size(), 0);
  parallel_for(paths.size(), connections, [&](size_t i) {
    auto local = store.query_path_info(paths[i]);
    if (!local) {
      throw Error("cannot sign '" + store.print(paths[i]) + "': it is not valid in the local store");
    }
    auto sig = key.sign(path_fingerprint(store.store_dir(), *local)).to_string();
    added[i] = !local->signatures.count(sig);
    store.add_signatures(paths[i], {sig});
    if (cache) {
      auto cached = cache->query(paths[i], /*refresh=*/true);
      if (!cached) {
        throw Error("cannot sign '" + store.print(paths[i]) + "' in " + cache->url() +
                    ": the cache does not have it (push it first)");
      }
      added[i] = add_signatures_in_cache(store, *cache, *cached, &key);
    }
  });
  for (size_t i = 0; i < paths.size(); ++i) {
    if (added[i]) {
      changed.push_back(paths[i]);
    }
  }
  return changed;
}

} // namespace kiln
