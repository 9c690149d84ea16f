// Small string helpers that every module needs the same way.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// `text` without leading and trailing white space (space, tab, CR, LF).
std::string_view trim(std::string_view text);

// The words of `text`, separated by runs of white space (space, tab, CR,
// LF); no empty words.
std::vector<std::string> split_words(std::string_view text);

} // namespace kiln
