#include "support/cargo_oracle.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <regex>
#include <sstream>

namespace kiln::test {

namespace {

// Split a shell-quoted command line as cargo -v and kiln -v print it.
std::vector<std::string>
shell_words(const std::string& text)
{
  std::vector<std::string> words;
  std::string current;
  bool in_word = false;
  char quote = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quote) {
      if (c == quote) {
        quote = 0;
      } else {
        current += c;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (c == '\\' && i + 1 < text.size()) {
      current += text[++i];
      in_word = true;
    } else if (c == ' ') {
      if (in_word) {
        words.push_back(current);
      }
      current.clear();
      in_word = false;
    } else {
      current += c;
      in_word = true;
    }
  }
  if (in_word) {
    words.push_back(current);
  }
  return words;
}

std::string
normalize(const std::vector<std::string>& argv)
{
  static const std::regex dropped_c("^(incremental|metadata|extra-filename)=.*");
  static const std::regex dropped("^--(error-format|json|diagnostic-width|remap-path-prefix)=.*");
  static const std::regex hash_part("-[0-9a-f]{16}\\.");
  std::string out = "rustc";
  for (size_t i = 1; i < argv.size(); ++i) {
    std::string a = argv[i];
    bool has_next = i + 1 < argv.size();
    if ((a == "--out-dir" || a == "--color") && has_next) {
      ++i;
      continue;
    }
    if (a == "-C" && has_next && std::regex_match(argv[i + 1], dropped_c)) {
      ++i;
      continue;
    }
    if (a == "-L" && has_next && argv[i + 1].starts_with("dependency=")) {
      ++i;
      continue;
    }
    if (std::regex_match(a, dropped)) {
      continue;
    }
    if (a.starts_with("--emit=")) {
      a = std::regex_replace(a, std::regex("dep-info,"), "");
    }
    if (a == "--extern" && has_next && argv[i + 1].find('=') != std::string::npos) {
      std::string e = argv[++i];
      std::string file = e.substr(e.rfind('/') + 1);
      out += " --extern " + e.substr(0, e.find('=')) + "=" + std::regex_replace(file, hash_part, ".");
      continue;
    }
    if (a == "-L" && has_next && argv[i + 1].starts_with("native=")) {
      ++i;
      out += " -L native=OUT";
      continue;
    }
    if (a.starts_with("/") && a.ends_with(".rs")) {
      a = "ABS:" + a.substr(a.rfind('/') + 1);
    }
    out += " " + a;
  }
  return out;
}

} // namespace

std::multiset<std::string>
rustc_lines(const std::string& verbose_output)
{
  std::multiset<std::string> lines;
  std::istringstream in(verbose_output);
  for (std::string line; std::getline(in, line);) {
    auto start = line.find("Running `");
    if (start == std::string::npos || line.back() != '`') {
      continue;
    }
    auto argv = shell_words(line.substr(start + 9, line.size() - start - 10));
    if (!argv.empty() && fs::path(argv[0]).filename() == "rustc") {
      lines.insert(normalize(argv));
    } else if (argv.size() > 1 && fs::path(argv[0]).filename() == "clippy-driver" &&
               fs::path(argv[1]).filename() == "rustc") {
      // cargo clippy's wrapper of the workspace's compiles
      lines.insert("clippy-driver " + normalize({argv.begin() + 1, argv.end()}));
    }
  }
  return lines;
}

OracleRun
build_with_both(const fs::path& project, const std::vector<std::string>& flags,
                const fs::path& scratch, const std::map<std::string, std::string>& env,
                const std::string& command)
{
  static int serial = 0;
  std::string n = std::to_string(serial++);
  RunOptions options;
  options.cwd = project;
  options.env = env;
  RunOptions with_target = options;
  with_target.env["CARGO_TARGET_DIR"] = (scratch / ("cargo-target-" + n)).string();
  std::vector<std::string> cargo = {"cargo", command, "-v"};
  cargo.insert(cargo.end(), flags.begin(), flags.end());
  OracleRun run;
  run.cargo_target_dir = scratch / ("cargo-target-" + n);
  run.store = scratch / ("store-" + n);
  run.cargo = test::run(cargo, with_target);
  std::vector<std::string> kiln = {"--store", (scratch / ("store-" + n)).string(), command, "-v"};
  kiln.insert(kiln.end(), flags.begin(), flags.end());
  run.kiln = test::kiln(kiln, options);
  INFO("cargo " << command << " " << nlohmann::json(flags).dump());
  INFO("cargo said:\n" << run.cargo.err);
  INFO("kiln said:\n" << run.kiln.err);
  CHECK(run.cargo.status == 0);
  CHECK(run.kiln.status == 0);
  return run;
}

void
check_same_rustc_lines(const OracleRun& run, const std::string& what)
{
  // As sets: a build script found reading the host makes kiln compile what
  // depends on it twice (docs/cargo.md), the same command lines both times.
  auto all_want = rustc_lines(run.cargo.err), all_got = rustc_lines(run.kiln.err);
  std::set<std::string> want(all_want.begin(), all_want.end()), got(all_got.begin(), all_got.end());
  std::vector<std::string> only_cargo, only_kiln;
  std::set_difference(want.begin(), want.end(), got.begin(), got.end(),
                      std::back_inserter(only_cargo));
  std::set_difference(got.begin(), got.end(), want.begin(), want.end(),
                      std::back_inserter(only_kiln));
  INFO(what);
  CHECK(!want.empty());
  for (const auto& l : only_cargo) {
    UNSCOPED_INFO("only cargo ran: " << l);
  }
  CHECK(only_cargo.empty());
  for (const auto& l : only_kiln) {
    UNSCOPED_INFO("only kiln ran: " << l);
  }
  CHECK(only_kiln.empty());
}

} // namespace kiln::test
