#include <kiln/util/error.hpp>
#include <kiln/util/jobserver.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace kiln {

namespace {

void
put_token(int fd, const std::filesystem::path& path)
{
  // GNU make's token; clients give back whatever byte they took.
  while (::write(fd, "+", 1) != 1) {
    if (errno != EINTR) {
      throw_errno("giving a token back to the jobserver '" + path.string() + "'");
    }
  }
}

} // namespace

Jobserver::Jobserver(std::filesystem::path path, unsigned tokens)
  : m_path(std::move(path)), m_tokens(tokens)
{
  if (::mkfifo(m_path.c_str(), 0666) != 0) {
    throw_errno("creating the jobserver fifo '" + m_path.string() + "'");
  }
  auto fail = [&](const std::string& doing) {
    int error = errno;
    ::unlink(m_path.c_str());
    errno = error;
    throw_errno(doing + " the jobserver fifo '" + m_path.string() + "'");
  };
  // mkfifo's mode is cut by the umask; builders run as another user.
  if (::chmod(m_path.c_str(), 0666) != 0) {
    fail("giving builders access to");
  }
  // Read and write: opening never blocks, and reads wait for a token
  // instead of seeing end-of-file when no job has the fifo open.
  m_fd = ::open(m_path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (m_fd < 0) {
    fail("opening");
  }
  for (unsigned i = 0; i < m_tokens; ++i) {
    put_token(m_fd, m_path);
  }
}

Jobserver::~Jobserver()
{
  ::close(m_fd);
  ::unlink(m_path.c_str());
}

void
Jobserver::acquire()
{
  while (true) {
    {
      std::lock_guard guard(m_mutex);
      if (m_held == 0) {
        // No job of ours runs, so no process it started can hold a token:
        // any missing was lost by a process killed holding it.
        for (unsigned n = available(); n < m_tokens; ++n) {
          put_token(m_fd, m_path);
        }
      }
      char token;
      ssize_t n = ::read(m_fd, &token, 1);
      if (n == 1) {
        ++m_held;
        return;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        throw_errno("taking a token from the jobserver '" + m_path.string() + "'");
      }
    }
    struct pollfd wait = {m_fd, POLLIN, 0};
    ::poll(&wait, 1, 200);
  }
}

void
Jobserver::release()
{
  std::lock_guard guard(m_mutex);
  put_token(m_fd, m_path);
  if (m_held > 0) {
    --m_held;
  }
}

unsigned
Jobserver::available() const
{
  int n = 0;
  if (::ioctl(m_fd, FIONREAD, &n) != 0) {
    throw_errno("counting the jobserver's tokens");
  }
  return static_cast<unsigned>(n);
}

std::string
Jobserver::make_flags(const std::string& seen_as)
{
  return "-j --jobserver-auth=fifo:" + seen_as;
}

} // namespace kiln
