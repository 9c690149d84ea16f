// The test runner: Catch2's, except that a run in which a test skipped work
// it could not do here (test::skip) and nothing failed exits 77, which ctest
// counts and reports as skipped instead of passed.
#define CATCH_CONFIG_RUNNER
#include "support/test_support.hpp"

#include <catch2/catch.hpp>

#include <iostream>

int
main(int argc, char** argv)
{
  int failed = Catch::Session().run(argc, argv);
  if (failed == 0 && !kiln::test::skips().empty()) {
    for (const auto& reason : kiln::test::skips()) {
      std::cout << "SKIPPED: " << reason << "\n";
    }
    return 77;
  }
  return failed;
}
