// The short run of the fault-injection script (tests/fault-injection/run):
// kiln SIGKILLed at random moments of build, substitute, push, sign, gc and
// verify, then the store checked. The full run (200+ kills) is outside the
// suite; its figures are in docs/reliability.md.
#include "support/test_support.hpp"

#include <catch2/catch.hpp>

using namespace kiln;

TEST_CASE("fault injection, short run: random kills leave a clean store and nothing running",
          "[crash][concurrency][slow]")
{
  if (!test::have_program("sqlite3") || !test::have_program("busybox")) {
    test::skip("the fault-injection script needs sqlite3 and busybox");
    return;
  }
  test::RunOptions options;
  options.env = {{"KILLS", "12"}, {"SEED", "17"}};
  auto r = test::run({std::string(KILN_SOURCE_DIR) + "/tests/fault-injection/run",
                      test::kiln_binary()},
                     options);
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK_THAT(r.out, Catch::Contains("fault-injection: 12 kills") &&
                      Catch::Contains(", 0 orphans, 0 failures"));
}
