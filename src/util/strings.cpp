#include <kiln/util/strings.hpp>

namespace kiln {

namespace {

constexpr std::string_view k_white_space = " \t\r\n";

} // namespace

std::string_view
trim(std::string_view text)
{
  auto start = text.find_first_not_of(k_white_space);
  if (start == std::string_view::npos) {
    return {};
  }
  auto end = text.find_last_not_of(k_white_space);
  return text.substr(start, end - start + 1);
}

std::vector<std::string>
split_words(std::string_view text)
{
  std::vector<std::string> words;
  size_t pos = 0;
  while ((pos = text.find_first_not_of(k_white_space, pos)) != std::string_view::npos) {
    size_t end = text.find_first_of(k_white_space, pos);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    words.emplace_back(text.substr(pos, end - pos));
    pos = end;
  }
  return words;
}

} // namespace kiln
