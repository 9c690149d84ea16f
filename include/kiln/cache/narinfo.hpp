// The text records of a Nix binary cache.
//
// <hash>.narinfo, one "Key: value" per line, every line ending in '\n':
//   StorePath   full store path                                  (required)
//   URL         where the (compressed) NAR is, relative to the cache (required)
//   Compression none | xz | zstd | bzip2 | gzip | br | …; absent means bzip2
//   FileHash    sha256 of the compressed file, FileSize its size  (informational)
//   NarHash     sha256:<nix32> of the NAR                         (required)
//   NarSize     bytes of the NAR, non-zero                        (required)
//   References  space-separated base names (may be empty)
//   Deriver     base name of the .drv, or "unknown-deriver"
//   Sig         NAME:base64, repeatable
//   CA          content address
// Unknown keys are ignored; any malformed known field is an error naming
// its line.
//
// nix-cache-info: StoreDir, WantMassQuery, Priority.
#pragma once

#include <kiln/store/local_store.hpp>

#include <optional>
#include <string>

namespace kiln {

struct NarInfo
{
  explicit NarInfo(PathInfo i) : info(std::move(i))
  {
  }

  PathInfo info;
  std::string url;
  std::string compression = "none";
  std::optional<Hash> file_hash;
  std::optional<uint64_t> file_size;

  // `where` names the source in errors (e.g. "http://cache/abc.narinfo").
  static NarInfo parse(std::string_view text, const StoreDir& store_dir, const std::string& where);
  std::string to_string(const StoreDir& store_dir) const;
};

struct CacheInfo
{
  std::string store_dir{k_default_store_dir};
  bool want_mass_query = false;
  int priority = 0;   // Nix's default when a cache does not say

  static CacheInfo parse(std::string_view text, const std::string& where);
  std::string to_string() const;
};

// Compression methods kiln can read, and those it can write.
bool is_known_compression(std::string_view method);
// File extension Nix gives a NAR compressed with `method` (".zst", "" for none).
std::string nar_extension(std::string_view method);

} // namespace kiln
