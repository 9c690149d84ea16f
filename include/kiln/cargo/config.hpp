// Cargo's configuration, read the way cargo reads it: every
// `.cargo/config.toml` (or extensionless `.cargo/config`) from the working
// folder up to `/`, then `$CARGO_HOME`'s, their `include`s, the `CARGO_*`
// environment variables, and `--config KEY=VALUE` / `--config FILE`.
//
// Precedence, as cargo: `--config` > environment > nearer files > farther
// files > `$CARGO_HOME`. Tables merge key by key; a scalar from a
// higher-priority source replaces one from a lower; arrays are concatenated,
// lowest priority first (home, outermost folder, ..., nearest folder, then
// the environment, then `--config` left to right). An array in one source and
// a string (or table) in another is an error naming both.
//
// Environment variables are consulted per key, as cargo does:
// `build.rustflags` ↔ `CARGO_BUILD_RUSTFLAGS` (upper case, '.' and '-' →
// '_'). They never add table keys (no `[env]` entries, no `target.'cfg()'`
// tables from the environment).
#pragma once

#include <kiln/cargo/error.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

// --- Interface ---

// The caller's environment, as cargo would see it (a copy, so that tests and
// library callers can pass their own).
using Environment = std::map<std::string, std::string>;
Environment current_environment();
// Where cargo's home is in `env`: $CARGO_HOME, else ~/.cargo.
std::filesystem::path cargo_home_of(const Environment& env);

// Where a configuration value comes from.
struct ConfigSource
{
  enum class Kind { file, environment, command_line };
  Kind kind = Kind::file;
  std::string where;            // the file, "environment variable CARGO_X", "--config ARG"
  std::filesystem::path root;   // what relative paths in it are relative to
};

// One value: a string, integer, boolean or float (as text), an array of
// them, or a table.
struct ConfigValue
{
  enum class Type { string, integer, boolean, floating, array, table };
  Type type = Type::table;
  std::string scalar;                                         // string, integer, boolean, floating
  std::vector<std::pair<std::string, ConfigSource>> items;   // array (scalars as text)
  std::map<std::string, ConfigValue> table;
  ConfigSource source;                                        // of a scalar, or where a table began

  bool is_table() const { return type == Type::table; }
  bool is_array() const { return type == Type::array; }
};

class CargoConfig
{
public:
  // Discover and merge. `cargo_home` is $CARGO_HOME (default ~/.cargo);
  // `cli` are the `--config` arguments in order. Malformed files, a
  // `--config` that is neither a file nor `KEY=VALUE`, and values that do not
  // merge are CargoError naming the file or argument.
  static CargoConfig load(const std::filesystem::path& cwd, const std::filesystem::path& cargo_home,
                          const std::vector<std::string>& cli, const Environment& env);

  // The value at a dotted key ("build.rustflags",
  // "target.x86_64-unknown-linux-gnu.linker") from files and `--config`,
  // before the environment is applied; null if unset.
  const ConfigValue* find(const std::vector<std::string>& key) const;

  // A string value: `--config` > environment > files. A non-string is a
  // CargoError naming the key and where it was set.
  std::optional<std::string> get_string(const std::vector<std::string>& key) const;
  std::optional<bool> get_bool(const std::vector<std::string>& key) const;
  std::optional<int64_t> get_integer(const std::vector<std::string>& key) const;
  // A list: an array, or a string split on whitespace; file entries, then
  // the environment variable's (split on whitespace), then `--config`'s.
  std::optional<std::vector<std::string>> get_list(const std::vector<std::string>& key) const;
  // Where the value at `key` comes from (the highest-priority source).
  std::optional<ConfigSource> source_of(const std::vector<std::string>& key) const;

  // Every file read, in the order read (for fingerprints), and the folders
  // probed for one (a config file appearing there changes the answer).
  const std::vector<std::filesystem::path>& files() const { return m_files; }
  const std::vector<std::filesystem::path>& probed() const { return m_probed; }
  const Environment& environment() const { return m_env; }
  const std::filesystem::path& cwd() const { return m_cwd; }
  const std::vector<std::string>& warnings() const { return m_warnings; }

  // The variable cargo reads for `key`: CARGO_BUILD_RUSTFLAGS.
  static std::string env_name(const std::vector<std::string>& key);
  // "build.rustflags"
  static std::string dotted(const std::vector<std::string>& key);

private:
  // The value after `--config` (cli) and before (files), kept apart because
  // the environment sits between them.
  const ConfigValue* find_in(const ConfigValue& root, const std::vector<std::string>& key) const;
  std::optional<std::string> env_value(const std::vector<std::string>& key) const;

  ConfigValue m_files_root;   // files merged
  ConfigValue m_cli_root;     // --config arguments merged
  Environment m_env;
  std::filesystem::path m_cwd;
  std::vector<std::filesystem::path> m_files;
  std::vector<std::filesystem::path> m_probed;
  std::vector<std::string> m_warnings;
};

} // namespace kiln::cargo
