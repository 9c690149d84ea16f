#include "cargo_output.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

namespace kiln::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

MessageFormat
parse_message_format(const std::vector<std::string>& values)
{
  std::optional<MessageFormat> base;
  bool render = false;
  auto set = [&](MessageFormat f, const std::string& v) {
    if (base && *base != f) {
      throw UsageError("--message-format " + v + " conflicts with an earlier value");
    }
    base = f;
  };
  for (const auto& given : values) {
    std::istringstream parts(given);
    for (std::string v; std::getline(parts, v, ',');) {
      if (v == "human") {
        set(MessageFormat::human, v);
      } else if (v == "short") {
        set(MessageFormat::short_, v);
      } else if (v == "json" || v == "json-diagnostic-short" ||
                 v == "json-diagnostic-rendered-ansi") {
        set(MessageFormat::json, v);
      } else if (v == "json-render-diagnostics") {
        set(MessageFormat::json, v);
        render = true;
      } else {
        throw UsageError("--message-format: unknown value '" + v +
                         "' (human, short, json, json-render-diagnostics, json-diagnostic-short, "
                         "json-diagnostic-rendered-ansi)");
      }
    }
  }
  if (render) {
    return MessageFormat::json_render_diagnostics;
  }
  return base.value_or(MessageFormat::human);
}

CargoOutput::CargoOutput(const cargo::CargoProject& project, LocalStore& store, OutputOptions options)
  : m_project(project), m_plan(project.plan()), m_store(store), m_options(options),
    m_live(!options.quiet && ::isatty(2) && std::getenv("CI") == nullptr &&
           std::string(std::getenv("TERM") ? std::getenv("TERM") : "dumb") != "dumb")
{
}

void
CargoOutput::planned(const cargo::Plan&, const cargo::InstantiatedPlan& units)
{
  // A second round (a build script read more of the host than known)
  // starts the counts again.
  m_unit_of.clear();
  m_built = m_substituted = m_running = m_finished = 0;
  for (size_t i = 0; i < units.units.size(); ++i) {
    m_unit_of.emplace(units.units[i].drv, i);
  }
}

void
CargoOutput::note(const std::string& text)
{
  if (!m_options.quiet) {
    print_line("kiln: note: " + text);
  }
}

std::optional<size_t>
CargoOutput::unit_of(const StorePath& drv) const
{
  auto it = m_unit_of.find(drv);
  return it == m_unit_of.end() ? std::nullopt : std::optional<size_t>(it->second);
}

bool
CargoOutput::shows_output(size_t unit) const
{
  return m_options.format == MessageFormat::human && !m_options.quiet &&
         m_plan.units[unit].mode != cargo::UnitMode::doctest &&
         (m_plan.units[unit].package->is_local() || m_options.verbose > 0);
}

void
CargoOutput::step_started(const StorePath& drv, StepKind kind)
{
  auto unit = unit_of(drv);
  if (!unit) {
    return;
  }
  auto now = Clock::now();
  m_times[*unit] = {now, now};
  ++m_running;
  const cargo::Unit& u = m_plan.units[*unit];
  const char* verb = kind == StepKind::substituting                  ? "Substituting"
                     : u.mode == cargo::UnitMode::run_custom_build   ? "Running"
                     : u.mode == cargo::UnitMode::check || u.mode == cargo::UnitMode::check_test
                       ? "Checking"
                       : "Compiling";
  if (!m_options.quiet) {
    char line[512];
    std::snprintf(line, sizeof line, "%12s %s", verb, cargo::describe(u).c_str());
    print_line(line);
  }
}

void
CargoOutput::step_finished(const StorePath& drv, const StepResult& result)
{
  auto unit = unit_of(drv);
  if (!unit) {
    return;
  }
  m_times[*unit].second = Clock::now();
  m_running -= m_running > 0 ? 1 : 0;
  ++m_finished;
  m_built += result.status == StepStatus::built;
  m_substituted += result.status == StepStatus::substituted;
  if (auto held = m_diagnostic.find(*unit); held != m_diagnostic.end()) {
    show_text(held->second); // a diagnostic whose end never came
    m_diagnostic.erase(held);
  }
  if (m_live) {
    std::fprintf(stderr, "\r\x1b[K%s", status_bar().c_str());
    std::fflush(stderr);
  }
}

void
CargoOutput::downloaded(uint64_t bytes)
{
  m_downloaded += bytes;
}

void
CargoOutput::build_output(const StorePath& drv, std::string_view chunk)
{
  auto unit = unit_of(drv);
  if (!unit) {
    return;
  }
  m_output[*unit].append(chunk);
  if (shows_output(*unit)) {
    m_shown.insert(*unit);
    if (auto held = m_diagnostic.find(*unit); held != m_diagnostic.end()) {
      held->second.append(chunk); // shown whole when it ends
    } else {
      show_text(std::string(chunk));
    }
  }
}

namespace {

// rustc's closing counts ("2 warnings emitted", "aborting due to ..."),
// which cargo does not pass on: a diagnostic's message.
bool
is_closing_count(std::string_view message)
{
  return message.starts_with("aborting due to") || message.ends_with("warning emitted") ||
         message.ends_with("warnings emitted");
}

// The length of `text`'s first line (and the blank lines after it) if it
// is one of rustc's closing counts as rendered ("warning: 2 warnings
// emitted"), else 0.
size_t
closing_count_length(std::string_view text)
{
  size_t end = text.find('\n');
  std::string_view line = text.substr(0, end);
  for (std::string_view level : {"warning: ", "error: "}) {
    if (line.starts_with(level) && is_closing_count(line.substr(level.size()))) {
      end = text.find_first_not_of('\n', end);
      return end == std::string_view::npos ? text.size() : end;
    }
  }
  return 0;
}

// A diagnostic's text without its trailing blank lines: what tells two
// apart.
std::string
diagnostic_key(const std::string& rendered)
{
  size_t last = rendered.find_last_not_of(" \n");
  return last == std::string::npos ? std::string() : rendered.substr(0, last + 1);
}

} // namespace

bool
CargoOutput::first_showing(const std::string& rendered)
{
  std::string key = diagnostic_key(rendered);
  return key.empty() || m_diagnostics_shown.insert(key).second;
}

void
CargoOutput::show_diagnostic(std::string rendered)
{
  rendered.erase(0, closing_count_length(rendered));
  if (first_showing(rendered)) {
    show_text(rendered);
  }
}

void
CargoOutput::show_text(const std::string& text)
{
  if (text.empty()) {
    return;
  }
  if (m_live) {
    std::fprintf(stderr, "\r\x1b[K%s%s", text.c_str(), status_bar().c_str());
  } else {
    std::fputs(text.c_str(), stderr);
  }
  std::fflush(stderr);
}

void
CargoOutput::builder_message(const StorePath& drv, const std::string& text)
{
  json message = json::parse(text, nullptr, false);
  std::string action = message.is_object() ? message.value("action", "") : "";
  auto unit = unit_of(drv);
  if (unit && shows_output(*unit) && action == "diagnostic-start") {
    std::string& held = m_diagnostic[*unit];
    show_text(held); // (one whose end never came)
    held.clear();
    return;
  }
  if (unit && action == "diagnostic-end") {
    if (auto held = m_diagnostic.find(*unit); held != m_diagnostic.end()) {
      show_diagnostic(std::move(held->second));
      m_diagnostic.erase(held);
    }
    return;
  }
  if (m_options.verbose == 0 || m_options.quiet || !unit || action != "command") {
    return;
  }
  // As cargo -v: Running `program args...`
  std::string line = "     Running `";
  bool first = true;
  for (const auto& a : message.value("argv", json::array())) {
    std::string arg = a.get<std::string>();
    bool quote = arg.find_first_of(" \"'()$") != std::string::npos;
    line += (first ? "" : " ") + (quote ? "'" + arg + "'" : arg);
    first = false;
  }
  print_line(line + "`");
}

std::string
CargoOutput::status_bar() const
{
  size_t total = m_plan.units.size();
  size_t width = 24, done = total ? m_finished * width / total : width;
  std::string bar = "[" + std::string(done, '=') + (done < width ? ">" : "") +
                    std::string(width - std::min(width, done + 1), ' ') + "]";
  char line[256];
  std::snprintf(line, sizeof line,
                "%12s %s %zu/%zu: %zu built, %zu substituted, %zu running; %.1f MiB downloaded",
                "Building", bar.c_str(), m_finished, total, m_built, m_substituted, m_running,
                static_cast<double>(m_downloaded) / (1024.0 * 1024.0));
  return line;
}

void
CargoOutput::print_line(const std::string& text) const
{
  if (m_live) {
    std::fprintf(stderr, "\r\x1b[K%s\n%s", text.c_str(), status_bar().c_str());
  } else {
    std::fprintf(stderr, "%s\n", text.c_str());
  }
  std::fflush(stderr);
}

namespace {

// rustc's closing counts ("2 warnings emitted", "aborting due to ..."),
// which cargo does not pass on.
bool
is_summary(const json& d)
{
  return d.value("spans", json::array()).empty() && is_closing_count(d.value("message", ""));
}

// rustc's diagnostics kept in a unit's output, one JSON object a line.
std::vector<json>
stored_diagnostics(const fs::path& output)
{
  std::vector<json> out;
  std::error_code ec;
  fs::path file = output / cargo::k_diagnostics_file;
  if (!fs::exists(file, ec)) {
    return out;
  }
  std::istringstream lines(read_file(file));
  for (std::string line; std::getline(lines, line);) {
    json d = json::parse(line, nullptr, false);
    if (d.is_object() && !is_summary(d)) {
      out.push_back(std::move(d));
    }
  }
  return out;
}

// `short`: "file:line:col: level: message".
std::string
short_rendering(const json& d)
{
  std::string where;
  for (const auto& span : d.value("spans", json::array())) {
    if (span.value("is_primary", false)) {
      where = span.value("file_name", "") + ":" + std::to_string(span.value("line_start", 0)) + ":" +
              std::to_string(span.value("column_start", 0)) + ": ";
      break;
    }
  }
  return where + d.value("level", "") + ": " + d.value("message", "") + "\n";
}

json
target_json(const cargo::CargoTarget& t)
{
  json j = {{"kind", t.kind},         {"crate_types", t.crate_types}, {"name", t.name},
            {"src_path", t.src_path}, {"edition", t.edition},         {"doc", t.doc},
            {"doctest", t.doctest},   {"test", t.test}};
  if (!t.required_features.empty()) {
    j["required-features"] = t.required_features;
  }
  return j;
}

json
debuginfo_json(const std::string& d)
{
  return d == "0" || d == "1" || d == "2" ? json(std::stoi(d)) : json(d);
}

std::string
without_builder_messages(const std::string& text)
{
  std::string out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!is_builder_message(line)) {
      out += line + "\n";
    }
  }
  return out;
}

} // namespace

void
CargoOutput::replay_diagnostics(size_t unit, const cargo::CargoBuild& build)
{
  if (m_shown.count(unit) || m_options.quiet || m_options.format == MessageFormat::json) {
    return;
  }
  const cargo::Unit& u = m_plan.units[unit];
  if (!u.package->is_local() && m_options.verbose == 0) {
    return;
  }
  fs::path output = m_store.physical_path(build.units.units[unit].out);
  for (const auto& d : stored_diagnostics(output)) {
    std::string rendered = d.value("rendered", "");
    if (!first_showing(rendered)) {
      continue; // shown for another unit
    }
    std::cerr << (m_options.format == MessageFormat::short_ ? short_rendering(d) : rendered);
  }
}

void
CargoOutput::json_messages(size_t unit, const cargo::CargoBuild& build) const
{
  const cargo::Unit& u = m_plan.units[unit];
  const cargo::InstantiatedUnit& made = build.units.units[unit];
  fs::path output = m_store.physical_path(made.out);
  json base = {{"package_id", u.package->id}, {"manifest_path", u.package->manifest_path}};
  if (u.mode == cargo::UnitMode::run_custom_build) {
    json d = json::parse(read_file(output / cargo::k_directives_file));
    json env = json::array();
    for (const auto& e : d["env"]) {
      env.push_back(e);
    }
    json message = base;
    message.update({{"reason", "build-script-executed"},
                    {"linked_libs", d["link_libs"]},
                    {"linked_paths", d["link_search"]},
                    {"cfgs", d["cfgs"]},
                    {"env", env},
                    {"out_dir", (output / "out").string()}});
    std::cout << message.dump() << "\n";
    return;
  }
  if (m_options.format == MessageFormat::json) {
    for (const auto& d : stored_diagnostics(output)) {
      json message = base;
      message.update({{"reason", "compiler-message"}, {"target", target_json(u.target)}, {"message", d}});
      std::cout << message.dump() << "\n";
    }
  }
  json filenames = json::array();
  fs::path product = output / made.product;
  filenames.push_back(product.string());
  if (made.product.ends_with(".rlib")) {
    filenames.push_back(
      (output / (made.product.substr(0, made.product.size() - 5) + ".rmeta")).string());
  }
  bool executable = made.product.starts_with("bin/");
  auto step = build.result.steps.find(made.drv);
  bool fresh = step == build.result.steps.end() || step->second.status != StepStatus::built;
  json message = base;
  message.update({{"reason", "compiler-artifact"},
                  {"target", target_json(u.target)},
                  {"profile",
                   {{"opt_level", u.profile.opt_level},
                    {"debuginfo", debuginfo_json(u.profile.debuginfo)},
                    {"debug_assertions", u.profile.debug_assertions},
                    {"overflow_checks", u.profile.overflow_checks},
                    {"test", u.mode == cargo::UnitMode::test || u.mode == cargo::UnitMode::check_test}}},
                  {"features", u.features},
                  {"filenames", filenames},
                  {"executable", executable ? json(product.string()) : json(nullptr)},
                  {"fresh", fresh}});
  std::cout << message.dump() << "\n";
}

void
CargoOutput::finish(const cargo::CargoBuild& build)
{
  if (m_live) {
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
  }
  bool json_stream = m_options.format == MessageFormat::json ||
                     m_options.format == MessageFormat::json_render_diagnostics;
  for (size_t i = 0; i < m_plan.units.size(); ++i) {
    auto step = build.result.steps.find(build.units.units[i].drv);
    bool valid = m_store.is_valid(build.units.units[i].out);
    if (!valid || (step != build.result.steps.end() && step->second.status == StepStatus::failed)) {
      continue;
    }
    replay_diagnostics(i, build);
    if (json_stream) {
      json_messages(i, build);
    }
  }
  const StoreDir& dir = m_store.store_dir();
  // A failed test run is reported once, with the other results (report_tests).
  std::set<StorePath> test_runs;
  for (const auto& run : build.units.test_runs) {
    test_runs.insert(run.drv);
  }
  for (const auto& [drv, result] : build.result.steps) {
    if (result.status != StepStatus::failed || test_runs.count(drv)) {
      continue;
    }
    auto unit = unit_of(drv);
    if (unit && m_plan.units[*unit].mode == cargo::UnitMode::doctest) {
      continue;
    }
    std::string what = unit ? cargo::describe(m_plan.units[*unit]) : dir.print(drv);
    // rustc's diagnostics, as cargo shows them: the step's output, unless it
    // was shown as it came.
    if (!unit || !m_shown.count(*unit)) {
      std::error_code ec;
      fs::path log = log_path(m_store, drv);
      std::string text = fs::exists(log, ec) ? without_builder_messages(read_file(log)) : "";
      std::cerr << (text.empty() ? result.error + "\n" : text);
    }
    std::cerr << "kiln: error: could not build " << what << " (log: kiln log " << dir.print(drv)
              << ")\n";
  }
  if (json_stream) {
    std::cout << json({{"reason", "build-finished"}, {"success", build.succeeded()}}).dump()
              << std::endl;
  }
}

void
CargoOutput::print_json(const cargo::CargoBuild& build) const
{
  const StoreDir& dir = m_store.store_dir();
  for (size_t i = 0; i < m_plan.units.size(); ++i) {
    const auto& u = m_plan.units[i];
    const auto& made = build.units.units[i];
    auto r = build.result.steps.find(made.drv);
    std::string status = r != build.result.steps.end() ? to_string(r->second.status)
                         : m_store.is_valid(made.out) ? "present"
                                                      : "not-needed";
    json j = {{"name", u.package->name},
              {"version", u.package->version},
              {"kind", u.kind_name()},
              {"mode", cargo::to_string(u.mode)},
              {"target", u.target.name},
              {"features", u.features},
              {"drv", dir.print(made.drv)},
              {"path", dir.print(made.out)},
              {"status", status}};
    if (r != build.result.steps.end() && !r->second.error.empty()) {
      j["error"] = r->second.error;
    }
    if (auto times = m_times.find(i); times != m_times.end()) {
      // When its build or substitution started (since kiln did) and how long it took.
      using seconds = std::chrono::duration<double>;
      auto round = [](double x) { return std::round(x * 1000) / 1000; };
      j["start"] = round(seconds(times->second.first - m_started).count());
      j["seconds"] = round(seconds(times->second.second - times->second.first).count());
    }
    if (u.mode == cargo::UnitMode::doctest) {
      j["cached"] = status == "present" || status == "substituted";
    }
    std::cout << j.dump() << std::endl;
  }
  for (size_t i = 0; i < build.units.test_runs.size(); ++i) {
    const auto& made = build.units.test_runs[i];
    const auto& u = m_plan.units[build.units.test_run_of[i]];
    auto r = build.result.steps.find(made.drv);
    std::string status = r != build.result.steps.end() ? to_string(r->second.status)
                         : m_store.is_valid(made.out) ? "present"
                                                      : "not-run";
    json j = {{"name", u.package->name},
              {"version", u.package->version},
              {"kind", "test-run"},
              {"target", u.target.name},
              {"drv", dir.print(made.drv)},
              {"path", dir.print(made.out)},
              {"status", status},
              {"cached", status == "present" || status == "substituted"}};
    if (r != build.result.steps.end() && !r->second.error.empty()) {
      j["error"] = r->second.error;
    }
    std::cout << j.dump() << std::endl;
  }
}

fs::path
CargoOutput::write_timings(const cargo::CargoBuild& build, const std::string& formats,
                           const fs::path& dir) const
{
  using seconds = std::chrono::duration<double>;
  double total = seconds(Clock::now() - m_started).count();
  std::ostringstream rows, bars;
  json lines = json::array();
  size_t row = 0;
  for (const auto& [unit, times] : m_times) {
    double start = seconds(times.first - m_started).count();
    double took = seconds(times.second - times.first).count();
    auto step = build.result.steps.find(build.units.units[unit].drv);
    std::string status = step != build.result.steps.end() ? to_string(step->second.status) : "";
    std::string name = cargo::describe(m_plan.units[unit]);
    char cells[512];
    std::snprintf(cells, sizeof cells, "<tr><td>%s</td><td>%s</td><td>%.2f</td><td>%.2f</td></tr>\n",
                  name.c_str(), status.c_str(), start, took);
    rows << cells;
    double scale = total > 0 ? 800.0 / total : 0;
    std::snprintf(cells, sizeof cells,
                  "<rect x=\"%.1f\" y=\"%zu\" width=\"%.1f\" height=\"14\" fill=\"%s\"><title>%s "
                  "%.2fs</title></rect>\n",
                  start * scale, row * 16, std::max(1.0, took * scale),
                  status == "substituted" ? "#7aa6da" : status == "failed" ? "#d54e53" : "#b9ca4a",
                  name.c_str(), took);
    bars << cells;
    ++row;
    lines.push_back({{"unit", name}, {"status", status}, {"start", start}, {"seconds", took}});
  }
  fs::create_directories(dir);
  fs::path report = dir / "kiln-timing.html";
  std::ofstream html(report);
  html << "<!doctype html><html><head><meta charset=\"utf-8\"><title>kiln build timings</title>"
       << "</head><body><h1>kiln build timings</h1><p>" << m_plan.units.size() << " units, "
       << m_built << " built, " << m_substituted << " substituted, in " << total
       << " s</p><svg width=\"820\" height=\"" << row * 16 + 4 << "\">" << bars.str()
       << "</svg><table><tr><th>unit</th><th>status</th><th>start (s)</th><th>seconds</th></tr>"
       << rows.str() << "</table></body></html>\n";
  if (formats.find("json") != std::string::npos) {
    for (const auto& l : lines) {
      json message = {{"reason", "timing-info"}};
      message.update(l);
      std::cout << message.dump() << "\n";
    }
  }
  return report;
}

namespace {

// "unittests src/lib.rs", "tests/it.rs", as cargo names a harness.
std::string
harness_name(const cargo::Unit& u)
{
  std::string src = u.target.src_path.lexically_relative(u.package->root()).string();
  return u.target.is_test() || u.target.is_bench() ? src : "unittests " + src;
}

// How to run one harness again, as cargo says it.
std::string
rerun_hint(const cargo::Unit& u)
{
  std::string which = u.mode == cargo::UnitMode::doctest ? "--doc"
                      : u.target.is_lib()                ? "--lib"
                      : u.target.is_bin()                ? "--bin " + u.target.name
                      : u.target.is_test()               ? "--test " + u.target.name
                      : u.target.is_bench()              ? "--bench " + u.target.name
                                                         : "--example " + u.target.name;
  return "-p " + u.package->name + " " + which;
}

} // namespace

bool
CargoOutput::report_tests(const cargo::CargoBuild& build)
{
  struct Run
  {
    size_t unit;
    const cargo::InstantiatedUnit* made;
  };
  std::vector<Run> runs;
  for (size_t i = 0; i < build.units.test_runs.size(); ++i) {
    runs.push_back({build.units.test_run_of[i], &build.units.test_runs[i]});
  }
  for (size_t i = 0; i < m_plan.units.size(); ++i) {
    if (m_plan.units[i].mode == cargo::UnitMode::doctest) {
      runs.push_back({i, &build.units.units[i]});
    }
  }
  size_t passed = 0, cached = 0, failed = 0;
  const StoreDir& dir = m_store.store_dir();
  std::ostream& report = m_options.json_lines ? std::cerr : std::cout;
  for (const auto& run : runs) {
    const cargo::Unit& u = m_plan.units[run.unit];
    auto step = build.result.steps.find(run.made->drv);
    StepStatus status = step != build.result.steps.end() ? step->second.status
                        : m_store.is_valid(run.made->out) ? StepStatus::present
                                                          : StepStatus::skipped;
    bool from_store = status == StepStatus::present || status == StepStatus::substituted;
    std::string header = u.mode == cargo::UnitMode::doctest
                           ? "   Doc-tests " + u.target.crate_name()
                           : "     Running " + harness_name(u) + " (" + cargo::describe(u) + ")";
    if (status == StepStatus::failed) {
      ++failed;
      std::cerr << header << "\n";
      std::error_code ec;
      fs::path log = log_path(m_store, run.made->drv);
      report << (fs::exists(log, ec) ? without_builder_messages(read_file(log))
                                     : step->second.error + "\n");
      std::cerr << "error: test failed, to rerun pass `" << rerun_hint(u) << "` (log: kiln log "
                << dir.print(run.made->drv) << ")\n";
      continue;
    }
    if (status == StepStatus::skipped) {
      ++failed;
      std::cerr << header << ": not run"
                << (step != build.result.steps.end() ? " (" + step->second.error + ")" : "")
                << "\n";
      continue;
    }
    ++passed;
    cached += from_store;
    if (!m_options.quiet) {
      std::cerr << header << (from_store ? " (cached)" : "") << "\n";
    }
    std::error_code ec;
    fs::path output = m_store.physical_path(run.made->out) / "output.txt";
    if (fs::exists(output, ec)) {
      report << read_file(output) << std::flush;
    }
  }
  if (!m_options.quiet && !runs.empty()) {
    std::fprintf(stderr, "%12s %zu test binaries: %zu passed (%zu cached), %zu failed\n", "Tested",
                 runs.size(), passed, cached, failed);
  }
  return failed == 0;
}

void
CargoOutput::print_finished(const cargo::CargoBuild& build) const
{
  if (m_options.quiet) {
    return;
  }
  (void)build;
  double secs = std::chrono::duration<double>(Clock::now() - m_started).count();
  size_t units = m_plan.units.size();
  std::string profile = units ? m_plan.units[m_plan.roots.empty() ? 0 : m_plan.roots.front()].profile.name
                              : "dev";
  char line[256];
  std::snprintf(line, sizeof line,
                "`%s` profile: %zu units (%zu built, %zu substituted, %zu present or not needed; "
                "%.1f MiB downloaded) in %.2fs",
                profile.c_str(), units, m_built, m_substituted, units - m_built - m_substituted,
                static_cast<double>(m_downloaded) / (1024.0 * 1024.0), secs);
  std::fprintf(stderr, "%12s %s\n", "Finished", line);
}

} // namespace kiln::cli
