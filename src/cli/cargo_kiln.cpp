// cargo-kiln: makes `cargo kiln build ...` work. Cargo runs an external
// subcommand as `cargo-kiln kiln build ...`; this runs the `kiln` installed
// beside it (else the one on PATH) with the arguments after "kiln".
// Standalone (no libkiln), so that it stays tiny.
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace {

// The folder this program was started from, "" if unknown.
std::string
own_folder()
{
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) {
    return {};
  }
  std::string self(buf, static_cast<size_t>(n));
  auto slash = self.rfind('/');
  return slash == std::string::npos ? std::string() : self.substr(0, slash);
}

} // namespace

int
main(int argc, char** argv)
{
  std::vector<char*> args;
  args.push_back(const_cast<char*>("kiln"));
  int first = 1;
  // Cargo passes the subcommand's name first; run directly, there is none.
  if (argc > 1 && std::strcmp(argv[1], "kiln") == 0) {
    first = 2;
  }
  for (int i = first; i < argc; ++i) {
    args.push_back(argv[i]);
  }
  args.push_back(nullptr);

  std::string beside = own_folder();
  if (!beside.empty()) {
    std::string kiln = beside + "/kiln";
    if (::access(kiln.c_str(), X_OK) == 0) {
      ::execv(kiln.c_str(), args.data());
      std::cerr << "cargo-kiln: cannot run " << kiln << ": " << std::strerror(errno) << "\n";
      return 127;
    }
  }
  ::execvp("kiln", args.data());
  std::cerr << "cargo-kiln: cannot run kiln (not beside " << (beside.empty() ? "cargo-kiln" : beside)
            << ", nor on PATH): " << std::strerror(errno) << "\n";
  return 127;
}
