#include <kiln/cache/compression.hpp>
#include <kiln/util/error.hpp>

#include "idle_pool.hpp"

#include <archive.h>
#include <archive_entry.h>
#define ZSTD_STATIC_LINKING_ONLY // ZSTD_createDCtx_advanced, for the allocator
#include <zstd.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace kiln {

namespace {

class PassthroughSink : public CompressionSink
{
public:
  explicit PassthroughSink(Sink& out) : m_out(out)
  {
  }
  void
  write(std::string_view data) override
  {
    m_out.write(data);
  }
  void
  finish() override
  {
  }

private:
  Sink& m_out;
};

class ArchiveCompressionSink : public CompressionSink
{
public:
  ArchiveCompressionSink(std::string_view method, Sink& out, int level)
    : m_out(out), m_owner(archive_write_new(), &archive_write_free), m_archive(m_owner.get())
  {
    if (!m_archive) {
      throw Error("libarchive: out of memory");
    }
    std::string name(method);
    check(archive_write_set_format_raw(m_archive), "selecting the raw format");
    if (archive_write_add_filter_by_name(m_archive, name.c_str()) != ARCHIVE_OK) {
      std::string why = archive_error_string(m_archive) ? archive_error_string(m_archive) : "";
      throw UsageError("unsupported compression '" + name + "': " + why);
    }
    if (level >= 0) {
      archive_write_set_filter_option(m_archive, nullptr, "compression-level",
                                      std::to_string(level).c_str());
    }
    if (name == "zstd" || name == "xz") {
      // Use every core; ignored by libarchive versions without the option.
      archive_write_set_filter_option(m_archive, nullptr, "threads", "0");
    }
    check(archive_write_set_bytes_per_block(m_archive, 0), "setting the block size");
    check(archive_write_set_bytes_in_last_block(m_archive, 1), "setting the block size");
    check(archive_write_open(m_archive, this, nullptr, &ArchiveCompressionSink::on_write, nullptr),
          "starting compression");
    archive_entry* entry = archive_entry_new();
    archive_entry_set_filetype(entry, AE_IFREG);
    int rc = archive_write_header(m_archive, entry);
    archive_entry_free(entry);
    check(rc, "starting compression");
  }

  void
  write(std::string_view data) override
  {
    while (!data.empty()) {
      la_ssize_t n = archive_write_data(m_archive, data.data(), data.size());
      if (n <= 0) {
        check(ARCHIVE_FATAL, "compressing");
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  void
  finish() override
  {
    check(archive_write_close(m_archive), "finishing compression");
  }

private:
  static la_ssize_t
  on_write(struct archive*, void* self, const void* buffer, size_t length)
  {
    auto* sink = static_cast<ArchiveCompressionSink*>(self);
    try {
      sink->m_out.write(std::string_view(static_cast<const char*>(buffer), length));
    } catch (...) {
      sink->m_error = std::current_exception();
      return -1;
    }
    return static_cast<la_ssize_t>(length);
  }

  void
  check(int rc, const char* what)
  {
    if (m_error) {
      std::rethrow_exception(m_error);
    }
    if (rc < ARCHIVE_WARN) {
      const char* why = m_archive ? archive_error_string(m_archive) : nullptr;
      throw Error(std::string("libarchive: ") + what + ": " + (why ? why : "unknown error"));
    }
  }

  Sink& m_out;
  // Owns the archive, also when a constructor throws half-way.
  std::unique_ptr<struct archive, int (*)(struct archive*)> m_owner;
  struct archive* m_archive;
  std::exception_ptr m_error;
};

class ArchiveDecompressionSource : public Source
{
public:
  ArchiveDecompressionSource(std::string_view method, Source& in)
    : m_method(method),
      m_in(in),
      // Not zeroed: a small NAR touches only the pages it reads into (a
      // substitution makes one of these per path).
      m_buffer(std::make_unique_for_overwrite<char[]>(k_buffer_size)),
      m_owner(archive_read_new(), &archive_read_free),
      m_archive(m_owner.get())
  {
    archive_read_support_filter_all(m_archive);
    archive_read_support_format_raw(m_archive);
    archive_read_support_format_empty(m_archive);
    if (archive_read_open(m_archive, this, nullptr, &ArchiveDecompressionSource::on_read,
                          nullptr) != ARCHIVE_OK) {
      fail("opening");
    }
    archive_entry* entry = nullptr;
    int rc = archive_read_next_header(m_archive, &entry);
    if (rc == ARCHIVE_EOF) {
      m_eof = true;
    } else if (rc < ARCHIVE_WARN) {
      fail("reading the header");
    }
  }

  size_t
  read(char* buf, size_t len) override
  {
    if (m_eof) {
      return 0;
    }
    la_ssize_t n = archive_read_data(m_archive, buf, len);
    if (n < 0) {
      fail("decompressing");
    }
    if (n == 0) {
      m_eof = true;
    }
    return static_cast<size_t>(n);
  }

private:
  static la_ssize_t
  on_read(struct archive*, void* self, const void** buffer)
  {
    auto* source = static_cast<ArchiveDecompressionSource*>(self);
    try {
      *buffer = source->m_buffer.get();
      return static_cast<la_ssize_t>(source->m_in.read(source->m_buffer.get(), k_buffer_size));
    } catch (...) {
      source->m_error = std::current_exception();
      return -1;
    }
  }

  [[noreturn]] void
  fail(const char* what)
  {
    if (m_error) {
      std::rethrow_exception(m_error);
    }
    const char* why = archive_error_string(m_archive);
    throw FormatError("corrupt " + m_method + " data (" + what + "): " + (why ? why : "unknown error"));
  }

  static constexpr size_t k_buffer_size = 256 * 1024;
  std::string m_method;
  Source& m_in;
  std::unique_ptr<char[]> m_buffer;
  std::unique_ptr<struct archive, int (*)(struct archive*)> m_owner;
  struct archive* m_archive;
  std::exception_ptr m_error;
  bool m_eof = false;
};

// zstd's allocations, with its window buffers on transparent huge pages:
// filled 4 KiB at a time, a 2 MiB window costs 512 page faults per context,
// which on a virtual machine is a large share of a substitution's time.
// Each block starts with a header saying how it was had.
struct alignas(16) ZstdBlockHeader
{
  void* mapping; // null: from malloc
  size_t length;
};

constexpr size_t k_huge_page = 2 << 20;

void*
zstd_allocate(void*, size_t size)
{
  if (size < k_huge_page / 2) {
    auto* block = static_cast<ZstdBlockHeader*>(std::malloc(sizeof(ZstdBlockHeader) + size));
    if (!block) {
      return nullptr;
    }
    block->mapping = nullptr;
    return block + 1;
  }
  if (size > (SIZE_MAX >> 1)) {
    return nullptr;
  }
  // Room to start the block on a huge page boundary.
  size_t length = sizeof(ZstdBlockHeader) + size + k_huge_page;
  void* mapping = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) {
    return nullptr;
  }
  auto start = (reinterpret_cast<uintptr_t>(mapping) + k_huge_page - 1) & ~(k_huge_page - 1);
  ::madvise(reinterpret_cast<void*>(start), length - (start - reinterpret_cast<uintptr_t>(mapping)),
            MADV_HUGEPAGE); // advice: without THP, plain pages
  auto* block = reinterpret_cast<ZstdBlockHeader*>(start);
  block->mapping = mapping;
  block->length = length;
  return block + 1;
}

void
zstd_free(void*, void* address)
{
  if (!address) {
    return;
  }
  auto* block = static_cast<ZstdBlockHeader*>(address) - 1;
  if (block->mapping) {
    ::munmap(block->mapping, block->length);
  } else {
    std::free(block);
  }
}

// zstd, what caches serve most, is read through libzstd itself: a
// decompression context and its window buffer (2 MiB at zstd's usual
// levels) are kept from NAR to NAR. libarchive creates both for every
// stream, and a fresh runner's substitution of 40 paths spent half of its
// page faults filling new windows.
class ZstdDecompressor
{
public:
  ZstdDecompressor()
    : m_context(ZSTD_createDCtx_advanced(ZSTD_customMem{zstd_allocate, zstd_free, nullptr})),
      m_input(std::make_unique_for_overwrite<char[]>(k_input_size))
  {
    if (!m_context) {
      throw Error("zstd: cannot create a decompression context");
    }
  }
  ~ZstdDecompressor()
  {
    ZSTD_freeDCtx(m_context);
  }
  ZstdDecompressor(const ZstdDecompressor&) = delete;
  ZstdDecompressor& operator=(const ZstdDecompressor&) = delete;

  ZSTD_DCtx*
  context() const
  {
    return m_context;
  }
  char*
  input() const
  {
    return m_input.get();
  }
  // Worth keeping for the next stream: a stream that asked for a large
  // window (a hostile cache can ask for 128 MiB, zstd -19 takes 8 MiB)
  // leaves that memory with the context, and a long-running server must
  // not hold it. zstd's usual 2 MiB window makes a context of ~2.5 MiB.
  bool
  small() const
  {
    return ZSTD_sizeof_DCtx(m_context) <= k_keep_at_most;
  }

  // Any size works; zstd's blocks are at most 128 KiB.
  static constexpr size_t k_input_size = 128 * 1024;

private:
  static constexpr size_t k_keep_at_most = 4 << 20;
  ZSTD_DCtx* m_context;
  std::unique_ptr<char[]> m_input;
};

// Decompressors not in use, shared by all threads (a scheduler's workers
// come and go with each build): as many as a cache's default connections.
// Never destroyed: a thread may still be decompressing while the process
// exits.
detail::IdlePool<ZstdDecompressor>&
zstd_pool()
{
  static auto* pool = new detail::IdlePool<ZstdDecompressor>(16);
  return *pool;
}

class ZstdDecompressionSource : public Source
{
public:
  explicit ZstdDecompressionSource(Source& in) : m_in(in), m_zstd(zstd_pool().take())
  {
    if (!m_zstd) {
      m_zstd = std::make_unique<ZstdDecompressor>();
    }
    check(ZSTD_DCtx_reset(m_zstd->context(), ZSTD_reset_session_only), "starting");
    // zstd's own default limit, spelled out: what libarchive and the zstd
    // tool accept, and no more memory than that per stream.
    check(ZSTD_DCtx_setParameter(m_zstd->context(), ZSTD_d_windowLogMax, k_window_log_max),
          "limiting the window");
  }
  ~ZstdDecompressionSource() override
  {
    if (!m_zstd->small()) {
      return; // freed with this source
    }
    try {
      zstd_pool().give_back(std::move(m_zstd));
    } catch (...) {
      // Out of memory to keep it: it is freed instead.
    }
  }
  ZstdDecompressionSource(const ZstdDecompressionSource&) = delete;
  ZstdDecompressionSource& operator=(const ZstdDecompressionSource&) = delete;

  size_t
  read(char* buf, size_t len) override
  {
    if (len == 0) {
      return 0;
    }
    ZSTD_outBuffer out{buf, len, 0};
    for (;;) {
      size_t consumed_before = m_pending.pos;
      size_t rc = ZSTD_decompressStream(m_zstd->context(), &out, &m_pending);
      check(rc, "decompressing");
      bool progressed = out.pos > 0 || m_pending.pos > consumed_before;
      if (rc == 0) {
        m_in_frame = false;
      } else if (progressed) {
        m_in_frame = true;
      }
      if (out.pos > 0) {
        return out.pos;
      }
      if (m_pending.pos < m_pending.size) {
        if (!progressed) {
          throw FormatError("corrupt zstd data (decompressing): no progress");
        }
        continue;
      }
      if (m_in_eof) {
        if (m_in_frame) {
          throw FormatError("corrupt zstd data: it ends in the middle of a frame");
        }
        return 0;
      }
      size_t n = m_in.read(m_zstd->input(), ZstdDecompressor::k_input_size);
      m_in_eof = n == 0;
      m_pending = ZSTD_inBuffer{m_zstd->input(), n, 0};
    }
  }

private:
  static void
  check(size_t rc, const char* what)
  {
    if (ZSTD_isError(rc)) {
      throw FormatError(std::string("corrupt zstd data (") + what + "): " + ZSTD_getErrorName(rc));
    }
  }

  static constexpr int k_window_log_max = 27;
  Source& m_in;
  std::unique_ptr<ZstdDecompressor> m_zstd;
  ZSTD_inBuffer m_pending{nullptr, 0, 0};
  bool m_in_eof = false;
  bool m_in_frame = false;
};

class PassthroughSource : public Source
{
public:
  explicit PassthroughSource(Source& in) : m_in(in)
  {
  }
  size_t
  read(char* buf, size_t len) override
  {
    return m_in.read(buf, len);
  }

private:
  Source& m_in;
};

} // namespace

std::unique_ptr<CompressionSink>
make_compression_sink(std::string_view method, Sink& out, int level)
{
  if (method == "none") {
    return std::make_unique<PassthroughSink>(out);
  }
  return std::make_unique<ArchiveCompressionSink>(method == "br" ? "brotli" : method, out, level);
}

std::unique_ptr<Source>
make_decompression_source(std::string_view method, Source& in)
{
  if (method == "none") {
    return std::make_unique<PassthroughSource>(in);
  }
  if (method == "br") {
    throw Error("brotli-compressed NARs are not supported (libarchive cannot read brotli)");
  }
  if (method == "zstd") {
    return std::make_unique<ZstdDecompressionSource>(in);
  }
  return std::make_unique<ArchiveDecompressionSource>(method, in);
}

} // namespace kiln
