// What keeps store paths from garbage collection: GC roots (links in
// gcroots/, or links elsewhere registered through gcroots/auto/), root
// lists (a project's units, kept while the file exists), the temporary
// roots of running kiln processes, and the --root arguments of one GC.
// Also resolve: the store path a link, a path or a text names.
#include "local_store_impl.hpp"

#include <kiln/util/error.hpp>
#include <kiln/util/strings.hpp>

#include <unistd.h>

#include <mutex>
#include <sstream>

namespace kiln {

namespace fs = std::filesystem;

// This process's temporary roots file exists and is locked. A temporary
// named for this pid that is older than the file was a dead process's.
void
LocalStore::Impl::become_owner()
{
  auto gc = shared_gc_lock();
  temp_roots->ensure_owner([&] {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(tmp, ec)) {
      if (detail::temp_owner(entry.path().filename().string()) == ::getpid()) {
        delete_path(entry.path());
      }
    }
  });
}

void
LocalStore::Impl::add_temp_roots(const std::set<StorePath>& paths)
{
  std::vector<std::string> names;
  for (const auto& path : paths) {
    names.push_back(path.base());
  }
  become_owner();
  auto gc = shared_gc_lock();
  temp_roots->add(names);
  // What a process roots is what it uses: the size cap's "last used".
  std::lock_guard guard(uses_mutex);
  pending_uses.insert(names.begin(), names.end());
}

void
LocalStore::add_temp_roots(const std::set<StorePath>& paths)
{
  m->add_temp_roots(paths);
}

std::optional<StorePath>
LocalStore::Impl::store_path_of_target(const std::string& target) const
{
  std::string objects_prefix = objects.string() + "/";
  if (target.starts_with(objects_prefix)) {
    return store_dir.try_parse_prefix(store_dir.path() + "/" +
                                      target.substr(objects_prefix.size()));
  }
  if (target.starts_with(store_dir.path() + "/")) {
    return store_dir.try_parse_prefix(target);
  }
  return std::nullopt;
}

void
LocalStore::Impl::collect_roots(const fs::path& dir, bool is_auto,
                                std::vector<std::pair<fs::path, StorePath>>& out,
                                std::vector<std::pair<fs::path, StorePath>>* lists) const
{
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    auto status = entry.symlink_status();
    if (fs::is_directory(status)) {
      collect_roots(entry.path(), is_auto || entry.path().filename() == "auto", out, lists);
      continue;
    }
    if (!fs::is_symlink(status)) {
      continue;
    }
    std::string target = fs::read_symlink(entry.path(), ec).string();
    if (ec) {
      continue;
    }
    if (auto path = store_path_of_target(target)) {
      out.emplace_back(entry.path(), *path);
      continue;
    }
    // An indirect root: a link elsewhere (e.g. a `result` symlink) that
    // points into the store. It stops being a root when removed.
    fs::path indirect = target;
    auto indirect_status = fs::symlink_status(indirect, ec);
    if (fs::is_symlink(indirect_status)) {
      std::string final_target = fs::read_symlink(indirect, ec).string();
      if (!ec) {
        if (auto path = store_path_of_target(final_target)) {
          out.emplace_back(indirect, *path);
        }
      }
    } else if (fs::is_regular_file(indirect_status)) {
      // A root list (add_root_list): a project's units, one path a line.
      if (lists) {
        for (const auto& path : read_root_list(indirect)) {
          lists->emplace_back(indirect, path);
        }
      }
    } else if (is_auto && !fs::exists(indirect_status)) {
      fs::remove(entry.path(), ec);
    }
  }
}

// The store paths a root list names; lines that name none are skipped
// (the file is kiln's own, but it lives in the user's tree).
std::vector<StorePath>
LocalStore::Impl::read_root_list(const fs::path& file) const
{
  std::vector<StorePath> paths;
  std::string text;
  try {
    text = read_file(file);
  } catch (const std::exception&) {
    return paths;
  }
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (auto path = store_path_of_target(line)) {
      paths.push_back(*path);
    }
  }
  return paths;
}

StorePath
LocalStore::resolve(const std::string& text) const
{
  if (auto path = m->store_path_of_target(text)) {
    return *path;
  }
  std::error_code ec;
  fs::path p(text);
  if (fs::is_symlink(fs::symlink_status(p, ec))) {
    auto target = fs::read_symlink(p, ec);
    if (!ec) {
      if (target.is_relative()) {
        target = p.parent_path() / target;
      }
      auto absolute = fs::absolute(target, ec).lexically_normal();
      if (auto path = m->store_path_of_target(absolute.string())) {
        return *path;
      }
      if (auto path = m->store_path_of_target(target.string())) {
        return *path;
      }
    }
  }
  auto absolute = fs::absolute(p, ec).lexically_normal();
  if (!ec) {
    if (auto path = m->store_path_of_target(absolute.string())) {
      return *path;
    }
  }
  if (text.find('/') == std::string::npos) {
    try {
      return StorePath(text);
    } catch (const FormatError&) {
    }
  }
  throw UsageError("'" + text + "' is not a store path (expected " + m->store_dir.path() +
                   "/<hash>-<name>, a base name, or a path into " + m->objects.string() + ")");
}

void
LocalStore::add_root(const fs::path& link, const StorePath& path)
{
  std::error_code ec;
  fs::path absolute_link = fs::absolute(link, ec).lexically_normal();
  replace_symlink(physical_path(path), absolute_link);
  // Links inside gcroots/ are roots themselves; others are registered by an
  // indirection, named by a hash of their location.
  std::string gcroots_prefix = m->gcroots.string() + "/";
  if (!absolute_link.string().starts_with(gcroots_prefix)) {
    std::string id =
      nix32_encode(compress_hash(hash_string(HashAlgo::sha256, absolute_link.string()).bytes(), 20));
    replace_symlink(absolute_link, m->gcroots / "auto" / id);
  }
}

std::vector<std::pair<fs::path, StorePath>>
LocalStore::find_roots() const
{
  std::vector<std::pair<fs::path, StorePath>> out;
  m->collect_roots(m->gcroots, false, out, nullptr);
  return out;
}

void
LocalStore::add_root_list(const fs::path& file, const std::set<StorePath>& paths)
{
  std::error_code ec;
  fs::path absolute = fs::absolute(file, ec).lexically_normal();
  std::string text = "# kiln: store paths kept from garbage collection while this file exists\n";
  for (const auto& path : paths) {
    text += print(path) + "\n";
  }
  std::string before;
  try {
    before = read_file(absolute);
  } catch (const std::exception&) {
    // Not there yet.
  }
  // A no-op build finds its list as it left it: no write, no sync.
  if (before != text) {
    fs::create_directories(absolute.parent_path());
    write_file_atomic(absolute, text);
  }
  std::string id =
    nix32_encode(compress_hash(hash_string(HashAlgo::sha256, absolute.string()).bytes(), 20));
  replace_symlink(absolute, m->gcroots / "auto" / id);
}

std::vector<std::pair<fs::path, StorePath>>
LocalStore::find_root_lists() const
{
  std::vector<std::pair<fs::path, StorePath>> links, lists;
  m->collect_roots(m->gcroots, false, links, &lists);
  return lists;
}

namespace {

// The paths an --root argument keeps: what a symlink points to, or the
// paths a file lists (one a line, # comments).
std::set<StorePath>
extra_roots(const LocalStore& store, const fs::path& extra)
{
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(extra, ec))) {
    return {store.resolve(extra.string())};
  }
  if (!fs::exists(extra, ec)) {
    throw UsageError("root file '" + extra.string() + "' does not exist");
  }
  std::set<StorePath> roots;
  std::string text = read_file(extra);
  size_t line_no = 0;
  for (size_t pos = 0; pos <= text.size();) {
    size_t end = std::min(text.find('\n', pos), text.size());
    std::string line = text.substr(pos, end - pos);
    ++line_no;
    pos = end + 1;
    if (line.empty() || line[0] == '#') {
      continue;
    }
    try {
      roots.insert(store.resolve(line));
    } catch (const UsageError& e) {
      throw UsageError(extra.string() + ":" + std::to_string(line_no) + ": " + e.what());
    }
  }
  return roots;
}

} // namespace

LocalStore::Impl::GcRoots
LocalStore::Impl::gc_roots(const LocalStore& store, const GcOptions& options, GcResult& result)
{
  std::set<StorePath> roots;
  std::vector<std::pair<fs::path, StorePath>> links, lists;
  collect_roots(gcroots, false, links, &lists);
  for (const auto& [link, path] : links) {
    roots.insert(path);
  }
  for (const auto& extra : options.extra_roots) {
    roots.merge(extra_roots(store, extra));
  }
  for (const auto& name : temp_roots->others_roots()) {
    try {
      if (roots.insert(StorePath(name)).second) {
        ++result.temp_roots;
      }
    } catch (const FormatError&) {
      // Not a store path: nothing to keep.
    }
  }
  GcRoots out;
  for (const auto& root : roots) {
    if (store.is_valid(root)) {
      out.hard.insert(root);
    }
  }
  for (const auto& [file, path] : lists) {
    if (!out.hard.count(path) && store.is_valid(path)) {
      out.listed.insert(path);
    }
  }
  result.roots = out.hard.size() + out.listed.size();
  return out;
}

} // namespace kiln
