// Streaming (de)compression of NAR files through libarchive's raw format.
// Writes: none, zstd, xz (and the other filters libarchive has). Reads:
// zstd through libzstd (windows up to 128 MiB, as the zstd tool accepts),
// the rest through libarchive (xz, bzip2, gzip, lzip, lz4, ...).
#pragma once

#include <kiln/util/io.hpp>

#include <memory>
#include <string_view>

namespace kiln {

class CompressionSink : public Sink
{
public:
  // Flush the compressor's last block to the underlying sink.
  virtual void finish() = 0;
};

// Compress what is written into `out` with `method`; throws UsageError for
// an unknown method.
std::unique_ptr<CompressionSink> make_compression_sink(std::string_view method, Sink& out,
                                                       int level = -1);

// Decompress `in`, which was compressed with `method`.
std::unique_ptr<Source> make_decompression_source(std::string_view method, Source& in);

} // namespace kiln
