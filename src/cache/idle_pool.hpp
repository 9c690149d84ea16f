// Objects kept for reuse by any thread, private to the cache module: warm
// HTTP connections, zstd decompression contexts.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

namespace kiln::detail {

// At most `keep` idle objects; the one given back last is taken first
// (its memory the most likely still in the caches).
template <typename T>
class IdlePool
{
public:
  explicit IdlePool(size_t keep) : m_keep(keep)
  {
  }

  // An idle object, or null when none is kept: the caller makes one.
  std::unique_ptr<T>
  take()
  {
    std::lock_guard lock(m_mutex);
    if (m_idle.empty()) {
      return nullptr;
    }
    auto taken = std::move(m_idle.back());
    m_idle.pop_back();
    return taken;
  }

  // Keep `object` for the next taker, or free it when `keep` are kept.
  void
  give_back(std::unique_ptr<T> object)
  {
    std::lock_guard lock(m_mutex);
    if (m_idle.size() < m_keep) {
      m_idle.push_back(std::move(object));
    }
  }

private:
  size_t m_keep;
  std::mutex m_mutex;
  std::vector<std::unique_ptr<T>> m_idle;
};

} // namespace kiln::detail
