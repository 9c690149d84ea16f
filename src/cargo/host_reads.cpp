#include "host_reads.hpp"

#include <kiln/cargo/inputs.hpp>
#include <kiln/cargo/units.hpp>
#include <kiln/util/io.hpp>

#include <nlohmann/json.hpp>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Variables cargo itself sets for a build script: not the caller's.
bool
set_by_cargo(const std::string& name)
{
  static const std::set<std::string> names = {"OUT_DIR", "TARGET", "HOST", "NUM_JOBS", "OPT_LEVEL",
                                              "DEBUG", "PROFILE", "RUSTC", "RUSTDOC",
                                              "RUSTC_LINKER", "RUSTC_WRAPPER",
                                              "RUSTC_WORKSPACE_WRAPPER"};
  return names.count(name) || name.starts_with("CARGO_") || name.starts_with("DEP_");
}

// The variables a run read whose values are the caller's under cargo: those
// it declared (rerun-if-env-changed), and those it was seen looking up but
// for what cargo sets and what is only presentation.
std::set<std::string>
caller_variables_read(const json& directives)
{
  std::set<std::string> names;
  for (const auto& v : directives.value("env_reads", json::array())) {
    if (!set_by_cargo(v.get<std::string>())) {
      names.insert(v.get<std::string>());
    }
  }
  for (const auto& v : directives.value("env_lookups", json::array())) {
    if (!set_by_cargo(v.get<std::string>()) && !presentation_variable(v.get<std::string>())) {
      names.insert(v.get<std::string>());
    }
  }
  return names;
}

// A path a run read that is the host's (not the store's, nor the process's
// own scratch).
bool
host_path(const std::string& path, const std::string& store_dir)
{
  return !(path.starts_with(store_dir + "/") || path.starts_with("/proc/") ||
           path.starts_with("/dev/") || path == "/proc" || path == "/dev" || path == "/tmp" ||
           path == "/build" || path.starts_with("/build/") || path.starts_with("/.kiln/"));
}

json
directives_of(const fs::path& run_output)
{
  try {
    return json::parse(read_file(run_output / k_directives_file));
  } catch (const std::exception&) {
    return json::object();
  }
}

} // namespace

std::vector<std::string>
unrecorded_host_reads(const UnitInputs& run, const fs::path& output, const std::string& store_dir,
                      const Environment& env)
{
  std::vector<std::string> unrecorded;
  json d = directives_of(output);
  for (const auto& name : caller_variables_read(d)) {
    if (env.count(name) && !run.host_env.count(name)) {
      unrecorded.push_back("$" + name);
    }
  }
  for (const char* key : {"file_reads", "file_probes"}) {
    for (const auto& f : d.value(key, json::array())) {
      std::string path = fs::path(f.get<std::string>()).lexically_normal().string();
      if (host_path(path, store_dir) && !run.host_files.count(path)) {
        unrecorded.push_back(path);
      }
    }
  }
  return unrecorded;
}

HostReadsRecord::HostReadsRecord(fs::path file) : m_file(std::move(file))
{
  try {
    json all = json::parse(read_file(m_file));
    for (const auto& [package, reads] : all.items()) {
      m_reads[package] = {reads.at("env").get<std::set<std::string>>(),
                          reads.at("files").get<std::set<std::string>>(),
                          reads.at("probes").get<std::set<std::string>>()};
    }
  } catch (const std::exception&) {
    m_reads.clear(); // none learned yet (or a damaged record: learn again)
  }
}

const HostReads&
HostReadsRecord::of(const std::string& package) const
{
  auto it = m_reads.find(package);
  return it == m_reads.end() ? m_none : it->second;
}

bool
HostReadsRecord::learn(const std::string& package, const fs::path& run_output,
                       const std::string& store_dir, const Environment& env)
{
  json directives = directives_of(run_output);
  HostReads& known = m_reads[package];
  bool changes_identity = false;
  for (const auto& name : caller_variables_read(directives)) {
    if (known.env.insert(name).second) {
      m_dirty = true;
      changes_identity |= env.count(name) > 0;
    }
  }
  auto learn_path = [&](const json& f, bool content) {
    std::string path = fs::path(f.get<std::string>()).lexically_normal().string();
    if (!host_path(path, store_dir) || known.files.count(path) ||
        (!content && known.probes.count(path))) {
      return;
    }
    known.probes.erase(path); // read now: its content counts, not only its presence
    (content ? known.files : known.probes).insert(path);
    m_dirty = true;
    changes_identity = true;
  };
  for (const auto& f : directives.value("file_reads", json::array())) {
    learn_path(f, true);
  }
  for (const auto& f : directives.value("file_probes", json::array())) {
    learn_path(f, false);
  }
  return changes_identity;
}

void
HostReadsRecord::save() const
{
  if (!m_dirty) {
    return;
  }
  json all = json::object();
  for (const auto& [package, reads] : m_reads) {
    all[package] = {{"env", reads.env}, {"files", reads.files}, {"probes", reads.probes}};
  }
  try {
    fs::create_directories(m_file.parent_path());
    write_file_atomic(m_file, all.dump(1));
  } catch (const std::exception&) {
    // Learned again next time.
  }
}

} // namespace kiln::cargo
