// libkiln-trace.so: loaded (LD_PRELOAD) into a build script and everything
// it starts, it records the absolute host paths they open, look at or run —
// one line each, appended to $KILN_TRACE_FILE — so that kiln knows which
// host files a build script's output depends on (pkg-config's .pc files, the
// headers a C compiler reads, a libclang bindgen loads). It also records the
// environment variables the build script itself looks up and does not find:
// cargo would have given it the caller's value, so kiln must know it is read
// (a build script need not declare what it reads with rerun-if-env-changed).
// The tools it runs are not traced for that: rustc, run to probe the
// compiler, looks up a score of logging and debugging variables (and `CI`)
// that would make every machine's outputs different. Loaded into a compile,
// it records the variables a proc-macro looks up while it expands
// (std::env::var, which rustc's dep-info does not list), and no files.
//
// It only observes: every call goes on to the C library unchanged. It uses
// no C++ runtime (it is loaded into C programs too) and nothing that could
// call back into itself: the trace is written with the raw syscall.
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace {

template <typename F>
F
next(const char* name)
{
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

// The C library's getenv: the shim's own look-ups are not the program's.
const char*
real_getenv(const char* name)
{
  static auto real = next<char* (*)(const char*)>("getenv");
  return real ? real(name) : nullptr;
}

// Does `path` start with one of the ':'-separated prefixes in variable `name`?
bool
under_any(const char* path, const char* name)
{
  const char* list = real_getenv(name);
  while (list && *list) {
    const char* end = strchr(list, ':');
    size_t len = end ? static_cast<size_t>(end - list) : strlen(list);
    if (len > 0 && strncmp(path, list, len) == 0) {
      return true;
    }
    list = end ? end + 1 : nullptr;
  }
  return false;
}

// Paths never worth recording: the process's own world and kiln's — except
// host paths kiln made visible there ($KILN_TRACE_KEEP).
bool
ignored(const char* path)
{
  if (under_any(path, "KILN_TRACE_KEEP")) {
    return false;
  }
  static const char* const prefixes[] = {"/proc/", "/dev/", "/sys/", "/tmp/", "/build/", "/.kiln/"};
  for (const char* p : prefixes) {
    if (strncmp(path, p, strlen(p)) == 0) {
      return true;
    }
  }
  // $KILN_TRACE_IGNORE: more prefixes (the store, the sysroot).
  return under_any(path, "KILN_TRACE_IGNORE");
}

// One line: "r PATH" for a path whose content was read (opened, run,
// loaded), "s PATH" for one only looked at (stat, access): its existence;
// "e NAME" for an environment variable looked up and not set.
void
append_line(char kind, const char* text)
{
  const char* file = real_getenv("KILN_TRACE_FILE");
  if (!file) {
    return;
  }
  char line[4200];
  size_t len = strlen(text);
  if (len >= sizeof line - 3) {
    return;
  }
  line[0] = kind;
  line[1] = ' ';
  memcpy(line + 2, text, len);
  line[len + 2] = '\n';
  long fd = syscall(SYS_open, file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) {
    syscall(SYS_write, fd, line, len + 3);
    syscall(SYS_close, fd);
  }
}

// $KILN_TRACE_FILES=0: only variables are traced (a compile's).
bool
files_untraced()
{
  static int answer = -1;
  if (answer < 0) {
    const char* files = real_getenv("KILN_TRACE_FILES");
    answer = files && strcmp(files, "0") == 0;
  }
  return answer == 1;
}

// `p`, which the compiler may no longer assume is not null. The C library
// declares the paths of stat, statx and the like nonnull, and GCC drops a
// check for null in an interposer of such a function, even with
// -fno-delete-null-pointer-checks; but programs pass null on purpose (Rust's
// standard library probes statx with statx(0, NULL, 0, STATX_ALL, NULL)).
const char*
maybe_null(const char* p)
{
  __asm__("" : "+r"(p));
  return p;
}

void
record_kind(char kind, const char* maybe_path)
{
  const char* path = maybe_null(maybe_path);
  if (path && path[0] == '/' && !files_untraced() && !ignored(path)) {
    append_line(kind, path);
  }
}

void
record(const char* path)
{
  record_kind('r', path);
}

// Is this process the build script itself: is its program the file
// $KILN_TRACE_ENV_OF names (a canonical path)? Asked once per process.
bool
is_traced_program()
{
  static int answer = -1;
  if (answer < 0) {
    const char* program = real_getenv("KILN_TRACE_ENV_OF");
    char self[4096];
    long len = program ? syscall(SYS_readlink, "/proc/self/exe", self, sizeof self - 1) : -1;
    answer = len > 0 && static_cast<size_t>(len) == strlen(program) &&
             memcmp(self, program, static_cast<size_t>(len)) == 0;
  }
  return answer == 1;
}

// Is the code at `caller` in a file under the prefix $KILN_TRACE_ENV_FROM
// names? In a compile, that is a proc-macro (loaded from the store; it
// carries its own copy of Rust's standard library), not rustc, whose own
// look-ups are not the crate's.
bool
is_traced_caller(const void* caller)
{
  const char* prefix = real_getenv("KILN_TRACE_ENV_FROM");
  Dl_info info;
  return prefix && *prefix && dladdr(caller, &info) != 0 && info.dli_fname &&
         strncmp(info.dli_fname, prefix, strlen(prefix)) == 0;
}

// A variable looked up by code at `caller` and not found, if the trace is
// of that code (is_traced_program, is_traced_caller). A program asks for the
// same ones again and again (Rust's standard library at each thread it
// starts): each name is written once per process, as far as a small table
// of hashes tells. (Not thread-safe, and need not be: a race writes a line
// twice.)
void
record_missing_variable(const char* name, const void* caller)
{
  if (!name || !*name || strncmp(name, "KILN_TRACE_", 11) == 0 || strchr(name, '\n') ||
      !(is_traced_program() || is_traced_caller(caller))) {
    return;
  }
  constexpr unsigned k_size = 128;
  static unsigned long seen[k_size];
  static unsigned count = 0;
  unsigned long hash = 14695981039346656037ul;
  for (const char* c = name; *c; ++c) {
    hash = (hash ^ static_cast<unsigned char>(*c)) * 1099511628211ul;
  }
  for (unsigned i = 0; i < count && i < k_size; ++i) {
    if (seen[i] == hash) {
      return;
    }
  }
  if (count < k_size) {
    seen[count++] = hash;
  }
  append_line('e', name);
}

void
probe(const char* path)
{
  record_kind('s', path);
}

} // namespace

// getenv and secure_getenv: a variable not found is recorded.
#define KILN_GETENV_LIKE(name)                                                                    \
  extern "C" char* name(const char* variable)                                                     \
  {                                                                                                \
    static auto real = next<char* (*)(const char*)>(#name);                                       \
    char* value = real(variable);                                                                  \
    if (!value) {                                                                                  \
      record_missing_variable(variable, __builtin_return_address(0));                              \
    }                                                                                              \
    return value;                                                                                  \
  }
KILN_GETENV_LIKE(getenv)
KILN_GETENV_LIKE(secure_getenv)

#define KILN_OPEN_LIKE(name)                                                                      \
  extern "C" int name(const char* path, int flags, ...)                                           \
  {                                                                                                \
    mode_t mode = 0;                                                                               \
    if (flags & (O_CREAT | O_TMPFILE)) {                                                           \
      va_list ap;                                                                                  \
      va_start(ap, flags);                                                                         \
      mode = va_arg(ap, mode_t);                                                                   \
      va_end(ap);                                                                                  \
    }                                                                                              \
    record(path);                                                                                  \
    static auto real = next<int (*)(const char*, int, ...)>(#name);                               \
    return real(path, flags, mode);                                                                \
  }
KILN_OPEN_LIKE(open)
KILN_OPEN_LIKE(open64)

#define KILN_OPENAT_LIKE(name)                                                                    \
  extern "C" int name(int dirfd, const char* path, int flags, ...)                                \
  {                                                                                                \
    mode_t mode = 0;                                                                               \
    if (flags & (O_CREAT | O_TMPFILE)) {                                                           \
      va_list ap;                                                                                  \
      va_start(ap, flags);                                                                         \
      mode = va_arg(ap, mode_t);                                                                   \
      va_end(ap);                                                                                  \
    }                                                                                              \
    record(path);                                                                                  \
    static auto real = next<int (*)(int, const char*, int, ...)>(#name);                          \
    return real(dirfd, path, flags, mode);                                                         \
  }
KILN_OPENAT_LIKE(openat)
KILN_OPENAT_LIKE(openat64)

#define KILN_PATH_CALL(ret, name, params, args)                                                   \
  extern "C" ret name params                                                                       \
  {                                                                                                \
    record(path);                                                                                  \
    static auto real = next<ret(*) params>(#name);                                                 \
    return real args;                                                                              \
  }
#define KILN_PROBE_CALL(ret, name, params, args)                                                  \
  extern "C" ret name params                                                                       \
  {                                                                                                \
    probe(path);                                                                                   \
    static auto real = next<ret(*) params>(#name);                                                 \
    return real args;                                                                              \
  }
KILN_PATH_CALL(FILE*, fopen, (const char* path, const char* mode), (path, mode))
KILN_PATH_CALL(FILE*, fopen64, (const char* path, const char* mode), (path, mode))
KILN_PATH_CALL(int, __open_2, (const char* path, int flags), (path, flags))
KILN_PATH_CALL(int, __open64_2, (const char* path, int flags), (path, flags))
KILN_PROBE_CALL(int, stat, (const char* path, struct stat* st), (path, st))
KILN_PROBE_CALL(int, lstat, (const char* path, struct stat* st), (path, st))
KILN_PROBE_CALL(int, stat64, (const char* path, struct stat64* st), (path, st))
KILN_PROBE_CALL(int, lstat64, (const char* path, struct stat64* st), (path, st))
KILN_PROBE_CALL(int, access, (const char* path, int mode), (path, mode))
KILN_PATH_CALL(int, execve, (const char* path, char* const argv[], char* const envp[]),
               (path, argv, envp))
KILN_PATH_CALL(int, execv, (const char* path, char* const argv[]), (path, argv))

extern "C" int
__openat_2(int dirfd, const char* path, int flags)
{
  record(path);
  static auto real = next<int (*)(int, const char*, int)>("__openat_2");
  return real(dirfd, path, flags);
}

extern "C" int
fstatat(int dirfd, const char* path, struct stat* st, int flags)
{
  probe(path);
  static auto real = next<int (*)(int, const char*, struct stat*, int)>("fstatat");
  return real(dirfd, path, st, flags);
}

extern "C" int
fstatat64(int dirfd, const char* path, struct stat64* st, int flags)
{
  probe(path);
  static auto real = next<int (*)(int, const char*, struct stat64*, int)>("fstatat64");
  return real(dirfd, path, st, flags);
}

extern "C" int
statx(int dirfd, const char* path, int flags, unsigned mask, struct statx* st)
{
  probe(path);
  static auto real = next<int (*)(int, const char*, int, unsigned, struct statx*)>("statx");
  return real(dirfd, path, flags, mask, st);
}

extern "C" void*
dlopen(const char* path, int flags)
{
  record(path);
  static auto real = next<void* (*)(const char*, int)>("dlopen");
  return real(path, flags);
}

extern "C" int
faccessat(int dirfd, const char* path, int mode, int flags)
{
  probe(path);
  static auto real = next<int (*)(int, const char*, int, int)>("faccessat");
  return real(dirfd, path, mode, flags);
}
