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

CacheClient::~CacheClient()
{
  try {
    report();
  } catch (...) {
    // A reporter that fails at exit has nowhere to say so.
  }
}

void
CacheClient::set_reporter(Reporter reporter)
{
  std::lock_guard guard(m_health_mutex);
  m_reporter = std::move(reporter);
}

void
CacheClient::reject(const StorePath& path, const std::string& reason)
{
  std::lock_guard guard(m_health_mutex);
  m_rejected[reason].insert(path);
}

void
CacheClient::report()
{
  std::lock_guard guard(m_health_mutex);
  for (const auto& [reason, paths] : m_rejected) {
    if (m_reporter) {
      m_reporter("warning: cache " + url() + ": " + std::to_string(paths.size()) +
                 (paths.size() == 1 ? " path " : " paths ") + reason + "; not using " +
                 (paths.size() == 1 ? "it" : "them"));
    }
  }
  m_rejected.clear();
}

void
CacheClient::disable(const std::string& why)
{
  std::lock_guard guard(m_health_mutex);
  if (m_disabled) {
    return;
  }
  m_disabled = why;
  if (m_reporter) {
    m_reporter("warning: cache " + url() + " disabled for the rest of this run: " + why);
  }
}

bool
CacheClient::disabled() const
{
  std::lock_guard guard(m_health_mutex);
  return m_disabled.has_value();
}

void
CacheClient::check_enabled() const
{
  std::lock_guard guard(m_health_mutex);
  if (m_disabled) {
    throw CacheError("cache " + url() + " is disabled after an earlier failure: " + *m_disabled);
  }
}

template <typename F>
auto
CacheClient::guarded(F call) -> decltype(call())
{
  check_enabled();
  try {
    return call();
  } catch (const CacheError& e) {
    disable(e.what());
    throw;
  }
}

const CacheInfo&
CacheClient::cache_info()
{
  std::lock_guard guard(m_mutex);
  if (!m_info) {
    auto text = guarded([&] { return m_backend->get_file("nix-cache-info"); });
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
  auto text = guarded([&] { return m_backend->get_file(key); });
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

void
CacheClient::fetch_to_folder(const NarInfo& narinfo, const std::filesystem::path& target)
{
  std::string what = "'" + m_store_dir.print(narinfo.info.path) + "' from " + url();
  if (narinfo.url.find("://") != std::string::npos) {
    throw CacheError("cannot fetch " + what + ": absolute NAR URL '" + narinfo.url +
                     "' is not supported");
  }
  std::filesystem::path download = target.string() + ".download";
  struct Remove
  {
    std::filesystem::path path;
    ~Remove()
    {
      std::error_code ec;
      std::filesystem::remove(path, ec);
    }
  } remove_download{download};
  {
    UniqueFd fd(::open(download.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) {
      throw_errno("creating '" + download.string() + "'");
    }
    FdSink sink(fd.get());
    bool found = guarded([&] { return m_backend->get_file(narinfo.url, sink); });
    sink.flush();
    if (!found) {
      throw CacheError("cannot fetch " + what + ": its NAR '" + narinfo.url +
                       "' is missing from the cache");
    }
  }
  UniqueFd in(::open(download.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) {
    throw_errno("opening '" + download.string() + "'");
  }
  FdSource file(in.get());
  ValidatingSource raw(file, HashAlgo::sha256, narinfo.file_size, "compressed file");
  auto nar = make_decompression_source(narinfo.compression, raw);
  ValidatingSource checked(*nar, HashAlgo::sha256, narinfo.info.nar_size);
  try {
    restore_nar(checked, target);
    checked.drain();
    checked.verify(narinfo.info.nar_size, narinfo.info.nar_hash);
  } catch (const std::exception& e) {
    throw Error("cannot fetch " + what + ": " + e.what());
  }
}

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
      found = guarded([&] { return m_backend->get_file(narinfo.url, sink); });
    } catch (...) {
      download_error = std::current_exception();
    }
    bytes = sink.count();
    writer.reset();
  });
  std::unique_ptr<PreparedPath> prepared;
  std::exception_ptr restore_error;
  try {
    FdSource download(reader.get());
    // FileSize caps what is read of the compressed file; NarSize caps the
    // decompressed NAR (in prepare_nar): a lying cache is cut off early.
    ValidatingSource raw(download, HashAlgo::sha256, narinfo.file_size, "compressed file");
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

namespace {

struct Candidate
{
  size_t cache;
  NarInfo narinfo;
};

// "signed only by ci-old, ci-new (1 of the 2 trusted signatures required)":
// why `info` was refused, the same for every path refused alike.
std::string
rejection_reason(const TrustPolicy& policy, const StoreDir& store_dir, const PathInfo& info)
{
  if (info.signatures.empty()) {
    return "unsigned (require-sigs: " + std::to_string(policy.required()) + ")";
  }
  std::set<std::string> names;
  for (const auto& sig : info.signatures) {
    names.insert(sig.substr(0, sig.find(':')));
  }
  std::string list;
  for (const auto& name : names) {
    list += (list.empty() ? "" : ", ") + name;
  }
  return "signed only by " + list + " (" +
         std::to_string(policy.count_valid(path_fingerprint(store_dir, info), info.signatures)) +
         " valid trusted signatures of the " + std::to_string(policy.required()) + " required)";
}

// Answers describe the same object when NAR and references agree.
bool
same_object(const PathInfo& a, const PathInfo& b)
{
  return a.nar_hash == b.nar_hash && a.nar_size == b.nar_size && a.references == b.references;
}

// Of the caches' `answers` for one path (one per cache, nullopt = absent),
// those that may be taken, best priority first: the signatures of every
// answer describing the same NAR are combined before `policy` judges it,
// so two caches each holding one signature satisfy require-sigs: 2. What
// is refused is counted against its cache.
std::vector<Candidate>
choose_answers(const std::vector<CacheClient*>& caches, const TrustPolicy& policy,
               const StoreDir& store_dir, const std::vector<std::optional<NarInfo>>& answers)
{
  std::vector<Candidate> taken;
  for (size_t c = 0; c < answers.size(); ++c) {
    if (!answers[c]) {
      continue;
    }
    PathInfo combined = answers[c]->info;
    for (const auto& other : answers) {
      if (other && same_object(other->info, combined)) {
        combined.signatures.insert(other->info.signatures.begin(), other->info.signatures.end());
      }
    }
    if (is_trusted(policy, store_dir, combined)) {
      taken.push_back({c, *answers[c]});
      taken.back().narinfo.info.signatures = combined.signatures;
    } else {
      caches[c]->reject(combined.path, rejection_reason(policy, store_dir, combined));
    }
  }
  std::stable_sort(taken.begin(), taken.end(), [&](const auto& a, const auto& b) {
    return caches[a.cache]->cache_info().priority < caches[b.cache]->cache_info().priority;
  });
  return taken;
}

// Every cache's answer for `path`; a cache that fails answers nullopt (its
// failure is reported by the cache itself).
std::vector<std::optional<NarInfo>>
ask_all(const std::vector<CacheClient*>& caches, const StorePath& path, bool refresh)
{
  std::vector<std::optional<NarInfo>> answers(caches.size());
  for (size_t c = 0; c < caches.size(); ++c) {
    try {
      answers[c] = caches[c]->query(path, refresh);
    } catch (const Error&) {
    }
  }
  return answers;
}

} // namespace

bool
can_substitute(const std::vector<CacheClient*>& caches, const TrustPolicy& policy,
               const StoreDir& store_dir, const std::vector<StorePath>& paths)
{
  std::vector<CacheClient*> usable;
  for (auto* cache : caches) {
    try {
      cache->cache_info();
      usable.push_back(cache);
    } catch (const Error&) {
    }
  }
  return !usable.empty() && std::all_of(paths.begin(), paths.end(), [&](const StorePath& path) {
    return !choose_answers(usable, policy, store_dir, ask_all(usable, path, false)).empty();
  });
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
      } else if (!caches[i]->disabled()) {
        // (A disabled cache has said why itself.)
        say("warning: skipping binary cache " + caches[i]->url() + ": " + errors[i]);
      }
    }
  }

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
      std::vector<std::optional<NarInfo>> path_answers(answers.begin() + i * n_caches,
                                                       answers.begin() + (i + 1) * n_caches);
      auto candidates = choose_answers(usable, policy, store_dir, path_answers);
      if (candidates.empty()) {
        std::string why;
        for (size_t c = 0; c < n_caches; ++c) {
          const auto& answer = path_answers[c];
          std::string reason = !errors[i * n_caches + c].empty() ? errors[i * n_caches + c]
                               : answer ? usable[c]->url() + " " +
                                            policy.explain(path_fingerprint(store_dir, answer->info),
                                                           answer->info.signatures)
                                        : "";
          why += (why.empty() || reason.empty() ? "" : "; ") + reason;
        }
        result.failed[path] = why.empty() ? "no binary cache has it" : why;
        continue;
      }
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
      } catch (const CacheError& e) {
        // The cache disabled itself and said so; the next one may serve.
        errors += (errors.empty() ? "" : "; ") + std::string(e.what());
      } catch (const Error& e) {
        errors += (errors.empty() ? "" : "; ") + std::string(e.what());
        usable[candidate.cache]->reject(path, "whose NAR failed verification");
      }
    }
    std::lock_guard guard(mutex);
    fail_path(path, errors);
  });
  return result;
}

std::unique_ptr<PreparedPath>
fetch_again(LocalStore& store, const std::vector<CacheClient*>& caches, const TrustPolicy& policy,
            const PathInfo& info, std::vector<std::string>& errors)
{
  for (auto* cache : caches) {
    try {
      auto narinfo = cache->query(info.path, true);
      if (!narinfo || !is_trusted(policy, store.store_dir(), narinfo->info) ||
          !(narinfo->info.nar_hash == info.nar_hash) || narinfo->info.nar_size != info.nar_size) {
        continue;
      }
      uint64_t bytes = 0;
      return cache->fetch_prepared(store, *narinfo, bytes);
    } catch (const std::exception& e) {
      errors.push_back(cache->url() + ": " + e.what());
    }
  }
  return nullptr;
}
} // namespace kiln
