#include <kiln/util/strings.hpp>

#include <catch2/catch.hpp>

using namespace kiln;

TEST_CASE("trim removes spaces, tabs, CR and LF at both ends only", "[strings]")
{
  CHECK(trim("  a b \t\r\n") == "a b");
  CHECK(trim("token\r\n") == "token");
  CHECK(trim("\r\n\t ") == "");
  CHECK(trim("") == "");
  CHECK(trim("x") == "x");
}

TEST_CASE("split_words splits on runs of any white space", "[strings]")
{
  using words = std::vector<std::string>;
  CHECK(split_words("a b") == words{"a", "b"});
  CHECK(split_words("  a\t\tb\r\nc  ") == words{"a", "b", "c"});
  CHECK(split_words("") == words{});
  CHECK(split_words(" \n ") == words{});
}
