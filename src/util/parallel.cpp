#include <kiln/util/parallel.hpp>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln {

void
parallel_for(size_t count, unsigned threads, const std::function<void(size_t)>& work)
{
  if (count == 0) {
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto worker = [&] {
    while (true) {
      size_t i = next++;
      if (i >= count) {
        return;
      }
      try {
        work(i);
      } catch (...) {
        std::lock_guard guard(error_mutex);
        if (!first_error) {
          first_error = std::current_exception();
        }
      }
    }
  };
  size_t n = std::max<size_t>(1, std::min<size_t>(threads, count));
  std::vector<std::thread> pool;
  for (size_t t = 1; t < n; ++t) {
    pool.emplace_back(worker);
  }
  worker();
  for (auto& t : pool) {
    t.join();
  }
  if (first_error) {
    std::rethrow_exception(first_error);
  }
}

} // namespace kiln
