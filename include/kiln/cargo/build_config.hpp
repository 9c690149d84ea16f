// What kiln takes from cargo's configuration (kiln/cargo/config.hpp) to
// build a unit as cargo would: rustflags and rustdocflags per compile kind,
// the `[env]` table, linkers and runners, the target, jobs, offline — and
// the keys it will not honour, refused with an error that names them (or,
// where building differently is harmless, a warning).
//
// Cargo itself reads the rest (profiles, sources, patches, resolution) when
// kiln asks it for the unit graph.
#pragma once

#include <kiln/cargo/config.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

// A `rustc --print cfg` answer as a multimap: name → values (a bare name
// has one empty value).
using CfgSet = std::multimap<std::string, std::string>;

// One `[env]` entry as it applies to the processes cargo starts.
struct EnvEntry
{
  std::string value;
  bool force = false;
  std::string where;   // the file or argument that set it
};

class BuildConfig
{
public:
  // Read what kiln honours, and refuse what it does not: throws CargoError
  // naming the key and where it was set. `warnings` gets one line per
  // ignored-but-harmless input.
  BuildConfig(const CargoConfig& config, std::vector<std::string>& warnings);

  // The rustflags of a unit compiled for `triple` (`host_kind`: compiled for
  // the host kind, which with --target gets none on stable cargo), chosen
  // as cargo does: CARGO_ENCODED_RUSTFLAGS, else RUSTFLAGS, else
  // target.<triple>.rustflags followed by every matching
  // target.'cfg(..)'.rustflags, else build.rustflags. `cfg` answers
  // `rustc --print cfg` for the triple with given flags (cfg tables depend
  // on it, and the flags on the tables: two rounds, as cargo).
  std::vector<std::string>
  rustflags(const std::string& triple, bool host_kind, bool cross,
            const std::function<const CfgSet&(const std::vector<std::string>&)>& cfg) const;
  // The same for rustdoc (doctests): CARGO_ENCODED_RUSTDOCFLAGS,
  // RUSTDOCFLAGS, target.<triple> and cfg tables' rustdocflags,
  // build.rustdocflags.
  std::vector<std::string>
  rustdocflags(const std::string& triple, bool host_kind, bool cross,
               const std::function<const CfgSet&(const std::vector<std::string>&)>& cfg) const;

  // target.<triple>.linker, or the one matching target.'cfg(..)'.linker,
  // resolved against its config's folder (a bare name is looked up on PATH).
  std::optional<std::filesystem::path> linker(const std::string& triple, const CfgSet& cfg) const;
  // target.<triple>.runner, or the first matching target.'cfg(..)'.runner.
  std::optional<std::vector<std::string>> runner(const std::string& triple, const CfgSet& cfg) const;
  // The `[env]` entries.
  const std::map<std::string, EnvEntry>& env() const { return m_env; }
  // The `[env]` values for a process cargo starts: entries whose variable
  // is not set in the caller's environment (or forced), never those cargo
  // itself sets (`cargo_sets`).
  std::map<std::string, std::string>
  env_for_process(const std::map<std::string, std::string>& cargo_sets) const;

  // build.target (one triple; several are refused).
  const std::optional<std::string>& build_target() const { return m_build_target; }
  // build.jobs
  const std::optional<int64_t>& jobs() const { return m_jobs; }
  // net.offline / CARGO_NET_OFFLINE
  bool offline() const { return m_offline; }
  // build.rustc / build.rustdoc, resolved.
  const std::optional<std::string>& rustc() const { return m_rustc; }
  const std::optional<std::string>& rustdoc() const { return m_rustdoc; }

private:
  std::vector<std::string>
  flags(const char* key, const char* env, const std::string& triple, bool host_kind, bool cross,
        const std::function<const CfgSet&(const std::vector<std::string>&)>& cfg) const;
  std::optional<std::vector<std::string>> target_flags(const char* key, const std::string& triple,
                                                       const CfgSet* cfg) const;
  // The key of the one target.'cfg(..)' table that sets `key` and matches
  // (two matching is an error, as in cargo).
  std::optional<std::string> cfg_table(const char* key, const std::string& triple,
                                       const CfgSet& cfg) const;

  const CargoConfig& m_config;
  std::map<std::string, EnvEntry> m_env;
  std::optional<std::string> m_build_target;
  std::optional<int64_t> m_jobs;
  std::optional<std::string> m_rustc, m_rustdoc;
  bool m_offline = false;
};

// Does a `cfg(...)` expression (or a bare triple) hold for `triple` with
// configuration `cfg`? Malformed → CargoError.
bool platform_matches(const std::string& platform, const std::string& triple, const CfgSet& cfg);
CfgSet parse_cfg_lines(const std::string& text);

} // namespace kiln::cargo
