// Error types shared by every kiln module.
//
// kiln reports failures as exceptions carrying enough context to act on: the
// file, byte offset, field or setting at fault. The CLI turns `UsageError`
// into exit status 2 and every other `Error` into exit status 1.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kiln {

// A recoverable failure with a human-readable, one-line message.
class Error : public std::runtime_error
{
public:
  using std::runtime_error::runtime_error;
};

// The user asked for something malformed (bad flag, bad argument, bad setting).
class UsageError : public Error
{
public:
  using Error::Error;
};

// Malformed input data (an archive, a hash, a store path, a config file).
// `offset` is the byte offset in the input where the problem was found, when
// the input is a byte stream.
class FormatError : public Error
{
public:
  explicit FormatError(const std::string& message);
  FormatError(const std::string& message, uint64_t offset);

  bool
  has_offset() const
  {
    return m_has_offset;
  }
  uint64_t
  offset() const
  {
    return m_offset;
  }

private:
  uint64_t m_offset = 0;
  bool m_has_offset = false;
};

// A failed system call; the message ends with strerror(errno).
class SystemError : public Error
{
public:
  SystemError(const std::string& context, int error_number);

  int
  error_number() const
  {
    return m_errno;
  }

private:
  int m_errno;
};

// Throw a SystemError for the current `errno`, prefixed with `context`.
[[noreturn]] void throw_errno(const std::string& context);

} // namespace kiln
