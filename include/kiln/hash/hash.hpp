// Cryptographic hashes and their text forms, as Nix writes them.
//
// Text forms (for sha256):
//   base16  64 lower-case hex digits
//   nix32   52 digits of 0123456789abcdfghijklmnpqrsvwxyz, most significant first
//   base64  44 characters, standard alphabet with '=' padding
//   sri     "sha256-" + base64
// Parsing infers the encoding from the length, as Nix does; non-canonical
// nix32 (bits set beyond the digest) is rejected.
#pragma once

#include <kiln/util/io.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

enum class HashAlgo { md5, sha1, sha256, sha512 };

enum class HashFormat { base16, nix32, base64, sri };

// Name used in prefixes ("sha256") and its digest size in bytes.
std::string_view hash_algo_name(HashAlgo algo);
size_t hash_size(HashAlgo algo);
// Parse "md5", "sha1", "sha256" or "sha512"; throws FormatError.
HashAlgo parse_hash_algo(std::string_view name);

class Hash
{
public:
  // An all-zero hash of `algo`.
  explicit Hash(HashAlgo algo = HashAlgo::sha256);
  Hash(HashAlgo algo, std::span<const uint8_t> digest);

  // Parse "<algo>:<digest>" or SRI "<algo>-<base64>".
  static Hash parse_prefixed(std::string_view text);
  // Parse a digest with no prefix, of algorithm `algo`.
  static Hash parse_unprefixed(std::string_view text, HashAlgo algo);
  // Parse either form; without a prefix `algo` must be given.
  static Hash parse_any(std::string_view text, std::optional<HashAlgo> algo);

  HashAlgo
  algo() const
  {
    return m_algo;
  }
  std::span<const uint8_t>
  bytes() const
  {
    return {m_digest.data(), m_size};
  }

  // `include_algo` adds "sha256:" (ignored for SRI, which always has it).
  std::string to_string(HashFormat format, bool include_algo) const;

  bool operator==(const Hash& other) const;
  bool operator<(const Hash& other) const;

private:
  HashAlgo m_algo;
  size_t m_size;
  std::array<uint8_t, 64> m_digest{};
};

// A sink that hashes what it is given and counts the bytes.
class HashSink : public Sink
{
public:
  explicit HashSink(HashAlgo algo = HashAlgo::sha256);
  ~HashSink() override;
  HashSink(const HashSink&) = delete;
  HashSink& operator=(const HashSink&) = delete;

  void write(std::string_view data) override;
  // The digest of everything written so far; the sink can't be used after.
  Hash finish();
  uint64_t
  bytes_written() const
  {
    return m_count;
  }

private:
  HashAlgo m_algo;
  void* m_ctx; // EVP_MD_CTX, kept out of this header
  uint64_t m_count = 0;
};

// The one validating reader, for the client and the server alike: hashes
// and counts what is read through it, and refuses to read past `limit`
// bytes (a body larger than it claims, or a decompression bomb, is cut off
// before it is written anywhere). It lives here, not in util, because it
// hashes. `what` names the stream in errors ("NAR", "compressed file").
class ValidatingSource : public Source
{
public:
  ValidatingSource(Source& in, HashAlgo algo, std::optional<uint64_t> limit = std::nullopt,
                   std::string what = "NAR");
  size_t read(char* buf, size_t len) override;
  uint64_t
  count() const
  {
    return m_hash.bytes_written();
  }
  // Read what remains (it counts and is hashed too).
  void drain();
  // The digest; the reader can't be used after.
  Hash finish();
  // finish(), then throw FormatError ("NAR size mismatch: …", "NAR hash
  // mismatch: …") unless the size and hash are these.
  void verify(uint64_t expected_size, const Hash& expected_hash);

private:
  Source& m_in;
  HashSink m_hash;
  std::optional<uint64_t> m_limit;
  std::string m_what;
};

Hash hash_string(HashAlgo algo, std::string_view data);
// Hash the bytes of a regular file ("flat" hashing).
Hash hash_file(HashAlgo algo, const std::string& path);

// XOR-fold `hash` to `new_size` bytes (Nix's compressHash).
std::vector<uint8_t> compress_hash(std::span<const uint8_t> hash, size_t new_size);

// --- Encodings ---

size_t nix32_encoded_length(size_t byte_count);
std::string nix32_encode(std::span<const uint8_t> bytes);
// Decode exactly `byte_count` bytes; throws FormatError on a bad digit, a
// wrong length or a non-canonical encoding.
std::vector<uint8_t> nix32_decode(std::string_view text, size_t byte_count);
bool is_nix32_char(char c);

std::string base16_encode(std::span<const uint8_t> bytes);
std::vector<uint8_t> base16_decode(std::string_view text);

std::string base64_encode(std::span<const uint8_t> bytes);
std::vector<uint8_t> base64_decode(std::string_view text);

} // namespace kiln
