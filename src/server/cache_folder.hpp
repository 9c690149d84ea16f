// Private to the server module: one served cache folder on disk (reads,
// staged uploads, verified publication), and the errors that become HTTP
// answers. Nothing here knows about HTTP beyond status numbers.
#pragma once

#include <kiln/cache/narinfo.hpp>
#include <kiln/server/server.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/store/store_path.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <string>

namespace kiln::server_detail {

// A failure with the HTTP status to answer and a short reason for metrics
// ("unauthorized", "missing_reference", ...).
class HttpError : public Error
{
public:
  HttpError(int status, std::string reason, const std::string& message)
    : Error(message), m_status(status), m_reason(std::move(reason))
  {
  }
  int
  status() const
  {
    return m_status;
  }
  const std::string&
  reason() const
  {
    return m_reason;
  }

private:
  int m_status;
  std::string m_reason;
};

// What a key inside a cache names.
struct CacheKey
{
  enum class Kind { cache_info, narinfo, nar };
  Kind kind;
  std::string name; // the hash part (narinfo) or the file name (nar)
};

// Classify `key` (already free of "..", "." and empty segments): 400 for a
// malformed narinfo or NAR name, 404 for anything else.
CacheKey classify_key(const std::string& key);

// [0-9A-Za-z][0-9A-Za-z+_=-]* ".nar" [ "." [a-z0-9]+ ], at most 200 bytes.
bool is_nar_file_name(std::string_view name);

// Mutual exclusion per string key (NAR URL, narinfo hash).
class KeyedLocks
{
public:
  class Guard
  {
  public:
    Guard(KeyedLocks& locks, std::string key);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

  private:
    KeyedLocks& m_locks;
    std::string m_key;
  };

private:
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::set<std::string> m_busy;
};

class CacheFolder;

// A NAR upload being written to .staging/; invisible until commit(), and
// deleted if never committed.
class StagedUpload : public Sink
{
public:
  StagedUpload(const CacheFolder& cache, const std::string& file);
  ~StagedUpload() override;
  StagedUpload(const StagedUpload&) = delete;
  StagedUpload& operator=(const StagedUpload&) = delete;

  void write(std::string_view data) override;
  // Sync the file and rename it to .staging/<file>.
  void commit();
  uint64_t
  size() const
  {
    return m_size;
  }

private:
  std::filesystem::path m_part;
  std::filesystem::path m_final;
  UniqueFd m_fd;
  std::unique_ptr<FdSink> m_sink;
  uint64_t m_size = 0;
  bool m_committed = false;
};

class CacheFolder
{
public:
  // Creates the folder, nar/ and .staging/ if needed; reads the secret key.
  explicit CacheFolder(const ServedCache& config);

  const ServedCache&
  config() const
  {
    return m_config;
  }
  const StoreDir&
  store_dir() const
  {
    return m_store_dir;
  }
  // "/" or "/<name>", for messages.
  std::string label() const;
  const std::filesystem::path&
  root() const
  {
    return m_config.path;
  }
  std::filesystem::path
  staging_dir() const
  {
    return m_config.path / ".staging";
  }

  // nix-cache-info: the file if there is one, else a generated one.
  std::string cache_info() const;
  // Replace nix-cache-info; its StoreDir must be this cache's (400).
  void put_cache_info(std::string_view text);

  std::optional<std::string> read_narinfo(std::string_view hash_part) const;
  bool has_narinfo(std::string_view hash_part) const;
  // Open a published NAR; nullopt if absent. `size` receives its length.
  std::optional<UniqueFd> open_nar(const std::string& file, uint64_t& size) const;

  struct Published
  {
    int status;           // 201 new, 200 already there (signatures merged)
    std::string message;
    bool signed_by_server = false;
  };
  // Verify and publish a narinfo (the rules in server.hpp); throws HttpError.
  Published publish_narinfo(std::string_view hash_part, std::string_view text);

  // Delete staged uploads older than `max_age` (at most once an hour
  // unless `force`).
  void sweep_staging(std::chrono::seconds max_age, bool force = false);

private:
  // Check `narinfo` against the NAR in `fd`; throws HttpError 400.
  void verify_nar(int fd, const NarInfo& narinfo, const std::string& where) const;
  // The steps of publish_narinfo, each throwing its HttpError.
  NarInfo parse_upload(std::string_view hash_part, std::string_view text,
                       const std::string& where) const;
  void check_closure(const NarInfo& narinfo, const std::string& where) const;
  bool needs_server_signature(const NarInfo& narinfo, const std::string& fingerprint,
                              const std::string& where) const;
  std::optional<Published> merge_signatures(std::string_view hash_part, const NarInfo& narinfo,
                                            const std::string& fingerprint, bool sign_here,
                                            const std::string& where);
  void publish_nar(const NarInfo& narinfo, const std::string& where);

  ServedCache m_config;
  StoreDir m_store_dir;
  TrustPolicy m_trust;
  std::optional<SecretKey> m_secret;
  KeyedLocks m_locks;
  std::mutex m_sweep_mutex;
  std::chrono::steady_clock::time_point m_last_sweep{};
};

} // namespace kiln::server_detail
