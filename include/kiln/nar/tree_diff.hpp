// How two file-system objects differ, as their NARs see them: what is in
// one and not the other, entry types, the executable bit, file contents
// (from the first differing byte) and symlink targets. For reports on a
// build that is not reproducible (kiln build --check, kiln cache check).
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace kiln {

// --- Interface ---

struct TreeDifference
{
  // The entry, relative to the tops ("bin/app"; "" for the tops themselves).
  std::string path;
  // One line: "contents differ from byte 4096 (both 10240 bytes)",
  // "only in the first", "a file in the first, a folder in the second", ...
  std::string what;
};

// The differences between the objects at `first` and `second` (symlinks at
// the top not followed), in NAR order: by path, byte for byte. At most
// `max` of them (0: all); inside a folder that is only in one tree, the
// folder alone is named.
std::vector<TreeDifference> diff_trees(const std::filesystem::path& first,
                                       const std::filesystem::path& second, size_t max = 0);

} // namespace kiln
