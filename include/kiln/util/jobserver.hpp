// A GNU make jobserver (the fifo form, "--jobserver-auth=fifo:PATH"): one
// pool of job tokens shared by kiln's scheduler and the compilers it runs,
// so that `-j N` bounds the threads doing work, not just the processes.
//
// The fifo holds one byte per free token. kiln takes one for each build it
// starts; a rustc (or the cc crate, or make) reading CARGO_MAKEFLAGS takes
// more for extra codegen threads and gives them back. Cargo shares its
// jobserver with rustc the same way.
#pragma once

#include <filesystem>
#include <mutex>

namespace kiln {

class Jobserver
{
public:
  // A fifo at `path` (which must not exist) with `tokens` tokens in it;
  // anyone may take and return tokens (the builders run as other users).
  Jobserver(std::filesystem::path path, unsigned tokens);
  ~Jobserver();
  Jobserver(const Jobserver&) = delete;
  Jobserver& operator=(const Jobserver&) = delete;

  const std::filesystem::path& path() const { return m_path; }

  // Take a token for a job of kiln's own, waiting for one to be free. While
  // kiln holds none, no process it started can hold one either: tokens
  // missing then were lost by a process killed holding them, and are put
  // back.
  void acquire();
  // Give back a token acquire() took.
  void release();
  // Free tokens now.
  unsigned available() const;

  // The value of CARGO_MAKEFLAGS / MAKEFLAGS naming the fifo at `seen_as`
  // (its path as the job sees it).
  static std::string make_flags(const std::string& seen_as);

private:
  std::filesystem::path m_path;
  unsigned m_tokens;
  int m_fd = -1;          // read and write, non-blocking
  std::mutex m_mutex;     // taking a token and counting it are one step
  unsigned m_held = 0;    // tokens kiln's own jobs hold
};

} // namespace kiln
