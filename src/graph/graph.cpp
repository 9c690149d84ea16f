#include <kiln/graph/graph.hpp>
#include <kiln/util/jobserver.hpp>
#include <kiln/util/parallel.hpp>

#include <boost/graph/compressed_sparse_row_graph.hpp>
#include <boost/graph/depth_first_search.hpp>
#include <boost/graph/topological_sort.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <utility>

namespace kiln {

namespace {

// Edges point from a derivation to its inputs, so a topological sort lists
// inputs first. Compressed rows: a few flat arrays, whatever the size (an
// adjacency list allocates a vector per derivation); 32-bit vertices, as
// the graph numbers them.
using Graph = boost::compressed_sparse_row_graph<boost::directedS, boost::no_property,
                                                 boost::no_property, boost::no_property,
                                                 uint32_t, size_t>;
using Vertex = boost::graph_traits<Graph>::vertex_descriptor;
using Edge = boost::graph_traits<Graph>::edge_descriptor;

// Records the first back edge a depth-first search meets, with the tree
// edges that led to it, to name a cycle.
class CycleFinder : public boost::default_dfs_visitor
{
public:
  CycleFinder(std::vector<Vertex>& parent, std::vector<Vertex>& cycle)
    : m_parent(parent), m_cycle(cycle)
  {
  }
  void
  tree_edge(Edge e, const Graph& g)
  {
    m_parent[boost::target(e, g)] = boost::source(e, g);
  }
  void
  back_edge(Edge e, const Graph& g)
  {
    if (!m_cycle.empty()) {
      return;
    }
    Vertex from = boost::source(e, g);
    Vertex to = boost::target(e, g);
    for (Vertex v = from; v != to; v = m_parent[v]) {
      m_cycle.push_back(v);
    }
    m_cycle.push_back(to);
  }

private:
  std::vector<Vertex>& m_parent;
  std::vector<Vertex>& m_cycle;
};

} // namespace

const char*
to_string(StepStatus status)
{
  switch (status) {
  case StepStatus::present:
    return "present";
  case StepStatus::substituted:
    return "substituted";
  case StepStatus::built:
    return "built";
  case StepStatus::failed:
    return "failed";
  case StepStatus::skipped:
    return "skipped";
  }
  return "unknown";
}

namespace {

// Derivation numbers by path, for a graph that only grows: open addressing
// over one array of (key of the path, number) slots. A look-up reads one
// slot, and the path itself only where the keys match. (A node-based map
// reads a bucket, a node and the node's key on each step: at 100k
// derivations each of those misses the cache.) The key is not the hash part
// alone: paths that share one (made by hand, as tests do) must not make
// look-ups a linear search.
class PathIndex
{
public:
  static constexpr size_t k_none = SIZE_MAX;

  void
  reserve(size_t count)
  {
    size_t capacity = 16;
    while (capacity < 2 * count) {
      capacity *= 2;
    }
    if (capacity > m_slots.size()) {
      rehash(capacity);
    }
  }

  // The number of `path` (a path of `nodes`), or k_none.
  size_t
  find(const StorePath& path, const std::vector<StorePath>& nodes) const
  {
    return probe(path, [&](size_t number) { return nodes[number] == path; });
  }

  // What find(path) will read first, on its way into the cache.
  void
  prefetch(const StorePath& path) const
  {
    if (!m_slots.empty()) {
      __builtin_prefetch(&m_slots[slot_of(key_of(path))]);
    }
  }
  // The number find(path) will compare `path` with first, or k_none: its
  // node's path can then be on its way into the cache.
  size_t
  candidate(const StorePath& path) const
  {
    return probe(path, [](size_t) { return true; });
  }

  // Records that `path` is nodes[number]; it must not be there yet.
  void
  insert(const StorePath& path, size_t number)
  {
    if (2 * (m_count + 1) > m_slots.size()) {
      rehash(std::max<size_t>(16, 2 * m_slots.size()));
    }
    place({key_of(path), number});
    ++m_count;
  }

private:
  struct Slot
  {
    uint64_t key = 0;
    size_t number = k_none;
  };

  // The number of the first slot on `path`'s probe sequence whose key is
  // its key and whose number `is_path` accepts, or k_none at an empty slot.
  template <typename IsPath>
  size_t
  probe(const StorePath& path, IsPath is_path) const
  {
    if (m_slots.empty()) {
      return k_none;
    }
    uint64_t key = key_of(path);
    for (size_t i = slot_of(key);; i = (i + 1) & (m_slots.size() - 1)) {
      const Slot& slot = m_slots[i];
      if (slot.number == k_none) {
        return k_none;
      }
      if (slot.key == key && is_path(slot.number)) {
        return slot.number;
      }
    }
  }

  // 8 bytes of the hash part, mixed with the last 8 of the name (a path's
  // base name is at least 34 bytes long).
  static uint64_t
  key_of(const StorePath& path)
  {
    const std::string& base = path.base();
    uint64_t head = 0;
    uint64_t tail = 0;
    std::memcpy(&head, base.data(), sizeof head);
    std::memcpy(&tail, base.data() + base.size() - sizeof tail, sizeof tail);
    return head ^ std::rotl(tail * 0x9E3779B97F4A7C15ull, 29);
  }
  // Fibonacci hashing: the top bits of the key times 2^64/φ.
  size_t
  slot_of(uint64_t key) const
  {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> m_shift);
  }
  void
  place(Slot slot)
  {
    size_t i = slot_of(slot.key);
    while (m_slots[i].number != k_none) {
      i = (i + 1) & (m_slots.size() - 1);
    }
    m_slots[i] = slot;
  }
  void
  rehash(size_t capacity)
  {
    std::vector<Slot> old = std::exchange(m_slots, std::vector<Slot>(capacity));
    m_shift = 64 - static_cast<unsigned>(std::countr_zero(capacity));
    for (const Slot& slot : old) {
      if (slot.number != k_none) {
        place(slot);
      }
    }
  }

  std::vector<Slot> m_slots; // a power of two of them, at most half used
  unsigned m_shift = 64;
  size_t m_count = 0;
};

} // namespace

struct BuildGraph::Impl
{
  std::vector<StorePath> nodes;
  size_t target_count = 0; // the first nodes
  PathIndex index;
  std::vector<const Derivation*> drvs; // lent, or in `read_here`
  std::deque<Derivation> read_here;     // (a deque: they stay in place)
  // The inputs of derivation i are inputs[input_start[i] … input_start[i+1]):
  // one array for all of them (per-derivation vectors cost an allocation
  // each, and at 100k derivations the memory they scatter is what grows).
  std::vector<size_t> input_start{0};
  std::vector<uint32_t> inputs; // (numbers < 2^32: the graph refuses more)
  // The same edges for Boost's searches, made once with the graph: made at
  // each sort, it copied every edge twice per call.
  Graph edges;
  StoreDir store_dir;
};

BuildGraph::BuildGraph() : m(std::make_shared<Impl>())
{
}
BuildGraph::BuildGraph(const BuildGraph&) = default;
BuildGraph& BuildGraph::operator=(const BuildGraph&) = default;
BuildGraph::BuildGraph(BuildGraph&&) noexcept = default;
BuildGraph& BuildGraph::operator=(BuildGraph&&) noexcept = default;
BuildGraph::~BuildGraph() = default;

BuildGraph
BuildGraph::from_targets(const std::vector<StorePath>& targets, const DrvReader& read,
                         const StoreDir& store_dir, const DrvLender& lend)
{
  BuildGraph result;
  Impl& g = *result.m;
  g.store_dir = store_dir;
  // The graph holds at least the targets: room for them up front.
  g.index.reserve(targets.size());
  g.nodes.reserve(targets.size());
  g.drvs.reserve(targets.size());
  g.input_start.reserve(targets.size() + 1);
  // Breadth first: a derivation is numbered when first seen, and read in
  // that order (the queue is the list of nodes itself).
  auto number = [&](const StorePath& path) {
    size_t known = g.index.find(path, g.nodes);
    if (known != PathIndex::k_none) {
      return static_cast<uint32_t>(known);
    }
    if (g.nodes.size() == UINT32_MAX) {
      throw Error("more than 2^32 - 1 derivations in one build graph");
    }
    g.index.insert(path, g.nodes.size());
    g.nodes.push_back(path);
    return static_cast<uint32_t>(g.nodes.size() - 1);
  };
  // The targets' paths are wherever the caller's strings are: each is
  // fetched well ahead, and its slot in the index later (finding the slot
  // reads the path, which must be there by then).
  constexpr size_t k_path_ahead = 16;
  constexpr size_t k_slot_ahead = 8;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (i + k_path_ahead < targets.size()) {
      const std::string& ahead = targets[i + k_path_ahead].base();
      __builtin_prefetch(ahead.data());
      __builtin_prefetch(ahead.data() + ahead.size() - 1); // the index's key reads both ends
    }
    if (i + k_slot_ahead < targets.size()) {
      g.index.prefetch(targets[i + k_slot_ahead]);
    }
    number(targets[i]);
  }
  g.target_count = g.nodes.size();
  // Numbering an input is two or three look-ups into memory that outgrows
  // the caches at 100k derivations (its slot in the index, the node's path
  // to compare). A batch of derivations is read in stages, each fetching
  // ahead what the next reads, so that the batch's cache misses overlap
  // instead of following one another; then its inputs are numbered, in the
  // same order as one by one.
  constexpr size_t k_batch = 16;
  std::vector<const StorePath*> batch_inputs;
  std::vector<size_t> candidates;
  for (size_t first = 0; first < g.nodes.size();) {
    size_t end = std::min(g.nodes.size(), first + k_batch);
    batch_inputs.clear();
    for (size_t i = first; i < end; ++i) {
      const Derivation* lent = lend ? lend(g.nodes[i]) : nullptr;
      g.drvs.push_back(lent ? lent : &g.read_here.emplace_back(read(g.nodes[i])));
      for (const auto& [input, outputs] : g.drvs.back()->input_drvs) {
        batch_inputs.push_back(&input);
        g.index.prefetch(input);
      }
    }
    candidates.clear();
    for (const StorePath* input : batch_inputs) {
      candidates.push_back(g.index.candidate(*input));
      if (candidates.back() != PathIndex::k_none) {
        __builtin_prefetch(&g.nodes[candidates.back()]);
      }
    }
    for (size_t known : candidates) {
      if (known != PathIndex::k_none) {
        __builtin_prefetch(g.nodes[known].base().data());
      }
    }
    const StorePath* const* input = batch_inputs.data();
    for (size_t i = first; i < end; ++i) {
      for (size_t n = g.drvs[i]->input_drvs.size(); n > 0; --n) {
        g.inputs.push_back(number(**input++));
      }
      g.input_start.push_back(g.inputs.size());
    }
    first = end;
  }
  // The rows are the derivations in order, so the edges come sorted.
  std::vector<std::pair<uint32_t, uint32_t>> edges;
  edges.reserve(g.inputs.size());
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    for (size_t k = g.input_start[i]; k < g.input_start[i + 1]; ++k) {
      edges.emplace_back(static_cast<uint32_t>(i), g.inputs[k]);
    }
  }
  g.edges = Graph(boost::edges_are_sorted, edges.begin(), edges.end(), g.nodes.size());
  return result;
}

size_t
BuildGraph::size() const
{
  return m->nodes.size();
}

size_t
BuildGraph::target_count() const
{
  return m->target_count;
}

bool
BuildGraph::contains(const StorePath& drv) const
{
  return find(drv).has_value();
}

const Derivation&
BuildGraph::derivation(const StorePath& drv) const
{
  return *m->drvs[index_of(drv)];
}

size_t
BuildGraph::index_of(const StorePath& drv) const
{
  auto index = find(drv);
  if (!index) {
    throw std::out_of_range("derivation " + drv.base() + " is not in the build graph");
  }
  return *index;
}

std::optional<size_t>
BuildGraph::find(const StorePath& drv) const
{
  size_t index = m->index.find(drv, m->nodes);
  if (index == PathIndex::k_none) {
    return std::nullopt;
  }
  return index;
}

const StorePath&
BuildGraph::path(size_t index) const
{
  return m->nodes.at(index);
}

std::span<const uint32_t>
BuildGraph::input_indices(size_t index) const
{
  if (index >= m->nodes.size()) {
    throw std::out_of_range("no derivation number " + std::to_string(index));
  }
  return {m->inputs.data() + m->input_start[index], m->inputs.data() + m->input_start[index + 1]};
}

std::vector<StorePath>
BuildGraph::topological_order() const
{
  auto order = topological_indices();
  std::vector<StorePath> out;
  out.reserve(order.size());
  for (size_t v : order) {
    out.push_back(m->nodes[v]);
  }
  return out;
}

std::vector<size_t>
BuildGraph::topological_indices() const
{
  const Graph& graph = m->edges;
  std::vector<Vertex> order;
  order.reserve(m->nodes.size());
  try {
    boost::topological_sort(graph, std::back_inserter(order));
  } catch (const boost::not_a_dag&) {
    std::vector<Vertex> parent(m->nodes.size());
    std::vector<Vertex> cycle;
    CycleFinder finder(parent, cycle);
    boost::depth_first_search(graph, boost::visitor(finder));
    std::string text;
    for (auto it = cycle.rbegin(); it != cycle.rend(); ++it) {
      text += m->store_dir.print(m->nodes[*it]) + " → ";
    }
    text += cycle.empty() ? "?" : m->store_dir.print(m->nodes[cycle.back()]);
    throw CycleError("dependency cycle: " + text);
  }
  return {order.begin(), order.end()};
}

namespace {

enum class Plan : uint8_t { unplanned, present, substitute, build };

// Derivations (by number) ready to go, the most urgent first: those that
// start the longest chain of work (the critical path), then those first
// made ready. A heap of four children per item, 16 bytes each: a step down
// reads the four children from one or two cache lines, and there are half
// as many steps as in a binary heap (at 100k derivations tens of thousands
// may be ready at once, and each step down a binary heap missed the cache).
class ReadyQueue
{
public:
  bool empty() const { return m_items.empty(); }
  size_t size() const { return m_items.size(); }
  // `drv` < 2^32, as the graph's numbers are.
  void
  push_back(size_t drv, double priority)
  {
    Item item{priority, m_serial++, static_cast<uint32_t>(drv)};
    size_t hole = m_items.size();
    m_items.push_back(item);
    while (hole > 0) {
      size_t parent = (hole - 1) / k_children;
      if (!more_urgent(item, m_items[parent])) {
        break;
      }
      m_items[hole] = m_items[parent];
      hole = parent;
    }
    m_items[hole] = item;
  }
  size_t
  pop_front()
  {
    size_t drv = m_items.front().drv;
    Item last = m_items.back();
    m_items.pop_back();
    size_t count = m_items.size();
    if (count == 0) {
      return drv;
    }
    size_t hole = 0;
    while (true) {
      size_t first = hole * k_children + 1;
      if (first >= count) {
        break;
      }
      size_t best = first;
      for (size_t child = first + 1; child < std::min(first + k_children, count); ++child) {
        if (more_urgent(m_items[child], m_items[best])) {
          best = child;
        }
      }
      if (!more_urgent(m_items[best], last)) {
        break;
      }
      m_items[hole] = m_items[best];
      hole = best;
    }
    m_items[hole] = last;
    return drv;
  }
  template <typename F>
  void
  for_each(F f) const
  {
    for (const auto& item : m_items) {
      f(item.drv);
    }
  }
  void clear() { m_items.clear(); }

private:
  static constexpr size_t k_children = 4;
  struct Item
  {
    double priority;
    uint32_t serial; // order of arrival (wraps after 2^32 pushes: only ties reorder)
    uint32_t drv;
  };
  static_assert(sizeof(Item) == 16);
  // The higher priority, then the one made ready first.
  static bool
  more_urgent(const Item& a, const Item& b)
  {
    return a.priority != b.priority ? a.priority > b.priority : a.serial < b.serial;
  }
  std::vector<Item> m_items;
  uint32_t m_serial = 0;
};

// The state of one realisation, shared by the worker threads. Derivations
// are known by their number in the graph: each step's bookkeeping is a few
// array accesses, whatever the graph's size.
class Realisation
{
public:
  Realisation(const BuildGraph& graph, const RealiseHooks& hooks, const RealiseOptions& options)
    : m_graph(graph), m_hooks(hooks), m_options(options), m_state(graph.size()),
      m_dependent_start(graph.size() + 1, 0)
  {
    // The graph's edges reversed, in two passes: a count, then a fill.
    for (size_t drv = 0; drv < graph.size(); ++drv) {
      for (size_t input : graph.input_indices(drv)) {
        ++m_dependent_start[input + 1];
      }
    }
    for (size_t drv = 0; drv < graph.size(); ++drv) {
      m_dependent_start[drv + 1] += m_dependent_start[drv];
    }
    m_dependents.resize(m_dependent_start.back());
    std::vector<size_t> filled(m_dependent_start.begin(), m_dependent_start.end() - 1);
    for (size_t drv = 0; drv < graph.size(); ++drv) {
      for (size_t input : graph.input_indices(drv)) {
        m_dependents[filled[input]++] = static_cast<uint32_t>(drv);
      }
    }
  }

  StepResults
  run(std::vector<size_t> targets)
  {
    // Refuse cycles before anything runs. Dependents first: a derivation's
    // priority is its cost plus that of its costliest chain of dependents.
    auto order = m_graph.topological_indices();
    std::vector<double> chain(m_graph.size(), 0.0); // of the dependents
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      double mine = chain[*it] + (m_hooks.cost ? m_hooks.cost(m_graph.path(*it)) : 1.0);
      m_state[*it].priority = mine;
      for (size_t input : m_graph.input_indices(*it)) {
        chain[input] = std::max(chain[input], mine);
      }
    }
    plan(std::move(targets));
    std::vector<std::thread> workers;
    for (unsigned i = 0; i < std::max(1u, m_options.substitution_jobs); ++i) {
      workers.emplace_back([this] { work(m_substitute_queue, true); });
    }
    // With a jobserver, tokens bound the builds doing work; more workers let
    // finished builds register their outputs meanwhile.
    unsigned builders = std::max(1u, m_options.jobs) * (m_options.jobserver ? 2 : 1);
    for (unsigned i = 0; i < builders; ++i) {
      workers.emplace_back([this] { work(m_build_queue, false); });
    }
    for (auto& w : workers) {
      w.join();
    }
    std::vector<std::pair<uint32_t, StepResult>> realised;
    realised.reserve(m_state.size());
    for (size_t i = 0; i < m_state.size(); ++i) {
      if (m_state[i].done) {
        realised.emplace_back(static_cast<uint32_t>(i), result_of(i));
      }
    }
    return StepResults(m_graph, std::move(realised));
  }

private:
  std::span<const uint32_t>
  dependents(size_t drv) const
  {
    return std::span<const uint32_t>(m_dependents).subspan(
      m_dependent_start[drv], m_dependent_start[drv + 1] - m_dependent_start[drv]);
  }

  const StorePath&
  path(size_t drv) const
  {
    return m_graph.path(drv);
  }

  void
  started(size_t drv, StepKind kind)
  {
    if (m_hooks.started) {
      m_hooks.started(path(drv), kind);
    }
  }

  // With the lock held: the result as recorded.
  void
  finished(size_t drv)
  {
    if (m_hooks.finished) {
      m_hooks.finished(path(drv), result_of(drv));
    }
  }

  // With the lock held: the result of `drv`.
  void
  record(size_t drv, StepResult result)
  {
    m_state[drv].done = true;
    m_state[drv].status = static_cast<uint8_t>(result.status);
    if (!result.error.empty()) {
      m_errors[drv] = std::move(result.error);
    }
  }

  StepStatus
  status_of(size_t drv) const
  {
    return static_cast<StepStatus>(m_state[drv].status);
  }

  // With the lock held (or after the workers are done): the result of `drv`,
  // which has one.
  StepResult
  result_of(size_t drv) const
  {
    auto error = m_errors.find(drv);
    return {status_of(drv), error == m_errors.end() ? std::string() : error->second};
  }

  // With the lock held: has `drv` a result, and is it a failure?
  bool
  done(size_t drv) const
  {
    return m_state[drv].done;
  }
  bool
  not_realised(size_t drv) const
  {
    return m_state[drv].done &&
           (status_of(drv) == StepStatus::failed || status_of(drv) == StepStatus::skipped);
  }

  // Decide, level by level, what each needed derivation takes. Look-ups of
  // one level run in parallel. Called without the lock, before the workers
  // start, and from a worker when a substitution fails (with the lock not held).
  void
  plan(std::vector<size_t> frontier)
  {
    while (!frontier.empty()) {
      std::vector<char> present(frontier.size(), 0);
      std::vector<char> substitutable(frontier.size(), 0);
      parallel_for(frontier.size(), std::max(1u, m_options.substitution_jobs), [&](size_t i) {
        const StorePath& drv = path(frontier[i]);
        present[i] = m_hooks.is_present(drv);
        if (!present[i] && m_hooks.is_substitutable) {
          try {
            substitutable[i] = m_hooks.is_substitutable(drv);
          } catch (const std::exception&) {
            substitutable[i] = 0; // an unreachable cache means "build it"
          }
        }
      });
      std::vector<size_t> next;
      std::lock_guard guard(m_mutex);
      for (size_t i = 0; i < frontier.size(); ++i) {
        size_t drv = frontier[i];
        if (m_state[drv].plan != Plan::unplanned) {
          continue;
        }
        if (present[i]) {
          m_state[drv].plan = Plan::present;
          ++m_unfinished; // finish() counts it down and releases its dependents
          finish(drv, {StepStatus::present, ""});
          continue;
        }
        ++m_unfinished;
        if (substitutable[i]) {
          m_state[drv].plan = Plan::substitute;
          m_substitute_queue.push_back(drv, m_state[drv].priority);
          continue;
        }
        schedule_build(drv, next);
      }
      wake_waiters();
      frontier = std::move(next);
    }
  }

  // With the lock held: make `drv` a build, waiting for its inputs; inputs
  // not planned yet are added to `unplanned`.
  void
  schedule_build(size_t drv, std::vector<size_t>& unplanned)
  {
    m_state[drv].plan = Plan::build;
    if (m_hooks.planned_build) {
      m_hooks.planned_build(path(drv));
    }
    size_t waiting = 0;
    auto inputs = m_graph.input_indices(drv);
    for (size_t input : inputs) {
      if (done(input)) {
        if (not_realised(input)) {
          ++waiting; // finish() below marks it skipped
        }
        continue;
      }
      if (starts_early_on(drv, input)) {
        m_state[drv].early_start = true;
        continue;
      }
      ++waiting;
      if (m_state[input].plan == Plan::unplanned) {
        unplanned.push_back(input);
      }
    }
    m_state[drv].waiting = waiting;
    if (waiting == 0) {
      m_build_queue.push_back(drv, m_state[drv].priority);
    }
    for (size_t input : inputs) {
      if (not_realised(input)) {
        skip(drv, input);
        break;
      }
    }
  }

  // With the lock held: does `dependent` start on `input`'s early artifact
  // (announced already), not on `input` being done?
  bool
  starts_early_on(size_t dependent, size_t input) const
  {
    return m_state[input].early && m_hooks.may_start_early &&
           m_hooks.may_start_early(path(dependent), path(input));
  }

  // The context of one running build.
  class Context : public BuildContext
  {
  public:
    Context(Realisation& r, size_t drv, std::vector<StorePath> early, bool holds_token)
      : m_r(r), m_drv(drv), m_early_inputs(std::move(early)), m_holds_token(holds_token)
    {
    }
    ~Context() override { give_back_token(); }

    const std::vector<StorePath>& early_inputs() const override { return m_early_inputs; }
    void early_ready() override { m_r.announce_early(m_drv); }
    void work_done() override { give_back_token(); }
    bool
    wait_for_inputs() override
    {
      if (m_early_inputs.empty()) {
        return true;
      }
      give_back_token(); // its work is done; only registering is left
      return m_r.wait_for_inputs(m_drv);
    }

  private:
    void
    give_back_token()
    {
      if (m_holds_token) {
        m_holds_token = false;
        m_r.m_options.jobserver->release();
      }
    }

    Realisation& m_r;
    size_t m_drv;
    std::vector<StorePath> m_early_inputs;
    bool m_holds_token;
  };

  void
  announce_early(size_t drv)
  {
    std::lock_guard guard(m_mutex);
    if (m_state[drv].early) {
      return;
    }
    m_state[drv].early = true;
    if (!m_hooks.may_start_early) {
      return;
    }
    for (size_t dependent : dependents(drv)) {
      if (done(dependent) || m_state[dependent].plan != Plan::build ||
          !m_hooks.may_start_early(path(dependent), path(drv))) {
        continue;
      }
      m_state[dependent].early_start = true;
      if (--m_state[dependent].waiting == 0) {
        m_build_queue.push_back(dependent, m_state[dependent].priority);
      }
    }
    wake_waiters();
  }

  // Wait until every input of `drv` is done; false if one was not realised.
  bool
  wait_for_inputs(size_t drv)
  {
    std::unique_lock lock(m_mutex);
    auto inputs = m_graph.input_indices(drv);
    ++m_input_waiters;
    m_inputs_wake.wait(lock, [&] {
      return std::all_of(inputs.begin(), inputs.end(), [&](size_t in) { return done(in); });
    });
    --m_input_waiters;
    return !failed_input(drv);
  }

  // With the lock held: an input of `drv` that was not realised, if any.
  std::optional<size_t>
  failed_input(size_t drv) const
  {
    for (size_t input : m_graph.input_indices(drv)) {
      if (not_realised(input)) {
        return input;
      }
    }
    return std::nullopt;
  }

  struct Claim
  {
    std::shared_ptr<void> held;
    bool realised_elsewhere = false;
    std::string error;
  };

  // Claim `drv` for this process (RealiseHooks::claim), without the lock.
  Claim
  take_claim(size_t drv)
  {
    Claim claim;
    if (!m_hooks.claim) {
      return claim;
    }
    try {
      claim.held = m_hooks.claim(path(drv));
      claim.realised_elsewhere = m_hooks.is_present(path(drv));
    } catch (const std::exception& e) {
      claim.error = e.what();
    }
    return claim;
  }

  void
  work(ReadyQueue& queue, bool substituting)
  {
    std::condition_variable& wake = substituting ? m_substitute_wake : m_build_wake;
    unsigned& idle = substituting ? m_idle_substituters : m_idle_builders;
    std::unique_lock lock(m_mutex);
    while (true) {
      if (queue.empty() && m_unfinished != 0 && !m_stopping) {
        ++idle;
        wake.wait(lock, [&] { return !queue.empty() || m_unfinished == 0 || m_stopping; });
        --idle;
      }
      if (queue.empty() || (m_stopping && !m_options.keep_going)) {
        if (m_unfinished == 0 || m_stopping) {
          wake_waiters();
          return;
        }
        continue;
      }
      size_t drv = queue.pop_front();
      if (!queue.empty() && idle > 0) {
        wake.notify_one(); // more to do: the next idle worker takes it
      }
      if (done(drv)) {
        continue; // skipped meanwhile
      }
      if (!substituting) {
        m_state[drv].running = true; // its worker decides what becomes of it now
      }
      Claim claim;
      if (m_hooks.claim) {
        lock.unlock();
        claim = take_claim(drv);
        lock.lock();
      }
      if (claim.realised_elsewhere) {
        m_state[drv].running = false;
        finish(drv, {StepStatus::present, ""});
        wake_waiters();
        continue;
      }
      std::string error = claim.error;
      bool token = false;
      std::vector<StorePath> early;
      if (!substituting) {
        if (!prepare_and_take_token(drv, lock, error, token)) {
          continue;
        }
        // (Only a build that waited on an early artifact looks at its
        // inputs again: at 100k derivations each is a cache miss, with the
        // lock held.)
        if (m_state[drv].early_start) {
          for (size_t input : m_graph.input_indices(drv)) {
            if (!done(input)) {
              early.push_back(path(input)); // started on its early artifact
            }
          }
        }
      }
      bool started_early = !early.empty();
      lock.unlock();
      started(drv, substituting ? StepKind::substituting : StepKind::building);
      try {
        if (substituting) {
          m_hooks.substitute(path(drv));
        } else if (error.empty()) {
          Context context(*this, drv, std::move(early), token);
          m_hooks.build(path(drv), context);
        }
      } catch (const std::exception& e) {
        error = e.what();
      }
      if (substituting && !error.empty()) {
        // A cache failed us: build it instead, which needs its inputs.
        if (m_hooks.substitution_failed) {
          m_hooks.substitution_failed(path(drv), error);
        }
        std::vector<size_t> unplanned;
        lock.lock();
        schedule_build(drv, unplanned);
        wake_waiters();
        lock.unlock();
        plan(unplanned);
        lock.lock();
        continue;
      }
      // What concluding the step reads and writes of its dependents is on
      // its way into the cache before the lock is taken, not while it is
      // held (the lists of dependents never change: no lock needed).
      for (uint32_t dependent : dependents(drv)) {
        __builtin_prefetch(&m_state[dependent], 1);
      }
      lock_soon(lock);
      conclude(drv, substituting, started_early, error);
      wake_waiters(&queue); // this worker takes the next of its queue itself
    }
  }

  // With `lock` held: what needs no job token (writing sources) comes
  // before taking one, so that while the other builds work the next are
  // made ready. False if the step is not to start after all (an earlier
  // failure stops the build meanwhile): it is then finished as skipped.
  bool
  prepare_and_take_token(size_t drv, std::unique_lock<std::mutex>& lock, std::string& error,
                         bool& token)
  {
    if (!m_hooks.prepare && !m_options.jobserver) {
      return true;
    }
    lock.unlock();
    try {
      if (m_hooks.prepare) {
        m_hooks.prepare(path(drv));
      }
      if (m_options.jobserver) {
        m_options.jobserver->acquire();
        token = true;
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    lock.lock();
    if (m_stopping && !m_options.keep_going) {
      if (token) {
        m_options.jobserver->release();
      }
      m_state[drv].running = false;
      finish(drv, {StepStatus::skipped, "not started after an earlier failure"});
      wake_waiters();
      return false;
    }
    return true;
  }

  // With the lock held: record how a step that ran ended (`error` empty:
  // it succeeded), and stop the build on a failure unless keep-going. Only
  // a build that started early can have an input that failed since: the
  // others started once all their inputs were realised.
  void
  conclude(size_t drv, bool substituting, bool started_early, const std::string& error)
  {
    m_state[drv].running = false;
    if (auto input = started_early ? failed_input(drv) : std::nullopt) {
      // Started early on an input that then failed: whatever it did is void.
      finish(drv, {StepStatus::skipped,
                   "input " + std::string(path(*input).name()) + " could not be realised"});
      finished(drv);
    } else if (error.empty()) {
      finish(drv, {substituting ? StepStatus::substituted : StepStatus::built, ""});
      finished(drv);
    } else {
      finish(drv, {StepStatus::failed, error});
      finished(drv);
      if (!m_options.keep_going) {
        m_stopping = true;
        stop_pending("not started after an earlier failure");
      }
    }
  }

  // With the lock held.
  void
  finish(size_t drv, StepResult result)
  {
    record(drv, std::move(result));
    bool ok = !not_realised(drv);
    --m_unfinished;
    for (size_t dependent : dependents(drv)) {
      if (done(dependent) || m_state[dependent].plan != Plan::build) {
        continue;
      }
      if (!ok) {
        skip(dependent, drv);
      } else if (starts_early_on(dependent, drv)) {
        continue; // counted when the early artifact was announced
      } else if (--m_state[dependent].waiting == 0) {
        m_build_queue.push_back(dependent, m_state[dependent].priority);
      }
    }
  }

  void
  skip(size_t drv, size_t because)
  {
    if (done(drv) || m_state[drv].running) {
      return; // a running build finds out when it waits for its inputs
    }
    finish(drv, {StepStatus::skipped,
                 "input " + std::string(path(because).name()) + " could not be realised"});
  }

  void
  stop_pending(const std::string& why)
  {
    for (auto* queue : {&m_build_queue, &m_substitute_queue}) {
      queue->for_each([&](size_t drv) {
        if (!done(drv)) {
          record(drv, {StepStatus::skipped, why});
          --m_unfinished;
        }
      });
      queue->clear();
    }
    for (size_t drv = 0; drv < m_state.size(); ++drv) {
      if (m_state[drv].plan == Plan::build && !done(drv) && m_state[drv].waiting > 0) {
        record(drv, {StepStatus::skipped, why});
        --m_unfinished;
      }
    }
  }

  // Takes the lock, trying for a little while before sleeping: it is held
  // for a microsecond or two at a time, and between two processors a sleep
  // and a wake-up cost ten times that.
  static void
  lock_soon(std::unique_lock<std::mutex>& lock)
  {
    for (int i = 0; i < 256; ++i) {
      if (lock.try_lock()) {
        return;
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause(); // tells the processor this is a wait
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    }
    lock.lock();
  }

  // With the lock held, after a change of state: wakes those it may
  // concern. An idle worker only where its queue has work (it passes the
  // word on if there is more), all of them at the end. With builds that
  // take no time, waking every thread at every step had them queue for
  // the lock.
  void
  wake_waiters(const ReadyQueue* taken_by_caller = nullptr)
  {
    auto has_work_for_others = [&](const ReadyQueue& queue) {
      return queue.size() > (&queue == taken_by_caller ? 1 : 0);
    };
    if (m_unfinished == 0 || m_stopping) {
      m_build_wake.notify_all();
      m_substitute_wake.notify_all();
    } else {
      if (m_idle_builders > 0 && has_work_for_others(m_build_queue)) {
        m_build_wake.notify_one();
      }
      if (m_idle_substituters > 0 && has_work_for_others(m_substitute_queue)) {
        m_substitute_wake.notify_one();
      }
    }
    if (m_input_waiters > 0) {
      m_inputs_wake.notify_all();
    }
  }

  const BuildGraph& m_graph;
  const RealiseHooks& m_hooks;
  const RealiseOptions& m_options;
  std::mutex m_mutex;
  std::condition_variable m_build_wake;      // workers of the build queue
  std::condition_variable m_substitute_wake; // of the substitution queue
  std::condition_variable m_inputs_wake;     // builds waiting for their inputs
  unsigned m_idle_builders = 0;              // waiting on m_build_wake
  unsigned m_idle_substituters = 0;
  unsigned m_input_waiters = 0;
  // What each step reads and writes of a derivation, together: at 100k
  // derivations, an array per field cost a cache miss per field.
  struct DrvState
  {
    double priority = 0; // its cost plus that of its costliest chain of dependents
    uint32_t waiting = 0; // a build: the inputs it waits for
    Plan plan = Plan::unplanned;
    bool running : 1 = false;  // a build its worker decides the fate of
    bool early : 1 = false;    // a build whose early artifact is ready
    bool done : 1 = false;     // has a result: `status`, and its error in m_errors
    bool early_start : 1 = false; // a build that may start on an input's early artifact
    uint8_t status = 0; // a StepStatus, once done
  };
  static_assert(sizeof(DrvState) == 16);
  // By derivation number:
  std::vector<DrvState> m_state;
  // The errors of failed and skipped steps (few: an array of them for
  // every derivation was one more cache miss per step at 100k).
  std::unordered_map<size_t, std::string> m_errors;
  // The dependents of derivation i in the graph are m_dependents[
  // m_dependent_start[i] … m_dependent_start[i+1]): all of them, also those
  // not (or not yet) planned as builds, which readers pass over. One array,
  // built once: a vector per derivation, grown edge by edge as builds were
  // planned, was 300k allocations at 100k derivations.
  std::vector<size_t> m_dependent_start;
  std::vector<uint32_t> m_dependents;
  ReadyQueue m_build_queue;
  ReadyQueue m_substitute_queue;
  size_t m_unfinished = 0;
  bool m_stopping = false;
};

// Sorts (key, value) pairs by key, keeping the order of equal keys: a
// pass per byte of the key, the least significant first, passing over
// bytes all keys share. Linear in the count: std::sort's n log n steps,
// each comparing two items far apart in memory, grew faster than the graph.
void
radix_sort_by_key(std::vector<std::pair<uint64_t, uint32_t>>& items)
{
  std::array<std::array<size_t, 256>, 8> counts{};
  for (const auto& item : items) {
    for (unsigned byte = 0; byte < 8; ++byte) {
      ++counts[byte][(item.first >> (8 * byte)) & 0xff];
    }
  }
  std::vector<std::pair<uint64_t, uint32_t>> sorted;
  for (unsigned byte = 0; byte < 8; ++byte) {
    // How many keys have each value of this byte; then where the next of
    // them goes in `sorted`.
    auto& place = counts[byte];
    if (std::find(place.begin(), place.end(), items.size()) != place.end()) {
      continue; // every key has the same byte here
    }
    size_t start = 0;
    for (auto& c : place) {
      start += std::exchange(c, start);
    }
    sorted.resize(items.size());
    for (const auto& item : items) {
      sorted[place[(item.first >> (8 * byte)) & 0xff]++] = item;
    }
    items.swap(sorted);
  }
}

} // namespace

StepResults::StepResults(BuildGraph graph, std::vector<std::pair<uint32_t, StepResult>> results)
  : m_position(graph.size(), UINT32_MAX)
{
  // In the order of the paths, as a map of them iterates: sorted by a key
  // of each path's first 8 bytes, read once, and by the paths themselves
  // only where keys tie.
  auto order_key = [&](uint32_t drv) {
    uint64_t key = 0;
    for (unsigned char c : graph.path(drv).hash_part().substr(0, sizeof key)) {
      key = (key << 8) | c;
    }
    return key;
  };
  std::vector<std::pair<uint64_t, uint32_t>> order; // (key, place in `results`)
  order.reserve(results.size());
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].first >= graph.size()) {
      throw std::invalid_argument("step results: no derivation number " +
                                  std::to_string(results[i].first) + " in the graph");
    }
    order.emplace_back(order_key(results[i].first), static_cast<uint32_t>(i));
  }
  radix_sort_by_key(order);
  for (auto run = order.begin(); run != order.end();) { // a run of equal keys
    auto run_end =
      std::find_if(run, order.end(), [&](const auto& o) { return o.first != run->first; });
    if (run_end - run > 1) {
      std::sort(run, run_end, [&](const auto& a, const auto& b) {
        return graph.path(results[a.second].first) < graph.path(results[b.second].first);
      });
    }
    run = run_end;
  }
  m_entries.reserve(results.size());
  for (const auto& [key, i] : order) {
    auto& [drv, result] = results[i];
    if (m_position[drv] != UINT32_MAX) {
      throw std::invalid_argument("step results: derivation " + graph.path(drv).base() +
                                  " given twice");
    }
    m_position[drv] = static_cast<uint32_t>(m_entries.size());
    m_entries.push_back({drv, std::move(result)});
  }
  m_graph = std::make_shared<const BuildGraph>(std::move(graph));
}

StepResults::const_iterator
StepResults::begin() const
{
  return {m_graph.get(), m_entries.data()};
}

StepResults::const_iterator
StepResults::end() const
{
  return {m_graph.get(), m_entries.data() + m_entries.size()};
}

StepResults::const_iterator
StepResults::find(const StorePath& drv) const
{
  if (!m_graph) {
    return end();
  }
  auto index = m_graph->find(drv);
  if (!index || m_position[*index] == UINT32_MAX) {
    return end();
  }
  return {m_graph.get(), m_entries.data() + m_position[*index]};
}

const StepResult&
StepResults::at(const StorePath& drv) const
{
  auto it = find(drv);
  if (it == end()) {
    throw std::out_of_range("no step result for " + drv.base());
  }
  return it->second;
}

size_t
StepResults::count(const StorePath& drv) const
{
  return find(drv) != end() ? 1 : 0;
}

StepResults
realise(const BuildGraph& graph, const std::vector<StorePath>& targets, const RealiseHooks& hooks,
        const RealiseOptions& options)
{
  std::vector<size_t> frontier;
  frontier.reserve(targets.size());
  for (const auto& target : targets) {
    frontier.push_back(graph.index_of(target));
  }
  Realisation realisation(graph, hooks, options);
  return realisation.run(std::move(frontier));
}

StepResults
realise(const BuildGraph& graph, const RealiseHooks& hooks, const RealiseOptions& options)
{
  std::vector<size_t> frontier(graph.target_count());
  std::iota(frontier.begin(), frontier.end(), size_t{0});
  Realisation realisation(graph, hooks, options);
  return realisation.run(std::move(frontier));
}

} // namespace kiln
