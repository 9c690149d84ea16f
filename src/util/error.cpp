#include <kiln/util/error.hpp>

#include <cerrno>
#include <cstring>

namespace kiln {

FormatError::FormatError(const std::string& message) : Error(message)
{
}

FormatError::FormatError(const std::string& message, uint64_t offset)
  : Error(message + " (at byte offset " + std::to_string(offset) + ")"),
    m_offset(offset),
    m_has_offset(true)
{
}

SystemError::SystemError(const std::string& context, int error_number)
  : Error(context + ": " + std::strerror(error_number)),
    m_errno(error_number)
{
}

void
throw_errno(const std::string& context)
{
  throw SystemError(context, errno);
}

} // namespace kiln
