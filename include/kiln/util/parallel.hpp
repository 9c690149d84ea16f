// Running independent work on a few threads.
#pragma once

#include <cstddef>
#include <functional>

namespace kiln {

// Run `work(i)` for i in [0, count) on up to `threads` threads (the caller's
// among them); rethrows the first exception after all have finished.
void parallel_for(size_t count, unsigned threads, const std::function<void(size_t)>& work);

} // namespace kiln
