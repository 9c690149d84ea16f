#include "cache_folder.hpp"

#include <kiln/cache/binary_cache.hpp>
#include <kiln/cache/compression.hpp>
#include <kiln/hash/hash.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/store/local_store.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>

namespace kiln::server_detail {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view k_narinfo_suffix = ".narinfo";

std::string
random_suffix()
{
  thread_local std::mt19937_64 rng(std::random_device{}());
  return std::to_string(::getpid()) + "." + std::to_string(rng());
}

bool
path_exists(const fs::path& path)
{
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string
hash_text(const Hash& h)
{
  return h.to_string(HashFormat::nix32, true);
}

} // namespace

// --- Keys ---

bool
is_nar_file_name(std::string_view name)
{
  if (name.empty() || name.size() > 200 || !std::isalnum(static_cast<unsigned char>(name[0]))) {
    return false;
  }
  auto pos = name.find(".nar");
  if (pos == std::string_view::npos) {
    return false;
  }
  for (char c : name.substr(0, pos)) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '_' && c != '=' &&
        c != '-') {
      return false;
    }
  }
  std::string_view ext = name.substr(pos + 4);
  if (ext.empty()) {
    return true;
  }
  if (ext[0] != '.' || ext.size() == 1) {
    return false;
  }
  for (char c : ext.substr(1)) {
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)))) {
      return false;
    }
  }
  return true;
}

CacheKey
classify_key(const std::string& key)
{
  if (key == "nix-cache-info") {
    return {CacheKey::Kind::cache_info, key};
  }
  if (key.size() > k_narinfo_suffix.size() && key.ends_with(k_narinfo_suffix)) {
    std::string hash = key.substr(0, key.size() - k_narinfo_suffix.size());
    bool ok = hash.size() == StorePath::k_hash_len;
    for (char c : hash) {
      ok = ok && is_nix32_char(c);
    }
    if (!ok) {
      throw HttpError(400, "bad_key",
                      "'" + key + "' is not <32 nix32 characters>.narinfo");
    }
    return {CacheKey::Kind::narinfo, hash};
  }
  if (key.starts_with("nar/")) {
    std::string file = key.substr(4);
    if (!is_nar_file_name(file)) {
      throw HttpError(400, "bad_key", "'" + key + "' is not a NAR file name (nar/<name>.nar[.ext])");
    }
    return {CacheKey::Kind::nar, file};
  }
  throw HttpError(404, "not_found", "no such file: '" + key + "'");
}

// --- KeyedLocks ---

KeyedLocks::Guard::Guard(KeyedLocks& locks, std::string key) : m_locks(locks), m_key(std::move(key))
{
  std::unique_lock lock(m_locks.m_mutex);
  m_locks.m_cv.wait(lock, [&] { return !m_locks.m_busy.count(m_key); });
  m_locks.m_busy.insert(m_key);
}

KeyedLocks::Guard::~Guard()
{
  {
    std::lock_guard lock(m_locks.m_mutex);
    m_locks.m_busy.erase(m_key);
  }
  m_locks.m_cv.notify_all();
}

// --- StagedUpload ---

StagedUpload::StagedUpload(const CacheFolder& cache, const std::string& file)
  : m_part(cache.staging_dir() / (file + "." + random_suffix() + ".part")),
    m_final(cache.staging_dir() / file)
{
  m_fd.reset(::open(m_part.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!m_fd) {
    throw_errno("creating '" + m_part.string() + "'");
  }
  m_sink = std::make_unique<FdSink>(m_fd.get(), 256 * 1024);
}

StagedUpload::~StagedUpload()
{
  if (!m_committed) {
    m_sink.reset();
    ::unlink(m_part.c_str());
  }
}

void
StagedUpload::write(std::string_view data)
{
  m_sink->write(data);
  m_size += data.size();
}

void
StagedUpload::commit()
{
  m_sink->flush();
  if (::fsync(m_fd.get()) != 0) {
    throw_errno("syncing '" + m_part.string() + "'");
  }
  m_fd.reset();
  if (::rename(m_part.c_str(), m_final.c_str()) != 0) {
    throw_errno("renaming '" + m_part.string() + "'");
  }
  m_committed = true;
}

// --- CacheFolder ---

CacheFolder::CacheFolder(const ServedCache& config)
  : m_config(config), m_store_dir(config.store_dir)
{
  std::error_code ec;
  fs::create_directories(m_config.path, ec);
  if (ec) {
    throw UsageError("cache " + label() + ": cannot create '" + m_config.path.string() +
                     "': " + ec.message());
  }
  // A read-only folder can still be served; uploads to it then fail.
  fs::create_directories(m_config.path / "nar", ec);
  fs::create_directories(staging_dir(), ec);
  try {
    m_trust = TrustPolicy(m_config.trusted_keys, 1);
  } catch (const FormatError& e) {
    throw UsageError("cache " + label() + ": trusted-keys: " + e.what());
  }
  if (!m_config.secret_key_file.empty()) {
    try {
      m_secret = SecretKey::read_file(m_config.secret_key_file);
    } catch (const Error& e) {
      throw UsageError("cache " + label() + ": secret-key-file: " + e.what());
    }
  }
}

std::string
CacheFolder::label() const
{
  return m_config.name.empty() ? "/" : "/" + m_config.name;
}

std::string
CacheFolder::cache_info() const
{
  try {
    return read_file(m_config.path / "nix-cache-info");
  } catch (const SystemError& e) {
    if (e.error_number() != ENOENT) {
      throw;
    }
  }
  return "StoreDir: " + m_config.store_dir + "\nWantMassQuery: 1\nPriority: " +
         std::to_string(m_config.priority) + "\n";
}

void
CacheFolder::put_cache_info(std::string_view text)
{
  CacheInfo info;
  try {
    info = CacheInfo::parse(text, label() + "/nix-cache-info");
  } catch (const FormatError& e) {
    throw HttpError(400, "invalid", e.what());
  }
  if (info.store_dir != m_config.store_dir) {
    throw HttpError(400, "invalid",
                    "this cache is for store directory '" + m_config.store_dir + "', not '" +
                      info.store_dir + "'");
  }
  write_file_atomic(m_config.path / "nix-cache-info", text);
}

bool
CacheFolder::has_narinfo(std::string_view hash_part) const
{
  return path_exists(m_config.path / (std::string(hash_part) + ".narinfo"));
}

std::optional<std::string>
CacheFolder::read_narinfo(std::string_view hash_part) const
{
  try {
    return read_file(m_config.path / (std::string(hash_part) + ".narinfo"));
  } catch (const SystemError& e) {
    if (e.error_number() == ENOENT) {
      return std::nullopt;
    }
    throw;
  }
}

std::optional<UniqueFd>
CacheFolder::open_nar(const std::string& file, uint64_t& size) const
{
  fs::path path = m_config.path / "nar" / file;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return std::nullopt;
    }
    throw_errno("opening '" + path.string() + "'");
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    throw_errno("examining '" + path.string() + "'");
  }
  if (!S_ISREG(st.st_mode)) {
    return std::nullopt;
  }
  size = static_cast<uint64_t>(st.st_size);
  return fd;
}

void
CacheFolder::verify_nar(int fd, const NarInfo& narinfo, const std::string& where) const
{
  FdSource file(fd);
  ValidatingSource raw(file, narinfo.file_hash ? narinfo.file_hash->algo() : HashAlgo::sha256,
                       narinfo.file_size, "compressed file");
  try {
    auto decompressed = make_decompression_source(narinfo.compression, raw);
    ValidatingSource nar(*decompressed, HashAlgo::sha256, narinfo.info.nar_size);
    NullFsObjectSink ignore;
    parse_nar(nar, ignore, /*require_eof=*/true);
    nar.verify(narinfo.info.nar_size, narinfo.info.nar_hash);
  } catch (const SystemError&) {
    throw;
  } catch (const Error& e) {
    bool mismatch = std::string_view(e.what()).find("mismatch") != std::string_view::npos;
    throw HttpError(400, mismatch ? "hash_mismatch" : "invalid_nar",
                    where + " is not a valid " + narinfo.compression + "-compressed NAR: " +
                      e.what());
  }
  try {
    // The compressed file's own hash covers all of it, including anything
    // the decompressor did not need.
    raw.drain();
    if (narinfo.file_hash) {
      raw.verify(narinfo.file_size.value_or(raw.count()), *narinfo.file_hash);
    } else if (narinfo.file_size && *narinfo.file_size != raw.count()) {
      throw FormatError("compressed file size mismatch: expected " +
                        std::to_string(*narinfo.file_size) + " bytes, got " + std::to_string(raw.count()));
    }
  } catch (const FormatError& e) {
    throw HttpError(400, "hash_mismatch", where + ": " + e.what());
  }
}

NarInfo
CacheFolder::parse_upload(std::string_view hash_part, std::string_view text,
                          const std::string& where) const
{
  std::optional<NarInfo> parsed;
  try {
    parsed = NarInfo::parse(text, m_store_dir, where);
  } catch (const FormatError& e) {
    throw HttpError(400, "invalid", e.what());
  }
  const StorePath& path = parsed->info.path;
  if (path.hash_part() != hash_part) {
    throw HttpError(400, "invalid",
                    where + ": its StorePath '" + m_store_dir.print(path) +
                      "' does not have the hash part " + std::string(hash_part));
  }
  if (!parsed->url.starts_with("nar/") || !is_nar_file_name(parsed->url.substr(4))) {
    throw HttpError(400, "invalid",
                    where + ": URL '" + parsed->url + "' is not nar/<name>.nar[.ext]");
  }
  return std::move(*parsed);
}

// The closure invariant: a path's references are here before it is.
void
CacheFolder::check_closure(const NarInfo& narinfo, const std::string& where) const
{
  const StorePath& path = narinfo.info.path;
  std::string missing;
  for (const auto& ref : narinfo.info.references) {
    if (ref != path && !has_narinfo(ref.hash_part())) {
      missing += (missing.empty() ? "" : ", ") + m_store_dir.print(ref);
    }
  }
  if (!missing.empty()) {
    throw HttpError(409, "missing_reference",
                    where + ": '" + m_store_dir.print(path) +
                      "' references paths this cache does not have (upload them first): " +
                      missing);
  }
}

// Signed by a key this cache trusts (false), or to be signed by the cache
// itself (true); else refused.
bool
CacheFolder::needs_server_signature(const NarInfo& narinfo, const std::string& fingerprint,
                                    const std::string& where) const
{
  if (m_trust.accepts(fingerprint, narinfo.info.signatures)) {
    return false;
  }
  if (!m_secret) {
    throw HttpError(403, "unsigned",
                    where + ": '" + m_store_dir.print(narinfo.info.path) +
                      "' is not signed by a key this cache trusts" +
                      (m_trust.empty()
                         ? " (it trusts none)"
                         : ": " + m_trust.explain(fingerprint, narinfo.info.signatures)));
  }
  return true;
}

// Already published: the same object gains signatures, another is a
// conflict; nullopt when nothing (readable) is published yet. The caller
// holds the path's lock.
std::optional<CacheFolder::Published>
CacheFolder::merge_signatures(std::string_view hash_part, const NarInfo& narinfo,
                              const std::string& fingerprint, bool sign_here,
                              const std::string& where)
{
  auto existing_text = read_narinfo(hash_part);
  if (!existing_text) {
    return std::nullopt;
  }
  std::optional<NarInfo> existing;
  try {
    existing = NarInfo::parse(*existing_text, m_store_dir, where);
  } catch (const FormatError&) {
    return std::nullopt;   // a corrupt narinfo on disk is replaced like a missing one
  }
  const PathInfo& old = existing->info;
  if (old.path != narinfo.info.path || !(old.nar_hash == narinfo.info.nar_hash) ||
      old.nar_size != narinfo.info.nar_size || old.references != narinfo.info.references) {
    throw HttpError(409, "conflict",
                    where + ": '" + m_store_dir.print(old.path) +
                      "' is already published with NAR hash " + hash_text(old.nar_hash) +
                      "; refusing to replace it with " + hash_text(narinfo.info.nar_hash));
  }
  size_t before = existing->info.signatures.size();
  for (const auto& sig : narinfo.info.signatures) {
    existing->info.signatures.insert(sig);
  }
  if (sign_here) {
    existing->info.signatures.insert(m_secret->sign(fingerprint).to_string());
  }
  if (existing->info.signatures.size() == before) {
    return Published{200, "already published", false};
  }
  write_file_atomic(m_config.path / (std::string(hash_part) + ".narinfo"),
                    existing->to_string(m_store_dir));
  return Published{200, "already published; signatures added", sign_here};
}

// The narinfo's NAR: a published one is immutable and is checked; else the
// staged upload is claimed, checked and published.
void
CacheFolder::publish_nar(const NarInfo& narinfo, const std::string& where)
{
  const std::string nar_file = narinfo.url.substr(4);
  KeyedLocks::Guard nar_lock(m_locks, "u:" + nar_file);
  const fs::path published = m_config.path / "nar" / nar_file;
  const fs::path staged = staging_dir() / nar_file;
  uint64_t size = 0;
  if (auto fd = open_nar(nar_file, size)) {
    verify_nar(fd->get(), narinfo, label() + "/" + narinfo.url);
    ::unlink(staged.c_str()); // a redundant second upload
    return;
  }
  // Renaming the upload aside first means that what is verified is what
  // gets published, even if the same name is uploaded again meanwhile.
  fs::path claimed = staging_dir() / (nar_file + "." + random_suffix() + ".claim");
  if (::rename(staged.c_str(), claimed.c_str()) != 0) {
    if (errno == ENOENT) {
      throw HttpError(409, "missing_nar",
                      where + ": its NAR '" + narinfo.url +
                        "' has not been uploaded (PUT it before the narinfo)");
    }
    throw_errno("claiming '" + staged.string() + "'");
  }
  try {
    UniqueFd cfd(::open(claimed.c_str(), O_RDONLY | O_CLOEXEC));
    if (!cfd) {
      throw_errno("opening '" + claimed.string() + "'");
    }
    verify_nar(cfd.get(), narinfo, "the uploaded " + narinfo.url);
    // Never replace a published NAR (others' narinfos may point at it).
    if (::renameat2(AT_FDCWD, claimed.c_str(), AT_FDCWD, published.c_str(), RENAME_NOREPLACE) !=
        0) {
      throw_errno("publishing '" + published.string() + "'");
    }
  } catch (...) {
    ::unlink(claimed.c_str());
    throw;
  }
  fsync_directory(m_config.path / "nar");
}

CacheFolder::Published
CacheFolder::publish_narinfo(std::string_view hash_part, std::string_view text)
{
  const std::string where = label() + "/" + std::string(hash_part) + ".narinfo";
  NarInfo narinfo = parse_upload(hash_part, text, where);
  check_closure(narinfo, where);
  const std::string fingerprint = path_fingerprint(m_store_dir, narinfo.info);
  bool sign_here = needs_server_signature(narinfo, fingerprint, where);

  KeyedLocks::Guard path_lock(m_locks, "h:" + std::string(hash_part));
  if (auto merged = merge_signatures(hash_part, narinfo, fingerprint, sign_here, where)) {
    return *merged;
  }
  publish_nar(narinfo, where);
  // The narinfo last, atomically: a reader never finds one without its NAR.
  if (sign_here) {
    narinfo.info.signatures.insert(m_secret->sign(fingerprint).to_string());
  }
  write_file_atomic(m_config.path / (std::string(hash_part) + ".narinfo"),
                    narinfo.to_string(m_store_dir));
  return {201,
          "published " + m_store_dir.print(narinfo.info.path) +
            (sign_here ? " (signed by the server)" : ""),
          sign_here};
}

void
CacheFolder::sweep_staging(std::chrono::seconds max_age, bool force)
{
  std::unique_lock lock(m_sweep_mutex, std::try_to_lock);
  if (!lock) {
    return;
  }
  auto now = std::chrono::steady_clock::now();
  if (!force && m_last_sweep != std::chrono::steady_clock::time_point{} &&
      now - m_last_sweep < std::chrono::hours(1)) {
    return;
  }
  m_last_sweep = now;
  std::error_code ec;
  auto cutoff = fs::file_time_type::clock::now() - max_age;
  for (const auto& entry : fs::directory_iterator(staging_dir(), ec)) {
    std::error_code entry_ec;
    if (entry.is_regular_file(entry_ec) && entry.last_write_time(entry_ec) < cutoff && !entry_ec) {
      fs::remove(entry.path(), entry_ec);
    }
  }
}

} // namespace kiln::server_detail
