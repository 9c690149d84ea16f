#include <kiln/cargo/cache_dir.hpp>

#include <kiln/util/io.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

namespace kiln::cargo {

namespace fs = std::filesystem;

namespace {

constexpr time_t k_day = 24 * 60 * 60;

// The names of what the cache folder holds, a file an answer (see
// keyed_file_name): anything else there (the user's, a folder such as
// install/) is left alone.
bool
is_answer_file(const std::string& name)
{
  for (const char* prefix : {"query-", "cfg-", "toolchain-", "source-digest-"}) {
    if (name.rfind(prefix, 0) == 0) {
      return true;
    }
  }
  return false;
}

} // namespace

std::string
read_cache_file(const fs::path& path)
{
  std::string text = read_file(path, /*keep_atime=*/true); // marked below, once a day
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 &&
      std::max(st.st_atime, st.st_mtime) < ::time(nullptr) - k_day) {
    // Both times: a CI cache that archives the folder keeps the modification
    // time only, and the trim must not take an answer used daily for stale.
    timespec times[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
    ::utimensat(AT_FDCWD, path.c_str(), times, 0); // (only a cache: a failure is no matter)
  }
  return text;
}

size_t
upkeep_cache_folder(const fs::path& cache_dir)
{
  std::error_code ec;
  fs::remove(cache_dir / "source-digests.json", ec);
  fs::remove(cache_dir / "toolchain-digests.json", ec);
  fs::remove(cache_dir / "toolchain.json", ec); // (now toolchain-<key>.json, a file per key)

  time_t now = ::time(nullptr);
  fs::path stamp = cache_dir / "last-trim";
  struct stat st;
  if (::stat(stamp.c_str(), &st) == 0 && st.st_mtime > now - k_day && st.st_mtime <= now) {
    return 0;
  }
  if (::stat(cache_dir.c_str(), &st) != 0) {
    return 0; // nothing learned yet
  }
  try {
    replace_file(stamp, ""); // first: two builds starting at once need not both trim
  } catch (const std::exception&) {
    return 0; // not ours to keep
  }
  size_t deleted = 0;
  time_t unused_since = now - std::chrono::seconds(k_cache_max_unused).count();
  for (fs::directory_iterator it(cache_dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    bool temporary = name.find(".tmp.") != std::string::npos; // write_file_atomic's, replace_file's
    if (!temporary && !is_answer_file(name)) {
      continue;
    }
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    time_t last_use = std::max(st.st_atime, st.st_mtime);
    if (last_use < (temporary ? now - k_day : unused_since)) {
      deleted += ::unlink(it->path().c_str()) == 0;
    }
  }
  return deleted;
}

} // namespace kiln::cargo
