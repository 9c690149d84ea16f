// cargo-kiln, the generated man page and bash completion, `cmake --install`
// and the CPack .deb.
#include "support/test_support.hpp"

#include <kiln/settings/settings.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <sstream>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path k_build_dir = KILN_BUILD_DIR;
const std::string k_version = std::string("kiln ") + KILN_VERSION;

// The subcommands `kiln [words] --help` lists.
std::vector<std::string>
subcommands_of(const std::vector<std::string>& words)
{
  auto args = words;
  args.push_back("--help");
  std::string help = test::output_of(test::kiln(args), "help");
  std::vector<std::string> out;
  auto pos = help.find("\nSubcommands:\n");
  if (pos == std::string::npos) {
    return out;
  }
  std::istringstream lines(help.substr(pos + 14));
  std::string line;
  while (std::getline(lines, line) && line.starts_with("  ")) {
    out.push_back(line.substr(2, line.find(' ', 2) - 2));
  }
  return out;
}

// What bash completes for the words of `line` (the last one being completed).
std::string
complete(const fs::path& script, const std::string& line)
{
  std::string program = "source '" + script.string() + "'\n"
                        "COMP_WORDS=(" + line + ")\n"
                        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
                        "[[ '" + line + "' == *' ' ]] && { COMP_WORDS+=(''); COMP_CWORD=$((COMP_CWORD + 1)); }\n"
                        "_kiln\n"
                        "echo \"${COMPREPLY[*]}\"\n";
  return test::output_of(test::run({"bash", "-c", program}), "completion of " + line);
}

} // namespace

TEST_CASE("cargo-kiln runs the kiln beside it, else the one on PATH", "[install][cargo-kiln]")
{
  // As cargo runs it for `cargo kiln ...`, and directly.
  CHECK(test::output_of(test::run({CARGO_KILN_BINARY, "kiln", "--version"}), "cargo-kiln") ==
        k_version);
  CHECK(test::output_of(test::run({CARGO_KILN_BINARY, "--version"}), "cargo-kiln") == k_version);
  TempDir dir;
  auto shown = test::run({CARGO_KILN_BINARY, "kiln", "--store", (dir / "s").string(), "config",
                          "show"});
  CHECK(shown.status == 0);
  CHECK_THAT(shown.out, Catch::Contains("store = " + (dir / "s").string() + "    # --store"));
  auto bad = test::run({CARGO_KILN_BINARY, "kiln", "frobnicate"});
  CHECK(bad.status == 2);   // kiln's own exit status comes through

  // Alone in a folder: the kiln on PATH, with the arguments after "kiln".
  fs::create_directories(dir / "alone");
  fs::copy_file(CARGO_KILN_BINARY, dir / "alone" / "cargo-kiln");
  test::write_file(dir / "path" / "kiln", "#!/bin/sh\necho \"path kiln: $*\"\n", true);
  test::RunOptions o;
  o.env["PATH"] = (dir / "path").string();
  auto via_path = test::run({(dir / "alone" / "cargo-kiln").string(), "kiln", "build", "-r"}, o);
  CHECK(test::output_of(via_path, "cargo-kiln") == "path kiln: build -r");
  o.env["PATH"] = (dir / "empty").string();
  auto none = test::run({(dir / "alone" / "cargo-kiln").string(), "kiln", "build"}, o);
  CHECK(none.status == 127);
  CHECK_THAT(none.err, Catch::Contains("cannot run kiln"));

  if (!test::have_program("cargo")) {
    test::skip("cargo is not installed: `cargo kiln` was not tested");
    return;
  }
  // Real cargo finds cargo-kiln on PATH.
  test::RunOptions with_cargo;
  with_cargo.env["PATH"] = fs::path(CARGO_KILN_BINARY).parent_path().string() + ":" +
                           get_env("PATH").value_or("/usr/bin:/bin");
  CHECK(test::output_of(test::run({"cargo", "kiln", "--version"}, with_cargo), "cargo kiln") ==
        k_version);
}

TEST_CASE("the man page and the bash completion cover every command", "[install][docs]")
{
  fs::path man = k_build_dir / "src" / "cli" / "kiln.1";
  fs::path bash = k_build_dir / "src" / "cli" / "kiln.bash";
  REQUIRE(fs::exists(man));
  REQUIRE(fs::exists(bash));
  std::string page = read_file(man);
  CHECK_THAT(page, Catch::Contains(".TH KILN 1 \"\" \"" + k_version + "\""));
  for (const auto& cmd : subcommands_of({})) {
    INFO(cmd);
    CHECK_THAT(page, Catch::Contains(".SS \"kiln " + cmd + "\""));
    for (const auto& sub : subcommands_of({cmd})) {
      CHECK_THAT(page, Catch::Contains(".SS \"kiln " + cmd + " " + sub + "\""));
    }
  }
  CHECK_THAT(page, Catch::Contains("\\fB\\-\\-keep\\-days\\fR UINT") ||
                     Catch::Contains("\\fB\\-\\-keep-days\\fR UINT"));
  if (test::have_program("groff")) {
    auto r = test::run({"groff", "-man", "-ww", "-z", man.string()});
    CHECK(r.status == 0);
    CHECK(r.err.empty());
  }

  CHECK(test::run({"bash", "-n", bash.string()}).status == 0);
  CHECK_THAT(complete(bash, "kiln ca"), Catch::Equals("cache"));
  CHECK_THAT(complete(bash, "kiln cache "), Catch::Equals("gc check"));
  CHECK_THAT(complete(bash, "kiln cache gc --ke"), Catch::Equals("--keep-days"));
  CHECK_THAT(complete(bash, "kiln --store /tmp do"), Catch::Equals("doctor"));
  CHECK_THAT(complete(bash, "kiln doctor --j"), Catch::Equals("--json --jobs"));
}

TEST_CASE("cmake --install and cpack put kiln, cargo-kiln, the man page and completions in place",
          "[install]")
{
  TempDir dir;
  auto installed = test::run({"cmake", "--install", k_build_dir.string(), "--prefix",
                              (dir / "prefix").string()});
  INFO(installed.out << installed.err);
  REQUIRE(installed.status == 0);
  for (const char* file : {"bin/kiln", "bin/cargo-kiln", "libexec/kiln/kiln-rust-unit",
                           "share/man/man1/kiln.1", "share/bash-completion/completions/kiln"}) {
    INFO(file);
    CHECK(fs::exists(dir / "prefix" / file));
  }
  // The installed kiln builds a Cargo project, with the installed
  // kiln-rust-unit and, without it, by itself.
  test::write_file(dir / "hello" / "Cargo.toml",
                   "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
  // The installed kiln builds a main.rs printing `text`; the binary prints it.
  auto build_printing = [&](const std::string& text) {
    test::write_file(dir / "hello" / "src" / "main.rs",
                     "fn main() { println!(\"" + text + "\"); }\n");
    test::RunOptions in_hello;
    in_hello.cwd = dir / "hello";
    auto built = test::run({(dir / "prefix" / "bin" / "kiln").string(), "--store",
                            (dir / "store").string(), "build"},
                           in_hello);
    INFO(built.err);
    REQUIRE(built.status == 0);
    CHECK(test::run({(dir / "hello" / "target" / "kiln" / "debug" / "hello").string()}).out ==
          text + "\n");
  };
  build_printing("hello");
  fs::remove(dir / "prefix" / "libexec" / "kiln" / "kiln-rust-unit");
  build_printing("hello again");
  CHECK(test::output_of(test::run({(dir / "prefix" / "bin" / "cargo-kiln").string(), "kiln",
                                   "--version"}),
                        "installed cargo-kiln") == k_version);

  if (!test::have_program("dpkg-deb")) {
    test::skip("dpkg-deb is not installed: the .deb was not tested");
    return;
  }
  auto packed = test::run({"cpack", "-G", "DEB", "--config",
                           (k_build_dir / "CPackConfig.cmake").string(), "-B",
                           (dir / "deb").string()});
  INFO(packed.out << packed.err);
  REQUIRE(packed.status == 0);
  fs::path deb;
  for (const auto& e : fs::directory_iterator(dir / "deb")) {
    if (e.path().extension() == ".deb") {
      deb = e.path();
    }
  }
  REQUIRE_FALSE(deb.empty());
  auto contents = test::output_of(test::run({"dpkg-deb", "-c", deb.string()}), "dpkg-deb -c");
  for (const char* file : {"./usr/bin/kiln", "./usr/bin/cargo-kiln", "./usr/libexec/kiln/kiln-rust-unit",
                           "./usr/share/man/man1/kiln.1",
                           "./usr/share/bash-completion/completions/kiln"}) {
    CHECK_THAT(contents, Catch::Contains(file));
  }
  auto fields = test::output_of(test::run({"dpkg-deb", "-f", deb.string(), "Package", "Version",
                                           "Depends"}),
                                "dpkg-deb -f");
  CHECK_THAT(fields, Catch::Contains("Package: kiln") && Catch::Contains("libsodium23") &&
                       Catch::Contains(std::string("Version: ") + KILN_VERSION));
}
