// Ed25519 keys and signatures in Nix's text form, and the trust policy.
//
//   secret key  <name>:base64(64 bytes: seed ‖ public key)
//   public key  <name>:base64(32 bytes)
//   signature   <name>:base64(64 bytes, detached, over the raw fingerprint)
//
// A secret key's text never appears in an error message.
#pragma once

#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

struct Signature
{
  std::string key_name;
  std::string sig; // 64 raw bytes

  static Signature parse(std::string_view text);
  std::string to_string() const;
};

class PublicKey
{
public:
  static PublicKey parse(std::string_view text);
  const std::string&
  name() const
  {
    return m_name;
  }
  std::string to_string() const;
  bool verify(std::string_view data, const Signature& sig) const;

private:
  std::string m_name;
  std::string m_key; // 32 raw bytes
};

class SecretKey
{
public:
  static SecretKey generate(std::string_view name);
  // Parse a secret key; errors say what is wrong without echoing the key.
  static SecretKey parse(std::string_view text);
  // Read a key file (errors name the file, never its contents).
  static SecretKey read_file(const std::string& path);

  const std::string&
  name() const
  {
    return m_name;
  }
  std::string to_string() const;
  PublicKey public_key() const;
  Signature sign(std::string_view data) const;

private:
  std::string m_name;
  std::string m_key; // 64 raw bytes
};

// Which keys are trusted and how many distinct ones must have signed.
class TrustPolicy
{
public:
  TrustPolicy() = default;
  TrustPolicy(const std::vector<std::string>& public_keys, unsigned required);

  // How many distinct trusted keys made a valid signature over `fingerprint`.
  unsigned count_valid(std::string_view fingerprint, const std::set<std::string>& sigs) const;
  bool
  accepts(std::string_view fingerprint, const std::set<std::string>& sigs) const
  {
    return count_valid(fingerprint, sigs) >= m_required;
  }
  unsigned
  required() const
  {
    return m_required;
  }
  bool
  empty() const
  {
    return m_keys.empty();
  }
  // Explain a rejection: which keys signed, which are trusted.
  std::string explain(std::string_view fingerprint, const std::set<std::string>& sigs) const;

private:
  std::map<std::string, PublicKey> m_keys;
  unsigned m_required = 1;
};

} // namespace kiln
