#include <kiln/cache/cache_client.hpp>
#include <kiln/cache/compression.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/util/error.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <thread>

namespace kiln {

namespace fs = std::filesystem;

namespace {

// A file in $TMPDIR that is deleted when this object goes away.
class TempFile
{
public:
  TempFile()
  {
    const char* dir = std::getenv("TMPDIR");
    std::string pattern = std::string(dir && *dir ? dir : "/tmp") + "/kiln-nar-XXXXXX";
    int fd = ::mkstemp(pattern.data());
    if (fd < 0) {
      throw_errno("creating a temporary file");
    }
    m_fd.reset(fd);
    m_path = pattern;
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
cache_id(const std::string& url)
{
  return nix32_encode(compress_hash(hash_string(HashAlgo::sha256, url).bytes(), 10));
}

// A content-addressed path vouches for itself: its name is the hash of its
// content (and references), so no signature is needed.
bool
self_certifying(const StoreDir& store_dir, const PathInfo& info)
{
  if (!info.ca) {
    return false;
  }
  try {
    return content_address_path(store_dir, info) == info.path;
  } catch (const Error&) {
    return false;
  }
}

} // namespace

bool
is_trusted(const TrustPolicy& policy, const StoreDir& store_dir, const PathInfo& info)
{
  return policy.required() == 0 ||
         policy.accepts(path_fingerprint(store_dir, info), info.signatures) ||
         self_certifying(store_dir, info);
}

NegativeCache::NegativeCache(fs::path dir, std::chrono::seconds ttl)
  : m_dir(std::move(dir)), m_ttl(ttl)
{
}

fs::path
NegativeCache::file_for(const std::string& cache_url, const StorePath& path) const
{
  return m_dir / cache_id(cache_url) / std::string(path.hash_part());
}

bool
NegativeCache::is_missing(const std::string& cache_url, const StorePath& path) const
{
  struct stat st;
  if (m_ttl.count() <= 0 || ::stat(file_for(cache_url, path).c_str(), &st) != 0) {
    return false;
  }
  return std::time(nullptr) - st.st_mtime < m_ttl.count();
}

void
NegativeCache::record_missing(const std::string& cache_url, const StorePath& path)
{
  if (m_ttl.count() <= 0) {
    return;
  }
  std::error_code ec;
  auto file = file_for(cache_url, path);
  fs::create_directories(file.parent_path(), ec);
  UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  // Best effort: a negative cache that cannot be written only costs a look-up.
}

void
NegativeCache::forget(const std::string& cache_url, const StorePath& path)
{
  ::unlink(file_for(cache_url, path).c_str());
}

CacheClient::CacheClient(std::unique_ptr<BinaryCache> backend, StoreDir store_dir,
                         NegativeCache* negative_cache)
  : m_backend(std::move(backend)), m_store_dir(std::move(store_dir)), m_negative(negative_cache)
{
}

const CacheInfo&
CacheClient::cache_info()
{
  std::lock_guard guard(m_mutex);
  if (!m_info) {
    auto text = m_backend->get_file("nix-cache-info");
    CacheInfo info;
    info.store_dir = m_store_dir.path();
    if (text) {
      info = CacheInfo::parse(*text, url() + "/nix-cache-info");
    }
    if (info.store_dir != m_store_dir.path()) {
      throw CacheError("binary cache '" + url() + "' is for store directory '" + info.store_dir +
                       "', not '" + m_store_dir.path() + "'");
    }
    m_info = info;
  }
  return *m_info;
}

void
CacheClient::ensure_cache_info()
{
  if (!m_backend->file_exists("nix-cache-info")) {
    CacheInfo info;
    info.store_dir = m_store_dir.path();
    info.want_mass_query = true;
    info.priority = 40;
    m_backend->upsert_file("nix-cache-info", info.to_string(), "text/x-nix-cache-info");
  }
  cache_info();
}

std::optional<NarInfo>
CacheClient::query(const StorePath& path, bool refresh)
{
  if (!refresh && m_negative && m_negative->is_missing(url(), path)) {
    return std::nullopt;
  }
  std::string key = std::string(path.hash_part()) + ".narinfo";
  auto text = m_backend->get_file(key);
  if (!text) {
    if (m_negative) {
      m_negative->record_missing(url(), path);
    }
    return std::nullopt;
  }
  auto narinfo = NarInfo::parse(*text, m_store_dir, url() + "/" + key);
  if (narinfo.info.path != path) {
    throw CacheError(url() + "/" + key + " describes '" + m_store_dir.print(narinfo.info.path) +
                     "', not '" + m_store_dir.print(path) + "'");
  }
  if (m_negative && !refresh) {
    m_negative->forget(url(), path);
  }
  return narinfo;
}

uint64_t
CacheClient::fetch_into(LocalStore& store, const NarInfo& narinfo)
{
  uint64_t bytes = 0;
  auto prepared = fetch_prepared(store, narinfo, bytes);
  store.commit(*prepared);
  return bytes;
}

namespace {

// Writes into a socket without raising SIGPIPE when the reader has gone.
class SocketSink : public Sink
{
public:
  explicit SocketSink(int fd) : m_fd(fd)
  {
  }
  void
  write(std::string_view data) override
  {
    while (!data.empty()) {
      ssize_t n = ::send(m_fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        throw_errno("passing on downloaded data");
      }
      data.remove_prefix(static_cast<size_t>(n));
      m_count += static_cast<uint64_t>(n);
    }
  }
  uint64_t
  count() const
  {
    return m_count;
  }

private:
  int m_fd;
  uint64_t m_count = 0;
};

} // namespace

std::unique_ptr<PreparedPath>
CacheClient::fetch_prepared(LocalStore& store, const NarInfo& narinfo, uint64_t& bytes)
{
  std::string what = "'" + m_store_dir.print(narinfo.info.path) + "' from " + url();
  if (narinfo.url.find("://") != std::string::npos) {
    throw CacheError("cannot substitute " + what + ": absolute NAR URL '" + narinfo.url +
                     "' is not supported");
  }
  // Download on one thread, decompress, check and restore on this one,
  // connected by a socket: nothing is held whole, nothing hits the disk twice.
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw_errno("creating a socket pair");
  }
  UniqueFd reader(fds[0]);
  UniqueFd writer(fds[1]);
  bool found = false;
  std::exception_ptr download_error;
  std::thread downloader([&] {
    SocketSink sink(writer.get());
    try {
      found = m_backend->get_file(narinfo.url, sink);
    } catch (...) {
      download_error = std::current_exception();
    }
    bytes = sink.count();
    writer.reset();
  });
  std::unique_ptr<PreparedPath> prepared;
  std::exception_ptr restore_error;
  try {
    FdSource raw(reader.get());
    auto nar = make_decompression_source(narinfo.compression, raw);
    prepared = store.prepare_nar(narinfo.info, *nar);
  } catch (...) {
    restore_error = std::current_exception();
  }
  reader.reset();
  downloader.join();

  // Report the root cause: a failed download explains a truncated archive,
  // but a refused archive explains why the download was cut off.
  auto describe = [&](std::exception_ptr error) -> std::string {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      return e.what();
    }
  };
  if (download_error && !restore_error) {
    throw CacheError("cannot substitute " + what + ": " + describe(download_error));
  }
  if (restore_error) {
    if (!found && !download_error) {
      throw CacheError("cannot substitute " + what + ": its NAR '" + narinfo.url +
                       "' is missing from the cache");
    }
    bool reader_hung_up = false;
    if (download_error) {
      try {
        std::rethrow_exception(download_error);
      } catch (const SystemError& e) {
        reader_hung_up = e.error_number() == EPIPE || e.error_number() == ECONNRESET;
      } catch (...) {
      }
    }
    if (download_error && !reader_hung_up) {
      throw CacheError("cannot substitute " + what + ": " + describe(download_error));
    }
    throw Error("cannot substitute " + what + ": " + describe(restore_error));
  }
  return prepared;
}

SubstituteResult
substitute(LocalStore& store, const std::vector<CacheClient*>& caches, const TrustPolicy& policy,
           const std::vector<StorePath>& paths, const SubstituteOptions& options)
{
  SubstituteResult result;
  const StoreDir& store_dir = store.store_dir();
  auto say = [&](const std::string& line) {
    if (options.progress) {
      options.progress(line);
    }
  };

  // Caches that cannot even say what they are take no further part.
  std::vector<CacheClient*> usable;
  std::vector<int> priorities;
  {
    std::vector<std::string> errors(caches.size());
    parallel_for(caches.size(), options.connections, [&](size_t i) {
      try {
        caches[i]->cache_info();
      } catch (const Error& e) {
        errors[i] = e.what();
      }
    });
    for (size_t i = 0; i < caches.size(); ++i) {
      if (errors[i].empty()) {
        usable.push_back(caches[i]);
        priorities.push_back(caches[i]->cache_info().priority);
      } else {
        say("warning: skipping binary cache " + caches[i]->url() + ": " + errors[i]);
      }
    }
  }

  struct Candidate
  {
    size_t cache;
    NarInfo narinfo;
  };
  std::map<StorePath, std::vector<Candidate>> plan;
  std::set<StorePath> seen;
  std::vector<StorePath> frontier;
  for (const auto& p : paths) {
    if (store.is_valid(p)) {
      result.already_valid.push_back(p);
    } else if (seen.insert(p).second) {
      frontier.push_back(p);
    }
  }

  // Look up whole levels of the closure at once, every cache in parallel.
  while (!frontier.empty()) {
    size_t n_caches = usable.size();
    std::vector<std::optional<NarInfo>> answers(frontier.size() * n_caches);
    std::vector<std::string> errors(frontier.size() * n_caches);
    parallel_for(answers.size(), options.connections, [&](size_t job) {
      try {
        answers[job] = usable[job % n_caches]->query(frontier[job / n_caches], options.refresh);
      } catch (const Error& e) {
        errors[job] = e.what();
      }
    });
    std::vector<StorePath> next;
    for (size_t i = 0; i < frontier.size(); ++i) {
      const StorePath& path = frontier[i];
      std::vector<Candidate> candidates;
      std::string why;
      for (size_t c = 0; c < n_caches; ++c) {
        size_t job = i * n_caches + c;
        if (!errors[job].empty()) {
          why += (why.empty() ? "" : "; ") + errors[job];
          continue;
        }
        if (!answers[job]) {
          continue;
        }
        const PathInfo& info = answers[job]->info;
        if (is_trusted(policy, store_dir, info)) {
          candidates.push_back({c, *answers[job]});
        } else {
          why += (why.empty() ? "" : "; ") + usable[c]->url() + " " +
                 policy.explain(path_fingerprint(store_dir, info), info.signatures);
          say("warning: ignoring '" + store_dir.print(path) + "' from " + usable[c]->url() +
              ": not signed by enough trusted keys");
        }
      }
      if (candidates.empty()) {
        result.failed[path] = why.empty() ? "no binary cache has it" : why;
        continue;
      }
      std::stable_sort(candidates.begin(), candidates.end(), [&](const auto& a, const auto& b) {
        return priorities[a.cache] < priorities[b.cache];
      });
      for (const auto& ref : candidates.front().narinfo.info.references) {
        if (ref != path && !seen.count(ref) && !store.is_valid(ref)) {
          seen.insert(ref);
          next.push_back(ref);
        }
      }
      plan.emplace(path, std::move(candidates));
    }
    frontier = std::move(next);
  }

  // Download everything at once, largest first, restoring and checking each
  // into a temporary folder; make each valid as soon as everything it
  // references is (so a long chain downloads in parallel, not link by link).
  std::map<StorePath, size_t> waiting_on;
  std::map<StorePath, std::vector<StorePath>> dependents;
  for (const auto& [path, candidates] : plan) {
    size_t count = 0;
    for (const auto& ref : candidates.front().narinfo.info.references) {
      if (ref != path && !store.is_valid(ref)) {
        dependents[ref].push_back(path);
        ++count;
      }
    }
    waiting_on[path] = count;
  }
  std::mutex mutex;
  std::map<StorePath, std::unique_ptr<PreparedPath>> prepared;

  // Mark `path` failed and, transitively, everything that needs it.
  std::function<void(const StorePath&, const std::string&)> fail_path =
    [&](const StorePath& path, const std::string& why) {
      if (result.failed.count(path)) {
        return;
      }
      result.failed.emplace(path, why);
      prepared.erase(path);
      for (const auto& d : dependents[path]) {
        fail_path(d, "its reference '" + store_dir.print(path) + "' could not be substituted");
      }
    };
  for (auto failed = result.failed; const auto& [path, why] : failed) {
    for (const auto& d : dependents[path]) {
      fail_path(d, "its reference '" + store_dir.print(path) + "' could not be substituted: " + why);
    }
  }

  // Commit `path` and then whatever was only waiting for it. Called with
  // `mutex` held.
  std::function<void(const StorePath&)> commit_ready = [&](const StorePath& path) {
    auto it = prepared.find(path);
    if (it == prepared.end() || waiting_on[path] != 0 || result.failed.count(path)) {
      return;
    }
    try {
      store.commit(*it->second);
    } catch (const Error& e) {
      fail_path(path, e.what());
      return;
    }
    prepared.erase(it);
    result.fetched.push_back(path);
    say("fetched " + store_dir.print(path));
    for (const auto& d : dependents[path]) {
      --waiting_on[d];
      commit_ready(d);
    }
  };

  std::vector<StorePath> order;
  for (const auto& [path, candidates] : plan) {
    if (!result.failed.count(path)) {
      order.push_back(path);
    }
  }
  std::sort(order.begin(), order.end(), [&](const StorePath& a, const StorePath& b) {
    return plan.at(a).front().narinfo.info.nar_size > plan.at(b).front().narinfo.info.nar_size;
  });
  parallel_for(order.size(), std::max(1u, options.connections), [&](size_t i) {
    const StorePath& path = order[i];
    {
      std::lock_guard guard(mutex);
      if (result.failed.count(path)) {
        return; // a reference already failed
      }
    }
    std::string errors;
    for (const auto& candidate : plan.at(path)) {
      try {
        uint64_t bytes = 0;
        auto ready = usable[candidate.cache]->fetch_prepared(store, candidate.narinfo, bytes);
        std::lock_guard guard(mutex);
        result.bytes_downloaded += bytes;
        if (result.failed.count(path)) {
          return;
        }
        prepared.emplace(path, std::move(ready));
        commit_ready(path);
        return;
      } catch (const Error& e) {
        errors += (errors.empty() ? "" : "; ") + std::string(e.what());
        say("warning: " + std::string(e.what()));
      }
    }
    std::lock_guard guard(mutex);
    fail_path(path, errors);
  });
  return result;
}

PushResult
push(LocalStore& store, CacheClient& cache, const std::vector<StorePath>& paths,
     const PushOptions& options)
{
  PushResult result;
  const StoreDir& store_dir = store.store_dir();
  auto say = [&](const std::string& line) {
    if (options.progress) {
      options.progress(line);
    }
  };
  cache.ensure_cache_info();

  std::set<StorePath> wanted(paths.begin(), paths.end());
  for (const auto& p : wanted) {
    if (!store.is_valid(p)) {
      throw Error("cannot push '" + store_dir.print(p) + "': it is not valid in the local store");
    }
  }
  std::set<StorePath> all = options.closure ? store.closure(wanted) : wanted;
  std::vector<StorePath> list(all.begin(), all.end());

  // 1. Ask about everything at once.
  std::vector<char> present(list.size(), 0);
  parallel_for(list.size(), options.connections, [&](size_t i) {
    present[i] = cache.backend().file_exists(std::string(list[i].hash_part()) + ".narinfo");
  });
  std::vector<PathInfo> missing;
  for (size_t i = 0; i < list.size(); ++i) {
    if (present[i]) {
      result.already_present.push_back(list[i]);
    } else {
      missing.push_back(*store.query_path_info(list[i]));
    }
  }
  std::sort(missing.begin(), missing.end(),
            [](const PathInfo& a, const PathInfo& b) { return a.nar_size > b.nar_size; });

  // 2. NARs, largest first (compression runs on its own threads).
  std::map<StorePath, NarInfo> narinfos;
  std::mutex mutex;
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  parallel_for(missing.size(), std::min(options.connections, cores), [&](size_t i) {
    const PathInfo& info = missing[i];
    TempFile file;
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
    uint64_t file_size = file_hash.bytes_written();
    Hash fh = file_hash.finish();
    NarInfo narinfo(info);
    narinfo.compression = options.compression;
    narinfo.file_hash = fh;
    narinfo.file_size = file_size;
    narinfo.url = "nar/" + fh.to_string(HashFormat::nix32, false) + nar_extension(options.compression);
    if (!cache.backend().file_exists(narinfo.url)) {
      cache.backend().upsert_file_from(narinfo.url, file.path(), "application/x-nix-nar");
    }
    if (options.key) {
      auto sig = options.key->sign(path_fingerprint(store_dir, info)).to_string();
      narinfo.info.signatures.insert(sig);
      store.add_signatures(info.path, {sig});
    }
    std::lock_guard guard(mutex);
    result.bytes_uploaded += file_size;
    narinfos.emplace(info.path, std::move(narinfo));
  });

  // 3. narinfos, in waves: each after the narinfos of its references.
  std::set<StorePath> done;
  for (const auto& p : result.already_present) {
    done.insert(p);
  }
  while (!narinfos.empty()) {
    std::vector<StorePath> wave;
    for (const auto& [path, narinfo] : narinfos) {
      bool refs_ready = true;
      for (const auto& ref : narinfo.info.references) {
        if (ref != path && !done.count(ref)) {
          refs_ready = false;
          break;
        }
      }
      if (refs_ready) {
        wave.push_back(path);
      }
    }
    if (wave.empty()) {
      throw Error("cannot push: the references of the remaining paths are not in the cache");
    }
    parallel_for(wave.size(), options.connections, [&](size_t i) {
      const NarInfo& narinfo = narinfos.at(wave[i]);
      cache.backend().upsert_file(std::string(wave[i].hash_part()) + ".narinfo",
                                  narinfo.to_string(store_dir), "text/x-nix-narinfo");
    });
    for (const auto& p : wave) {
      say("pushed " + store_dir.print(p));
      result.uploaded.push_back(p);
      done.insert(p);
      narinfos.erase(p);
    }
  }
  return result;
}

} // namespace kiln
