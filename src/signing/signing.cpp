#include <kiln/hash/hash.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <sodium.h>

#include <sys/stat.h>

namespace kiln {

namespace {

void
ensure_sodium()
{
  static const bool ready = [] { return sodium_init() >= 0; }();
  if (!ready) {
    throw Error("libsodium could not be initialised");
  }
}

// Split "<name>:<base64>"; `what` names the kind of thing for errors, and
// `sensitive` keeps the text out of them.
std::pair<std::string, std::string>
split_colon_base64(std::string_view text, const std::string& what, bool sensitive)
{
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.remove_suffix(1);
  }
  auto colon = text.find(':');
  std::string shown = sensitive ? "" : " '" + std::string(text.substr(0, 120)) + "'";
  if (colon == std::string_view::npos || colon == 0) {
    throw FormatError(what + shown + " is not of the form NAME:BASE64");
  }
  std::vector<uint8_t> data;
  try {
    data = base64_decode(text.substr(colon + 1));
  } catch (const FormatError&) {
    throw FormatError(what + shown + " has invalid base64");
  }
  if (data.empty()) {
    throw FormatError(what + shown + " is empty after the name");
  }
  return {std::string(text.substr(0, colon)), std::string(data.begin(), data.end())};
}

std::string
to_colon_base64(const std::string& name, const std::string& raw)
{
  return name + ":" +
         base64_encode(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw.data()),
                                                raw.size()));
}

} // namespace

Signature
Signature::parse(std::string_view text)
{
  auto [name, raw] = split_colon_base64(text, "signature", false);
  if (raw.size() != crypto_sign_BYTES) {
    throw FormatError("signature '" + std::string(text.substr(0, 120)) + "' is " +
                      std::to_string(raw.size()) + " bytes, not " +
                      std::to_string(crypto_sign_BYTES));
  }
  return {name, raw};
}

std::string
Signature::to_string() const
{
  return to_colon_base64(key_name, sig);
}

PublicKey
PublicKey::parse(std::string_view text)
{
  auto [name, raw] = split_colon_base64(text, "public key", false);
  if (raw.size() != crypto_sign_PUBLICKEYBYTES) {
    throw FormatError("public key '" + std::string(text.substr(0, 120)) + "' is " +
                      std::to_string(raw.size()) + " bytes, not " +
                      std::to_string(crypto_sign_PUBLICKEYBYTES));
  }
  PublicKey key;
  key.m_name = name;
  key.m_key = raw;
  return key;
}

std::string
PublicKey::to_string() const
{
  return to_colon_base64(m_name, m_key);
}

bool
PublicKey::verify(std::string_view data, const Signature& sig) const
{
  ensure_sodium();
  if (sig.key_name != m_name || sig.sig.size() != crypto_sign_BYTES) {
    return false;
  }
  return crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(sig.sig.data()),
                                     reinterpret_cast<const unsigned char*>(data.data()),
                                     data.size(),
                                     reinterpret_cast<const unsigned char*>(m_key.data())) == 0;
}

SecretKey
SecretKey::generate(std::string_view name)
{
  ensure_sodium();
  if (name.empty() || name.find(':') != std::string_view::npos) {
    throw UsageError("key name '" + std::string(name) + "' must be non-empty and without ':'");
  }
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  crypto_sign_keypair(pk, sk);
  SecretKey key;
  key.m_name = name;
  key.m_key.assign(reinterpret_cast<char*>(sk), sizeof sk);
  sodium_memzero(sk, sizeof sk);
  return key;
}

SecretKey
SecretKey::parse(std::string_view text)
{
  auto [name, raw] = split_colon_base64(text, "secret key", true);
  if (raw.size() != crypto_sign_SECRETKEYBYTES) {
    throw FormatError("secret key '" + name + ":…' is not valid (" + std::to_string(raw.size()) +
                      " bytes, not " + std::to_string(crypto_sign_SECRETKEYBYTES) + ")");
  }
  SecretKey key;
  key.m_name = name;
  key.m_key = raw;
  return key;
}

SecretKey
SecretKey::read_file(const std::string& path)
{
  std::string text;
  try {
    text = kiln::read_file(path);
  } catch (const SystemError& e) {
    throw Error("cannot read secret key file: " + std::string(e.what()));
  }
  try {
    return parse(text);
  } catch (const FormatError& e) {
    throw FormatError("secret key file '" + path + "': " + e.what());
  }
}

std::string
SecretKey::to_string() const
{
  return to_colon_base64(m_name, m_key);
}

PublicKey
SecretKey::public_key() const
{
  ensure_sodium();
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  crypto_sign_ed25519_sk_to_pk(pk, reinterpret_cast<const unsigned char*>(m_key.data()));
  return PublicKey::parse(to_colon_base64(m_name, std::string(reinterpret_cast<char*>(pk), sizeof pk)));
}

Signature
SecretKey::sign(std::string_view data) const
{
  ensure_sodium();
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, nullptr, reinterpret_cast<const unsigned char*>(data.data()),
                       data.size(), reinterpret_cast<const unsigned char*>(m_key.data()));
  return {m_name, std::string(reinterpret_cast<char*>(sig), sizeof sig)};
}

TrustPolicy::TrustPolicy(const std::vector<std::string>& public_keys, unsigned required)
  : m_required(required)
{
  for (const auto& text : public_keys) {
    PublicKey key = PublicKey::parse(text);
    m_keys.emplace(key.name(), key); // the first key of a name wins, as in Nix
  }
}

unsigned
TrustPolicy::count_valid(std::string_view fingerprint, const std::set<std::string>& sigs) const
{
  std::set<std::string> signers;
  for (const auto& text : sigs) {
    Signature sig;
    try {
      sig = Signature::parse(text);
    } catch (const FormatError&) {
      continue;
    }
    auto it = m_keys.find(sig.key_name);
    if (it != m_keys.end() && it->second.verify(fingerprint, sig)) {
      signers.insert(sig.key_name);
    }
  }
  return static_cast<unsigned>(signers.size());
}

std::string
TrustPolicy::explain(std::string_view fingerprint, const std::set<std::string>& sigs) const
{
  std::string signed_by;
  for (const auto& text : sigs) {
    auto colon = text.find(':');
    std::string name = text.substr(0, colon);
    auto it = m_keys.find(name);
    std::string state = it == m_keys.end() ? "untrusted key"
                        : [&] {
                            try {
                              return it->second.verify(fingerprint, Signature::parse(text))
                                       ? std::string("valid")
                                       : std::string("INVALID signature");
                            } catch (const FormatError&) {
                              return std::string("malformed");
                            }
                          }();
    signed_by += (signed_by.empty() ? "" : ", ") + name + " (" + state + ")";
  }
  std::string trusted;
  for (const auto& [name, key] : m_keys) {
    trusted += (trusted.empty() ? "" : ", ") + name;
  }
  return "has " + std::to_string(count_valid(fingerprint, sigs)) + " valid signature(s) by trusted keys, needs " +
         std::to_string(m_required) + "; signatures: " + (signed_by.empty() ? "none" : signed_by) +
         "; trusted keys: " + (trusted.empty() ? "none" : trusted);
}

} // namespace kiln
