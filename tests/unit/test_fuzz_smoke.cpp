// A short smoke run of every fuzz target (fuzz/targets.cpp) in the g++
// suite: its seeds, then deterministic mutations of them (flipped, cut,
// repeated and inserted bytes). A crash or an exception other than
// kiln::Error fails the test; fuzz/run does the long runs under libFuzzer.
#include "../fuzz/targets.hpp"

#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <filesystem>

namespace {

// xorshift64*: the same mutations on every run.
struct Rng
{
  uint64_t state;
  uint64_t
  next()
  {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 2685821657736338717ull;
  }
  size_t
  below(size_t n)
  {
    return n == 0 ? 0 : static_cast<size_t>(next() % n);
  }
};

std::string
mutate(std::string data, Rng& rng)
{
  for (int edits = 1 + static_cast<int>(rng.below(4)); edits > 0; --edits) {
    size_t at = rng.below(data.size() + 1);
    switch (rng.below(5)) {
    case 0:
      if (at < data.size()) {
        data[at] = static_cast<char>(data[at] ^ (1 << rng.below(8)));
      }
      break;
    case 1:
      data.resize(at);
      break;
    case 2:
      data.insert(at, std::string(1 + rng.below(16), static_cast<char>(rng.below(256))));
      break;
    case 3:
      data.insert(at, data.substr(rng.below(data.size() + 1), rng.below(64)));
      break;
    default:
      if (at + 8 <= data.size()) {
        // A length field gone wild.
        data.replace(at, 8, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8));
      }
    }
  }
  return data;
}

} // namespace

TEST_CASE("every fuzz target survives its seeds and 2000 mutations of them", "[fuzz]")
{
  namespace fs = std::filesystem;
  for (const auto& target : kiln::fuzz::targets()) {
    INFO("target " << target.name);
    std::vector<std::string> seeds;
    for (const auto& entry : fs::directory_iterator(fs::path(KILN_SOURCE_DIR) / "fuzz" / "corpus" /
                                                    target.name)) {
      seeds.push_back(kiln::read_file(entry.path()));
    }
    REQUIRE_FALSE(seeds.empty());
    Rng rng{0x9e3779b97f4a7c15ull};
    size_t runs = 0;
    for (const auto& seed : seeds) {
      target.run(reinterpret_cast<const uint8_t*>(seed.data()), seed.size());
      ++runs;
    }
    for (int i = 0; i < 2000; ++i) {
      std::string input = mutate(seeds[rng.below(seeds.size())], rng);
      INFO("input " << i << " of " << input.size() << " bytes");
      target.run(reinterpret_cast<const uint8_t*>(input.data()), input.size());
      ++runs;
    }
    CHECK(runs == seeds.size() + 2000);
  }
}
