#include <kiln/hash/hash.hpp>
#include <kiln/util/error.hpp>

#include <openssl/evp.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace kiln {

namespace {

constexpr std::string_view k_nix32_alphabet = "0123456789abcdfghijklmnpqrsvwxyz";
constexpr std::string_view k_base64_alphabet =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const EVP_MD*
evp_for(HashAlgo algo)
{
  switch (algo) {
  case HashAlgo::md5:
    return EVP_md5();
  case HashAlgo::sha1:
    return EVP_sha1();
  case HashAlgo::sha256:
    return EVP_sha256();
  case HashAlgo::sha512:
    return EVP_sha512();
  }
  return EVP_sha256();
}

int
nix32_digit(char c)
{
  auto pos = k_nix32_alphabet.find(c);
  return pos == std::string_view::npos ? -1 : static_cast<int>(pos);
}

size_t
base64_encoded_length(size_t byte_count)
{
  return (byte_count + 2) / 3 * 4;
}

} // namespace

std::string_view
hash_algo_name(HashAlgo algo)
{
  switch (algo) {
  case HashAlgo::md5:
    return "md5";
  case HashAlgo::sha1:
    return "sha1";
  case HashAlgo::sha256:
    return "sha256";
  case HashAlgo::sha512:
    return "sha512";
  }
  return "sha256";
}

size_t
hash_size(HashAlgo algo)
{
  switch (algo) {
  case HashAlgo::md5:
    return 16;
  case HashAlgo::sha1:
    return 20;
  case HashAlgo::sha256:
    return 32;
  case HashAlgo::sha512:
    return 64;
  }
  return 32;
}

HashAlgo
parse_hash_algo(std::string_view name)
{
  for (auto algo : {HashAlgo::md5, HashAlgo::sha1, HashAlgo::sha256, HashAlgo::sha512}) {
    if (hash_algo_name(algo) == name) {
      return algo;
    }
  }
  throw FormatError("unknown hash algorithm '" + std::string(name) + "'");
}

Hash::Hash(HashAlgo algo) : m_algo(algo), m_size(hash_size(algo))
{
}

Hash::Hash(HashAlgo algo, std::span<const uint8_t> digest) : m_algo(algo), m_size(hash_size(algo))
{
  if (digest.size() != m_size) {
    throw FormatError("a " + std::string(hash_algo_name(algo)) + " digest has " +
                      std::to_string(m_size) + " bytes, not " + std::to_string(digest.size()));
  }
  std::copy(digest.begin(), digest.end(), m_digest.begin());
}

Hash
Hash::parse_unprefixed(std::string_view text, HashAlgo algo)
{
  size_t size = hash_size(algo);
  std::vector<uint8_t> bytes;
  if (text.size() == size * 2) {
    bytes = base16_decode(text);
  } else if (text.size() == nix32_encoded_length(size)) {
    bytes = nix32_decode(text, size);
  } else if (text.size() == base64_encoded_length(size)) {
    bytes = base64_decode(text);
  } else {
    throw FormatError("hash '" + std::string(text) + "' has the wrong length for " +
                      std::string(hash_algo_name(algo)) + " (expected " +
                      std::to_string(size * 2) + " hex, " +
                      std::to_string(nix32_encoded_length(size)) + " nix32 or " +
                      std::to_string(base64_encoded_length(size)) + " base64 characters)");
  }
  if (bytes.size() != size) {
    throw FormatError("hash '" + std::string(text) + "' does not decode to " +
                      std::to_string(size) + " bytes");
  }
  return Hash(algo, bytes);
}

Hash
Hash::parse_prefixed(std::string_view text)
{
  auto colon = text.find(':');
  if (colon != std::string_view::npos) {
    return parse_unprefixed(text.substr(colon + 1), parse_hash_algo(text.substr(0, colon)));
  }
  auto dash = text.find('-');
  if (dash != std::string_view::npos) {
    HashAlgo algo = parse_hash_algo(text.substr(0, dash));
    auto digest = text.substr(dash + 1);
    if (digest.size() != base64_encoded_length(hash_size(algo))) {
      throw FormatError("SRI hash '" + std::string(text) + "' has the wrong length");
    }
    auto bytes = base64_decode(digest);
    return Hash(algo, bytes);
  }
  throw FormatError("hash '" + std::string(text) +
                    "' lacks an algorithm prefix such as 'sha256:' or 'sha256-'");
}

Hash
Hash::parse_any(std::string_view text, std::optional<HashAlgo> algo)
{
  if (text.find(':') != std::string_view::npos ||
      (text.find('-') != std::string_view::npos && text.find('-') <= 6)) {
    Hash h = parse_prefixed(text);
    if (algo && h.algo() != *algo) {
      throw FormatError("hash '" + std::string(text) + "' is not a " +
                        std::string(hash_algo_name(*algo)) + " hash");
    }
    return h;
  }
  if (!algo) {
    throw FormatError("hash '" + std::string(text) + "' lacks an algorithm prefix");
  }
  return parse_unprefixed(text, *algo);
}

std::string
Hash::to_string(HashFormat format, bool include_algo) const
{
  std::string prefix = include_algo ? std::string(hash_algo_name(m_algo)) + ":" : "";
  switch (format) {
  case HashFormat::base16:
    return prefix + base16_encode(bytes());
  case HashFormat::nix32:
    return prefix + nix32_encode(bytes());
  case HashFormat::base64:
    return prefix + base64_encode(bytes());
  case HashFormat::sri:
    return std::string(hash_algo_name(m_algo)) + "-" + base64_encode(bytes());
  }
  return {};
}

bool
Hash::operator==(const Hash& other) const
{
  return m_algo == other.m_algo && std::equal(bytes().begin(), bytes().end(), other.bytes().begin(),
                                              other.bytes().end());
}

bool
Hash::operator<(const Hash& other) const
{
  if (m_algo != other.m_algo) {
    return m_algo < other.m_algo;
  }
  return std::lexicographical_compare(bytes().begin(), bytes().end(), other.bytes().begin(),
                                      other.bytes().end());
}

HashSink::HashSink(HashAlgo algo) : m_algo(algo), m_ctx(EVP_MD_CTX_new())
{
  if (!m_ctx || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(m_ctx), evp_for(algo), nullptr) != 1) {
    throw Error("could not initialise the hash function");
  }
}

HashSink::~HashSink()
{
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(m_ctx));
}

void
HashSink::write(std::string_view data)
{
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(m_ctx), data.data(), data.size());
  m_count += data.size();
}

Hash
HashSink::finish()
{
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(m_ctx), digest, &len);
  return Hash(m_algo, std::span<const uint8_t>(digest, len));
}

ValidatingSource::ValidatingSource(Source& in, HashAlgo algo, std::optional<uint64_t> limit,
                                   std::string what)
  : m_in(in), m_hash(algo), m_limit(limit), m_what(std::move(what))
{
}

size_t
ValidatingSource::read(char* buf, size_t len)
{
  if (m_limit) {
    // Ask for one byte past the limit at most, so an overrun is seen
    // without reading (or buffering) more of it.
    len = static_cast<size_t>(std::min<uint64_t>(len, *m_limit - count() + 1));
  }
  size_t n = m_in.read(buf, len);
  if (m_limit && count() + n > *m_limit) {
    throw FormatError(m_what + " is larger than the " + std::to_string(*m_limit) +
                      " bytes it should have");
  }
  m_hash.write(std::string_view(buf, n));
  return n;
}

void
ValidatingSource::drain()
{
  std::vector<char> buf(64 * 1024);
  while (read(buf.data(), buf.size()) > 0) {
  }
}

Hash
ValidatingSource::finish()
{
  return m_hash.finish();
}

void
ValidatingSource::verify(uint64_t expected_size, const Hash& expected_hash)
{
  uint64_t size = count();
  Hash got = finish();
  if (size != expected_size) {
    throw FormatError(m_what + " size mismatch: expected " + std::to_string(expected_size) +
                      " bytes, got " + std::to_string(size));
  }
  if (!(got == expected_hash)) {
    throw FormatError(m_what + " hash mismatch: expected " +
                      expected_hash.to_string(HashFormat::nix32, true) + ", got " +
                      got.to_string(HashFormat::nix32, true));
  }
}

Hash
hash_string(HashAlgo algo, std::string_view data)
{
  HashSink sink(algo);
  sink.write(data);
  return sink.finish();
}

Hash
hash_file(HashAlgo algo, const std::string& path)
{
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    throw_errno("opening '" + path + "'");
  }
  HashSink sink(algo);
  std::vector<char> buf(1 << 20);
  FdSource source(fd.get());
  while (size_t n = source.read(buf.data(), buf.size())) {
    sink.write(std::string_view(buf.data(), n));
  }
  return sink.finish();
}

std::vector<uint8_t>
compress_hash(std::span<const uint8_t> hash, size_t new_size)
{
  std::vector<uint8_t> result(new_size, 0);
  for (size_t i = 0; i < hash.size(); ++i) {
    result[i % new_size] ^= hash[i];
  }
  return result;
}

size_t
nix32_encoded_length(size_t byte_count)
{
  return byte_count == 0 ? 0 : (byte_count * 8 - 1) / 5 + 1;
}

bool
is_nix32_char(char c)
{
  return nix32_digit(c) >= 0;
}

std::string
nix32_encode(std::span<const uint8_t> bytes)
{
  size_t len = nix32_encoded_length(bytes.size());
  std::string out;
  out.reserve(len);
  for (size_t n = len; n-- > 0;) {
    size_t b = n * 5;
    size_t i = b / 8;
    size_t j = b % 8;
    unsigned value = bytes[i] >> j;
    if (i + 1 < bytes.size()) {
      value |= static_cast<unsigned>(bytes[i + 1]) << (8 - j);
    }
    out.push_back(k_nix32_alphabet[value & 0x1f]);
  }
  return out;
}

std::vector<uint8_t>
nix32_decode(std::string_view text, size_t byte_count)
{
  if (text.size() != nix32_encoded_length(byte_count)) {
    throw FormatError("nix32 string '" + std::string(text) + "' has length " +
                      std::to_string(text.size()) + ", expected " +
                      std::to_string(nix32_encoded_length(byte_count)));
  }
  std::vector<uint8_t> out(byte_count, 0);
  size_t len = text.size();
  for (size_t n = 0; n < len; ++n) {
    char c = text[len - 1 - n];
    int digit = nix32_digit(c);
    if (digit < 0) {
      throw FormatError("invalid character '" + std::string(1, c) + "' in nix32 string '" +
                        std::string(text) + "'");
    }
    size_t b = n * 5;
    size_t i = b / 8;
    size_t j = b % 8;
    out[i] |= static_cast<uint8_t>((digit << j) & 0xff);
    unsigned carry = static_cast<unsigned>(digit) >> (8 - j);
    if (i + 1 < byte_count) {
      out[i + 1] |= static_cast<uint8_t>(carry);
    } else if (carry != 0) {
      throw FormatError("nix32 string '" + std::string(text) + "' is not canonical");
    }
  }
  return out;
}

std::string
base16_encode(std::span<const uint8_t> bytes)
{
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 0xf]);
  }
  return out;
}

std::vector<uint8_t>
base16_decode(std::string_view text)
{
  auto digit = [&](char c) -> int {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
      return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
      return c - 'A' + 10;
    }
    throw FormatError("invalid character '" + std::string(1, c) + "' in hex string '" +
                      std::string(text) + "'");
  };
  if (text.size() % 2 != 0) {
    throw FormatError("hex string '" + std::string(text) + "' has an odd length");
  }
  std::vector<uint8_t> out;
  out.reserve(text.size() / 2);
  for (size_t i = 0; i < text.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(digit(text[i]) << 4 | digit(text[i + 1])));
  }
  return out;
}

std::string
base64_encode(std::span<const uint8_t> bytes)
{
  std::string out;
  out.reserve(base64_encoded_length(bytes.size()));
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = bytes[i] << 16 | bytes[i + 1] << 8 | bytes[i + 2];
    out.push_back(k_base64_alphabet[v >> 18 & 63]);
    out.push_back(k_base64_alphabet[v >> 12 & 63]);
    out.push_back(k_base64_alphabet[v >> 6 & 63]);
    out.push_back(k_base64_alphabet[v & 63]);
  }
  size_t rest = bytes.size() - i;
  if (rest == 1) {
    uint32_t v = bytes[i] << 16;
    out.push_back(k_base64_alphabet[v >> 18 & 63]);
    out.push_back(k_base64_alphabet[v >> 12 & 63]);
    out.append("==");
  } else if (rest == 2) {
    uint32_t v = bytes[i] << 16 | bytes[i + 1] << 8;
    out.push_back(k_base64_alphabet[v >> 18 & 63]);
    out.push_back(k_base64_alphabet[v >> 12 & 63]);
    out.push_back(k_base64_alphabet[v >> 6 & 63]);
    out.push_back('=');
  }
  return out;
}

std::vector<uint8_t>
base64_decode(std::string_view text)
{
  std::vector<uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=') {
      break;
    }
    if (c == '\n') {
      continue;
    }
    auto pos = k_base64_alphabet.find(c);
    if (pos == std::string_view::npos) {
      throw FormatError("invalid character '" + std::string(1, c) + "' in base64 string");
    }
    acc = acc << 6 | static_cast<uint32_t>(pos);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(acc >> bits & 0xff));
    }
  }
  return out;
}

} // namespace kiln
