// LocalStore::Impl, private to the store module: the state of an open store
// and the steps LocalStore's operations share. Its members are defined in
//
//   local_store.cpp         opening the store; locks, temporaries, the
//                           database (query, register, invalidate)
//   local_store_add.cpp     adding objects: a folder, a text, a NAR, a
//                           build's output
//   local_store_roots.cpp   GC roots, temporary roots, root lists
//   local_store_gc.cpp      garbage collection and the size cap
//   local_store_verify.cpp  verify and repair
#pragma once

#include "database.hpp"
#include "temp_roots.hpp"

#include <kiln/store/local_store.hpp>
#include <kiln/util/lock.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

struct LocalStore::Impl
{
  StoreDir store_dir;
  std::filesystem::path root;
  std::filesystem::path objects;
  std::filesystem::path tmp;
  std::filesystem::path locks;
  std::filesystem::path gcroots;
  std::unique_ptr<detail::Database> db;
  mutable std::mutex db_mutex; // one connection, shared by this object's threads
  std::mutex lock_mutex;
  std::weak_ptr<FileLock> shared_gc;
  std::chrono::seconds lock_timeout;
  std::function<void(const std::string&)> on_wait;
  std::shared_ptr<detail::TempRoots> temp_roots;
  // Paths this process used since the last flush_uses (base names).
  std::mutex uses_mutex;
  std::set<std::string> pending_uses;

  Impl(const LocalStoreConfig& config);

  // --- local_store.cpp ---

  void open_database();
  LockWait lock_wait(std::string what, std::chrono::milliseconds announce_after) const;
  FileLock gc_lock(LockMode mode, std::optional<std::chrono::seconds> timeout = std::nullopt) const;
  FileLock path_lock(const StorePath& path) const;
  FileLock claim_lock(const StorePath& path) const;
  std::shared_ptr<FileLock> shared_gc_lock();
  std::filesystem::path debris_path(const std::string& purpose) const;
  std::filesystem::path owned_temp_path(const std::string& purpose);
  std::optional<int64_t> path_id(const StorePath& path) const;
  std::optional<PathInfo> query(const StorePath& path) const;
  void require_valid_references(const PathInfo& info, const std::string& context) const;
  void register_path(const PathInfo& info);
  void insert_path(const PathInfo& info);   // register_path within the caller's transaction
  void invalidate(const std::vector<StorePath>& paths);
  uint64_t remove_from_disk(const std::filesystem::path& object);

  // --- local_store_add.cpp ---

  void commit_temp(const std::filesystem::path& temp, const PathInfo& info);
  // The rename only; the caller syncs the objects folder (unless `sync`).
  void move_into_store(const std::filesystem::path& temp, const StorePath& path, bool sync = true);
  bool commit_if_new(const std::filesystem::path& temp, const PathInfo& info);

  // --- local_store_roots.cpp ---

  void become_owner();
  void add_temp_roots(const std::set<StorePath>& paths);
  std::optional<StorePath> store_path_of_target(const std::string& target) const;
  void collect_roots(const std::filesystem::path& dir, bool is_auto,
                     std::vector<std::pair<std::filesystem::path, StorePath>>& out,
                     std::vector<std::pair<std::filesystem::path, StorePath>>* lists) const;
  std::vector<StorePath> read_root_list(const std::filesystem::path& file) const;
  struct GcRoots
  {
    std::set<StorePath> hard;    // links, --root, temporary roots: never deleted
    std::set<StorePath> listed;  // in root lists: kept by gc, given up under the size cap
  };
  GcRoots gc_roots(const LocalStore& store, const GcOptions& options, GcResult& result);

  // --- local_store_gc.cpp ---

  void flush_uses();
  std::vector<StorePath> deletion_order(const LocalStore& store, const std::set<StorePath>& live);
  void order_for_size_cap(const LocalStore& store, const std::set<StorePath>& listed_live,
                          std::vector<StorePath>& order);
  void remove_debris(const LocalStore& store, GcResult& result);

  // --- local_store_verify.cpp ---

  void refetch_corrupt(LocalStore& store, const VerifyOptions& options,
                       std::vector<StorePath>& corrupt, VerifyResult& result);
  void remove_corrupt(LocalStore& store, const std::vector<StorePath>& corrupt,
                      VerifyResult& result);
};

} // namespace kiln
