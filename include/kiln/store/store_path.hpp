// Store paths: `<store dir>/<32 nix32 chars>-<name>`, computed as Nix does.
//
//   fingerprint = type ":sha256:" hex(inner digest) ":" store-dir ":" name
//   hash part   = nix32(xor-fold(sha256(fingerprint), 20 bytes))
//
// The store directory is logical (default /kiln/store): it is part of every
// hash, but says nothing about where a store's files lie on disk.
#pragma once

#include <kiln/hash/hash.hpp>

#include <compare>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <functional>

namespace kiln {

inline constexpr std::string_view k_default_store_dir = "/kiln/store";

// The base name of a store path, "<hash>-<name>", validated.
class StorePath
{
public:
  static constexpr size_t k_hash_len = 32;
  static constexpr size_t k_max_name_len = 211;

  // Parse a base name; throws FormatError naming what is wrong.
  explicit StorePath(std::string_view base_name);

  std::string_view
  hash_part() const
  {
    return std::string_view(m_base).substr(0, k_hash_len);
  }
  std::string_view
  name() const
  {
    return std::string_view(m_base).substr(k_hash_len + 1);
  }
  const std::string&
  base() const
  {
    return m_base;
  }

  auto operator<=>(const StorePath&) const = default;

private:
  std::string m_base;
};

// Throws FormatError unless `name` is a valid store path name: 1–211 of
// [0-9a-zA-Z+-._?=], not "." or "..", not starting with ".-" or "..-".
void check_store_path_name(std::string_view name);

// How a content-addressed object was hashed (Nix's `ca` field).
struct ContentAddress
{
  enum class Method { text, flat, recursive };
  Method method;
  Hash hash;

  // "text:sha256:<nix32>", "fixed:sha256:<nix32>", "fixed:r:sha256:<nix32>"
  std::string to_string() const;
  static ContentAddress parse(std::string_view text);
};

class StoreDir
{
public:
  // `dir` must be absolute, without a trailing slash.
  explicit StoreDir(std::string dir = std::string(k_default_store_dir));

  const std::string&
  path() const
  {
    return m_dir;
  }

  std::string print(const StorePath& path) const;
  // Parse a full logical store path (a trailing "/sub/path" is refused).
  StorePath parse(std::string_view full_path) const;
  // Parse a full path, or a base name, or a full path with a sub-path
  // ("…-foo/bin/x" gives "…-foo"); nullopt if it names no store object.
  std::optional<StorePath> try_parse_prefix(std::string_view text) const;

  StorePath make_store_path(std::string_view type, const Hash& inner,
                            std::string_view name) const;
  // A text object (such as a .drv) with `content_hash` = sha256 of its bytes.
  StorePath make_text_path(std::string_view name, const Hash& content_hash,
                           const std::set<StorePath>& references) const;
  // A content-addressed object (as `nix-store --add` or a fixed output).
  StorePath make_fixed_output_path(std::string_view name, const ContentAddress& ca,
                                   const std::set<StorePath>& references = {},
                                   bool self_reference = false) const;

private:
  std::string m_dir;
};

} // namespace kiln

// Store paths as keys of unordered containers (the hash part is already a
// hash, so its first bytes make a fine one).
template <>
struct std::hash<kiln::StorePath>
{
  size_t
  operator()(const kiln::StorePath& path) const noexcept
  {
    return std::hash<std::string_view>{}(path.hash_part());
  }
};
