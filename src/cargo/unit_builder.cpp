// The in-sandbox half of "builtin:rust-unit": `kiln-rust-unit` (or `kiln
// __rust-unit`) reads the unit from its environment, fills in the host paths that are not part of
// its identity (@RUSTC@, @CARGO@, ...), applies the directives of the build
// scripts it depends on, and runs rustc or the build script.
#include <kiln/build/build.hpp>
#include <kiln/cargo/inputs.hpp>
#include <kiln/cargo/unit_builder.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <set>
#include <functional>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string_view>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string
envify(std::string s)
{
  for (auto& c : s) {
    c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return s;
}

std::string
parse_build_script_output(const std::string& stdout_text, std::string& error,
                          std::vector<std::string>& warnings)
{
  json d = {{"cfgs", json::array()},        {"check_cfgs", json::array()},
            {"env", json::array()},         {"link_libs", json::array()},
            {"link_search", json::array()}, {"link_args", json::array()},
            {"metadata", json::array()},    {"env_reads", json::array()},
            {"file_reads", json::array()}};
  std::istringstream lines(stdout_text);
  for (std::string line; std::getline(lines, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.pop_back();
    }
    bool new_syntax = line.starts_with("cargo::");
    if (!new_syntax && !line.starts_with("cargo:")) {
      continue;
    }
    std::string rest = line.substr(new_syntax ? 7 : 6);
    auto eq = rest.find('=');
    if (eq == std::string::npos) {
      continue;
    }
    std::string key = rest.substr(0, eq);
    std::string value = rest.substr(eq + 1);
    if (key == "rustc-cfg") {
      d["cfgs"].push_back(value);
    } else if (key == "rustc-check-cfg") {
      d["check_cfgs"].push_back(value);
    } else if (key == "rustc-env") {
      auto e = value.find('=');
      if (e != std::string::npos) {
        d["env"].push_back({value.substr(0, e), value.substr(e + 1)});
      }
    } else if (key == "rustc-link-lib") {
      d["link_libs"].push_back(value);
    } else if (key == "rustc-link-search") {
      d["link_search"].push_back(value);
    } else if (key == "rustc-flags") {
      // Only -l and -L are allowed here.
      std::istringstream words(value);
      std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
      for (size_t i = 0; i < w.size(); ++i) {
        std::string flag = w[i], arg;
        if (flag.size() > 2) {
          arg = flag.substr(2);
          flag = flag.substr(0, 2);
        } else if (i + 1 < w.size()) {
          arg = w[++i];
        }
        if (flag == "-l") {
          d["link_libs"].push_back(arg);
        } else if (flag == "-L") {
          d["link_search"].push_back(arg);
        }
      }
    } else if (key.starts_with("rustc-link-arg")) {
      std::string scope = key.substr(14); // "", "-bins", "-bin", "-cdylib", "-tests", ...
      if (scope == "-bin") {
        auto e = value.find('=');
        d["link_args"].push_back({{"scope", "bin"}, {"bin", value.substr(0, e)},
                                  {"arg", e == std::string::npos ? "" : value.substr(e + 1)}});
      } else {
        d["link_args"].push_back({{"scope", scope.empty() ? "all" : scope.substr(1)}, {"arg", value}});
      }
    } else if (key == "rustc-cdylib-link-arg") {
      d["link_args"].push_back({{"scope", "cdylib"}, {"arg", value}});
    } else if (key == "warning") {
      warnings.push_back(value);
    } else if (key == "error") {
      if (error.empty()) {
        error = value;
      }
    } else if (key == "rerun-if-env-changed") {
      // What the script reads of the caller's environment: kiln passes such
      // a variable on (in the run's identity) once it knows of it.
      d["env_reads"].push_back(value);
    } else if (key == "rerun-if-changed") {
      // Files of the host the script reads (those of its package are in its
      // sources already).
      if (value.starts_with("/")) {
        d["file_reads"].push_back(value);
      }
    } else if (key == "metadata") {
      auto e = value.find('=');
      if (e != std::string::npos) {
        d["metadata"].push_back({value.substr(0, e), value.substr(e + 1)});
      }
    } else if (!new_syntax) {
      // Old syntax: any other key is metadata for dependents (DEP_*).
      d["metadata"].push_back({key, value});
    }
  }
  return d.dump(1);
}

namespace {

std::string
substitute(std::string text, const std::map<std::string, std::string>& values)
{
  for (const auto& [from, to] : values) {
    for (size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size())) {
      text.replace(pos, from.size(), to);
    }
  }
  return text;
}

// Run `argv` in `cwd` with the current environment (less kiln's own
// variables) plus `env`; stdout goes to `stdout_file` when given (else it is
// inherited), stderr line by line to `on_stderr` when given. Returns the
// status.
int
run(const std::vector<std::string>& argv, const std::string& cwd,
    const std::map<std::string, std::string>& env, const std::optional<fs::path>& stdout_file,
    const std::function<void(const std::string&)>& on_stderr = {})
{
  ProcessOptions options;
  options.cwd = cwd;
  options.env = env;
  options.unset_env = {"KILN_UNIT_*", k_unit_env};
  options.stdout_file = stdout_file;
  options.on_stderr_line = on_stderr ? on_stderr : [](const std::string& line) {
    std::cerr << line << "\n";
  };
  ProcessResult result = run_process(argv, options);
  if (!result.out.empty()) {
    std::cout << result.out << std::flush;
  }
  if (result.status == 127 && !result.err.empty()) {
    std::cerr << "kiln: " << result.err << "\n";
  }
  if (result.signaled) {
    std::cerr << "kiln: " << argv[0] << " was " << result.describe() << "\n";
  }
  return result.status;
}

// One line of rustc's stderr under --error-format=json: diagnostics are
// shown as rustc would print them, a written .rmeta is announced to kiln.
void
rustc_message(const std::string& line, std::string& diagnostics,
              const std::function<std::string(const std::string&)>& published)
{
  json message = json::parse(line, nullptr, false);
  if (message.is_discarded() || !message.is_object()) {
    std::cerr << line << "\n"; // not JSON: an ICE, a crash, the linker
    return;
  }
  std::string type = message.value("$message_type", "");
  if (type == "artifact") {
    if (message.value("emit", "") == "metadata") {
      json note = {{"action", "early-output"}, {"path", published(message.value("artifact", ""))}};
      std::cerr << k_builder_message_prefix << note.dump() << std::endl;
    }
  } else if (type == "diagnostic") {
    diagnostics += line + "\n";
    auto rendered = message.find("rendered");
    if (rendered != message.end() && rendered->is_string()) {
      // Where it starts and ends, for kiln to show it whole (and once,
      // however many units emit it, as cargo does).
      std::string text = rendered->get<std::string>();
      std::cerr << k_builder_message_prefix << json({{"action", "diagnostic-start"}}).dump()
                << "\n"
                << text << (text.ends_with('\n') ? "" : "\n") << k_builder_message_prefix
                << json({{"action", "diagnostic-end"}}).dump() << std::endl;
    }
  }
}

json
read_directives(const std::string& run_out)
{
  return json::parse(read_file(fs::path(run_out) / k_directives_file));
}

// Tell kiln what runs (`kiln build -v` shows it as cargo -v does).
void
announce_command(const std::vector<std::string>& argv, const std::string& cwd)
{
  json message = {{"action", "command"}, {"argv", argv}, {"cwd", cwd}};
  std::cerr << k_builder_message_prefix << message.dump() << std::endl;
}

// A folder where `workspace_path` (as it lies under the workspace's root)
// leads to the package's sources: rustc runs there with the source file's
// path relative to the workspace's root, as under cargo.
std::string
workspace_view(const std::string& sources, const std::string& workspace_path)
{
  const char* top = std::getenv("NIX_BUILD_TOP");
  fs::path root = fs::path(top ? top : "/tmp") / "workspace";
  if (workspace_path.empty()) {
    return sources;
  }
  fs::path link = root / workspace_path;
  fs::create_directories(link.parent_path());
  fs::create_symlink(sources, link);
  return root.string();
}

// The build scripts' directives that reach a compile, in cargo's order:
// link-search paths of every script reached through libraries, then this
// package's own (-L, -l, link args, cfgs, check-cfgs, rustc-env).
void
apply_directives(const json& spec, std::vector<std::string>& argv,
                 std::map<std::string, std::string>& env)
{
  for (const auto& from : spec.at("link_search_from")) {
    json d = read_directives(from.get<std::string>());
    for (const auto& s : d["link_search"]) {
      argv.insert(argv.end(), {"-L", s.get<std::string>()});
    }
  }
  std::string own = spec.value("own_script", "");
  if (own.empty()) {
    return;
  }
  json d = read_directives(own);
  for (const auto& s : d["link_search"]) {
    argv.insert(argv.end(), {"-L", s.get<std::string>()});
  }
  if (spec.at("apply_link_libs").get<bool>()) {
    for (const auto& l : d["link_libs"]) {
      argv.insert(argv.end(), {"-l", l.get<std::string>()});
    }
  }
  std::string scope = spec.at("link_arg_scope");
  for (const auto& a : d["link_args"]) {
    std::string s = a["scope"];
    bool applies = s == "all" || (s == "bins" && scope == "bin") ||
                   (s == "bin" && scope == "bin" && a["bin"] == spec["bin_name"]) ||
                   (s == "cdylib" && spec.at("cdylib").get<bool>()) ||
                   (s == "tests" && scope == "test") || (s == "benches" && scope == "bench") ||
                   (s == "examples" && scope == "example");
    if (applies && scope != "build-script") {
      argv.insert(argv.end(), {"-C", "link-arg=" + a["arg"].get<std::string>()});
    }
  }
  for (const auto& c : d["cfgs"]) {
    argv.insert(argv.end(), {"--cfg", c.get<std::string>()});
  }
  for (const auto& c : d["check_cfgs"]) {
    argv.insert(argv.end(), {"--check-cfg", c.get<std::string>()});
  }
  for (const auto& e : d["env"]) {
    env[e[0].get<std::string>()] = e[1].get<std::string>();
  }
}

// An incremental unit: rustc keeps its session in the folder kiln gives
// (KILN_UNIT_INCREMENTAL; without one, a fresh folder: no reuse, same
// result), and compiles the sources from a path that is the same in every
// build (in the build folder, which the sandbox puts at the same place each
// time), since rustc drops a session whose --remap-path-prefix, file names
// or working folder changed. That path is a real folder of links to the
// sources' entries: rustc learns its working folder from getcwd, which
// would resolve a link to the sources themselves. Returns where the
// sources now are.
std::string
compile_incrementally(const std::string& sources, std::vector<std::string>& argv,
                      std::map<std::string, std::string>& env, std::string& out_dir)
{
  const char* top = std::getenv("NIX_BUILD_TOP");
  fs::path build = top ? top : "/tmp";
  std::string stable = (build / "source").string();
  fs::create_directory(stable);
  for (const auto& entry : fs::directory_iterator(sources)) {
    fs::create_symlink(entry.path(), fs::path(stable) / entry.path().filename());
  }
  std::map<std::string, std::string> moved = {{sources, stable}};
  for (auto& a : argv) {
    a = substitute(a, moved);
  }
  for (auto& [k, v] : env) {
    v = substitute(v, moved);
  }
  const char* session = std::getenv("KILN_UNIT_INCREMENTAL");
  fs::path folder = session && *session ? fs::path(session) : build / "incremental";
  fs::create_directories(folder);
  argv.insert(argv.end(), {"-C", "incremental=" + folder.string()});
  // The output folder is part of the session's identity too: rustc writes
  // into one at a fixed place, and the builder moves what it made into the
  // output. That place is beside the output, in the sandbox's store folder
  // (the same path every time in namespaces mode), so that the move is a
  // rename, not a copy of a linked binary of tens of MB across mounts.
  out_dir = (fs::path(out_dir).parent_path() / ".kiln-rustc-out").string();
  fs::create_directory(out_dir);
  auto flag = std::find(argv.begin(), argv.end(), "--out-dir");
  if (flag != argv.end() && flag + 1 != argv.end()) {
    flag[1] = out_dir;
  }
  return stable;
}

// Move what rustc wrote in `from` into the output `to`: renamed where they
// share a file system, else copied.
void
move_products(const fs::path& from, const fs::path& to)
{
  for (const auto& entry : fs::directory_iterator(from)) {
    fs::path target = to / entry.path().filename();
    std::error_code ec;
    fs::rename(entry.path(), target, ec);
    if (ec) {
      fs::copy(entry.path(), target,
               fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    }
  }
}

// Trace what a step reads of the host (a build script: the files it and
// what it runs read, the variables it looks up; a compile: the variables its
// proc-macros look up): preload libkiln-trace.so (KILN_UNIT_TRACE) with the
// trace file in the build folder.
std::optional<fs::path>
trace_host_reads(std::map<std::string, std::string>& env)
{
  const char* shim = std::getenv("KILN_UNIT_TRACE");
  const char* top = std::getenv("NIX_BUILD_TOP");
  std::error_code ec;
  if (!shim || !*shim || !fs::exists(shim, ec)) {
    return std::nullopt;
  }
  fs::path trace = fs::path(top ? top : "/tmp") / "kiln-host-reads";
  env["LD_PRELOAD"] = shim;
  env["KILN_TRACE_FILE"] = trace.string();
  const char* ignore = std::getenv("KILN_UNIT_TRACE_IGNORE");
  env["KILN_TRACE_IGNORE"] = ignore ? ignore : "";
  const char* keep = std::getenv("KILN_UNIT_TRACE_KEEP");
  env["KILN_TRACE_KEEP"] = keep ? keep : "";
  return trace;
}

// What libkiln-trace.so wrote to a trace file: host paths whose content was
// read ("r PATH"), paths only looked at ("s PATH", those also read left
// out), and variables looked up and not found ("e NAME"). Empty if there is
// no such file (nothing was recorded).
struct HostTrace
{
  std::set<std::string> reads, probes, variables;
};

HostTrace
read_trace(const fs::path& trace)
{
  HostTrace t;
  std::error_code ec;
  if (!fs::exists(trace, ec)) {
    return t;
  }
  std::istringstream lines(read_file(trace));
  for (std::string line; std::getline(lines, line);) {
    if (line.size() < 3) {
      continue;
    }
    if (line[0] == 'e') {
      t.variables.insert(line.substr(2));
      continue;
    }
    std::string path = fs::path(line.substr(2)).lexically_normal().string();
    while (path.size() > 1 && path.back() == '/') {
      path.pop_back();
    }
    (line[0] == 'r' ? t.reads : t.probes).insert(path);
  }
  for (const auto& r : t.reads) {
    t.probes.erase(r);
  }
  return t;
}

// rustc's dep-info names what the crate read of the environment at compile
// time: "# env-dep:NAME=VALUE", or "# env-dep:NAME" when unset (newlines and
// backslashes escaped). The file leaves the output (it names the sources'
// store paths, which would become references); what the crate read beyond
// `given` (what cargo sets, [env], the build script's rustc-env) stays, in
// k_env_reads_file, with what its libraries' records say (`argv`'s -L
// dependency= folders): what they read is compiled into them, and so into
// this output, which may be taken from a cache without them.
//
// `trace`, if set: the variables the compile's proc-macros looked up and did
// not find (libkiln-trace.so's "e NAME" lines), which dep-info does not list
// (std::env::var while expanding); recorded as unset, but for presentation
// variables.
void
keep_environment_reads(const std::string& out, const std::map<std::string, std::string>& given,
                       const std::vector<std::string>& argv, const std::optional<fs::path>& trace)
{
  json reads = json::object();
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "-L" && argv[i + 1].starts_with("dependency=")) {
      fs::path record = fs::path(argv[i + 1].substr(std::string_view("dependency=").size())) /
                        k_env_reads_file;
      std::error_code ec;
      if (fs::exists(record, ec)) {
        reads.update(json::parse(read_file(record)));
      }
    }
  }
  for (const auto& entry : fs::directory_iterator(out)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".d") {
      continue;
    }
    std::istringstream lines(read_file(entry.path()));
    for (std::string line; std::getline(lines, line);) {
      constexpr std::string_view k_mark = "# env-dep:";
      if (!line.starts_with(k_mark)) {
        continue;
      }
      std::string rest = line.substr(k_mark.size());
      size_t equals = rest.find('=');
      std::string name = rest.substr(0, equals);
      if (given.count(name)) {
        continue;
      }
      if (equals == std::string::npos) {
        reads[name] = nullptr;
        continue;
      }
      std::string value;
      for (size_t k = equals + 1; k < rest.size(); ++k) {
        if (rest[k] == '\\' && k + 1 < rest.size()) {
          char c = rest[++k];
          value += c == 'n' ? '\n' : c == 'r' ? '\r' : c;
        } else {
          value += rest[k];
        }
      }
      reads[name] = value;
    }
    fs::remove(entry.path());
  }
  if (trace) {
    for (const auto& name : read_trace(*trace).variables) {
      if (!given.count(name) && !reads.contains(name) && !presentation_variable(name)) {
        reads[name] = nullptr;
      }
    }
  }
  if (!reads.empty()) {
    write_file_atomic(fs::path(out) / k_env_reads_file, reads.dump());
  }
}

// A compile that loads proc-macros is traced for the variables they look up
// while they expand (libkiln-trace.so, variables only, and only those looked
// up by code loaded from the store): cargo gives rustc, and so them, the
// caller's whole environment, and rustc's dep-info lists only what env!,
// option_env! and proc_macro's tracked_env read.
std::optional<fs::path>
trace_proc_macro_lookups(const std::vector<std::string>& argv,
                         std::map<std::string, std::string>& env)
{
  bool loads_proc_macro = false;
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    loads_proc_macro |= argv[i] == "--extern" && argv[i + 1].ends_with(".so");
  }
  const char* store = std::getenv("NIX_STORE");
  if (!loads_proc_macro || !store || !*store) {
    return std::nullopt;
  }
  std::optional<fs::path> trace = trace_host_reads(env);
  if (trace) {
    env["KILN_TRACE_FILES"] = "0";
    env["KILN_TRACE_ENV_FROM"] = std::string(store) + "/";
  }
  return trace;
}

int
compile(const json& spec, const std::map<std::string, std::string>& values, const std::string& out)
{
  std::vector<std::string> argv = {substitute(spec.at("program").get<std::string>(), values)};
  for (const auto& a : spec.at("args")) {
    argv.push_back(substitute(a.get<std::string>(), values));
  }
  argv.insert(argv.end(), {"--out-dir", out});
  std::map<std::string, std::string> env;
  for (const auto& [k, v] : spec.at("env").items()) {
    env[k] = substitute(v.get<std::string>(), values);
  }
  apply_directives(spec, argv, env);
  // Diagnostics as JSON, to hear when the .rmeta is written: dependents
  // that read only metadata may start then (see Frontend::may_start_early).
  argv.insert(argv.end(), {"--error-format=json", "--json=artifacts"});
  std::string cwd = spec.at("cwd");
  std::string out_dir = out;
  if (spec.value("incremental", false)) {
    cwd = compile_incrementally(cwd, argv, env, out_dir);
  }
  if (spec.contains("workspace_path")) {
    cwd = workspace_view(cwd, spec.at("workspace_path").get<std::string>());
  }
  announce_command(argv, cwd);
  std::optional<fs::path> trace = trace_proc_macro_lookups(argv, env);
  // An artifact written outside the output is copied into it before
  // dependents hear of it.
  auto published = [&](const std::string& artifact) {
    if (out_dir == out || !artifact.starts_with(out_dir + "/")) {
      return artifact;
    }
    fs::path in_out = fs::path(out) / fs::path(artifact).filename();
    fs::copy_file(artifact, in_out, fs::copy_options::overwrite_existing);
    return in_out.string();
  };
  std::string diagnostics;
  int status = run(argv, cwd, env, std::nullopt, [&](const std::string& line) {
    rustc_message(line, diagnostics, published);
  });
  if (status != 0) {
    return status;
  }
  if (out_dir != out) {
    move_products(out_dir, out);
    // Nothing but the outputs may be left in the store folder.
    fs::remove(out_dir);
  }
  keep_environment_reads(out, env, argv, trace);
  // Kept with the output, so that a unit taken from the store or a cache
  // shows its warnings again, as cargo replays those of fresh units.
  if (!diagnostics.empty()) {
    write_file_atomic(fs::path(out) / k_diagnostics_file, diagnostics);
  }
  if (spec.contains("rename")) {
    fs::path to = fs::path(out) / spec["rename"]["to"].get<std::string>();
    fs::create_directories(to.parent_path());
    fs::rename(fs::path(out) / spec["rename"]["from"].get<std::string>(), to);
  }
  return 0;
}

// The directives with the traced host paths added: `file_reads` (content
// read) and `file_probes` (only looked at); and `env_lookups`, the variables
// looked up that the run's environment did not hold.
std::string
with_traced_reads(const std::string& directives_text, const fs::path& trace)
{
  json d = json::parse(directives_text);
  HostTrace traced = read_trace(trace);
  for (const auto& f : d["file_reads"]) { // declared with rerun-if-changed
    traced.reads.insert(f.get<std::string>());
    traced.probes.erase(f.get<std::string>());
  }
  d["file_reads"] = traced.reads;
  d["file_probes"] = traced.probes;
  d["env_lookups"] = traced.variables;
  d["traced"] = true;
  return d.dump(1);
}

int
run_build_script(const json& spec, const std::map<std::string, std::string>& values,
                 const std::string& out)
{
  std::map<std::string, std::string> env;
  for (const auto& [k, v] : spec.at("env").items()) {
    env[k] = substitute(v.get<std::string>(), values);
  }
  for (const auto& dep : spec.at("links_deps")) {
    std::string links = dep.at("links");
    json d = read_directives(dep.at("from").get<std::string>());
    for (const auto& kv : d["metadata"]) {
      env["DEP_" + envify(links) + "_" + envify(kv[0].get<std::string>())] =
        kv[1].get<std::string>();
    }
  }
  fs::create_directories(fs::path(out) / "out");
  fs::path output = fs::path(out) / "output";
  std::vector<std::string> argv = {substitute(spec.at("program").get<std::string>(), values)};
  announce_command(argv, spec.at("cwd"));
  std::optional<fs::path> trace = trace_host_reads(env);
  if (trace) {
    // The variables the script looks up are traced in its own process only.
    std::error_code ec;
    fs::path program = fs::canonical(argv[0], ec);
    env["KILN_TRACE_ENV_OF"] = ec ? argv[0] : program.string();
  }
  int status = run(argv, spec.at("cwd"), env, output);
  std::string text = read_file(output);
  if (status != 0) {
    std::cerr << "build script of " << spec.at("package").get<std::string>()
              << " failed; its stdout:\n" << text;
    return status;
  }
  std::string error;
  std::vector<std::string> warnings;
  std::string directives = parse_build_script_output(text, error, warnings);
  if (trace) {
    directives = with_traced_reads(directives, *trace);
  }
  for (const auto& w : warnings) {
    std::cerr << "warning: " << spec.at("package").get<std::string>() << ": " << w << "\n";
  }
  if (!error.empty()) {
    std::cerr << "error: " << spec.at("package").get<std::string>() << ": " << error << "\n";
    return 1;
  }
  write_file_atomic(fs::path(out) / k_directives_file, directives);
  return 0;
}

// A test harness or rustdoc --test: run it, its output (stdout and stderr
// as they came) shown and kept in $out/output.txt, its status and time in
// $out/report.json. A failing test fails the unit: only passes are kept.
int
run_tests(const json& spec, const std::map<std::string, std::string>& values, const std::string& out)
{
  std::vector<std::string> argv = {substitute(spec.at("program").get<std::string>(), values)};
  for (const auto& a : spec.at("args")) {
    argv.push_back(substitute(a.get<std::string>(), values));
  }
  std::map<std::string, std::string> env;
  for (const auto& [k, v] : spec.at("env").items()) {
    env[k] = substitute(v.get<std::string>(), values);
  }
  std::string own = spec.value("own_script", "");
  if (!own.empty()) {
    // The build script's rustc-env values are there at run time too.
    for (const auto& e : read_directives(own)["env"]) {
      env[e[0].get<std::string>()] = e[1].get<std::string>();
    }
  }
  if (spec.at("mode") == "doctest") {
    apply_directives(spec, argv, env);
  }
  std::error_code ec;
  fs::create_directories("/tmp/kiln-target-tmp", ec); // CARGO_TARGET_TMPDIR, as compiled in
  std::string cwd = spec.at("cwd");
  if (spec.contains("workspace_path")) {
    cwd = workspace_view(cwd, spec.at("workspace_path").get<std::string>());
  }
  announce_command(argv, cwd);
  fs::create_directories(out);
  std::string output;
  ProcessOptions options;
  options.cwd = cwd;
  options.env = env;
  options.unset_env = {"KILN_UNIT_*", k_unit_env};
  options.merge_stderr = true;
  auto started = std::chrono::steady_clock::now();
  ProcessResult result = run_process(argv, options);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cerr << result.out << std::flush;
  if (!result.ok()) {
    if (result.status == 127 && !result.err.empty()) {
      std::cerr << "kiln: " << result.err << "\n";
    }
    std::cerr << "kiln: the tests failed (" << result.describe() << ")\n";
    return result.status == 0 ? 1 : result.status;
  }
  write_file_atomic(fs::path(out) / "output.txt", result.out);
  json report = {{"status", "passed"}, {"seconds", std::round(seconds * 1000) / 1000}};
  write_file_atomic(fs::path(out) / "report.json", report.dump());
  return 0;
}

} // namespace

int
run_rust_unit()
{
  try {
    const char* text = std::getenv(k_unit_env);
    const char* out = std::getenv("out");
    if (!text || !out) {
      std::cerr << "kiln __rust-unit: runs only as the builder of a Cargo unit's derivation\n";
      return 2;
    }
    json spec = json::parse(text);
    auto get = [](const char* name) {
      const char* v = std::getenv(name);
      return std::string(v ? v : "");
    };
    std::map<std::string, std::string> values = {{"@RUSTC@", get("KILN_UNIT_RUSTC")},
                                                 {"@RUSTDOC@", get("KILN_UNIT_RUSTDOC")},
                                                 {"@CLIPPY_DRIVER@", get("KILN_UNIT_CLIPPY_DRIVER")},
                                                 {"@RUST_LIB@", get("KILN_UNIT_RUST_LIB")},
                                                 {"@CARGO@", get("KILN_UNIT_CARGO")},
                                                 {"@NUM_JOBS@", get("KILN_UNIT_JOBS")},
                                                 {"@out@", out}};
    fs::create_directories(out);
    if (spec.at("mode") == "run") {
      return run_build_script(spec, values, out);
    }
    if (spec.at("mode") == "test-run" || spec.at("mode") == "doctest") {
      return run_tests(spec, values, out);
    }
    return compile(spec, values, out);
  } catch (const std::exception& e) {
    std::cerr << "kiln __rust-unit: " << e.what() << "\n";
    return 1;
  }
}

} // namespace kiln::cargo
