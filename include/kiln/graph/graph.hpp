// The build graph: the derivations a set of targets needs, in dependency
// order, and the scheduler that realises them.
//
// Realising a derivation: already valid → done; substitutable (a cache has
// all its outputs, signed to policy) → substitute, without fetching or
// building its inputs unless something else needs them; otherwise build,
// once its inputs are realised. Builds start as soon as their inputs are
// there (not level by level), at most `jobs` at once; substitutions run on
// their own pool, overlapping builds.
//
// Pipelining: a build may announce, while it runs, that an early artifact
// is ready (a Rust library's .rmeta); a dependent that may start on that
// (RealiseHooks::may_start_early) starts then, not when the input is done.
// It must not make its outputs valid before its inputs are: it waits for
// them (BuildContext::wait_for_inputs), and if one fails, so does it.
// Which inputs a build may start early on is fixed by the graph, so what a
// build produces never depends on timing — only when it runs.
#pragma once

#include <kiln/derivation/derivation.hpp>
#include <kiln/util/error.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
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
  // A derivation held elsewhere for at least as long as the graph (the
  // graph keeps a pointer, not a copy), or nullptr.
  using DrvLender = std::function<const Derivation*(const StorePath&)>;

  // The closure of `targets` over input derivations: those `lend` holds
  // (if set) are used in place, the others read with `read`. Copying
  // derivations a frontend holds in memory cost a dozen scattered
  // allocations each (their maps of inputs, outputs and environment).
  static BuildGraph from_targets(const std::vector<StorePath>& targets, const DrvReader& read,
                                 const StoreDir& store_dir, const DrvLender& lend = {});
  // A graph does not change once made: a copy shares it (as step results
  // do, which name derivations by their numbers in it).
  BuildGraph(const BuildGraph&);
  BuildGraph& operator=(const BuildGraph&);
  BuildGraph(BuildGraph&&) noexcept;
  BuildGraph& operator=(BuildGraph&&) noexcept;
  ~BuildGraph();

  size_t size() const;
  // How many distinct targets the graph was made from: they are numbers
  // 0 … target_count()-1, in the order first given.
  size_t target_count() const;
  bool contains(const StorePath& drv) const;
  const Derivation& derivation(const StorePath& drv) const;
  // Inputs first; throws CycleError naming a cycle.
  std::vector<StorePath> topological_order() const;

  // --- The same by number: derivations are numbered 0 … size()-1 ---
  // (the scheduler works on numbers: no look-up by path per step)

  // The number of `drv`, which must be in the graph.
  size_t index_of(const StorePath& drv) const;
  // The number of `drv`, if it is in the graph.
  std::optional<size_t> find(const StorePath& drv) const;
  const StorePath& path(size_t index) const;
  // The numbers of the input derivations of derivation `index`.
  std::span<const uint32_t> input_indices(size_t index) const;
  std::vector<size_t> topological_indices() const;

private:
  BuildGraph();
  struct Impl;
  std::shared_ptr<Impl> m;
};

enum class StepStatus { present, substituted, built, failed, skipped };
enum class StepKind { substituting, building };
const char* to_string(StepStatus status);

struct StepResult
{
  StepStatus status = StepStatus::skipped;
  std::string error; // for failed (the error) and skipped (which input failed)
};

// What happened to each derivation a realisation considered, in the order
// of their paths (as a std::map<StorePath, StepResult> would hold them).
// Derivations are kept as their numbers in the graph, which the results
// share: at 100k derivations, a map node and a copy of the path per entry
// were about half of the schedule's own time, and grew faster than the graph.
class StepResults
{
  struct Entry
  {
    uint32_t drv;
    StepResult result;
  };

public:
  using value_type = std::pair<const StorePath&, const StepResult&>;

  class const_iterator
  {
  public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = StepResults::value_type;
    using difference_type = std::ptrdiff_t;
    using reference = value_type;
    // What `it->second` reads through.
    struct pointer
    {
      value_type entry;
      const value_type*
      operator->() const
      {
        return &entry;
      }
    };

    const_iterator() = default;
    value_type
    operator*() const
    {
      return {m_graph->path(m_entry->drv), m_entry->result};
    }
    pointer
    operator->() const
    {
      return {**this};
    }
    const_iterator&
    operator++()
    {
      ++m_entry;
      return *this;
    }
    const_iterator
    operator++(int)
    {
      auto before = *this;
      ++m_entry;
      return before;
    }
    bool
    operator==(const const_iterator& other) const
    {
      return m_entry == other.m_entry;
    }

  private:
    friend class StepResults;
    const_iterator(const BuildGraph* graph, const Entry* entry) : m_graph(graph), m_entry(entry)
    {
    }
    const BuildGraph* m_graph = nullptr;
    const Entry* m_entry = nullptr;
  };
  using iterator = const_iterator;

  StepResults() = default;
  // The results of derivations of `graph`, each given with its number, in
  // any order; throws std::invalid_argument for a number out of the graph
  // or given twice.
  StepResults(BuildGraph graph, std::vector<std::pair<uint32_t, StepResult>> results);

  const_iterator begin() const;
  const_iterator end() const;
  const_iterator find(const StorePath& drv) const;
  // Throws std::out_of_range if `drv` has no result.
  const StepResult& at(const StorePath& drv) const;
  size_t count(const StorePath& drv) const;
  size_t
  size() const
  {
    return m_entries.size();
  }
  bool
  empty() const
  {
    return m_entries.empty();
  }

private:
  // (held apart, so that iterators survive a move of the results)
  std::shared_ptr<const BuildGraph> m_graph;
  std::vector<Entry> m_entries;     // in the order of their paths
  std::vector<uint32_t> m_position; // by derivation number: its place in m_entries, or none
};

class Jobserver;

// What a running build may ask of, and tell, the scheduler.
class BuildContext
{
public:
  virtual ~BuildContext() = default;
  // Input derivations (of the graph's inputs of this build) that had only
  // their early artifact ready when it started.
  virtual const std::vector<StorePath>& early_inputs() const = 0;
  // This build's early artifact is ready: dependents that may start on it
  // may start now.
  virtual void early_ready() = 0;
  // The build's heavy work is done (what is left is registering its
  // outputs): its job token goes back, so that another build may start.
  virtual void work_done() = 0;
  // Wait until every input is done; false if one failed (then this build's
  // outputs must not become valid). Gives back this build's job token
  // while it waits.
  virtual bool wait_for_inputs() = 0;
};

// What the scheduler asks of the world.
struct RealiseHooks
{
  // Are all outputs of `drv` valid locally?
  std::function<bool(const StorePath& drv)> is_present;
  // Can every output of `drv` be substituted? (look-ups only; may run on
  // several threads at once)
  std::function<bool(const StorePath& drv)> is_substitutable;
  // Before substituting or building `drv`: take what keeps other processes
  // from realising it at the same time (its outputs' claims), waiting while
  // another holds it; released when the step ends. If `drv` is present
  // afterwards, another process realised it: nothing is done, and it counts
  // as present. Throws if it cannot be had. Unset: nothing is taken.
  std::function<std::shared_ptr<void>(const StorePath& drv)> claim;
  // Substitute the outputs of `drv`; throws on failure.
  std::function<void(const StorePath& drv)> substitute;
  // A build of `drv` is planned (its inputs may not be ready yet): a chance
  // to start slow preparations beside the steps before it. Called with the
  // scheduler's lock held, so it must not block. Unset: nothing.
  std::function<void(const StorePath& drv)> planned_build;
  // Before a build takes its job token: what needs none (e.g. writing its
  // sources into the store). Throws on failure. Unset: nothing.
  std::function<void(const StorePath& drv)> prepare;
  // Build `drv` (its inputs are realised, or — those context.early_inputs()
  // names — have their early artifact ready); throws on failure.
  std::function<void(const StorePath& drv, BuildContext& context)> build;
  // How long building `drv` may take, relative to others (unset: all the
  // same). Builds on the longest chain of work to come start first.
  std::function<double(const StorePath& drv)> cost;
  // May `dependent` start as soon as `input` has its early artifact ready?
  // Unset: never.
  std::function<bool(const StorePath& dependent, const StorePath& input)> may_start_early;
  // Progress: a step starts; a substitution fails and the derivation is to be
  // built instead; a step that started ends (also skipped, when it started
  // early on an input that then failed). Unset: nothing.
  std::function<void(const StorePath& drv, StepKind kind)> started;
  std::function<void(const StorePath& drv, const std::string& error)> substitution_failed;
  std::function<void(const StorePath& drv, const StepResult& result)> finished;
};

struct RealiseOptions
{
  unsigned jobs = 1;              // builds at once
  unsigned substitution_jobs = 16;
  bool keep_going = false;        // after a failure, finish everything else that can be
  // If set, each build holds one of its tokens while it runs (and the jobs
  // it runs may take more) until work_done(): the jobserver bounds the work,
  // and `jobs` more builds may be registering their outputs meanwhile.
  Jobserver* jobserver = nullptr;
};

// Realise `targets` (and what they need). Returns a result for every
// derivation that was considered.
StepResults realise(const BuildGraph& graph, const std::vector<StorePath>& targets,
                    const RealiseHooks& hooks, const RealiseOptions& options);
// The same for the targets the graph was made from, which it knows by
// number: no look-up of each by path (at 100k targets, one more cache miss
// each).
StepResults realise(const BuildGraph& graph, const RealiseHooks& hooks,
                    const RealiseOptions& options);

} // namespace kiln
