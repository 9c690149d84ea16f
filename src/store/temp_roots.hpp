// Temporary roots: what a running kiln process made, fetched or is about to
// use, kept from garbage collection until that process ends (Nix's
// temproots). Private to the store.
//
//   temproots/<pid>   base names of store paths, one a line, appended by the
//                     process <pid>, which holds the file locked exclusively
//                     for as long as it lives
//
// A file nobody holds belongs to a process that is gone: its roots no longer
// count and GC deletes it. The same lock tells GC whether the owner of the
// temporaries tmp/<pid>-… still lives. The owner writes only while holding
// the GC lock shared, and GC reads while holding it exclusively, so GC sees
// every root added before it started, and none is added while it runs.
#pragma once

#include <kiln/util/lock.hpp>

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

namespace kiln::detail {

class TempRoots
{
public:
  // The one object of this process for the roots folder `dir`: every store
  // object of one store shares it (a second lock on the same file would wait
  // for the first forever).
  static std::shared_ptr<TempRoots> of(const std::filesystem::path& dir);

  explicit TempRoots(std::filesystem::path dir);
  // The roots file goes with the store object (the process is done with it).
  ~TempRoots();

  // Make this process's roots file and lock it, once. True when it was made
  // now: temporaries named for this pid are then a dead process's, and
  // `on_first` (run before any other thread gets past this call) deletes
  // them. The caller holds the GC lock shared.
  bool ensure_owner(const std::function<void()>& on_first = {});
  // Record `names` (base names) as this process's roots. The caller holds
  // the GC lock shared.
  void add(const std::vector<std::string>& names);

  // Does the kiln process `pid` still live? The caller holds the GC lock
  // exclusively.
  bool owner_alive(pid_t pid) const;
  // The roots of every other live process; the files of dead ones are
  // deleted. The collecting process's own roots are not counted: it is
  // the one asking for garbage to go. The caller holds the GC lock
  // exclusively.
  std::set<std::string> others_roots();

private:
  std::filesystem::path m_dir;
  std::mutex m_mutex;
  std::optional<FileLock> m_own;
  std::unordered_set<std::string> m_recorded;
};

// The pid a temporary under tmp/ is named for ("<pid>-<purpose>-…"), or 0.
pid_t temp_owner(const std::string& name);

} // namespace kiln::detail
