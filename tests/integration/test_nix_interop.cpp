// Compare kiln with the real Nix (Debian's nix-bin 2.8) on generated trees:
// NAR bytes, NAR hashes, content-addressed store paths (logical store
// directory /kiln/store) and restoring each other's archives.
//
// Every Nix and kiln invocation runs with HOME, XDG_* and NIX_STATE_DIR /
// NIX_LOG_DIR pointed at a temporary folder, and Nix's store is a chroot
// store `local?root=DIR&store=/kiln/store`, so nothing outside temporary
// folders is touched (see docs/nix-binary-cache.md §10.8).
#include "support/test_support.hpp"

#include <kiln/hash/hash.hpp>
#include <kiln/nar/nar.hpp>
#include <kiln/store/local_store.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <vector>

using namespace kiln;
using test::RunOptions;
using test::RunResult;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr const char* k_logical_store = "/kiln/store";

void
require_nix()
{
  INFO("the Nix interop tests need Nix (nix-store, nix-hash, nix); ./setup installs Debian's "
       "nix-bin");
  REQUIRE(test::have_program("nix-store"));
  REQUIRE(test::have_program("nix-hash"));
  REQUIRE(test::have_program("nix"));
}

// "" when `a` and `b` are equal, else where they first differ (archives can
// be megabytes long, so never print them).
std::string
difference(const std::string& a, const std::string& b)
{
  if (a == b) {
    return "";
  }
  size_t n = std::min(a.size(), b.size());
  size_t i = static_cast<size_t>(
      std::mismatch(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n), b.begin()).first -
      a.begin());
  return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size()) +
         ", first difference at byte " + std::to_string(i);
}

std::string
kiln_nar_of(const fs::path& path)
{
  StringSink sink;
  dump_path(path, sink);
  return sink.s;
}

void
symlink(const std::string& target, const fs::path& link)
{
  if (link.has_parent_path()) {
    fs::create_directories(link.parent_path());
  }
  REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
}

void
chmod_path(const fs::path& path, mode_t mode)
{
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

// A scratch folder and an environment that keeps Nix and kiln inside it.
class Scratch
{
public:
  Scratch()
  {
    for (const char* d : {"home", "cache", "config", "data", "state", "log"}) {
      fs::create_directories(m_dir.path() / "env" / d);
    }
  }

  // A path below the scratch folder that does not exist yet.
  fs::path
  fresh(const std::string& what)
  {
    return m_dir.path() / (what + "-" + std::to_string(m_counter++));
  }

  RunOptions
  options() const
  {
    fs::path env = m_dir.path() / "env";
    RunOptions o;
    o.env = {
        {"HOME", (env / "home").string()},
        {"XDG_CACHE_HOME", (env / "cache").string()},
        {"XDG_CONFIG_HOME", (env / "config").string()},
        {"XDG_DATA_HOME", (env / "data").string()},
        {"NIX_STORE_DIR", k_logical_store},
        {"NIX_STATE_DIR", (env / "state").string()},
        {"NIX_LOG_DIR", (env / "log").string()},
    };
    o.unset_env = {"NIX_REMOTE",         "NIX_PATH",          "KILN_CONFIG",
                   "KILN_STORE",         "KILN_STORE_DIR",    "KILN_SUBSTITUTERS",
                   "KILN_TRUSTED_PUBLIC_KEYS", "KILN_REQUIRE_SIGS", "KILN_SECRET_KEY_FILE",
                   "KILN_TOKEN",         "KILN_JOBS"};
    return o;
  }

  RunOptions
  to_file(const fs::path& out) const
  {
    RunOptions o = options();
    o.stdout_file = out;
    return o;
  }

  RunOptions
  from_file(const fs::path& in) const
  {
    RunOptions o = options();
    o.stdin_file = in;
    return o;
  }

private:
  TempDir m_dir;
  int m_counter = 0;
};

std::string
nix_store_uri(const fs::path& root)
{
  return "local?root=" + root.string() + "&store=" + k_logical_store;
}

// Where a Nix chroot store keeps the object `printed` (a logical path).
fs::path
nix_physical_path(const fs::path& root, const std::string& printed)
{
  std::string base = fs::path(printed).filename().string();
  for (const char* dir : {"nix/store", "kiln/store"}) {
    fs::path p = root / dir / base;
    if (fs::exists(fs::symlink_status(p))) {
      return p;
    }
  }
  FAIL("Nix's store under " << root << " has no " << base);
  return {};
}

// Add `src` to a fresh Nix store, as `nix-store --add` (or `nix store
// add-path --name`); returns the printed store path.
std::string
nix_add(Scratch& s, const fs::path& src, const std::optional<std::string>& name,
        fs::path* store_root = nullptr)
{
  fs::path root = s.fresh("nix-store");
  RunResult r;
  if (name) {
    r = test::run({"nix", "--extra-experimental-features", "nix-command", "store", "add-path",
                   "--store", nix_store_uri(root), "--name", *name, src.string()},
                  s.options());
  } else {
    r = test::run({"nix-store", "--store", nix_store_uri(root), "--add", src.string()},
                  s.options());
  }
  if (store_root) {
    *store_root = root;
  }
  return test::output_of(r, "nix store add of " + src.string());
}

std::vector<std::string>
kiln_add_args(const fs::path& store, const fs::path& src, const std::optional<std::string>& name)
{
  std::vector<std::string> args = {"--store", store.string(), "--store-dir", k_logical_store,
                                    "store",  "add"};
  if (name) {
    args.push_back("--name");
    args.push_back(*name);
  }
  args.push_back(src.string());
  return args;
}

// The four comparisons of the brief, for the tree at `src`. `name` is the
// store path name when the base name of `src` can't be one.
void
compare_with_nix(const fs::path& src, const std::optional<std::string>& name = std::nullopt)
{
  Scratch s;

  // (1) NAR bytes: Nix, kiln's library, kiln's CLI.
  fs::path nix_nar_file = s.fresh("nix.nar");
  {
    RunResult r = test::run({"nix-store", "--dump", src.string()}, s.to_file(nix_nar_file));
    INFO("nix-store --dump stderr: " << r.err);
    REQUIRE(r.status == 0);
  }
  const std::string nix_nar = read_file(nix_nar_file);
  REQUIRE(nix_nar.size() >= 8 * 8);

  SECTION("NAR bytes are identical to nix-store --dump")
  {
    CHECK(difference(kiln_nar_of(src), nix_nar) == "");

    fs::path kiln_nar_file = s.fresh("kiln.nar");
    RunResult r = test::kiln({"nar", "dump", src.string()}, s.to_file(kiln_nar_file));
    INFO("kiln nar dump stderr: " << r.err);
    REQUIRE(r.status == 0);
    CHECK(difference(read_file(kiln_nar_file), nix_nar) == "");
  }

  SECTION("NAR hash equals nix-hash and nix hash path")
  {
    std::string nix_hash =
        test::output_of(test::run({"nix-hash", "--type", "sha256", "--base32", src.string()},
                                  s.options()),
                        "nix-hash");
    REQUIRE(nix_hash.size() == 52);
    CHECK(test::output_of(test::kiln({"hash", "path", "--base32", src.string()}, s.options()),
                          "kiln hash path --base32") == nix_hash);

    HashSink sink;
    sink.write(nix_nar);
    CHECK(sink.finish().to_string(HashFormat::nix32, false) == nix_hash);

    std::string nix_sri = test::output_of(
        test::run({"nix", "--extra-experimental-features", "nix-command", "hash", "path",
                   src.string()},
                  s.options()),
        "nix hash path");
    CHECK(test::output_of(test::kiln({"hash", "path", src.string()}, s.options()),
                          "kiln hash path") == nix_sri);
  }

  SECTION("store path equals nix-store --add with store dir /kiln/store")
  {
    fs::path nix_root;
    std::string nix_path = nix_add(s, src, name, &nix_root);
    REQUIRE(nix_path.rfind(std::string(k_logical_store) + "/", 0) == 0);

    fs::path kiln_store = s.fresh("kiln-store");
    std::string kiln_path =
        test::output_of(test::kiln(kiln_add_args(kiln_store, src, name), s.options()),
                        "kiln store add");
    CHECK(kiln_path == nix_path);

    // The library agrees, and both stores hold the same object.
    LocalStore lib_store(LocalStoreConfig{s.fresh("lib-store"), k_logical_store});
    AddOptions add_options;
    add_options.name = name;
    StorePath lib_path = lib_store.add_path(src, add_options);
    CHECK(lib_store.print(lib_path) == nix_path);
    CHECK(difference(kiln_nar_of(nix_physical_path(nix_root, nix_path)), nix_nar) == "");

    LocalStore cli_store(LocalStoreConfig{kiln_store, k_logical_store});
    fs::path kiln_object = cli_store.physical_path(cli_store.resolve(kiln_path));
    fs::path redump = s.fresh("kiln-object.nar");
    RunResult r = test::run({"nix-store", "--dump", kiln_object.string()}, s.to_file(redump));
    INFO("nix-store --dump of kiln's store object: " << r.err);
    REQUIRE(r.status == 0);
    CHECK(difference(read_file(redump), nix_nar) == "");
  }

  SECTION("each restores the other's NAR")
  {
    // Nix's NAR, restored by kiln (CLI and library), dumped again by both.
    fs::path kiln_restored = s.fresh("kiln-restored");
    {
      RunResult r =
          test::kiln({"nar", "restore", kiln_restored.string()}, s.from_file(nix_nar_file));
      INFO("kiln nar restore stderr: " << r.err);
      REQUIRE(r.status == 0);
    }
    fs::path redump = s.fresh("redump.nar");
    RunResult r = test::run({"nix-store", "--dump", kiln_restored.string()}, s.to_file(redump));
    INFO("nix-store --dump of kiln's restore: " << r.err);
    REQUIRE(r.status == 0);
    CHECK(difference(read_file(redump), nix_nar) == "");
    CHECK(difference(kiln_nar_of(kiln_restored), nix_nar) == "");

    fs::path lib_restored = s.fresh("lib-restored");
    StringSource in(nix_nar);
    restore_nar(in, lib_restored);
    CHECK(difference(kiln_nar_of(lib_restored), nix_nar) == "");

    // kiln's NAR, restored by Nix, dumped again by both.
    fs::path kiln_nar_file = s.fresh("kiln.nar");
    r = test::kiln({"nar", "dump", src.string()}, s.to_file(kiln_nar_file));
    INFO("kiln nar dump stderr: " << r.err);
    REQUIRE(r.status == 0);
    fs::path nix_restored = s.fresh("nix-restored");
    r = test::run({"nix-store", "--restore", nix_restored.string()}, s.from_file(kiln_nar_file));
    INFO("nix-store --restore stderr: " << r.err);
    REQUIRE(r.status == 0);
    CHECK(difference(kiln_nar_of(nix_restored), nix_nar) == "");
    fs::path redump2 = s.fresh("redump2.nar");
    r = test::run({"nix-store", "--dump", nix_restored.string()}, s.to_file(redump2));
    REQUIRE(r.status == 0);
    CHECK(difference(read_file(redump2), nix_nar) == "");
  }
}

// --- The trees ---

struct TreeCase
{
  std::string label;
  // Builds the tree below `dir`; returns its root.
  std::function<fs::path(const fs::path& dir)> build;
  // Store path name, when the root's base name can't be one.
  std::optional<std::string> name;
};

fs::path
build_mixed(const fs::path& dir)
{
  fs::path root = dir / "mixed";
  test::write_file(root / "empty", "");
  test::write_file(root / "sub" / "empty-too", "");
  test::write_file(root / "sub" / "data.txt", "some data\n");
  test::write_file(root / "bin" / "run", "#!/bin/sh\necho run\n", true);
  test::write_file(root / "bin" / "empty-exec", "", true);
  // Nix records `executable` for the owner's x bit only.
  test::write_file(root / "modes" / "user-x-only", "u\n");
  chmod_path(root / "modes" / "user-x-only", 0700);
  test::write_file(root / "modes" / "group-x-only", "g\n");
  chmod_path(root / "modes" / "group-x-only", 0654);
  test::write_file(root / "modes" / "other-x-only", "o\n");
  chmod_path(root / "modes" / "other-x-only", 0645);
  test::write_file(root / "modes" / "read-only", "r\n");
  chmod_path(root / "modes" / "read-only", 0444);
  test::write_file(root / "modes" / "setuid-exec", "s\n");
  chmod_path(root / "modes" / "setuid-exec", 04755);
  symlink("does/not/exist", root / "dangling");
  symlink("sub", root / "link-to-folder");
  symlink("/nonexistent/absolute/target", root / "absolute-link");
  symlink("..", root / "link-to-parent");
  symlink("bin/run", root / "link-to-exec");
  symlink("dangling", root / "link-to-link");
  test::write_file(root / "a" / "b" / "c" / "d" / "e" / "leaf", "leaf\n");
  fs::create_directories(root / "a" / "b" / "empty-folder");
  symlink("../../../sub", root / "a" / "b" / "c" / "up-link");
  REQUIRE(::link((root / "bin" / "run").c_str(), (root / "hard-link-to-run").c_str()) == 0);
  test::write_file(root / "read-only-folder" / "inside", "inside\n");
  chmod_path(root / "read-only-folder", 0555);
  return root;
}

fs::path
build_deep(const fs::path& dir, int levels)
{
  fs::path root = dir / "deep";
  fs::path p = root;
  for (int i = 0; i < levels; ++i) {
    p /= "d" + std::to_string(i % 10);
    if (i % 10 == 0) {
      test::write_file(p / "at-level", std::to_string(i) + "\n");
    }
  }
  fs::create_directories(p);
  test::write_file(p / "bottom", "the bottom\n", true);
  symlink("../bottom", p.parent_path() / "up");
  return root;
}

fs::path
build_wide(const fs::path& dir)
{
  fs::path root = dir / "wide";
  fs::create_directories(root);
  for (int i = 0; i < 2000; ++i) {
    std::string name = "n" + std::to_string(i);
    switch (i % 10) {
    case 0:
      test::write_file(root / name / "inner", name);
      break;
    case 1:
      symlink("n" + std::to_string(i - 1), root / name);
      break;
    case 2:
      test::write_file(root / name, "#!/bin/sh\n", true);
      break;
    case 3:
      test::write_file(root / name, "");
      break;
    default:
      test::write_file(root / name, std::string(static_cast<size_t>(i % 17), 'x'));
    }
  }
  return root;
}

fs::path
build_odd_names(const fs::path& dir)
{
  // The root's own name has a space: no store path can be called that.
  fs::path root = dir / "odd names";
  const std::vector<std::string> names = {
      "with space",
      "\x01",
      "ctl\x02\x1f",
      "caf\xc3\xa9",           // café, UTF-8
      "\xc3\xa9",              // é: sorts after every ASCII name
      "\xff",                  // not UTF-8
      "\xc3\x28",              // invalid UTF-8 sequence
      "\x7f",
      "A",
      "a",
      "B",
      "b",
      "Z",
      "z",
      "ABC",
      "abc",
      "a-b",
      "a.b",
      "a_b",
      "a+b",
      "a b",
      "a-",
      "a.",
      "ab",
      "a0",
      "-starts-with-dash",
      "--",
      "-",
      ".hidden",
      "...",
      "~",
      "line\nbreak",
      "tab\there",
      "quote\"'",
      "back\\slash",
      "*?[glob]",
      "%s%n",
      std::string(255, 'x'),   // NAME_MAX
  };
  for (const auto& n : names) {
    test::write_file(root / n, "name: " + n + "\n", n.size() % 2 == 1);
  }
  fs::create_directories(root / "Dir");
  test::write_file(root / "dir" / "caf\xc3\xa9" / "\xff", "deep odd\n");
  symlink("caf\xc3\xa9/\xff target with space", root / "odd-target");
  symlink(std::string(4095, 't'), root / "longest-target");  // PATH_MAX - 1
  symlink("\x01", root / "control-target");
  return root;
}

fs::path
build_large(const fs::path& dir)
{
  fs::path root = dir / "large";
  test::write_file(root / "big.bin", test::random_bytes(20 * 1024 * 1024, 1));
  test::write_file(root / "odd-size.bin", test::random_bytes(1000003, 2));
  test::write_file(root / "buffer-plus-one.bin", test::random_bytes(65537, 3), true);
  test::write_file(root / "seven", "1234567");
  test::write_file(root / "nine", "123456789");
  return root;
}

const std::vector<TreeCase>&
tree_cases()
{
  static const std::vector<TreeCase> cases = {
      {"single empty file",
       [](const fs::path& d) {
         test::write_file(d / "empty", "");
         return d / "empty";
       },
       {}},
      {"single executable file",
       [](const fs::path& d) {
         test::write_file(d / "hello.sh", "#!/bin/sh\necho hello\n", true);
         return d / "hello.sh";
       },
       {}},
      {"single file, size not a multiple of 8",
       [](const fs::path& d) {
         test::write_file(d / "odd.txt", "hello, world\n");
         return d / "odd.txt";
       },
       {}},
      {"top-level symlink",
       [](const fs::path& d) {
         test::write_file(d / "target", "target\n");
         symlink("target", d / "link");
         return d / "link";
       },
       {}},
      {"top-level symlink to a folder",
       [](const fs::path& d) {
         test::write_file(d / "folder" / "file", "file\n");
         symlink("folder", d / "link");
         return d / "link";
       },
       {}},
      {"empty folder",
       [](const fs::path& d) {
         fs::create_directories(d / "empty-folder");
         return d / "empty-folder";
       },
       {}},
      {"folder with files, executables, symlinks and subfolders", build_mixed, {}},
      {"deep tree (60 levels)", [](const fs::path& d) { return build_deep(d, 60); }, {}},
      {"deep tree (200 levels)", [](const fs::path& d) { return build_deep(d, 200); }, {}},
      {"wide folder (2000 entries)", build_wide, {}},
      {"odd byte names (root needs --name)", build_odd_names, std::string("odd-names")},
      {"large files (20 MiB, sizes not multiples of 8)", build_large, {}},
  };
  return cases;
}

} // namespace

TEST_CASE("kiln agrees with Nix on NARs, hashes and store paths", "[nix][interop]")
{
  require_nix();
  for (const auto& tree : tree_cases()) {
    DYNAMIC_SECTION(tree.label)
    {
      TempDir dir;
      fs::path root = tree.build(dir.path());
      compare_with_nix(root, tree.name);
    }
  }
}

TEST_CASE("a root whose name is no store path name needs --name, in kiln and Nix",
          "[nix][interop]")
{
  require_nix();
  TempDir dir;
  Scratch s;
  fs::path root = dir.path() / "has space";
  test::write_file(root / "file", "x\n");

  RunResult nix = test::run({"nix-store", "--store", nix_store_uri(s.fresh("nix-store")), "--add",
                             root.string()},
                            s.options());
  CHECK(nix.status != 0);
  RunResult k = test::kiln(kiln_add_args(s.fresh("kiln-store"), root, std::nullopt), s.options());
  CHECK(k.status != 0);
  CHECK(k.err.find("--name") != std::string::npos);

  CHECK(test::output_of(test::kiln(kiln_add_args(s.fresh("kiln-store"), root, "fine"),
                                   s.options()),
                        "kiln store add --name fine") == nix_add(s, root, std::string("fine")));
}

TEST_CASE("kiln store add --name equals nix store add-path --name", "[nix][interop]")
{
  require_nix();
  // Generators run once, so they give values, not paths into this run's TempDir.
  const std::string name = GENERATE(as<std::string>{}, "other", "x+y=z?_.-1",
                                    "-leading-dash", std::string(211, 'n'));
  const bool folder = GENERATE(true, false);
  INFO("name " << name << (folder ? ", a folder" : ", a file"));

  TempDir dir;
  fs::path src;
  if (folder) {
    src = build_mixed(dir.path());
  } else {
    src = dir.path() / "file";
    test::write_file(src, "plain file\n");
  }

  Scratch s;
  std::string nix_path = nix_add(s, src, name);
  REQUIRE(nix_path == std::string(k_logical_store) + "/" + nix_path.substr(12, 32) + "-" + name);
  CHECK(test::output_of(test::kiln(kiln_add_args(s.fresh("kiln-store"), src, name), s.options()),
                        "kiln store add --name") == nix_path);

  // The name changes the path, not the content.
  std::string default_path = nix_add(s, src, std::nullopt);
  CHECK(default_path != nix_path);
  CHECK(test::output_of(
            test::kiln(kiln_add_args(s.fresh("kiln-store"), src, std::nullopt), s.options()),
            "kiln store add") == default_path);
}

TEST_CASE("kiln and Nix both refuse names longer than 211 bytes", "[nix][interop]")
{
  require_nix();
  TempDir dir;
  test::write_file(dir.path() / "file", "x\n");
  Scratch s;
  std::string name(212, 'n');
  RunResult nix =
      test::run({"nix", "--extra-experimental-features", "nix-command", "store", "add-path",
                 "--store", nix_store_uri(s.fresh("nix-store")), "--name", name,
                 (dir.path() / "file").string()},
                s.options());
  CHECK(nix.status != 0);
  RunResult k =
      test::kiln(kiln_add_args(s.fresh("kiln-store"), dir.path() / "file", name), s.options());
  CHECK(k.status != 0);
}

TEST_CASE("flat hashes and other algorithms equal nix-hash", "[nix][interop]")
{
  require_nix();
  TempDir dir;
  fs::path folder = build_mixed(dir.path());
  fs::path file = dir.path() / "data.bin";
  test::write_file(file, test::random_bytes(300001, 7));
  Scratch s;

  for (const char* algo : {"md5", "sha1", "sha256", "sha512"}) {
    INFO("algorithm " << algo);
    for (const char* format : {"--base32", "--base16"}) {
      INFO("format " << format);
      std::string nix_format = std::string(format) == "--base16" ? "--base16" : "--base32";
      CHECK(test::output_of(test::kiln({"hash", "path", "--type", algo, format, folder.string()},
                                       s.options()),
                            "kiln hash path") ==
            test::output_of(test::run({"nix-hash", "--type", algo, nix_format, folder.string()},
                                      s.options()),
                            "nix-hash"));
      CHECK(test::output_of(test::kiln({"hash", "file", "--type", algo, format, file.string()},
                                       s.options()),
                            "kiln hash file") ==
            test::output_of(test::run({"nix-hash", "--flat", "--type", algo, nix_format,
                                       file.string()},
                                      s.options()),
                            "nix-hash --flat"));
    }
  }
}

TEST_CASE("kiln and Nix both refuse to archive a FIFO", "[nix][interop]")
{
  require_nix();
  TempDir dir;
  Scratch s;
  fs::path root = dir.path() / "with-fifo";
  test::write_file(root / "file", "x\n");
  REQUIRE(::mkfifo((root / "fifo").c_str(), 0644) == 0);

  CHECK(test::run({"nix-store", "--dump", root.string()}, s.to_file(s.fresh("nix.nar"))).status !=
        0);
  RunResult k = test::kiln({"nar", "dump", root.string()}, s.to_file(s.fresh("kiln.nar")));
  CHECK(k.status != 0);
  CHECK(k.err.find("fifo") != std::string::npos);
  CHECK(test::kiln({"hash", "path", root.string()}, s.options()).status != 0);
  StringSink sink;
  CHECK_THROWS(dump_path(root, sink));
}

// Nix archives, hashes and adds a dangling symlink given as the root.
TEST_CASE("a dangling top-level symlink", "[nix][interop]")
{
  require_nix();
  TempDir dir;
  symlink("nowhere", dir.path() / "dangling");
  compare_with_nix(dir.path() / "dangling");
}
