// What a Cargo build shows: progress on stderr as cargo prints it (and a
// status line on a terminal), the units' diagnostics, cargo's JSON messages
// (--message-format json) or kiln's (--json) on stdout, a timings report.
#pragma once

#include "cli.hpp"

#include <kiln/cargo/project.hpp>

#include <chrono>
#include <map>
#include <optional>
#include <string>

namespace kiln::cli {

enum class MessageFormat { human, short_, json, json_render_diagnostics };

// --message-format values (comma-separated, repeatable) → the format.
MessageFormat parse_message_format(const std::vector<std::string>& values);

struct OutputOptions
{
  bool quiet = false;
  int verbose = 0;
  MessageFormat format = MessageFormat::human;
  // stdout carries kiln's JSON lines (--json): the test harnesses' reports
  // go to stderr.
  bool json_lines = false;
};

class CargoOutput : public cargo::CargoObserver
{
public:
  CargoOutput(const cargo::CargoProject& project, LocalStore& store, OutputOptions options);

  void planned(const cargo::Plan& plan, const cargo::InstantiatedPlan& units) override;
  void note(const std::string& text) override;
  void step_started(const StorePath& drv, StepKind kind) override;
  void step_finished(const StorePath& drv, const StepResult& result) override;
  void downloaded(uint64_t bytes) override;
  void build_output(const StorePath& drv, std::string_view chunk) override;
  void builder_message(const StorePath& drv, const std::string& message) override;

  // After the build: clear the status line; the diagnostics of units that
  // did not just show them (taken from the store or a cache) and cargo's
  // JSON messages in the plan's order; each failure with its log.
  void finish(const cargo::CargoBuild& build);
  // --json: a line per unit.
  void print_json(const cargo::CargoBuild& build) const;
  // --timings: an HTML report of the schedule (and, with =json, one line a
  // unit on stdout). Returns the report's path.
  std::filesystem::path write_timings(const cargo::CargoBuild& build, const std::string& formats,
                                      const std::filesystem::path& dir) const;
  // kiln test: each test harness's and doctest's result, as cargo prints
  // them (those taken from the store or a cache marked "cached"); false if
  // any failed or did not run.
  bool report_tests(const cargo::CargoBuild& build);
  // "Finished `dev` profile: ..."
  void print_finished(const cargo::CargoBuild& build) const;

  std::optional<size_t> unit_of(const StorePath& drv) const;

private:
  using Clock = std::chrono::steady_clock;
  std::string status_bar() const;
  void print_line(const std::string& text) const;
  void replay_diagnostics(size_t unit, const cargo::CargoBuild& build);
  void json_messages(size_t unit, const cargo::CargoBuild& build) const;
  bool shows_output(size_t unit) const;
  // Prints a diagnostic unless the same was shown already: as cargo does,
  // one that several units emit (a library built and checked, or compiled
  // again for its tests) is shown once. rustc's closing counts are not.
  void show_diagnostic(std::string rendered);
  // Is `rendered` a diagnostic not shown yet (or no text to tell)? It is
  // counted as shown from now on.
  bool first_showing(const std::string& rendered);
  void show_text(const std::string& text);

  const cargo::CargoProject& m_project;
  const cargo::Plan& m_plan;
  LocalStore& m_store;
  OutputOptions m_options;
  bool m_live;
  Clock::time_point m_started = Clock::now();
  std::map<StorePath, size_t> m_unit_of;
  size_t m_built = 0, m_substituted = 0, m_running = 0, m_finished = 0;
  uint64_t m_downloaded = 0;
  std::map<size_t, std::pair<Clock::time_point, Clock::time_point>> m_times;
  std::map<size_t, std::string> m_output;   // what each unit's build printed, as it came
  std::set<size_t> m_shown;                 // units whose diagnostics were shown live
  // Units printing a diagnostic (between the builder's diagnostic-start and
  // -end): what it printed of it so far.
  std::map<size_t, std::string> m_diagnostic;
  std::set<std::string> m_diagnostics_shown;
};

} // namespace kiln::cli
