// file:// binary caches: a plain folder that any static web server can host.
#include "backends.hpp"

#include <kiln/util/error.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <random>

namespace kiln::detail {

namespace fs = std::filesystem;

namespace {

class FileBinaryCache : public BinaryCache
{
public:
  // Folders are made on the first write: reading a cache must never create one.
  FileBinaryCache(std::string url, fs::path root) : m_url(std::move(url)), m_root(std::move(root))
  {
  }

  const std::string&
  url() const override
  {
    return m_url;
  }

  bool
  file_exists(const std::string& key) override
  {
    check_cache_key(key);
    return ::access((m_root / key).c_str(), F_OK) == 0;
  }

  std::optional<std::string>
  get_file(const std::string& key) override
  {
    StringSink sink;
    if (!get_file(key, sink)) {
      return std::nullopt;
    }
    return std::move(sink.s);
  }

  bool
  get_file(const std::string& key, Sink& sink) override
  {
    check_cache_key(key);
    UniqueFd fd(::open((m_root / key).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      if (errno == ENOENT || errno == ENOTDIR) {
        return false;
      }
      throw CacheError("reading '" + (m_root / key).string() + "': " + std::strerror(errno));
    }
    std::vector<char> buf(256 * 1024);
    FdSource source(fd.get());
    while (size_t n = source.read(buf.data(), buf.size())) {
      sink.write(std::string_view(buf.data(), n));
    }
    return true;
  }

  void
  upsert_file(const std::string& key, std::string_view data, const std::string&) override
  {
    check_cache_key(key);
    fs::path target = m_root / key;
    make_parent(target);
    write_file_atomic(target, data);
  }

  void
  upsert_file_from(const std::string& key, const fs::path& file, const std::string&) override
  {
    check_cache_key(key);
    fs::path target = m_root / key;
    make_parent(target);
    std::random_device rd;
    fs::path tmp = target;
    tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
    std::error_code ec;
    fs::copy_file(file, tmp, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      throw CacheError("writing '" + tmp.string() + "': " + ec.message());
    }
    UniqueFd fd(::open(tmp.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd) {
      ::fsync(fd.get());
    }
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
      int saved = errno;
      ::unlink(tmp.c_str());
      throw CacheError("publishing '" + target.string() + "': " + std::strerror(saved));
    }
    fsync_directory(target.parent_path());
  }

private:
  void
  make_parent(const fs::path& target)
  {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    if (ec) {
      throw CacheError("cannot create binary cache folder '" + target.parent_path().string() +
                       "': " + ec.message());
    }
  }

  std::string m_url;
  fs::path m_root;
};

} // namespace

std::unique_ptr<BinaryCache>
open_file_cache(const std::string& url, const fs::path& root)
{
  return std::make_unique<FileBinaryCache>(url, root);
}

} // namespace kiln::detail
