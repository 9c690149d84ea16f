// One libFuzzer binary per target: KILN_FUZZ_TARGET names it.
#include "targets.hpp"

#include <cstdlib>

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
  static const auto* target = [] {
    for (const auto& t : kiln::fuzz::targets()) {
      if (t.name == KILN_FUZZ_TARGET) {
        return &t;
      }
    }
    std::abort();
  }();
  target->run(data, size);
  return 0;
}
