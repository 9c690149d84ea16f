#include <kiln/cache/narinfo.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/strings.hpp>

#include <map>

namespace kiln {

namespace {

const std::map<std::string, std::string, std::less<>> k_extensions = {
  {"none", ""},     {"xz", ".xz"},     {"zstd", ".zst"}, {"bzip2", ".bz2"}, {"gzip", ".gz"},
  {"br", ".br"},    {"lzip", ".lzip"}, {"lz4", ".lz4"},  {"lzma", ".lzma"}, {"compress", ""},
  {"grzip", ""},    {"lrzip", ""},     {"lzop", ""},
};

uint64_t
parse_u64(const std::string& value, const std::string& where)
{
  if (value.empty() || value.size() > 20 ||
      value.find_first_not_of("0123456789") != std::string::npos) {
    throw FormatError(where + ": '" + value + "' is not a whole number");
  }
  try {
    return std::stoull(value);
  } catch (...) {
    throw FormatError(where + ": '" + value + "' is too large");
  }
}

// The one line loop of narinfo and nix-cache-info: calls `field(key,
// value, line_number)` for each "Key: value" line. narinfo is strict (every
// line ends in '\n' and has a ':'); nix-cache-info is read as leniently as
// Nix reads it (lines without ':' are skipped, the last may lack '\n', values
// are trimmed).
enum class Lines { strict, lenient };

template <typename F>
void
for_each_line(std::string_view text, const std::string& where, Lines mode, F field)
{
  size_t pos = 0;
  size_t line_no = 0;
  while (pos < text.size()) {
    ++line_no;
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) {
      if (mode == Lines::strict) {
        throw FormatError(where + ":" + std::to_string(line_no) +
                          ": the last line lacks a newline");
      }
      end = text.size();
    }
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    auto colon = line.find(':');
    if (colon == std::string_view::npos) {
      if (mode == Lines::lenient) {
        continue;
      }
      throw FormatError(where + ":" + std::to_string(line_no) + ": expected 'Key: value', got '" +
                        std::string(line.substr(0, 80)) + "'");
    }
    std::string_view value = line.substr(colon + 1);
    if (mode == Lines::lenient) {
      value = trim(value);
    } else if (!value.empty() && value[0] == ' ') {
      value.remove_prefix(1);
    }
    field(std::string(line.substr(0, colon)), std::string(value), line_no);
  }
}

} // namespace

bool
is_known_compression(std::string_view method)
{
  return k_extensions.find(method) != k_extensions.end();
}

std::string
nar_extension(std::string_view method)
{
  auto it = k_extensions.find(method);
  return ".nar" + (it == k_extensions.end() ? std::string() : it->second);
}

namespace {

// The fields of a narinfo as read so far: each line sets one.
struct NarInfoFields
{
  std::optional<StorePath> path;
  std::optional<Hash> nar_hash;
  std::optional<uint64_t> nar_size;
  std::optional<std::string> url;
  std::optional<std::string> compression;
  std::optional<Hash> file_hash;
  std::optional<uint64_t> file_size;
  std::optional<std::set<StorePath>> references;
  std::optional<StorePath> deriver;
  std::set<std::string> sigs;
  std::optional<ContentAddress> ca;
  std::set<std::string> seen;
};

// Take the line `key`: `value` into `fields`. Throws FormatError (without
// the place) for a value that is malformed.
void
read_field(NarInfoFields& fields, const std::string& key, const std::string& value,
           const StoreDir& store_dir)
{
  if (key == "StorePath") {
    fields.path = store_dir.parse(value);
  } else if (key == "URL") {
    if (value.empty()) {
      throw FormatError("URL is empty");
    }
    fields.url = value;
  } else if (key == "Compression") {
    std::string method = value.empty() ? "bzip2" : value;
    if (!is_known_compression(method)) {
      throw FormatError("unknown compression '" + method + "'");
    }
    fields.compression = method;
  } else if (key == "FileHash") {
    fields.file_hash = Hash::parse_prefixed(value);
  } else if (key == "FileSize") {
    fields.file_size = parse_u64(value, "FileSize");
  } else if (key == "NarHash") {
    fields.nar_hash = Hash::parse_prefixed(value);
    if (fields.nar_hash->algo() != HashAlgo::sha256) {
      throw FormatError("NarHash must be sha256");
    }
  } else if (key == "NarSize") {
    fields.nar_size = parse_u64(value, "NarSize");
    if (*fields.nar_size == 0) {
      throw FormatError("NarSize is 0");
    }
  } else if (key == "References") {
    fields.references.emplace();
    for (const auto& word : split_words(value)) {
      fields.references->insert(StorePath(word));
    }
  } else if (key == "Deriver") {
    if (value != "unknown-deriver" && !value.empty()) {
      fields.deriver = StorePath(value);
    }
  } else if (key == "Sig") {
    Signature::parse(value); // reject malformed signatures outright
    fields.sigs.insert(value);
  } else if (key == "CA") {
    if (!value.empty()) {
      fields.ca = ContentAddress::parse(value);
    }
  }
  // Anything else (System, future keys) is ignored, as Nix does.
}

// The NarInfo `fields` describe, once every line is read; throws
// FormatError naming `where` if a required field is missing.
NarInfo
to_narinfo(const NarInfoFields& fields, const std::string& where)
{
  if (!fields.path) {
    throw FormatError(where + ": StorePath is missing");
  }
  if (!fields.url) {
    throw FormatError(where + ": URL is missing");
  }
  if (!fields.nar_hash) {
    throw FormatError(where + ": NarHash is missing");
  }
  if (!fields.nar_size) {
    throw FormatError(where + ": NarSize is missing");
  }
  PathInfo info(*fields.path);
  info.nar_hash = *fields.nar_hash;
  info.nar_size = *fields.nar_size;
  if (fields.references) {
    info.references = *fields.references;
  }
  info.deriver = fields.deriver;
  info.signatures = fields.sigs;
  info.ca = fields.ca;
  NarInfo result(info);
  result.url = *fields.url;
  result.compression = fields.compression.value_or("bzip2");
  result.file_hash = fields.file_hash;
  result.file_size = fields.file_size;
  return result;
}

} // namespace

NarInfo
NarInfo::parse(std::string_view text, const StoreDir& store_dir, const std::string& where)
{
  NarInfoFields fields;
  for_each_line(text, where, Lines::strict, [&](const std::string& key, const std::string& value, size_t line) {
    std::string at = where + ":" + std::to_string(line);
    static const std::set<std::string> singletons = {"StorePath", "URL",        "Compression",
                                                     "FileHash",  "FileSize",   "NarHash",
                                                     "NarSize",   "References", "Deriver",
                                                     "CA"};
    if (singletons.count(key) && !fields.seen.insert(key).second) {
      throw FormatError(at + ": '" + key + "' appears twice");
    }
    try {
      read_field(fields, key, value, store_dir);
    } catch (const FormatError& e) {
      throw FormatError(at + ": " + key + ": " + e.what());
    }
  });
  return to_narinfo(fields, where);
}

std::string
NarInfo::to_string(const StoreDir& store_dir) const
{
  std::string out;
  out += "StorePath: " + store_dir.print(info.path) + "\n";
  out += "URL: " + url + "\n";
  out += "Compression: " + compression + "\n";
  if (file_hash) {
    out += "FileHash: " + file_hash->to_string(HashFormat::nix32, true) + "\n";
  }
  if (file_size) {
    out += "FileSize: " + std::to_string(*file_size) + "\n";
  }
  out += "NarHash: " + info.nar_hash.to_string(HashFormat::nix32, true) + "\n";
  out += "NarSize: " + std::to_string(info.nar_size) + "\n";
  std::string refs;
  for (const auto& r : info.references) {
    refs += (refs.empty() ? "" : " ") + r.base();
  }
  out += "References: " + refs + "\n";
  if (info.deriver) {
    out += "Deriver: " + info.deriver->base() + "\n";
  }
  for (const auto& sig : info.signatures) {
    out += "Sig: " + sig + "\n";
  }
  if (info.ca) {
    out += "CA: " + info.ca->to_string() + "\n";
  }
  return out;
}

CacheInfo
CacheInfo::parse(std::string_view text, const std::string& where)
{
  CacheInfo info;
  for_each_line(text, where, Lines::lenient, [&](const std::string& key, const std::string& value,
                                                 size_t line_no) {
    if (key == "StoreDir") {
      info.store_dir = value;
    } else if (key == "WantMassQuery") {
      info.want_mass_query = value == "1";
    } else if (key == "Priority") {
      try {
        info.priority = std::stoi(value);
      } catch (...) {
        throw FormatError(where + ":" + std::to_string(line_no) + ": Priority '" + value +
                          "' is not a number");
      }
    }
  });
  return info;
}

std::string
CacheInfo::to_string() const
{
  return "StoreDir: " + store_dir + "\nWantMassQuery: " + (want_mass_query ? "1" : "0") +
         "\nPriority: " + std::to_string(priority) + "\n";
}

} // namespace kiln
