// The build graph: the derivations a set of targets needs, in dependency
// order, and the scheduler that realises them.
//
// Realising a derivation: already valid → done; substitutable (a cache has
// all its outputs, signed to policy) → substitute, without fetching or
// building its inputs unless something else needs them; otherwise build,
// once its inputs are realised. Builds start as soon as their inputs are
// there (not level by level), at most `jobs` at once; substitutions run on
// their own pool, overlapping builds.
#pragma once

#include <kiln/derivation/derivation.hpp>
#include <kiln/util/error.hpp>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace kiln {

// A dependency cycle; the message names it ("a.drv → b.drv → a.drv").
class CycleError : public Error
{
public:
  using Error::Error;
};

class BuildGraph
{
public:
  // The closure of `targets` over input derivations, read with `read`.
  static BuildGraph from_targets(const std::vector<StorePath>& targets, const DrvReader& read,
                                 const StoreDir& store_dir);
  BuildGraph(BuildGraph&&) noexcept;
  BuildGraph& operator=(BuildGraph&&) noexcept;
  ~BuildGraph();

  size_t size() const;
  bool contains(const StorePath& drv) const;
  const Derivation& derivation(const StorePath& drv) const;
  // Input derivations of `drv` (those in the graph).
  const std::vector<StorePath>& inputs(const StorePath& drv) const;
  // Inputs first; throws CycleError naming a cycle.
  std::vector<StorePath> topological_order() const;

private:
  BuildGraph();
  struct Impl;
  std::unique_ptr<Impl> m;
};

enum class StepStatus { present, substituted, built, failed, skipped };
const char* to_string(StepStatus status);

struct StepResult
{
  StepStatus status = StepStatus::skipped;
  std::string error; // for failed (the error) and skipped (which input failed)
};

// What the scheduler asks of the world.
struct RealiseHooks
{
  // Are all outputs of `drv` valid locally?
  std::function<bool(const StorePath& drv)> is_present;
  // Can every output of `drv` be substituted? (look-ups only; may run on
  // several threads at once)
  std::function<bool(const StorePath& drv)> is_substitutable;
  // Substitute the outputs of `drv`; throws on failure.
  std::function<void(const StorePath& drv)> substitute;
  // Build `drv` (its inputs are realised); throws on failure.
  std::function<void(const StorePath& drv)> build;
  // Progress: called as each step starts ("substituting", "building") and ends.
  std::function<void(const StorePath& drv, const std::string& event)> progress;
};

struct RealiseOptions
{
  unsigned jobs = 1;              // builds at once
  unsigned substitution_jobs = 16;
  bool keep_going = false;        // after a failure, finish everything else that can be
};

// Realise `targets` (and what they need). Returns a result for every
// derivation that was considered.
std::map<StorePath, StepResult> realise(const BuildGraph& graph,
                                        const std::vector<StorePath>& targets,
                                        const RealiseHooks& hooks, const RealiseOptions& options);

} // namespace kiln
