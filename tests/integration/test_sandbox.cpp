// The sandbox: real builds with /bin/sh and busybox, in namespaces (where
// this machine allows them) and in clean-env mode. Each containment promise
// is tested by a build that tries to break it.
#include "support/test_support.hpp"

#include <kiln/sandbox/sandbox.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <set>
#include <sstream>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// busybox-static needs no libraries; the rest come with theirs (via ldd).
const std::vector<fs::path> k_tools = {"/bin/sh",    "/bin/busybox", "/bin/cat",
                                       "/bin/mkdir", "/bin/ls",      "/usr/bin/env"};

struct Fixture
{
  TempDir dir;
  LocalStore store{LocalStoreConfig{dir / "store", "/kiln/store"}};
  StorePath input;

  Fixture() : input(make_input())
  {
  }

  StorePath
  make_input()
  {
    test::write_file(dir / "src" / "hello.txt", "hello from an input\n");
    AddOptions options;
    options.name = "greeting";
    return store.add_path(dir / "src", options);
  }

  std::string
  logical(const StorePath& path) const
  {
    return store.store_dir().print(path);
  }

  StorePath
  output_path(const std::string& name) const
  {
    return store.store_dir().make_store_path("output:out", hash_string(HashAlgo::sha256, name),
                                             name);
  }

  // A build running `script` with /bin/sh, the input visible as $in.
  BuildSpec
  sh(const std::string& name, const std::string& script) const
  {
    BuildSpec spec;
    spec.name = name;
    spec.builder = "/bin/sh";
    spec.args = {"-c", script};
    spec.env = {{"in", logical(input)}};
    spec.inputs = {input};
    spec.tools = k_tools;
    spec.outputs = {{"out", output_path(name)}};
    return spec;
  }
};

bool
have_namespaces()
{
  if (detect_sandbox_support() == SandboxMode::namespaces) {
    return true;
  }
  test::skip("user namespaces are unavailable here; the namespaces part of this test did not run");
  return false;
}

std::string
log_of(const BuildOutcome& outcome)
{
  return read_file(outcome.log_file);
}

// Host processes whose command line contains `needle` (NULs read as spaces).
std::vector<std::string>
host_processes_with(const std::string& needle)
{
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    std::string cmdline;
    try {
      cmdline = read_file(entry.path() / "cmdline");
    } catch (const Error&) {
      continue;
    }
    for (auto& ch : cmdline) {
      if (ch == '\0') {
        ch = ' ';
      }
    }
    if (cmdline.find(needle) != std::string::npos) {
      found.push_back(name + ": " + cmdline);
    }
  }
  return found;
}

std::map<std::string, std::string>
parse_env(const std::string& text)
{
  std::map<std::string, std::string> env;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) {
      env[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }
  return env;
}

double
seconds_since(std::chrono::steady_clock::time_point start)
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

} // namespace

TEST_CASE("a sandboxed build writes its output from an input", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  auto spec = f.sh("copy", "mkdir $out && cat $in/hello.txt > $out/copy && echo copied");
  BuildOutcome outcome = run_build(f.store, spec);
  INFO(outcome.error << "\n" << outcome.log_tail);
  REQUIRE(outcome.success);
  CHECK(outcome.mode == SandboxMode::namespaces);
  CHECK(to_string(outcome.mode) == "namespaces");
  REQUIRE(outcome.output_dirs.count("out"));
  CHECK(read_file(outcome.output_dirs.at("out") / "copy") == "hello from an input\n");
  CHECK(log_of(outcome).find("copied") != std::string::npos);
  CHECK(outcome.log_tail == "copied");
  // Nothing is registered: that is the caller's job.
  CHECK_FALSE(f.store.is_valid(spec.outputs.at("out")));

  // The outcome keeps its work folder (and the outputs in it) alive.
  fs::path work = outcome.work_dir;
  CHECK(fs::exists(work));
  outcome = BuildOutcome{};
  CHECK_FALSE(fs::exists(work));
}

TEST_CASE("a sandboxed build sees only its declared environment and the allowlist",
          "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  ::setenv("KILN_TEST_LEAKED_VARIABLE", "secret", 1);
  // kiln's own environment and command line must not show through the
  // sandbox's PID 1 (a copy of kiln) either. The patterns are spelt so that
  // the script's own command line does not match them.
  auto spec = f.sh("env", "env > $out; a=KILN_TEST_; b=kiln_; "
                          "for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do "
                          "if busybox grep -q -e \"${a}LEAKED\" -e \"${b}tests\" $f 2>/dev/null; "
                          "then echo \"LEAK in $f\"; fi; done; "
                          "echo \"PID 1 is $(cat /proc/1/cmdline)\"");
  spec.env["GREETING"] = "hello world";
  BuildOutcome outcome = run_build(f.store, spec);
  ::unsetenv("KILN_TEST_LEAKED_VARIABLE");
  INFO(outcome.error << "\n" << outcome.log_tail);
  REQUIRE(outcome.success);
  auto env = parse_env(read_file(outcome.output_dirs.at("out")));
  std::set<std::string> names;
  for (const auto& [key, value] : env) {
    names.insert(key);
  }
  CHECK(names == std::set<std::string>{"GREETING", "HOME", "LANG", "NIX_BUILD_CORES",
                                       "NIX_BUILD_TOP", "NIX_STORE", "PATH", "PWD",
                                       "SOURCE_DATE_EPOCH", "TEMP", "TEMPDIR", "TMP", "TMPDIR",
                                       "TZ", "in", "out", "outputs"});
  CHECK(env["HOME"] == "/homeless");
  CHECK(env["TZ"] == "UTC");
  CHECK(env["LANG"] == "C.UTF-8");
  CHECK(env["SOURCE_DATE_EPOCH"] == "315532800");
  CHECK(env["NIX_BUILD_TOP"] == "/build");
  CHECK(env["TMPDIR"] == "/build");
  CHECK(env["NIX_STORE"] == "/kiln/store");
  CHECK(env["PATH"] == "/bin:/usr/bin");
  CHECK(env["GREETING"] == "hello world");
  CHECK(env["out"] == f.logical(spec.outputs.at("out")));
  CHECK(env["outputs"] == "out");
  std::string log = log_of(outcome);
  CHECK(log.find("LEAK") == std::string::npos);
  CHECK(log.find("PID 1 is kiln-sandbox") != std::string::npos);
}

TEST_CASE("a sandboxed build starts in an empty /build, as uid 1000, on host 'localhost'",
          "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  auto spec = f.sh("where", "{ pwd; busybox ls -A /build | busybox wc -l; busybox id -u; "
                            "busybox id -g; busybox hostname; echo $$; } > $out; "
                            "echo 'scratch' > /build/scratch-file");
  BuildOutcome outcome = run_build(f.store, spec);
  INFO(outcome.error << "\n" << outcome.log_tail);
  REQUIRE(outcome.success);
  CHECK(read_file(outcome.output_dirs.at("out")) == "/build\n0\n1000\n100\nlocalhost\n2\n");
  // The build folder does not outlive the build.
  CHECK_FALSE(fs::exists(outcome.work_dir / "build"));
}

TEST_CASE("a sandboxed build sees its tools with what they need to run", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  // A script whose interpreter is not declared, and a folder of tools.
  test::write_file(f.dir / "scripts" / "hello", "#!/bin/busybox sh\necho hello from a script\n",
                   true);
  test::write_file(f.dir / "kit" / "bin" / "greet", "#!/bin/sh\necho greetings from a kit\n",
                   true);
  test::write_file(f.dir / "kit" / "share" / "data.txt", "kit data\n");
  auto spec = f.sh("tools", "{ hello; greet; cat " + (f.dir / "kit" / "share" / "data.txt").string() +
                              "; echo $PATH; busybox ls /usr/bin; } > $out");
  spec.tools = {"/bin/sh", "/bin/cat", f.dir / "scripts" / "hello", f.dir / "kit"};
  BuildOutcome outcome = run_build(f.store, spec);
  INFO(outcome.error << "\n" << log_of(outcome));
  REQUIRE(outcome.success);
  CHECK(read_file(outcome.output_dirs.at("out")) ==
        "hello from a script\ngreetings from a kit\nkit data\n/bin:" +
          (f.dir / "scripts").string() + ":" + (f.dir / "kit" / "bin").string() +
          "\nbusybox\ncat\ndash\nsh\n");
}

TEST_CASE("a sandboxed build gets jemalloc's options as /etc/malloc.conf, with the THP mode",
          "[sandbox]")
{
  if (!have_namespaces()) {
    return;
  }
  Fixture f;
  const std::string thp = "/sys/kernel/mm/transparent_hugepage/enabled";
  std::string script = "{ busybox readlink /etc/malloc.conf || echo no-conf; "
                       "cat " + thp + " 2>/dev/null || echo no-thp-mode; } > $out";
  auto with = f.sh("with-conf", script);
  with.jemalloc_conf = "thp:always,metadata_thp:always";
  BuildOutcome outcome = run_build(f.store, with);
  INFO(outcome.error << "\n" << log_of(outcome));
  REQUIRE(outcome.success);
  std::error_code ec;
  std::string host_mode = fs::exists(thp, ec) ? read_file(thp) : "no-thp-mode\n";
  CHECK(read_file(outcome.output_dirs.at("out")) ==
        "thp:always,metadata_thp:always\n" + host_mode);
  // Without options: neither is there.
  BuildOutcome plain = run_build(f.store, f.sh("without-conf", script));
  INFO(plain.error << "\n" << log_of(plain));
  REQUIRE(plain.success);
  CHECK(read_file(plain.output_dirs.at("out")) == "no-conf\nno-thp-mode\n");
}

TEST_CASE("rustc writes the same bytes with its allocator on huge pages as without",
          "[sandbox]")
{
  if (!have_namespaces()) {
    return;
  }
  auto sysroot = test::run({"rustc", "--print", "sysroot"});
  if (sysroot.status != 0) {
    test::skip("no rustc here: the allocator options cannot be tried on it");
    return;
  }
  Fixture f;
  fs::path rustc_root = test::output_of(sysroot, "rustc's sysroot");
  // Enough code for rustc's heap to matter: generic code, monomorphised.
  std::string code = "pub trait Step { fn step(&self, x: u64) -> u64; }\n";
  for (int i = 0; i < 300; ++i) {
    std::string n = std::to_string(i);
    code += "pub struct S" + n + "<T>(pub T);\nimpl<T: Copy + Into<u64>> Step for S" + n +
            "<T> { fn step(&self, x: u64) -> u64 { let v: Vec<u64> = (0..x % " + std::to_string(i + 1) +
            " + 1).map(|i| i ^ self.0.into()).collect(); v.iter().sum::<u64>() + " + n +
            " } }\npub fn use" + n + "(x: u64) -> u64 { S" + n + "(x as u32).step(x) }\n";
  }
  test::write_file(f.dir / "src" / "lib.rs", code);
  // rustc on lib.rs in the sandbox with `conf` as jemalloc's options.
  auto run_rustc = [&](const std::string& name, const std::string& conf, const std::string& flags) {
    BuildSpec spec = f.sh(name, "mkdir $out && " + (rustc_root / "bin" / "rustc").string() +
                                  " --crate-type lib --crate-name heavy " + flags +
                                  " --out-dir $out " + (f.dir / "src" / "lib.rs").string());
    spec.tools = {"/usr", "/bin", "/lib", "/lib64", rustc_root, f.dir / "src"};
    spec.jemalloc_conf = conf;
    BuildOutcome outcome = run_build(f.store, spec);
    INFO(outcome.error << "\n" << log_of(outcome));
    REQUIRE(outcome.success);
    return outcome;
  };
  auto compile = [&](const std::string& name, const std::string& conf) {
    return read_file(run_rustc(name, conf, "-C debuginfo=2").output_dirs.at("out") /
                     "libheavy.rlib");
  };
  std::string plain = compile("heavy-plain", "");
  std::string huge = compile("heavy-huge", "thp:always,metadata_thp:always");
  CHECK(plain.size() > 100000);
  CHECK(plain == huge);
  // rustc's jemalloc does read the link: asked to, it prints its options.
  BuildOutcome printed = run_rustc("heavy-told", "thp:always,stats_print:true", "--emit=metadata");
  CHECK_THAT(log_of(printed), Catch::Contains("Begin jemalloc statistics") &&
                                Catch::Contains("opt.thp: \"always\""));
}

TEST_CASE("a tool's closure is what ldd lists for it", "[sandbox]")
{
  // ldd is the reference: the closure asks each program's own loader with
  // --list instead (one process, not ldd's shell and four), and must find
  // the same files.
  auto ldd_paths = [](const fs::path& program) {
    auto r = test::run({"ldd", program.string()});
    std::set<std::string> paths;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      auto arrow = line.find(" => ");
      std::string path = arrow == std::string::npos ? line : line.substr(arrow + 4);
      path.erase(0, path.find_first_not_of(" \t"));
      path = path.substr(0, path.find(" ("));
      if (path.starts_with("/")) {
        paths.insert(path);
      }
    }
    return paths;
  };
  std::vector<fs::path> programs = {"/usr/bin/env", "/bin/sh", "/bin/busybox"};
  auto cargo = test::run({"sh", "-c", "command -v cargo"});
  if (cargo.status == 0) {
    programs.emplace_back(test::output_of(cargo, "the path of cargo"));
  }
  for (const auto& program : programs) {
    INFO(program);
    auto closure = tools_closure({program});
    std::set<std::string> found;
    for (const auto& path : closure) {
      found.insert(path.string());
    }
    std::set<std::string> expected = ldd_paths(program);
    expected.insert(program.string());
    CHECK(found == expected);
    CHECK(closure.front() == program);
  }
  // busybox-static: no loader, no libraries.
  CHECK(tools_closure({"/bin/busybox"}) == std::vector<fs::path>{"/bin/busybox"});
  // A library the loader cannot find is named: a program linked against a
  // library that is then taken away.
  TempDir dir;
  // Shell commands run in `dir` (C compiled with cc from printf'd source).
  auto in_dir = [&](const std::string& commands) {
    auto r = test::run({"sh", "-c", "cd '" + dir.path().string() + "' && " + commands});
    INFO(r.err);
    REQUIRE(r.status == 0);
  };
  auto broken = dir / "needs-missing";
  in_dir("printf 'int missing(void){return 0;}\\n' | cc -shared -x c - -o libkiln-missing.so.1 "
         "-Wl,-soname,libkiln-missing.so.1 && printf 'int missing(void);\\nint main(void)"
         "{return missing();}\\n' | cc -x c - -o needs-missing -L. -l:libkiln-missing.so.1 && "
         "rm libkiln-missing.so.1");
  CHECK_THROWS_WITH(tools_closure({broken}),
                    Catch::Contains("libkiln-missing.so.1") &&
                      Catch::Contains("which the dynamic loader cannot find"));

  // A shared library as a tool (no interpreter of its own): its libraries too.
  in_dir("printf 'int bar(void){return 1;}\\n' | cc -shared -x c - -o libkilnbar.so && "
         "printf 'int bar(void);\\nint foo(void){return bar();}\\n' | cc -shared -x c - "
         "-o libkilnfoo.so -L. -lkilnbar -Wl,-rpath,'$ORIGIN'");
  auto of_library = tools_closure({dir / "libkilnfoo.so"});
  CHECK(std::find(of_library.begin(), of_library.end(), dir / "libkilnbar.so") != of_library.end());

  // A program's interpreter, as its ELF header names it: one that does not
  // exist is an error naming it; one outside the system's library folders
  // is never run (a tool may come from a project), ldd answers instead.
  const std::string loader = "/lib64/ld-linux-x86-64.so.2";
  std::string env_program = read_file("/usr/bin/env");
  auto at = env_program.find(loader + '\0');
  if (at == std::string::npos) {
    test::skip("/usr/bin/env does not name " + loader + ": the interpreter cases need x86-64");
    return;
  }
  auto with_interpreter = [&](const std::string& name, const std::string& interpreter) {
    REQUIRE(interpreter.size() == loader.size());
    std::string patched = env_program;
    patched.replace(at, loader.size(), interpreter);
    test::write_file(dir / name, patched, true);
    return dir / name;
  };
  CHECK_THROWS_WITH(tools_closure({with_interpreter("env-lost", "/lib64/ld-linux-x86-64.so.9")}),
                    Catch::Contains("'/lib64/ld-linux-x86-64.so.9' as its ELF interpreter") &&
                      Catch::Contains("does not exist"));
  std::string suffix = std::to_string(::getpid()) + "00000000000000";
  std::string planted = "/tmp/kiln-ld-" + suffix.substr(0, 14); // as long as the loader's path
  fs::path marker = dir / "planted-loader-ran";
  test::write_file(planted, "#!/bin/sh\ntouch '" + marker.string() + "'\n", true);
  std::vector<fs::path> closure;
  try {
    closure = tools_closure({with_interpreter("env-planted", planted)});
  } catch (const std::exception& e) {
    INFO(e.what()); // ldd may or may not list such a program: not the point
  }
  fs::remove(planted);
  CHECK_FALSE(fs::exists(marker));
}

TEST_CASE("a sandboxed build sees only the store paths it declared", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  test::write_file(f.dir / "other" / "secret.txt", "not for this build\n");
  StorePath other = f.store.add_path(f.dir / "other");
  auto spec = f.sh("listing", "busybox ls -A /kiln/store > /build/list; "
                              "if cat " + f.logical(other) + "/secret.txt; then echo LEAK; fi; "
                              "if busybox ls " + f.store.root().string() + "; then echo LEAK; fi; "
                              "cat /build/list > $out");
  BuildOutcome outcome = run_build(f.store, spec);
  INFO(outcome.error << "\n" << log_of(outcome));
  REQUIRE(outcome.success);
  CHECK(read_file(outcome.output_dirs.at("out")) == f.input.base() + "\n");
  CHECK(log_of(outcome).find("LEAK") == std::string::npos);
}

TEST_CASE("a sandboxed build cannot reach the network", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  // A listener on the host's loopback that the build must not reach.
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  REQUIRE(listener >= 0);
  struct sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 8) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  std::string port = std::to_string(ntohs(addr.sin_port));

  auto spec = f.sh("network",
                   "{ if echo hi | busybox nc -w 2 127.0.0.1 " + port +
                     "; then echo 'host loopback: reached'; else echo 'host loopback: refused'; "
                     "fi; "
                     "if echo hi | busybox nc -w 2 1.1.1.1 80; then echo 'outside: reached'; "
                     "else echo 'outside: unreachable'; fi; "
                     "busybox tail -n +3 /proc/net/dev | busybox cut -d: -f1 | busybox tr -d ' '; "
                     "} > $out");
  auto start = std::chrono::steady_clock::now();
  BuildOutcome outcome = run_build(f.store, spec);
  INFO(outcome.error << "\n" << log_of(outcome));
  REQUIRE(outcome.success);
  CHECK(seconds_since(start) < 10);
  CHECK(read_file(outcome.output_dirs.at("out")) ==
        "host loopback: refused\noutside: unreachable\nlo\n");
  int accepted = ::accept(listener, nullptr, nullptr);
  CHECK(accepted < 0);
  if (accepted >= 0) {
    ::close(accepted);
  }
  ::close(listener);
}

TEST_CASE("a sandboxed build cannot write outside its outputs", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  std::string in = f.logical(f.input);
  fs::path physical_input = f.store.physical_path(f.input);
  std::string marker = "kiln-sandbox-marker-" + std::to_string(::getpid());
  std::string host_file = (f.dir / "host-file").string();
  test::write_file(host_file, "host\n");

  SECTION("the file system outside /build, /tmp and the outputs is read-only")
  {
    std::string targets;
    for (const std::string& target :
         {"/etc/" + marker, "/" + marker, "/usr/bin/" + marker, in + "/hello.txt",
          in + "/" + marker, host_file, std::string("/proc/sys/kernel/hostname")}) {
      targets += " " + target;
    }
    // Each attempt reports what it achieved; none but /tmp may succeed.
    std::string script =
      "mkdir $out; exec > $out/report 2>/dev/null; "
      "for target in" + targets + "; do "
      "  if (echo pwned > $target); then echo \"wrote $target\"; "
      "  else echo \"refused $target\"; fi; "
      "done; "
      "if busybox umount " + in + "; then echo unmounted; fi; "
      "if busybox mount -o remount,rw " + in + "; then echo remounted; fi; "
      "if busybox mount -t tmpfs none /build; then echo mounted; fi; "
      "if busybox mknod /build/disk b 254 0; then echo mknod; fi; "
      "if busybox chroot / true; then echo chrooted; fi; "
      "echo fine > /tmp/" + marker + " && echo 'wrote /tmp'";
    BuildOutcome outcome = run_build(f.store, f.sh("escape", script));
    INFO(outcome.error << "\n" << log_of(outcome));
    REQUIRE(outcome.success);
    std::string report = read_file(outcome.output_dirs.at("out") / "report");
    INFO(report);
    CHECK(report.find("wrote /tmp") != std::string::npos);
    CHECK(report.find("wrote /") == report.find("wrote /tmp"));
    CHECK(report.find("unmounted") == std::string::npos);
    CHECK(report.find("remounted") == std::string::npos);
    CHECK(report.find("chrooted") == std::string::npos);
    CHECK(report.find("mounted") == std::string::npos);
    CHECK(report.find("mknod") == std::string::npos);
    CHECK(report.find("refused " + in + "/hello.txt") != std::string::npos);
    size_t refused = 0;
    for (size_t at = report.find("refused "); at != std::string::npos;
         at = report.find("refused ", at + 1)) {
      ++refused;
    }
    CHECK(refused == 7);
    // The host is unchanged.
    CHECK_FALSE(fs::exists("/etc/" + marker));
    CHECK_FALSE(fs::exists("/" + marker));
    CHECK_FALSE(fs::exists("/usr/bin/" + marker));
    CHECK_FALSE(fs::exists("/tmp/" + marker));
    CHECK(read_file(host_file) == "host\n");
    CHECK(read_file(physical_input / "hello.txt") == "hello from an input\n");
    CHECK_FALSE(fs::exists(physical_input / marker));
    CHECK(f.store.verify({}).ok());
  }

  SECTION("writing into the store beside its outputs fails the build")
  {
    BuildOutcome outcome =
      run_build(f.store, f.sh("stray", "mkdir $out; echo x > /kiln/store/" + marker));
    INFO(log_of(outcome));
    CHECK_FALSE(outcome.success);
    CHECK(outcome.error.find("'/kiln/store/" + marker + "'") != std::string::npos);
    CHECK(outcome.error.find("not one of its outputs") != std::string::npos);
    CHECK(outcome.output_dirs.empty());
    CHECK_FALSE(fs::exists("/kiln/store/" + marker));
    CHECK_FALSE(fs::exists(f.store.root() / "store" / marker));
  }
}

TEST_CASE("processes a sandboxed build leaves running are killed", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  // Odd durations name the processes; setsid and a subshell escape the
  // builder's process group and parentage.
  auto spec = f.sh("daemon", "busybox sleep 9871 & busybox setsid busybox sleep 9872 & "
                             "( busybox sleep 9873 & ) ; mkdir $out; echo started");
  BuildOutcome outcome = run_build(f.store, spec);
  INFO(outcome.error << "\n" << log_of(outcome));
  REQUIRE(outcome.success);
  CHECK(log_of(outcome).find("left processes running; they were killed") != std::string::npos);
  for (const char* needle : {"sleep 9871", "sleep 9872", "sleep 9873"}) {
    INFO(needle);
    CHECK(host_processes_with(needle).empty());
  }
}

TEST_CASE("a sandboxed build dies with the kiln process running it", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  auto spec = f.sh("orphan", "busybox sleep 9879 & busybox sleep 9880; mkdir $out");
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // A store of its own: an SQLite connection must not cross fork().
    try {
      LocalStore store(LocalStoreConfig{f.dir / "store", "/kiln/store"});
      run_build(store, spec);
    } catch (...) {
    }
    ::_exit(0);
  }
  auto start = std::chrono::steady_clock::now();
  while (host_processes_with("sleep 9880").empty() && seconds_since(start) < 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK_FALSE(host_processes_with("sleep 9880").empty());
  ::kill(pid, SIGKILL);
  int status;
  ::waitpid(pid, &status, 0);
  start = std::chrono::steady_clock::now();
  while ((!host_processes_with("sleep 9879").empty() ||
          !host_processes_with("sleep 9880").empty()) &&
         seconds_since(start) < 5) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(host_processes_with("sleep 9879").empty());
  CHECK(host_processes_with("sleep 9880").empty());
}

TEST_CASE("sandboxed builds are killed at their timeout and max-silent-time", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  SECTION("timeout")
  {
    auto spec = f.sh("slow", "echo going; busybox sleep 9874; mkdir $out");
    spec.timeout = std::chrono::seconds(1);
    auto start = std::chrono::steady_clock::now();
    BuildOutcome outcome = run_build(f.store, spec);
    CHECK(seconds_since(start) < 5);
    CHECK_FALSE(outcome.success);
    CHECK(outcome.error == "build 'slow' timed out after 1 s");
    CHECK(outcome.log_tail.find("going") != std::string::npos);
    CHECK(host_processes_with("sleep 9874").empty());
  }
  SECTION("max-silent-time")
  {
    auto spec = f.sh("quiet", "echo going; busybox sleep 9875; mkdir $out");
    spec.max_silent_time = std::chrono::seconds(1);
    auto start = std::chrono::steady_clock::now();
    BuildOutcome outcome = run_build(f.store, spec);
    CHECK(seconds_since(start) < 5);
    CHECK_FALSE(outcome.success);
    CHECK(outcome.error == "build 'quiet' produced no output for 1 s");
    CHECK(host_processes_with("sleep 9875").empty());
  }
  SECTION("output keeps a build alive past its max-silent-time")
  {
    // 4 s in all, never 2 s silent: even a loaded machine (the whole suite
    // runs in parallel) stalls less than the 1.5 s of slack.
    auto spec = f.sh("chatty", "for i in 1 2 3 4 5 6 7 8; do echo tick $i; busybox sleep 0.5; "
                               "done; mkdir $out");
    spec.max_silent_time = std::chrono::seconds(2);
    std::string seen;
    SandboxOptions options;
    options.on_output = [&](std::string_view chunk) { seen += chunk; };
    BuildOutcome outcome = run_build(f.store, spec, options);
    INFO(outcome.error);
    CHECK(outcome.success);
    CHECK(seen.find("tick 8") != std::string::npos);
  }
}

TEST_CASE("a failing sandboxed build reports its exit status and log tail", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  SECTION("non-zero exit")
  {
    auto spec = f.sh("broken", "mkdir $out; echo first; echo 'the reason it broke' >&2; exit 3");
    BuildOutcome outcome = run_build(f.store, spec);
    CHECK_FALSE(outcome.success);
    CHECK(outcome.error == "builder for 'broken' failed with exit status 3");
    CHECK(outcome.log_tail.find("first\nthe reason it broke") != std::string::npos);
    CHECK(outcome.output_dirs.empty());
    CHECK_FALSE(fs::exists(outcome.work_dir / "store" / spec.outputs.at("out").base()));
  }
  SECTION("killed by a signal")
  {
    BuildOutcome outcome = run_build(f.store, f.sh("killed", "kill -9 $$"));
    CHECK_FALSE(outcome.success);
    CHECK(outcome.error == "builder for 'killed' was killed by signal 9 (SIGKILL)");
  }
  SECTION("missing output")
  {
    auto spec = f.sh("lazy", "mkdir $out; echo did nothing for dev");
    spec.outputs.emplace("dev", f.output_path("lazy-dev"));
    BuildOutcome outcome = run_build(f.store, spec);
    CHECK_FALSE(outcome.success);
    CHECK(outcome.error == "builder for 'lazy' did not produce output 'dev' (" +
                             f.logical(spec.outputs.at("dev")) + ")");
    CHECK(outcome.output_dirs.empty());
    CHECK_FALSE(fs::exists(outcome.work_dir / "store" / spec.outputs.at("out").base()));
  }
  SECTION("a builder that does not exist")
  {
    auto spec = f.sh("nobuilder", "");
    spec.builder = "/kiln/store/00000000000000000000000000000000-none/bin/sh";
    BuildOutcome outcome = run_build(f.store, spec);
    CHECK_FALSE(outcome.success);
    CHECK(outcome.error.find("cannot run builder '" + spec.builder + "'") != std::string::npos);
  }
}

TEST_CASE("sandboxed builds run side by side", "[sandbox]")
{
  if (!have_namespaces()) {
    test::skip("user namespaces are unavailable here: the namespaces sandbox cannot be tested");
    return;
  }
  Fixture f;
  // Another thread allocating all along: a sandbox process copied from this
  // one while the allocator's lock is held must still get going.
  std::atomic<bool> done{false};
  std::thread churn([&] {
    while (!done) {
      std::vector<std::string> junk(64, std::string(1000, 'x'));
    }
  });
  std::vector<BuildOutcome> outcomes(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < outcomes.size(); ++i) {
    threads.emplace_back([&, i] {
      auto spec = f.sh("parallel-" + std::to_string(i),
                       "busybox sleep 0.2; echo " + std::to_string(i) + " > $out");
      outcomes[i] = run_build(f.store, spec);
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  done = true;
  churn.join();
  for (size_t i = 0; i < outcomes.size(); ++i) {
    INFO(outcomes[i].error);
    REQUIRE(outcomes[i].success);
    CHECK(read_file(outcomes[i].output_dirs.at("out")) == std::to_string(i) + "\n");
  }
}

TEST_CASE("clean-env mode builds with physical paths and says so", "[sandbox]")
{
  Fixture f;
  auto spec = f.sh("clean", "echo \"out is $out\"; echo \"top is $NIX_BUILD_TOP in $PWD\"; "
                            "cat $in/hello.txt > $out; echo \"$MENTION\"; "
                            "busybox sleep 9876 &");
  spec.env["MENTION"] = "see " + f.logical(f.input) + "/hello.txt";
  BuildOutcome outcome;
  SECTION("forced by an option")
  {
    SandboxOptions options;
    options.force_mode = SandboxMode::clean_env;
    outcome = run_build(f.store, spec, options);
  }
  SECTION("forced by KILN_SANDBOX=off")
  {
    ::setenv("KILN_SANDBOX", "off", 1);
    try {
      outcome = run_build(f.store, spec);
    } catch (...) {
      ::unsetenv("KILN_SANDBOX");
      throw;
    }
    ::unsetenv("KILN_SANDBOX");
  }
  std::string log = log_of(outcome);
  INFO(outcome.error << "\n" << log);
  REQUIRE(outcome.success);
  CHECK(outcome.mode == SandboxMode::clean_env);
  CHECK(to_string(outcome.mode) == "clean-env");
  fs::path out = outcome.output_dirs.at("out");
  CHECK(out == outcome.work_dir / "store" / spec.outputs.at("out").base());
  CHECK(read_file(out) == "hello from an input\n");
  CHECK(log.find("out is " + out.string() + "\n") != std::string::npos);
  CHECK(log.find("top is " + (outcome.work_dir / "build").string() + " in " +
                 (outcome.work_dir / "build").string()) != std::string::npos);
  CHECK(log.find("see " + f.store.physical_path(f.input).string() + "/hello.txt") !=
        std::string::npos);
  CHECK(host_processes_with("sleep 9876").empty());
}

TEST_CASE("clean-env mode enforces timeouts and kills what is left", "[sandbox]")
{
  Fixture f;
  SandboxOptions options;
  options.force_mode = SandboxMode::clean_env;
  auto spec = f.sh("clean-slow", "busybox setsid busybox sleep 9877 & busybox sleep 9878");
  spec.timeout = std::chrono::seconds(1);
  auto start = std::chrono::steady_clock::now();
  BuildOutcome outcome = run_build(f.store, spec, options);
  CHECK(seconds_since(start) < 5);
  CHECK_FALSE(outcome.success);
  CHECK(outcome.error == "build 'clean-slow' timed out after 1 s");
  CHECK(host_processes_with("sleep 9877").empty());
  CHECK(host_processes_with("sleep 9878").empty());
}

TEST_CASE("malformed build steps are refused before anything runs", "[sandbox]")
{
  Fixture f;
  SandboxOptions options;
  options.force_mode = detect_sandbox_support();
  SECTION("a tool that does not exist")
  {
    auto spec = f.sh("no-tool", "true");
    spec.tools.push_back("/usr/bin/kiln-no-such-tool");
    CHECK_THROWS_WITH(run_build(f.store, spec, options),
                      Catch::Contains("/usr/bin/kiln-no-such-tool"));
  }
  SECTION("an input that is not valid")
  {
    auto spec = f.sh("no-input", "true");
    spec.inputs.insert(f.output_path("never-added"));
    CHECK_THROWS_AS(run_build(f.store, spec, options), SandboxError);
  }
  SECTION("a relative builder")
  {
    auto spec = f.sh("relative", "true");
    spec.builder = "sh";
    CHECK_THROWS_AS(run_build(f.store, spec, options), SandboxError);
  }
  SECTION("no outputs")
  {
    auto spec = f.sh("nothing", "true");
    spec.outputs.clear();
    CHECK_THROWS_AS(run_build(f.store, spec, options), SandboxError);
  }
  // Nothing was left in the store's tmp/.
  CHECK(fs::is_empty(f.store.root() / "tmp"));
}
