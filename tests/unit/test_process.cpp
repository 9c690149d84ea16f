// util/process: the one way kiln runs a helper program and reads its output.
#include "support/test_support.hpp"

#include <kiln/util/process.hpp>

#include <catch2/catch.hpp>

#include <sstream>

using namespace kiln;

TEST_CASE("run_process captures output and status, streams stderr lines, applies cwd and env",
          "[util][process]")
{
  test::TempDir dir;
  auto r = run_process({"sh", "-c", "echo out; echo err >&2; exit 3"});
  CHECK(r.status == 3);
  CHECK_FALSE(r.ok());
  CHECK(r.out == "out\n");
  CHECK(r.err == "err\n");
  CHECK(r.describe() == "exit 3");
  CHECK_THAT(describe_failure({"sh", "-c", "x"}, r), Catch::Contains("`sh -c x` failed (exit 3):\nerr"));

  ProcessOptions options;
  options.cwd = dir.path();
  options.env["KILN_PROCESS_TEST"] = "set";
  options.unset_env = {"HOME", "KILN_PROCESS_GONE*"};
  ::setenv("KILN_PROCESS_GONE_X", "1", 1);
  std::vector<std::string> lines;
  options.on_stderr_line = [&](const std::string& line) { lines.push_back(line); };
  r = run_process({"sh", "-c",
                   "pwd; echo $KILN_PROCESS_TEST; echo ${HOME-none} ${KILN_PROCESS_GONE_X-none}; "
                   "printf 'a\\nb\\nc' >&2"},
                  options);
  ::unsetenv("KILN_PROCESS_GONE_X");
  CHECK(r.ok());
  CHECK(r.out == dir.path().string() + "\nset\nnone none\n");
  CHECK(lines == std::vector<std::string>{"a", "b", "c"});
  CHECK(r.err.empty());

  ProcessOptions merged;
  merged.merge_stderr = true;
  merged.stdout_file.reset();
  r = run_process({"sh", "-c", "echo one; echo two >&2"}, merged);
  CHECK(r.out == "one\ntwo\n");

  ProcessOptions to_file;
  to_file.stdout_file = dir / "stdout";
  r = run_process({"sh", "-c", "echo into-file"}, to_file);
  CHECK(r.ok());
  CHECK(r.out.empty());
  CHECK(test::run({"cat", (dir / "stdout").string()}).out == "into-file\n");

  r = run_process({"sh", "-c", "kill -9 $$"});
  CHECK(r.signaled);
  CHECK(r.describe() == "killed by signal 9");

  r = run_process({"kiln-no-such-program"});
  CHECK(r.status == 127);
  CHECK_THAT(r.err, Catch::Contains("not found on PATH"));
  CHECK(find_program("sh").has_value());
  CHECK_FALSE(find_program("kiln-no-such-program").has_value());
}

// catch_discover_tests makes one ctest test of each name, and CMake cuts a
// name at ';': the pieces match no test case, so they "pass" without
// running anything. No name may hold one.
TEST_CASE("every test case name is one ctest test (no semicolon in a name)", "[suite]")
{
  // (Catch2 2.x exits with the number of names it listed.)
  auto r = run_process({"/proc/self/exe", "--list-test-names-only"});
  REQUIRE_FALSE(r.out.empty());
  size_t names = 0;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) {
      continue;
    }
    ++names;
    CHECK(line.find(';') == std::string::npos);
  }
  CHECK(names > 100);
}
