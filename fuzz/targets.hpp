// Fuzz targets for the parsers that read data from the network or from
// files others write: NAR, narinfo, nix-cache-info, .drv, kiln.yaml, the
// server's config, and the request paths the server classifies. Each
// takes any bytes; a kiln::Error is an expected refusal, anything else
// (a crash, another exception, a sanitizer report) is a finding.
// libFuzzer binaries (fuzz/CMakeLists.txt, with clang) and the test
// suite's smoke run (tests/unit/test_fuzz_smoke.cpp) call the same ones.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln::fuzz {

struct Target
{
  std::string name;   // also the folder of its seeds: fuzz/corpus/<name>/
  void (*run)(const uint8_t* data, size_t size);
};

const std::vector<Target>& targets();

} // namespace kiln::fuzz
