#include "backends.hpp"

#include <kiln/util/error.hpp>

namespace kiln {

void
check_cache_key(const std::string& key)
{
  if (key.empty() || key[0] == '/') {
    throw FormatError("cache key '" + key + "' must be a relative path");
  }
  size_t pos = 0;
  while (pos <= key.size()) {
    size_t end = key.find('/', pos);
    if (end == std::string::npos) {
      end = key.size();
    }
    std::string segment = key.substr(pos, end - pos);
    if (segment.empty() || segment == "." || segment == "..") {
      throw FormatError("cache key '" + key + "' has an empty, '.' or '..' component");
    }
    pos = end + 1;
  }
  for (char c : key) {
    if (static_cast<unsigned char>(c) < 0x20 || c == '\\' || c == 0x7f) {
      throw FormatError("cache key '" + key + "' contains a control character or backslash");
    }
  }
}

std::unique_ptr<BinaryCache>
open_binary_cache(const std::string& url, const CacheOptions& options)
{
  std::string trimmed = url;
  while (trimmed.size() > 1 && trimmed.back() == '/') {
    trimmed.pop_back();
  }
  // Query parameters (as in Nix's "?priority=10") are not used by kiln yet.
  auto query = trimmed.find('?');
  std::string base = query == std::string::npos ? trimmed : trimmed.substr(0, query);
  if (base.starts_with("file://")) {
    std::string path = base.substr(7);
    if (path.empty() || path[0] != '/') {
      throw UsageError("cache URL '" + url + "' needs an absolute path (file:///dir)");
    }
    return detail::open_file_cache(base, path);
  }
  if (base.starts_with("http://") || base.starts_with("https://")) {
    return detail::open_http_cache(base, options);
  }
  if (!base.empty() && base[0] == '/') {
    return detail::open_file_cache("file://" + base, base);
  }
  throw UsageError("unsupported cache URL '" + url +
                   "' (expected file:///dir, http://host[/prefix] or https://…)");
}

} // namespace kiln
