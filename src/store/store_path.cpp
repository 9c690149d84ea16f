#include <kiln/store/store_path.hpp>
#include <kiln/util/error.hpp>

namespace kiln {

namespace {

bool
is_name_char(char c)
{
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         c == '+' || c == '-' || c == '.' || c == '_' || c == '?' || c == '=';
}

} // namespace

void
check_store_path_name(std::string_view name)
{
  if (name.empty()) {
    throw FormatError("store path name is empty");
  }
  if (name.size() > StorePath::k_max_name_len) {
    throw FormatError("store path name '" + std::string(name.substr(0, 40)) + "…' is " +
                      std::to_string(name.size()) + " characters long; the limit is " +
                      std::to_string(StorePath::k_max_name_len));
  }
  if (name == "." || name == ".." || name.starts_with(".-") || name.starts_with("..-")) {
    throw FormatError("store path name '" + std::string(name) + "' is not allowed");
  }
  for (char c : name) {
    if (!is_name_char(c)) {
      std::string shown = (c >= 0x20 && c < 0x7f) ? std::string(1, c) : "\\x" + [&] {
        char buf[3];
        std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned char>(c));
        return std::string(buf);
      }();
      throw FormatError("store path name '" + std::string(name) + "' contains '" + shown +
                        "'; allowed are letters, digits and + - . _ ? =");
    }
  }
}

StorePath::StorePath(std::string_view base_name) : m_base(base_name)
{
  if (base_name.size() < k_hash_len + 2 || base_name[k_hash_len] != '-') {
    throw FormatError("'" + std::string(base_name) +
                      "' is not a store path base name (<32-char hash>-<name>)");
  }
  for (char c : base_name.substr(0, k_hash_len)) {
    if (!is_nix32_char(c)) {
      throw FormatError("store path '" + std::string(base_name) +
                        "' has an invalid hash character '" + std::string(1, c) + "'");
    }
  }
  check_store_path_name(base_name.substr(k_hash_len + 1));
}

std::string
ContentAddress::to_string() const
{
  std::string h = hash.to_string(HashFormat::nix32, true);
  switch (method) {
  case Method::text:
    return "text:" + h;
  case Method::flat:
    return "fixed:" + h;
  case Method::recursive:
    return "fixed:r:" + h;
  }
  return {};
}

ContentAddress
ContentAddress::parse(std::string_view text)
{
  if (text.starts_with("text:")) {
    return {Method::text, Hash::parse_prefixed(text.substr(5))};
  }
  if (text.starts_with("fixed:r:")) {
    return {Method::recursive, Hash::parse_prefixed(text.substr(8))};
  }
  if (text.starts_with("fixed:")) {
    return {Method::flat, Hash::parse_prefixed(text.substr(6))};
  }
  throw FormatError("invalid content address '" + std::string(text) +
                    "' (expected text:…, fixed:… or fixed:r:…)");
}

StoreDir::StoreDir(std::string dir) : m_dir(std::move(dir))
{
  if (m_dir.empty() || m_dir[0] != '/') {
    throw UsageError("store directory '" + m_dir + "' must be an absolute path");
  }
  if (m_dir.size() > 1 && m_dir.back() == '/') {
    throw UsageError("store directory '" + m_dir + "' must not end in '/'");
  }
}

std::string
StoreDir::print(const StorePath& path) const
{
  return m_dir + "/" + path.base();
}

StorePath
StoreDir::parse(std::string_view full_path) const
{
  if (!full_path.starts_with(m_dir) || full_path.size() <= m_dir.size() + 1 ||
      full_path[m_dir.size()] != '/') {
    throw FormatError("'" + std::string(full_path) + "' is not in the store directory '" +
                      m_dir + "'");
  }
  auto base = full_path.substr(m_dir.size() + 1);
  if (base.find('/') != std::string_view::npos) {
    throw FormatError("'" + std::string(full_path) + "' is inside a store path, not one");
  }
  return StorePath(base);
}

std::optional<StorePath>
StoreDir::try_parse_prefix(std::string_view text) const
{
  std::string_view rest = text;
  if (text.starts_with(m_dir + "/")) {
    rest = text.substr(m_dir.size() + 1);
  } else if (!text.empty() && text[0] == '/') {
    return std::nullopt;
  }
  auto slash = rest.find('/');
  if (slash != std::string_view::npos) {
    rest = rest.substr(0, slash);
  }
  try {
    return StorePath(rest);
  } catch (const FormatError&) {
    return std::nullopt;
  }
}

StorePath
StoreDir::make_store_path(std::string_view type, const Hash& inner, std::string_view name) const
{
  check_store_path_name(name);
  std::string fingerprint = std::string(type) + ":" + inner.to_string(HashFormat::base16, true) +
                            ":" + m_dir + ":" + std::string(name);
  Hash h = hash_string(HashAlgo::sha256, fingerprint);
  auto folded = compress_hash(h.bytes(), 20);
  return StorePath(nix32_encode(folded) + "-" + std::string(name));
}

StorePath
StoreDir::make_text_path(std::string_view name, const Hash& content_hash,
                         const std::set<StorePath>& references) const
{
  if (content_hash.algo() != HashAlgo::sha256) {
    throw Error("text store objects must be hashed with sha256");
  }
  std::string type = "text";
  for (const auto& ref : references) {
    type += ":" + print(ref);
  }
  return make_store_path(type, content_hash, name);
}

StorePath
StoreDir::make_fixed_output_path(std::string_view name, const ContentAddress& ca,
                                 const std::set<StorePath>& references, bool self_reference) const
{
  if (ca.method == ContentAddress::Method::text) {
    return make_text_path(name, ca.hash, references);
  }
  if (ca.method == ContentAddress::Method::recursive && ca.hash.algo() == HashAlgo::sha256) {
    std::string type = "source";
    for (const auto& ref : references) {
      type += ":" + print(ref);
    }
    if (self_reference) {
      type += ":self";
    }
    return make_store_path(type, ca.hash, name);
  }
  if (!references.empty() || self_reference) {
    throw Error("fixed-output objects other than recursive sha256 cannot have references");
  }
  std::string inner = std::string("fixed:out:") +
                      (ca.method == ContentAddress::Method::recursive ? "r:" : "") +
                      ca.hash.to_string(HashFormat::base16, true) + ":";
  return make_store_path("output:out", hash_string(HashAlgo::sha256, inner), name);
}

} // namespace kiln
