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

namespace {

// The caches that can say what they are (nix-cache-info), asked at once;
// the others take no further part, with a warning (a disabled cache has
// said why itself).
std::vector<CacheClient*>
usable_caches(const std::vector<CacheClient*>& caches, unsigned connections,
              const std::function<void(const std::string&)>& say)
{
  std::vector<std::string> errors(caches.size());
  parallel_for(caches.size(), connections, [&](size_t i) {
    try {
      caches[i]->cache_info();
    } catch (const Error& e) {
      errors[i] = e.what();
    }
  });
  std::vector<CacheClient*> usable;
  for (size_t i = 0; i < caches.size(); ++i) {
    if (errors[i].empty()) {
      usable.push_back(caches[i]);
    } else if (!caches[i]->disabled()) {
      say("warning: skipping binary cache " + caches[i]->url() + ": " + errors[i]);
    }
  }
  return usable;
}

// Why no cache's answer for a path was taken: each cache's error, or why
// its signatures did not do.
std::string
why_not_taken(const std::vector<CacheClient*>& caches, const TrustPolicy& policy,
              const StoreDir& store_dir, const std::vector<std::optional<NarInfo>>& answers,
              const std::vector<std::string>& errors)
{
  std::string why;
  for (size_t c = 0; c < caches.size(); ++c) {
    const auto& answer = answers[c];
    std::string reason = !errors[c].empty() ? errors[c]
                         : answer ? caches[c]->url() + " " +
                                      policy.explain(path_fingerprint(store_dir, answer->info),
                                                     answer->info.signatures)
                                  : "";
    why += (why.empty() || reason.empty() ? "" : "; ") + reason;
  }
  return why.empty() ? "no binary cache has it" : why;
}

// One substitution of the closures of some paths, pipelined: a path's
// references are looked up as soon as its narinfo is taken (not a level of
// the closure at a time), its NAR is downloaded at once too, and it is made
// valid as soon as it and everything it references are there. Requests
// form one queue with `connections` in flight: look-ups first (they find
// more work), then NARs. So a closure of small paths costs about its number
// of requests × the round trip ÷ `connections`. Making paths valid is local
// work the store does one path at a time: one more thread does it, beside
// the requests, never holding up one.
class Substitution
{
public:
  Substitution(LocalStore& store, std::vector<CacheClient*> caches, const TrustPolicy& policy,
               const SubstituteOptions& options, SubstituteResult& result)
    : m_store(store), m_store_dir(store.store_dir()), m_caches(std::move(caches)),
      m_policy(policy), m_options(options), m_result(result)
  {
  }

  void
  run(const std::vector<StorePath>& paths)
  {
    {
      std::lock_guard guard(m_mutex);
      for (const auto& p : paths) {
        if (m_store.is_valid(p)) {
          m_result.already_valid.push_back(p);
        } else {
          look_for(p);
        }
      }
    }
    work(); // this thread too; the others start as work comes
    std::vector<std::thread> workers;
    {
      std::lock_guard guard(m_mutex);
      workers = std::move(m_workers);
    }
    for (auto& w : workers) {
      w.join();
    }
    if (m_error) {
      std::rethrow_exception(m_error);
    }
    // What waits for a reference that never came (a cache describing a
    // reference cycle) is not valid either: say so.
    for (auto& [path, state] : m_paths) {
      if (state.stage == Stage::waiting) {
        m_result.failed.emplace(path, "its references could not all be made valid (a cycle?)");
      }
    }
  }

private:
  enum class Stage { looking_up, fetching, waiting, valid, failed };

  struct PathState
  {
    Stage stage = Stage::looking_up;
    std::vector<std::optional<NarInfo>> answers;   // one per cache
    std::vector<std::string> errors;               // one per cache
    size_t answers_due = 0;
    std::vector<Candidate> candidates;             // best first
    size_t waiting_on = 0;                         // references not valid yet
    std::vector<StorePath> dependents;             // known so far
    std::unique_ptr<PreparedPath> prepared;        // downloaded, not yet valid
  };

  struct Lookup
  {
    StorePath path;
    size_t cache;
  };

  // With the lock held: look `path` up in every cache, once.
  void
  look_for(const StorePath& path)
  {
    auto [it, inserted] = m_paths.try_emplace(path);
    if (!inserted) {
      return;
    }
    it->second.answers.resize(m_caches.size());
    it->second.errors.resize(m_caches.size());
    it->second.answers_due = m_caches.size();
    for (size_t c = 0; c < m_caches.size(); ++c) {
      m_lookups.push_back({path, c});
    }
    if (m_caches.empty()) {
      fail_path(path, "no binary cache has it", true);
    }
    queued();
  }

  // With the lock held: may a thread take a job now? At most one commit
  // (the store makes paths valid one at a time anyway) and `connections`
  // requests at once.
  bool
  runnable() const
  {
    return (!m_commits.empty() && !m_committing) ||
           ((!m_lookups.empty() || !m_fetches.empty()) && m_requests < max_requests());
  }
  bool
  queue_empty() const
  {
    return m_lookups.empty() && m_fetches.empty() && m_commits.empty();
  }
  unsigned
  max_requests() const
  {
    return std::max(1u, m_options.connections);
  }

  // With the lock held, after queuing a job: another thread if the jobs
  // queued outnumber the idle ones, up to `connections` + 1 in all.
  void
  queued()
  {
    size_t jobs = m_lookups.size() + m_fetches.size() + m_commits.size();
    if (jobs > m_idle && m_workers.size() < max_requests()) {
      m_workers.emplace_back([this] { work(); });
    }
    m_wake.notify_all();
  }

  void
  work()
  {
    std::unique_lock lock(m_mutex);
    while (true) {
      ++m_idle;
      m_wake.wait(lock, [&] { return runnable() || (m_busy == 0 && queue_empty()); });
      --m_idle;
      if (!runnable()) {
        m_wake.notify_all(); // nothing queued, nothing running: done
        return;
      }
      ++m_busy;
      bool committing = !m_commits.empty() && !m_committing;
      if (committing) {
        m_committing = true;
      } else {
        ++m_requests;
      }
      try {
        if (committing) {
          // Everything ready at once: one folder sync and one transaction.
          std::vector<StorePath> ready(m_commits.begin(), m_commits.end());
          m_commits.clear();
          commit(ready, lock);
        } else {
          run_request(lock);
        }
      } catch (...) {
        if (!lock.owns_lock()) {
          lock.lock();
        }
        if (!m_error) {
          m_error = std::current_exception(); // not a cache's failure: rethrown at the end
        }
      }
      if (committing) {
        m_committing = false;
      } else {
        --m_requests;
      }
      --m_busy;
      m_wake.notify_all(); // a slot is free, or all is done
    }
  }

  // With `lock` held: the next request, look-ups first.
  void
  run_request(std::unique_lock<std::mutex>& lock)
  {
    if (!m_lookups.empty()) {
      Lookup job = std::move(m_lookups.front());
      m_lookups.pop_front();
      lock.unlock();
      look_up(job);
    } else {
      StorePath path = m_fetches.begin()->second;
      m_fetches.erase(m_fetches.begin());
      lock.unlock();
      fetch(path);
    }
    lock.lock();
  }

  // Ask one cache about one path; the last answer for it decides.
  void
  look_up(const Lookup& job)
  {
    std::optional<NarInfo> answer;
    std::string error;
    try {
      answer = m_caches[job.cache]->query(job.path, m_options.refresh);
    } catch (const Error& e) {
      error = e.what();
    }
    std::vector<std::optional<NarInfo>> answers;
    std::vector<std::string> errors;
    {
      std::lock_guard guard(m_mutex);
      PathState& state = m_paths.at(job.path);
      state.answers[job.cache] = std::move(answer);
      state.errors[job.cache] = std::move(error);
      if (--state.answers_due > 0) {
        return;
      }
      answers = std::move(state.answers);
      errors = std::move(state.errors);
    }
    decide(job.path, answers, errors);
  }

  // Every cache has answered for `path`: take the best trusted answer (or
  // fail), look its references up, and queue its download.
  void
  decide(const StorePath& path, const std::vector<std::optional<NarInfo>>& answers,
         const std::vector<std::string>& errors)
  {
    auto candidates = choose_answers(m_caches, m_policy, m_store_dir, answers);
    if (candidates.empty()) {
      std::string why = why_not_taken(m_caches, m_policy, m_store_dir, answers, errors);
      std::lock_guard guard(m_mutex);
      fail_path(path, why, true);
      return;
    }
    // References valid already need neither a look-up nor a wait.
    std::vector<StorePath> missing;
    for (const auto& ref : candidates.front().narinfo.info.references) {
      if (ref != path && !m_store.is_valid(ref)) {
        missing.push_back(ref);
      }
    }
    std::lock_guard guard(m_mutex);
    PathState& state = m_paths.at(path);
    // Large NARs first (they take longest); small ones newest first: the
    // deepest found so far, which can be made valid soonest.
    uint64_t size = candidates.front().narinfo.info.nar_size;
    FetchOrder order{size >= k_large_nar ? size : 0, m_decided++};
    state.candidates = std::move(candidates);
    state.stage = Stage::fetching;
    for (const auto& ref : missing) {
      look_for(ref);
      PathState& theirs = m_paths.at(ref);
      if (theirs.stage == Stage::valid) {
        continue;
      }
      theirs.dependents.push_back(path);
      ++state.waiting_on;
      if (theirs.stage == Stage::failed) {
        fail_path(path, "its reference '" + m_store_dir.print(ref) + "' could not be substituted: " +
                          m_result.failed.at(ref), false);
      }
    }
    if (state.stage == Stage::fetching) {
      m_fetches.emplace(order, path);
      queued();
    }
  }

  // Download `path` from the best cache that has it, falling back to the
  // next on failure; then make it valid if its references are.
  void
  fetch(const StorePath& path)
  {
    std::vector<Candidate> candidates;
    {
      std::lock_guard guard(m_mutex);
      PathState& state = m_paths.at(path);
      if (state.stage != Stage::fetching) {
        return; // a reference failed meanwhile
      }
      candidates = state.candidates;
    }
    std::string errors;
    for (const auto& candidate : candidates) {
      CacheClient& cache = *m_caches[candidate.cache];
      try {
        uint64_t bytes = 0;
        auto ready = cache.fetch_prepared(m_store, candidate.narinfo, bytes);
        std::lock_guard guard(m_mutex);
        m_result.bytes_downloaded += bytes;
        PathState& state = m_paths.at(path);
        if (state.stage != Stage::fetching) {
          return;
        }
        state.prepared = std::move(ready);
        state.stage = Stage::waiting;
        if (state.waiting_on == 0) {
          m_commits.push_back(path);
          queued();
        }
        return;
      } catch (const CacheError& e) {
        // The cache disabled itself and said so; the next one may serve.
        errors += (errors.empty() ? "" : "; ") + std::string(e.what());
      } catch (const Error& e) {
        errors += (errors.empty() ? "" : "; ") + std::string(e.what());
        cache.reject(path, "whose NAR failed verification");
      }
    }
    std::lock_guard guard(m_mutex);
    fail_path(path, errors, false);
  }

  // Make `paths` valid (their references are), and queue what was waiting
  // only for them. Called with `lock` held; the store works without it.
  // Together first; if that fails, one by one, so that each failure is
  // that path's own.
  void
  commit(const std::vector<StorePath>& paths, std::unique_lock<std::mutex>& lock)
  {
    std::vector<std::unique_ptr<PreparedPath>> prepared;
    std::vector<PreparedPath*> batch;
    for (const auto& path : paths) {
      prepared.push_back(std::move(m_paths.at(path).prepared));
      batch.push_back(prepared.back().get());
    }
    lock.unlock();
    std::vector<std::string> errors(paths.size());
    try {
      m_store.commit(batch);
    } catch (const Error&) {
      for (size_t i = 0; i < batch.size(); ++i) {
        try {
          m_store.commit(*batch[i]);
        } catch (const Error& e) {
          errors[i] = e.what();
        }
      }
    }
    prepared.clear();
    lock.lock();
    for (size_t i = 0; i < paths.size(); ++i) {
      if (!errors[i].empty()) {
        fail_path(paths[i], errors[i], false);
      } else {
        made_valid(paths[i]);
      }
    }
  }

  // With the lock held: `path` became valid.
  void
  made_valid(const StorePath& path)
  {
    PathState& state = m_paths.at(path);
    state.stage = Stage::valid;
    m_result.fetched.push_back(path);
    say("fetched " + m_store_dir.print(path));
    for (const auto& d : state.dependents) {
      PathState& theirs = m_paths.at(d);
      if (--theirs.waiting_on == 0 && theirs.stage == Stage::waiting) {
        m_commits.push_back(d);
      }
    }
    queued();
  }

  // With the lock held: `path` cannot be had, nor, transitively, what needs
  // it. Its dependents are told `why` when `pass_on_why` (a look-up failed).
  void
  fail_path(const StorePath& path, const std::string& why, bool pass_on_why)
  {
    PathState& state = m_paths.at(path);
    if (state.stage == Stage::failed || state.stage == Stage::valid) {
      return;
    }
    state.stage = Stage::failed;
    state.prepared.reset();
    m_result.failed.emplace(path, why);
    for (const auto& d : state.dependents) {
      fail_path(d, "its reference '" + m_store_dir.print(path) + "' could not be substituted" +
                     (pass_on_why ? ": " + why : ""),
                false);
    }
  }

  // With the lock held (progress lines come one at a time).
  void
  say(const std::string& line)
  {
    if (m_options.progress) {
      m_options.progress(line);
    }
  }

  LocalStore& m_store;
  const StoreDir& m_store_dir;
  std::vector<CacheClient*> m_caches;
  const TrustPolicy& m_policy;
  const SubstituteOptions& m_options;
  SubstituteResult& m_result;

  std::mutex m_mutex;
  std::condition_variable m_wake;
  std::map<StorePath, PathState> m_paths;
  // Jobs: look-ups, downloads (the greatest FetchOrder first), commits.
  using FetchOrder = std::pair<uint64_t, uint64_t>; // large NAR's size, serial
  static constexpr uint64_t k_large_nar = 1 << 20;
  std::deque<Lookup> m_lookups;
  std::multimap<FetchOrder, StorePath, std::greater<>> m_fetches;
  std::deque<StorePath> m_commits;
  uint64_t m_decided = 0;
  unsigned m_busy = 0;            // jobs running
  unsigned m_requests = 0;        // of them, look-ups and downloads
  bool m_committing = false;
  size_t m_idle = 0;              // threads waiting for a job
  std::vector<std::thread> m_workers; // besides run()'s
  std::exception_ptr m_error;
};

} // namespace

SubstituteResult
substitute(LocalStore& store, const std::vector<CacheClient*>& caches, const TrustPolicy& policy,
           const std::vector<StorePath>& paths, const SubstituteOptions& options)
{
  SubstituteResult result;
  auto say = [&](const std::string& line) {
    if (options.progress) {
      options.progress(line);
    }
  };
  Substitution substitution(store, usable_caches(caches, options.connections, say), policy,
                            options, result);
  substitution.run(paths);
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
