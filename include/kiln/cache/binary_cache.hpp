// A binary cache seen as a flat namespace of files ("nix-cache-info",
// "<hash>.narinfo", "nar/<file>"). Backends: file:///dir and http(s)://host/prefix.
// "Not found" (404, 403, a missing file) is a normal answer, never an error;
// errors are reserved for failures (unreachable, 5xx after retries, I/O).
#pragma once

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace kiln {

struct CacheOptions
{
  std::string token;            // sent as "Authorization: Bearer <token>"
  unsigned connections = 16;    // parallel HTTP connections
  int connect_timeout_s = 15;
  int read_timeout_s = 30;      // the longest silence within a response
  int retries = 4;              // extra attempts on 5xx, 408, 429 and network errors
  // Total time for one request, its retries included, however slowly the
  // server drips: small files (narinfo, nix-cache-info, HEAD), and NARs.
  int small_file_deadline_s = 60;
  int transfer_deadline_s = 3600;
  // The largest small file read whole (a narinfo is a few hundred bytes).
  uint64_t max_small_file = 1 << 20;
};

// A cache that could not be reached or answered with an error.
class CacheError : public Error
{
public:
  using Error::Error;
};

class BinaryCache
{
public:
  virtual ~BinaryCache() = default;

  // The cache's URL as given (without a trailing slash).
  virtual const std::string& url() const = 0;
  virtual bool file_exists(const std::string& key) = 0;
  // A small file, whole; nullopt if absent.
  virtual std::optional<std::string> get_file(const std::string& key) = 0;
  // Stream a file into `sink`; false if absent (nothing written then).
  virtual bool get_file(const std::string& key, Sink& sink) = 0;
  // Create or replace a file, atomically for readers.
  virtual void upsert_file(const std::string& key, std::string_view data,
                           const std::string& content_type) = 0;
  virtual void upsert_file_from(const std::string& key, const std::filesystem::path& file,
                                const std::string& content_type) = 0;
};

// Open a cache by URL: file:///dir, /dir (a plain folder), http://…, https://….
std::unique_ptr<BinaryCache> open_binary_cache(const std::string& url,
                                               const CacheOptions& options = {});

// Refuse keys that could escape the cache: absolute, "..", ".", empty
// segments, backslashes, control characters. Throws FormatError.
void check_cache_key(const std::string& key);

} // namespace kiln
