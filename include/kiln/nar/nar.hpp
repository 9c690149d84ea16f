// NAR ("Nix ARchive"): the canonical serialisation of a file-system object,
// byte-identical to `nix-store --dump`.
//
//   int(n)   = n as 64-bit little-endian
//   str(s)   = int(|s|) s, zero-padded to a multiple of 8 bytes
//   nar      = str("nix-archive-1") node
//   node     = str("(") str("type") body str(")")
//   body     = str("regular") [str("executable") str("")] str("contents") str(bytes)
//            | str("symlink") str("target") str(target)
//            | str("directory") { str("entry") str("(") str("name") str(name)
//                                 str("node") node str(")") }
//
// Directory entries are in strictly increasing byte order. Nothing else is
// recorded: no owner, no times, no permissions beyond the executable bit.
//
// Every producer and consumer of a tree talks through FsObjectSink, so that
// dumping, parsing, restoring and hashing stream into each other without
// materialising an archive.
#pragma once

#include <kiln/util/io.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace kiln {

inline constexpr std::string_view k_nar_magic = "nix-archive-1";

// Limits the parser enforces against hostile archives (Nix 2.35 has the same
// name and target limits; kiln allows 256 levels of nesting).
struct NarLimits
{
  size_t max_tag = 32;
  size_t max_name = 255;
  size_t max_target = 4095;
  size_t max_depth = 256;
};

// Receives a file-system object as a depth-first sequence of events. `path`
// is relative to the root, components joined by '/', "" for the root itself.
// Directories get end_directory() after their last child.
class FsObjectSink
{
public:
  virtual ~FsObjectSink() = default;
  virtual void create_directory(const std::string& path) = 0;
  virtual void end_directory(const std::string& path) = 0;
  virtual void begin_regular_file(const std::string& path, bool executable, uint64_t size) = 0;
  virtual void file_data(std::string_view chunk) = 0;
  virtual void end_regular_file() = 0;
  virtual void create_symlink(const std::string& path, const std::string& target) = 0;
};

// Accepts and forgets a parsed NAR's events: for checking an archive
// (parse_nar does the checking) without restoring it.
class NullFsObjectSink : public FsObjectSink
{
public:
  void create_directory(const std::string&) override {}
  void end_directory(const std::string&) override {}
  void begin_regular_file(const std::string&, bool, uint64_t) override {}
  void file_data(std::string_view) override {}
  void end_regular_file() override {}
  void create_symlink(const std::string&, const std::string&) override {}
};

// Serialises events into NAR bytes.
class NarWriter : public FsObjectSink
{
public:
  explicit NarWriter(Sink& out);
  ~NarWriter() override;
  void create_directory(const std::string& path) override;
  void end_directory(const std::string& path) override;
  void begin_regular_file(const std::string& path, bool executable, uint64_t size) override;
  void file_data(std::string_view chunk) override;
  void end_regular_file() override;
  void create_symlink(const std::string& path, const std::string& target) override;
  // Flush buffered bytes to the sink; call once the root object is done.
  void finish();

private:
  void open_entry(const std::string& path);
  void close_entry(const std::string& path);
  void str(std::string_view s);
  void num(uint64_t n);
  void raw(std::string_view s);
  void flush_buffer();

  Sink& m_out;
  std::string m_buffer;
  uint64_t m_file_size = 0;
  uint64_t m_file_written = 0;
  std::string m_file_path;
  bool m_started = false;
};

// Forwards every event to two sinks (e.g. hash the NAR while restoring it).
class TeeFsObjectSink : public FsObjectSink
{
public:
  TeeFsObjectSink(FsObjectSink& a, FsObjectSink& b) : m_a(a), m_b(b)
  {
  }
  void create_directory(const std::string& path) override;
  void end_directory(const std::string& path) override;
  void begin_regular_file(const std::string& path, bool executable, uint64_t size) override;
  void file_data(std::string_view chunk) override;
  void end_regular_file() override;
  void create_symlink(const std::string& path, const std::string& target) override;

private:
  FsObjectSink& m_a;
  FsObjectSink& m_b;
};

// Which entries below the top of a walk to include, by path relative to the
// top ("src/lib.rs"); an excluded folder is skipped whole. Empty = all.
using PathFilter = std::function<bool(const std::string& rel)>;

// Walk the file, symlink or directory at `path` (not following a symlink at
// the top) and emit its events. Other file types are an error naming them.
void walk_path(const std::filesystem::path& path, FsObjectSink& sink,
               const PathFilter& filter = {});

// Write the NAR of `path` to `out`.
void dump_path(const std::filesystem::path& path, Sink& out, const PathFilter& filter = {});

// Read one NAR from `in` and emit its events, checking every rule above.
// Errors are FormatError with the byte offset of the fault. With
// `require_eof`, any byte after the archive is an error. Returns the number
// of bytes the archive took.
uint64_t parse_nar(Source& in, FsObjectSink& sink, bool require_eof = true,
                   const NarLimits& limits = {});

// What the restorer does for durability: nothing; start writing each file
// to disk as soon as it is complete, without waiting (the caller syncs at
// the end, and finds most of the work done); or sync each file and folder.
enum class RestoreSync { no, start, yes };

// Creates the object at `target` (which must not exist) from events. Files
// become 0444 or 0555, folders 0555 once complete, mtimes 1 (as in a Nix
// store). Works only through descriptors of folders it created itself, so
// nothing outside `target` can be written or followed.
class Restorer : public FsObjectSink
{
public:
  explicit Restorer(std::filesystem::path target, RestoreSync sync = RestoreSync::no);
  ~Restorer() override;
  void create_directory(const std::string& path) override;
  void end_directory(const std::string& path) override;
  void begin_regular_file(const std::string& path, bool executable, uint64_t size) override;
  void file_data(std::string_view chunk) override;
  void end_regular_file() override;
  void create_symlink(const std::string& path, const std::string& target) override;

private:
  struct OpenDir;
  // Descriptor of the folder that will hold `path` and the last component.
  std::pair<int, std::string> parent_of(const std::string& path);

  std::filesystem::path m_target;
  RestoreSync m_sync;
  std::vector<std::pair<std::string, int>> m_dirs; // open folders, root first
  UniqueFd m_file;
  bool m_file_executable = false;
  std::string m_file_path;
};

// Restore the NAR read from `in` at `target`.
void restore_nar(Source& in, const std::filesystem::path& target,
                 RestoreSync sync = RestoreSync::no);

// Check that `name` may be a directory entry; throws FormatError otherwise.
void check_entry_name(std::string_view name);

} // namespace kiln
