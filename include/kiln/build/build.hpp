// Building derivations: from a kiln.yaml to .drv files in the store, and
// from .drv files to valid outputs — present, substituted from a trusted
// cache, or built in the sandbox and registered with their references.
#pragma once

#include <kiln/buildfile/buildfile.hpp>
#include <kiln/cache/cache_client.hpp>
#include <kiln/derivation/derivation.hpp>
#include <kiln/graph/graph.hpp>
#include <kiln/nar/tree_diff.hpp>
#include <kiln/sandbox/sandbox.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/store/local_store.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
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

// --- Interface ---

// What a frontend (a kiln.yaml, a Cargo project) brings to a build: the
// derivations it computed, the builders it provides, and what it knows about
// its steps that the scheduler uses. Only `describe` must be meaningful; the
// defaults suit derivations that are all in the store, with builders that
// are programs.
class Frontend
{
public:
  virtual ~Frontend() = default;
  // A derivation the frontend computed but did not write to the store;
  // nullptr: read it from the store.
  virtual const Derivation* derivation(const StorePath& drv) const;
  // The sandboxed step that runs a derivation whose builder is
  // "builtin:<name>": the program, and what it needs of the host that is not
  // part of the derivation's identity (the path of a toolchain whose
  // identity the derivation records). Throws if the frontend has no such
  // builder.
  virtual void builtin_builder(const Derivation& drv, BuildSpec& spec) const;
  // A build of `drv` is planned, its inputs perhaps still to come: start
  // what it will need and takes long to learn, without waiting for it
  // (called under the scheduler's lock). Default: nothing.
  virtual void build_planned(const StorePath& drv) const;
  // Before a build takes its job token: what needs none (e.g. writing the
  // sources it compiles into the store). Throws on failure.
  virtual void prepare(const StorePath& drv) const;
  // How long building `drv` may take, relative to others: the longest chains
  // of work start first.
  virtual double cost(const StorePath& drv) const;
  // Pipelining (namespaces sandbox only): may `dependent` start once `input`
  // announced an early artifact? A builder announces one with the message
  // {"action":"early-output","path":"<file in an output>"} (see
  // k_builder_message_prefix); the file is then visible to such dependents
  // at its path.
  virtual bool may_start_early(const StorePath& dependent, const StorePath& input) const;
  // A name for progress lines and errors (default: the .drv's name).
  virtual std::string describe(const StorePath& drv) const;
  // May the outputs of `drv`, just built, go to BuildOptions::push_to? No
  // when what they depend on is not all in their identity (default: yes).
  virtual bool may_push(const StorePath& drv) const;
  // Are the outputs of `drv` this machine's alone (e.g. compiled
  // incrementally)? Then they are never looked up in a cache nor pushed,
  // and the store marks them local-only, which `kiln push` refuses
  // (default: no).
  virtual bool local_only(const StorePath& drv) const;
};

// What a build tells whoever watches it (progress displays, JSON reports).
// Called from the scheduler's threads, never two calls at once.
class BuildObserver
{
public:
  virtual ~BuildObserver() = default;
  virtual void step_started(const StorePath& drv, StepKind kind);
  // Every derivation considered ends here (present ones included).
  virtual void step_finished(const StorePath& drv, const StepResult& result);
  // Bytes a substitution downloaded.
  virtual void downloaded(uint64_t bytes);
  // Output of a running build step, as it comes (builder messages removed).
  virtual void build_output(const StorePath& drv, std::string_view chunk);
  // Paths pushed to BuildOptions::push_to after `drv` was built.
  virtual void pushed(const StorePath& drv, size_t paths);
  // A builder's message to kiln that the build module does not act on
  // itself (e.g. {"action":"command","argv":[...]}: what the builder runs).
  virtual void builder_message(const StorePath& drv, const std::string& message);
};

// Where a build pushes what it builds: each output, with its closure, as soon
// as it is valid (not what was substituted or already there).
struct PushTarget
{
  CacheClient* cache = nullptr;
  const SecretKey* key = nullptr;     // sign the narinfos (unset: unsigned)
};

// How to build: policy only; what to build comes from the Frontend.
struct BuildOptions
{
  unsigned jobs = 1;
  bool keep_going = false;
  std::chrono::seconds timeout{0};
  std::chrono::seconds max_silent_time{0};
  std::vector<CacheClient*> caches;   // substituters
  TrustPolicy policy;
  unsigned connections = 16;
  // Share a jobserver of `jobs` tokens with the builds (CARGO_MAKEFLAGS):
  // each build holds one, and rustc takes more for its codegen threads.
  bool jobserver = false;
  std::optional<PushTarget> push_to;
};

struct BuildResult
{
  // What happened to each derivation considered.
  StepResults steps;
  size_t pushed = 0;                   // paths uploaded to BuildOptions::push_to
  std::vector<std::string> push_errors;
  // Did every one of `drvs` end present, substituted or built?
  bool succeeded(const std::vector<StorePath>& drvs) const;
};

// Realise the outputs of `drvs` (and what they need).
BuildResult build_derivations(LocalStore& store, const std::vector<StorePath>& drvs,
                              const BuildOptions& options, const Frontend& frontend,
                              BuildObserver& observer);

// --- Checking: is a derivation reproducible? ---

// One output of a derivation built a second time, against the valid one.
struct OutputCheck
{
  std::string name;                          // "out"
  StorePath path;
  bool same = false;                         // the same NAR, byte for byte
  std::vector<TreeDifference> differences;   // first: the valid output, second: the rebuild
  // Where the rebuild was kept for inspection (CheckOptions::keep): the
  // valid output's folder with "-check" appended. Not valid: the next
  // garbage collection deletes it.
  std::optional<std::filesystem::path> kept;
};

struct DerivationCheck
{
  std::vector<OutputCheck> outputs;
  std::string error;                         // the second build failed: why
  bool reproducible() const;                 // built again, every output the same
};

struct CheckOptions
{
  bool keep = true;                          // keep a differing rebuild (OutputCheck::kept)
  size_t max_differences = 20;               // per output (0: all)
  // Called as each check starts (`done` null) and ends; one call at a time.
  std::function<void(const StorePath& drv, const DerivationCheck* done)> progress;
};

struct CheckResult
{
  BuildResult realised;                      // what realising them first did
  std::map<StorePath, DerivationCheck> checks;
};

// `kiln build --check`: realise `drvs` and every derivation they need
// (present, substituted or built, as build_derivations does), then build
// each of them once more, in the sandbox as any build, and compare what
// it makes with the valid outputs — NAR for NAR; files that differ are
// listed. Nothing is registered by the second builds. A derivation that
// could not be realised is not checked.
CheckResult check_derivations(LocalStore& store, const std::vector<StorePath>& drvs,
                              const BuildOptions& options, const Frontend& frontend,
                              BuildObserver& observer, const CheckOptions& check = {});

// A derivation built again, its outputs not registered: where each lies.
// The folders (under the store's tmp/) live as long as `lease`.
struct Rebuild
{
  std::map<std::string, std::filesystem::path> outputs;   // output name → folder
  std::shared_ptr<const void> lease;
};

// Build `drv` once more; every output of its inputs must be valid. Throws
// Error if the build fails. Its log is kept apart from the first build's.
Rebuild rebuild_derivation(LocalStore& store, const StorePath& drv, const BuildOptions& options,
                           const Frontend& frontend, BuildObserver& observer);

// Where the log of building `drv` is kept.
std::filesystem::path log_path(const LocalStore& store, const StorePath& drv);

} // namespace kiln
