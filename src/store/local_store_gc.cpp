// Garbage collection: every valid path no root keeps is deleted, referrers
// first, with the GC lock held exclusively; then the debris of crashed
// processes. Under a size cap (--max-size) only as much goes as brings the
// store under it, least recently used first, root lists giving way last;
// "last used" is written down by flush_uses.
#include "local_store_impl.hpp"

#include <kiln/util/error.hpp>

#include <algorithm>
#include <iterator>
#include <map>
#include <mutex>
#include <tuple>

namespace kiln {

namespace fs = std::filesystem;
using detail::Statement;
using detail::Transaction;

void
LocalStore::Impl::flush_uses()
{
  std::set<std::string> names;
  {
    std::lock_guard guard(uses_mutex);
    names.swap(pending_uses);
  }
  if (names.empty()) {
    return;
  }
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  std::lock_guard guard(db_mutex);
  Transaction txn(*db);
  Statement upsert(*db, "INSERT INTO LastUse (path, time) SELECT id, ? FROM ValidPaths "
                        "WHERE path = ? ON CONFLICT (path) DO UPDATE SET time = excluded.time");
  for (const auto& name : names) {
    upsert.bind(1, now).bind(2, name).run();
  }
  txn.commit();
}

void
LocalStore::flush_uses()
{
  m->flush_uses();
}

std::vector<fs::path>
LocalStore::stray_entries() const
{
  std::vector<fs::path> strays;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(m->objects, ec)) {
    bool valid = false;
    try {
      valid = is_valid(StorePath(entry.path().filename().string()));
    } catch (const FormatError&) {
      // Not even a store path name: certainly not valid.
    }
    if (!valid) {
      strays.push_back(entry.path());
    }
  }
  return strays;
}

// Dead paths in an order that deletes referrers first, so that the closure
// invariant holds after every step, even if GC is interrupted or stopped by
// --max-freed.
std::vector<StorePath>
LocalStore::Impl::deletion_order(const LocalStore& store, const std::set<StorePath>& live)
{
  std::map<StorePath, size_t> pending; // dead referrers not deleted yet
  std::vector<StorePath> ready;
  for (const auto& path : store.valid_paths()) {
    if (!live.count(path)) {
      auto refs = store.referrers(path);
      refs.erase(path);
      pending[path] = refs.size();
      if (refs.empty()) {
        ready.push_back(path);
      }
    }
  }
  std::vector<StorePath> order;
  while (!ready.empty()) {
    StorePath path = ready.back();
    ready.pop_back();
    order.push_back(path);
    auto info = store.query_path_info(path);
    for (const auto& ref : info->references) {
      if (ref != path && pending.count(ref) && --pending[ref] == 0) {
        ready.push_back(ref);
      }
    }
  }
  return order;
}

// With the GC lock held exclusively nothing is being added: whatever is in
// the objects folder but not valid is debris of a crash, and so is every
// temporary whose owner is gone and every lock file nobody holds.
void
LocalStore::Impl::remove_debris(const LocalStore& store, GcResult& result)
{
  for (const auto& stray : store.stray_entries()) {
    result.bytes_freed += remove_from_disk(stray);
    ++result.strays_removed;
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(tmp, ec)) {
    pid_t owner = detail::temp_owner(entry.path().filename().string());
    if (owner != 0 && temp_roots->owner_alive(owner)) {
      continue;
    }
    result.bytes_freed += tree_size(entry.path());
    delete_path(entry.path());
  }
  for (const auto& entry : fs::directory_iterator(locks, ec)) {
    if (entry.path().filename() != "gc.lock") {
      FileLock::remove_if_unused(entry.path());
    }
  }
}

// Under the size cap: what no root keeps before what only a root list
// keeps, each least recently used first. A path counts as used as recently
// as its most recent dead referrer, which must go before it.
void
LocalStore::Impl::order_for_size_cap(const LocalStore& store, const std::set<StorePath>& listed_live,
                                     std::vector<StorePath>& order)
{
  std::map<StorePath, int64_t> used;
  {
    std::lock_guard guard(db_mutex);
    Statement q(*db, "SELECT v.path, u.time FROM LastUse u JOIN ValidPaths v ON v.id = u.path");
    while (q.step()) {
      used[StorePath(q.column_text(0))] = q.column_int(1);
    }
  }
  std::set<StorePath> dead(order.begin(), order.end());
  struct Key
  {
    bool listed;
    int64_t used;
    size_t position;   // in `order`, which deletes referrers first
  };
  std::map<StorePath, Key> keys;
  for (size_t i = 0; i < order.size(); ++i) {
    const StorePath& path = order[i];
    Key key{listed_live.count(path) > 0, used.count(path) ? used[path] : 0, i};
    for (const auto& referrer : store.referrers(path)) {
      if (referrer != path && dead.count(referrer)) {
        key.listed = key.listed || keys.at(referrer).listed;
        key.used = std::max(key.used, keys.at(referrer).used);
      }
    }
    keys.emplace(path, key);
  }
  std::stable_sort(order.begin(), order.end(), [&](const StorePath& a, const StorePath& b) {
    const Key& x = keys.at(a);
    const Key& y = keys.at(b);
    return std::tie(x.listed, x.used, x.position) < std::tie(y.listed, y.used, y.position);
  });
}

GcResult
LocalStore::collect_garbage(const GcOptions& options)
{
  GcResult result;
  m->flush_uses();
  auto gc = m->gc_lock(LockMode::exclusive, options.timeout);
  auto roots = m->gc_roots(*this, options, result);
  std::set<StorePath> hard_live = closure(roots.hard);
  std::set<StorePath> all_roots = roots.hard;
  all_roots.insert(roots.listed.begin(), roots.listed.end());
  std::set<StorePath> live = closure(all_roots);
  uint64_t over = 0;
  std::vector<StorePath> order;
  if (options.max_size) {
    // Only as much as brings the store under the cap, in the cap's order;
    // root lists give way to it, nothing else does.
    uint64_t size = stats().nar_bytes;
    over = size > *options.max_size ? size - *options.max_size : 0;
    std::set<StorePath> listed_live;
    std::set_difference(live.begin(), live.end(), hard_live.begin(), hard_live.end(),
                        std::inserter(listed_live, listed_live.end()));
    order = m->deletion_order(*this, hard_live);
    m->order_for_size_cap(*this, listed_live, order);
    live = hard_live;
  } else {
    order = m->deletion_order(*this, live);
  }
  result.live = live.size();
  uint64_t freed_nar = 0;
  for (const auto& path : order) {
    if ((options.max_freed && result.bytes_freed >= *options.max_freed) ||
        (options.max_size && freed_nar >= over)) {
      break;
    }
    auto info = query_path_info(path);
    freed_nar += info ? info->nar_size : 0;
    result.deleted.push_back(path);
    if (options.dry_run) {
      result.bytes_freed += tree_size(physical_path(path));
      continue;
    }
    {
      std::lock_guard guard(m->db_mutex);
      m->invalidate({path});
    }
    result.bytes_freed += m->remove_from_disk(physical_path(path));
  }
  if (!options.dry_run) {
    m->remove_debris(*this, result);
  }
  return result;
}

} // namespace kiln
