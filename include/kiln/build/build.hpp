// Building derivations: from a kiln.yaml to .drv files in the store, and
// from .drv files to valid outputs — present, substituted from a trusted
// cache, or built in the sandbox and registered with their references.
#pragma once

#include <kiln/buildfile/buildfile.hpp>
#include <kiln/cache/cache_client.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/graph/graph.hpp>
#include <kiln/sandbox/sandbox.hpp>
#include <kiln/store/local_store.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// A builder's message to kiln, not build output: a line of its output made of
// this prefix and a JSON object (as Nix's `@nix {...}` lines), e.g.
// `@kiln {"action":"early-output","path":"/kiln/store/<output>/<file>"}`.
inline constexpr std::string_view k_builder_message_prefix = "@kiln ";
inline bool
is_builder_message(std::string_view line)
{
  return line.starts_with(k_builder_message_prefix) &&
         line.substr(k_builder_message_prefix.size()).starts_with('{');
}

// The environment variable through which a derivation declares the host
// tools it uses ("path=sha256:…" lines): it is part of the derivation, so a
// tool's identity enters the hash; the sandbox makes them visible.
inline constexpr const char* k_tools_env = "__kiln_tools";

// Add a build file's sources to the store and its derivations, as .drv
// files; returns each entry's .drv path. Tools are hashed by content.
std::map<std::string, StorePath> instantiate(LocalStore& store, const BuildFile& file,
                                             const std::string& platform);

// The platform kiln builds for here ("x86_64-linux").
std::string host_platform();

// A builder kiln provides itself ("builtin:<name>" in a derivation): turns
// the derivation into the sandboxed step that runs it — the program, and
// what it needs of the host that is not part of the derivation's identity
// (the path of a toolchain whose identity the derivation records).
using BuiltinBuilder = std::function<void(const Derivation& drv, BuildSpec& spec)>;

struct BuildOptions
{
  unsigned jobs = 1;
  bool keep_going = false;
  std::chrono::seconds timeout{0};
  std::chrono::seconds max_silent_time{0};
  std::vector<CacheClient*> caches;   // substituters
  TrustPolicy policy;
  unsigned connections = 16;
  ProgressFn progress;                // human-readable lines
  // Each step as it starts and ends ("building", "built", "substituting", ...).
  std::function<void(const StorePath& drv, const std::string& event)> on_step;
  // Bytes each substitution downloaded (for progress displays).
  std::function<void(uint64_t bytes)> on_downloaded;
  std::function<void(std::string_view)> on_build_output;
  std::map<std::string, BuiltinBuilder> builtins;   // by builder ("builtin:rust-unit")
  // Where to read derivations that are not (yet) in the store; default:
  // read_derivation from the store.
  DrvReader read;
  // Called after each derivation is built (not substituted), with its outputs
  // valid: e.g. to push them to a cache at once.
  std::function<void(const StorePath& drv, const std::vector<StorePath>& outputs)> on_built;
  // Share a jobserver of `jobs` tokens with the builds (CARGO_MAKEFLAGS):
  // each build holds one, and rustc takes more for its codegen threads.
  bool jobserver = false;
  // Pipelining (in the namespaces sandbox): may `dependent` start once
  // `input` announced an early artifact? A builder announces one with the
  // message {"action":"early-output","path":"<file in an output>"} (see
  // k_builder_message_prefix); the file is then visible to such dependents
  // at its path.
  std::function<bool(const StorePath& dependent, const StorePath& input)> may_start_early;
  // For the scheduler: see RealiseHooks::cost and RealiseHooks::prepare.
  std::function<double(const StorePath& drv)> cost;
  std::function<void(const StorePath& drv)> prepare;
};

// Realise the outputs of `drvs`; returns what happened to each derivation.
std::map<StorePath, StepResult> build_derivations(LocalStore& store,
                                                  const std::vector<StorePath>& drvs,
                                                  const BuildOptions& options);

// Where the log of building `drv` is kept.
std::filesystem::path log_path(const LocalStore& store, const StorePath& drv);

} // namespace kiln
