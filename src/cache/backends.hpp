// Backend factories, private to the cache module.
#pragma once

#include <kiln/cache/binary_cache.hpp>

namespace kiln::detail {

std::unique_ptr<BinaryCache> open_file_cache(const std::string& url,
                                             const std::filesystem::path& root);
std::unique_ptr<BinaryCache> open_http_cache(const std::string& url, const CacheOptions& options);

} // namespace kiln::detail
