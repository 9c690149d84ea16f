#include <kiln/derivation/derivation.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>

namespace kiln {

namespace {

void
print_string(std::string& out, std::string_view s)
{
  out += '"';
  for (char c : s) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      out += c;
    }
  }
  out += '"';
}

template <typename Range, typename F>
void
print_list(std::string& out, const Range& items, F print_item)
{
  out += '[';
  bool first = true;
  for (const auto& item : items) {
    if (!first) {
      out += ',';
    }
    first = false;
    print_item(item);
  }
  out += ']';
}

class AtermParser
{
public:
  explicit AtermParser(std::string_view text) : m_text(text)
  {
  }

  void
  expect(std::string_view token)
  {
    if (m_text.substr(m_pos, token.size()) != token) {
      fail("expected '" + std::string(token) + "'");
    }
    m_pos += token.size();
  }

  bool
  peek(char c) const
  {
    return m_pos < m_text.size() && m_text[m_pos] == c;
  }

  std::string
  string()
  {
    expect("\"");
    std::string out;
    while (true) {
      if (m_pos >= m_text.size()) {
        fail("unterminated string");
      }
      char c = m_text[m_pos++];
      if (c == '"') {
        return out;
      }
      if (c == '\\') {
        if (m_pos >= m_text.size()) {
          fail("unterminated escape");
        }
        char e = m_text[m_pos++];
        out += e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
      } else {
        out += c;
      }
    }
  }

  // Parse "[item,item,...]" calling `item()` for each.
  template <typename F>
  void
  list(F item)
  {
    expect("[");
    if (peek(']')) {
      ++m_pos;
      return;
    }
    while (true) {
      item();
      if (peek(',')) {
        ++m_pos;
        continue;
      }
      expect("]");
      return;
    }
  }

  std::vector<std::string>
  strings()
  {
    std::vector<std::string> out;
    list([&] { out.push_back(string()); });
    return out;
  }

  void
  end()
  {
    if (m_pos != m_text.size()) {
      fail("trailing data after the derivation");
    }
  }

  [[noreturn]] void
  fail(const std::string& message) const
  {
    throw FormatError("invalid derivation: " + message, m_pos);
  }

  size_t
  pos() const
  {
    return m_pos;
  }

private:
  std::string_view m_text;
  size_t m_pos = 0;
};

} // namespace

bool
Derivation::is_fixed_output() const
{
  return outputs.size() == 1 && outputs.count("out") && !outputs.at("out").hash.empty();
}

std::string
Derivation::unparse(const StoreDir& store_dir, bool mask_outputs,
                    const std::map<std::string, std::set<std::string>>* input_hashes) const
{
  std::string out = "Derive(";
  print_list(out, outputs, [&](const auto& o) {
    out += '(';
    print_string(out, o.first);
    out += ',';
    print_string(out, mask_outputs ? "" : o.second.path);
    out += ',';
    print_string(out, o.second.hash_algo);
    out += ',';
    print_string(out, o.second.hash);
    out += ')';
  });
  out += ',';
  auto print_input = [&](const std::string& key, const std::set<std::string>& names) {
    out += '(';
    print_string(out, key);
    out += ',';
    print_list(out, names, [&](const std::string& n) { print_string(out, n); });
    out += ')';
  };
  if (input_hashes) {
    print_list(out, *input_hashes, [&](const auto& i) { print_input(i.first, i.second); });
  } else {
    print_list(out, input_drvs,
               [&](const auto& i) { print_input(store_dir.print(i.first), i.second); });
  }
  out += ',';
  print_list(out, input_srcs, [&](const StorePath& p) { print_string(out, store_dir.print(p)); });
  out += ',';
  print_string(out, platform);
  out += ',';
  print_string(out, builder);
  out += ',';
  print_list(out, args, [&](const std::string& a) { print_string(out, a); });
  out += ',';
  print_list(out, env, [&](const auto& e) {
    out += '(';
    print_string(out, e.first);
    out += ',';
    print_string(out, mask_outputs && outputs.count(e.first) ? "" : e.second);
    out += ')';
  });
  out += ')';
  return out;
}

Derivation
Derivation::parse(std::string_view text, const StoreDir& store_dir, std::string name)
{
  AtermParser p(text);
  Derivation drv;
  drv.name = std::move(name);
  auto store_path = [&](const std::string& s) {
    try {
      return store_dir.parse(s);
    } catch (const FormatError& e) {
      p.fail(e.what());
    }
  };
  if (text.starts_with("DrvWithVersion(")) {
    p.fail("dynamic derivations (DrvWithVersion) are not supported");
  }
  p.expect("Derive(");
  p.list([&] {
    p.expect("(");
    std::string out_name = p.string();
    p.expect(",");
    DerivationOutput o;
    o.path = p.string();
    p.expect(",");
    o.hash_algo = p.string();
    p.expect(",");
    o.hash = p.string();
    p.expect(")");
    if (!o.path.empty()) {
      store_path(o.path);
    }
    if (!drv.outputs.emplace(out_name, o).second) {
      p.fail("output '" + out_name + "' appears twice");
    }
  });
  p.expect(",");
  p.list([&] {
    p.expect("(");
    StorePath path = store_path(p.string());
    p.expect(",");
    auto names = p.strings();
    p.expect(")");
    drv.input_drvs[path].insert(names.begin(), names.end());
  });
  p.expect(",");
  for (const auto& s : p.strings()) {
    drv.input_srcs.insert(store_path(s));
  }
  p.expect(",");
  drv.platform = p.string();
  p.expect(",");
  drv.builder = p.string();
  p.expect(",");
  drv.args = p.strings();
  p.expect(",");
  p.list([&] {
    p.expect("(");
    std::string key = p.string();
    p.expect(",");
    std::string value = p.string();
    p.expect(")");
    drv.env[key] = value;
  });
  p.expect(")");
  p.end();
  return drv;
}

std::set<StorePath>
Derivation::references() const
{
  std::set<StorePath> refs = input_srcs;
  for (const auto& [path, names] : input_drvs) {
    refs.insert(path);
  }
  return refs;
}

DrvHasher::DrvHasher(const StoreDir& store_dir, DrvReader read)
  : m_store_dir(store_dir), m_read(std::move(read))
{
}

Hash
DrvHasher::hash_modulo(const StorePath& drv_path)
{
  auto it = m_cache.find(drv_path);
  if (it != m_cache.end()) {
    return it->second;
  }
  Hash h = hash_modulo(m_read(drv_path), false);
  m_cache.emplace(drv_path, h);
  return h;
}

Hash
DrvHasher::hash_modulo(const Derivation& drv, bool mask_outputs)
{
  if (drv.is_fixed_output()) {
    // Only what is fetched counts, not how: changing a fixed-output
    // derivation's recipe does not change anything downstream.
    const auto& out = drv.outputs.at("out");
    return hash_string(HashAlgo::sha256,
                       "fixed:out:" + out.hash_algo + ":" + out.hash + ":" + out.path);
  }
  std::map<std::string, std::set<std::string>> inputs;
  for (const auto& [path, names] : drv.input_drvs) {
    auto key = hash_modulo(path).to_string(HashFormat::base16, false);
    inputs[key].insert(names.begin(), names.end());
  }
  return hash_string(HashAlgo::sha256, drv.unparse(m_store_dir, mask_outputs, &inputs));
}

std::string
output_path_name(const std::string& drv_name, const std::string& output)
{
  return output == "out" ? drv_name : drv_name + "-" + output;
}

void
compute_output_paths(Derivation& drv, const StoreDir& store_dir, DrvHasher& hasher)
{
  if (drv.outputs.empty()) {
    throw Error("derivation '" + drv.name + "' has no outputs");
  }
  if (drv.is_fixed_output()) {
    auto& out = drv.outputs.at("out");
    bool recursive = out.hash_algo.starts_with("r:");
    HashAlgo algo = parse_hash_algo(recursive ? out.hash_algo.substr(2) : out.hash_algo);
    ContentAddress ca{recursive ? ContentAddress::Method::recursive : ContentAddress::Method::flat,
                      Hash::parse_unprefixed(out.hash, algo)};
    out.path = store_dir.print(store_dir.make_fixed_output_path(drv.name, ca));
    drv.env["out"] = out.path;
    return;
  }
  for (auto& [name, out] : drv.outputs) {
    if (!out.hash_algo.empty() || !out.hash.empty()) {
      throw Error("derivation '" + drv.name + "': output '" + name +
                  "' is content-addressed, which kiln does not support");
    }
    out.path.clear();
    drv.env[name] = "";
  }
  Hash h = hasher.hash_modulo(drv, true);
  for (auto& [name, out] : drv.outputs) {
    out.path = store_dir.print(
      store_dir.make_store_path("output:" + name, h, output_path_name(drv.name, name)));
    drv.env[name] = out.path;
  }
}

StorePath
derivation_path(const Derivation& drv, const StoreDir& store_dir)
{
  return store_dir.make_text_path(drv.name + ".drv",
                                  hash_string(HashAlgo::sha256, drv.unparse(store_dir)),
                                  drv.references());
}

Derivation
read_derivation(const LocalStore& store, const StorePath& drv_path)
{
  std::string name(drv_path.name());
  if (!name.ends_with(".drv")) {
    throw UsageError("'" + store.print(drv_path) + "' is not a derivation (.drv)");
  }
  if (!store.is_valid(drv_path)) {
    throw Error("derivation '" + store.print(drv_path) + "' is not valid in the store");
  }
  auto file = store.physical_path(drv_path);
  try {
    return Derivation::parse(read_file(file), store.store_dir(), name.substr(0, name.size() - 4));
  } catch (const FormatError& e) {
    throw FormatError(store.print(drv_path) + ": " + e.what());
  }
}

StorePath
add_derivation(LocalStore& store, const Derivation& drv)
{
  const StoreDir& dir = store.store_dir();
  for (const auto& ref : drv.references()) {
    if (!store.is_valid(ref)) {
      throw Error("derivation '" + drv.name + "' needs '" + dir.print(ref) +
                  "', which is not valid in the store (add inputs first)");
    }
  }
  Derivation expected = drv;
  DrvHasher hasher(dir, [&](const StorePath& p) { return read_derivation(store, p); });
  compute_output_paths(expected, dir, hasher);
  for (const auto& [name, out] : drv.outputs) {
    if (out.path != expected.outputs.at(name).path) {
      throw Error("derivation '" + drv.name + "': output '" + name + "' is '" + out.path +
                  "', but its inputs make it '" + expected.outputs.at(name).path + "'");
    }
  }
  return store.add_text(drv.name + ".drv", drv.unparse(dir), drv.references());
}

namespace {

// Objects differ key by key; an array of objects with a "name" each, element
// by element (as a map by name); anything else as a whole.
void
diff_json(const std::string& name, const nlohmann::json& a, const nlohmann::json& b,
          std::vector<std::string>& out)
{
  if (a == b) {
    return;
  }
  if (a.is_object() && b.is_object()) {
    std::set<std::string> keys;
    for (const auto& [k, v] : a.items()) {
      keys.insert(k);
    }
    for (const auto& [k, v] : b.items()) {
      keys.insert(k);
    }
    for (const auto& k : keys) {
      diff_json(name + "." + k, a.contains(k) ? a.at(k) : nlohmann::json(nullptr),
                b.contains(k) ? b.at(k) : nlohmann::json(nullptr), out);
    }
    return;
  }
  auto named = [](const nlohmann::json& v) {
    return v.is_array() && !v.empty() &&
           std::all_of(v.begin(), v.end(), [](const nlohmann::json& e) {
             return e.is_object() && e.contains("name") && e.at("name").is_string();
           });
  };
  if (named(a) && named(b)) {
    nlohmann::json before = nlohmann::json::object(), after = nlohmann::json::object();
    for (const auto& e : a) {
      before[e.at("name").get<std::string>()] = e;
    }
    for (const auto& e : b) {
      after[e.at("name").get<std::string>()] = e;
    }
    if (before.size() == a.size() && after.size() == b.size()) {
      diff_json(name, before, after, out);
      return;
    }
  }
  auto text = [](const nlohmann::json& v) {
    std::string t = v.dump();
    return t.size() <= 200 ? t : t.substr(0, 197) + "...";
  };
  out.push_back(name + ": " + text(a) + " → " + text(b));
}

} // namespace

std::vector<std::string>
json_differences(const std::string& name, std::string_view a, std::string_view b)
{
  auto x = nlohmann::json::parse(a, nullptr, false);
  auto y = nlohmann::json::parse(b, nullptr, false);
  std::vector<std::string> out;
  if (x.is_discarded() || y.is_discarded()) {
    if (a != b) {
      out.push_back(name + " differs");
    }
    return out;
  }
  diff_json(name, x, y, out);
  return out;
}

namespace {

std::string
quote(const std::string& s)
{
  std::string out;
  print_string(out, s.size() > 200 ? s.substr(0, 200) + "…" : s);
  return out;
}

void
explain(const Derivation& a, const Derivation& b, const StoreDir& dir, const DrvReader& read,
        const std::string& indent, std::set<std::pair<std::string, std::string>>& seen,
        const std::set<std::string>& derived, std::vector<std::string>& out)
{
  auto say = [&](const std::string& line) { out.push_back(indent + line); };
  if (a.name != b.name) {
    say("name: " + quote(a.name) + " → " + quote(b.name));
  }
  if (a.platform != b.platform) {
    say("platform: " + quote(a.platform) + " → " + quote(b.platform));
  }
  if (a.builder != b.builder) {
    say("builder: " + quote(a.builder) + " → " + quote(b.builder));
  }
  if (a.args != b.args) {
    size_t n = std::max(a.args.size(), b.args.size());
    for (size_t i = 0; i < n; ++i) {
      std::string x = i < a.args.size() ? quote(a.args[i]) : "(none)";
      std::string y = i < b.args.size() ? quote(b.args[i]) : "(none)";
      if (x != y) {
        say("argument " + std::to_string(i + 1) + ": " + x + " → " + y);
      }
    }
  }
  for (const auto& [key, value] : a.env) {
    if (a.outputs.count(key) || derived.count(key)) {
      continue; // output paths differ whenever anything else does
    }
    auto it = b.env.find(key);
    if (it == b.env.end()) {
      say("environment " + key + " removed (was " + quote(value) + ")");
    } else if (it->second != value) {
      auto x = nlohmann::json::parse(value, nullptr, false);
      auto y = nlohmann::json::parse(it->second, nullptr, false);
      if (x.is_object() && y.is_object()) {
        for (const auto& line : json_differences("environment " + key, value, it->second)) {
          say(line);
        }
      } else {
        say("environment " + key + ": " + quote(value) + " → " + quote(it->second));
      }
    }
  }
  for (const auto& [key, value] : b.env) {
    if (!a.env.count(key) && !b.outputs.count(key)) {
      say("environment " + key + " added: " + quote(value));
    }
  }
  for (const auto& src : a.input_srcs) {
    if (!b.input_srcs.count(src)) {
      say("input source removed: " + dir.print(src));
    }
  }
  for (const auto& src : b.input_srcs) {
    if (!a.input_srcs.count(src)) {
      say("input source added: " + dir.print(src));
    }
  }
  std::map<std::string, StorePath> a_by_name;
  std::map<std::string, StorePath> b_by_name;
  for (const auto& [p, outs] : a.input_drvs) {
    a_by_name.emplace(std::string(p.name()), p);
  }
  for (const auto& [p, outs] : b.input_drvs) {
    b_by_name.emplace(std::string(p.name()), p);
  }
  for (const auto& [name, pa] : a_by_name) {
    auto it = b_by_name.find(name);
    if (it == b_by_name.end()) {
      say("input derivation removed: " + dir.print(pa));
    } else if (it->second != pa) {
      say("input derivation " + name + " differs (" + std::string(pa.hash_part()) + " → " +
          std::string(it->second.hash_part()) + "):");
      if (seen.insert({pa.base(), it->second.base()}).second) {
        try {
          explain(read(pa), read(it->second), dir, read, indent + "  ", seen, derived, out);
        } catch (const Error& e) {
          say("  (cannot compare them: " + std::string(e.what()) + ")");
        }
      } else {
        say("  (explained above)");
      }
    }
  }
  for (const auto& [name, pb] : b_by_name) {
    if (!a_by_name.count(name)) {
      say("input derivation added: " + dir.print(pb));
    }
  }
  if (a.outputs.size() != b.outputs.size() ||
      !std::equal(a.outputs.begin(), a.outputs.end(), b.outputs.begin(),
                  [](const auto& x, const auto& y) {
                    return x.first == y.first && x.second.hash == y.second.hash &&
                           x.second.hash_algo == y.second.hash_algo;
                  })) {
    say("outputs differ in names or fixed hashes");
  }
}

} // namespace

std::vector<std::string>
explain_difference(const Derivation& a, const Derivation& b, const StoreDir& store_dir,
                   const DrvReader& read, const std::set<std::string>& derived)
{
  std::vector<std::string> out;
  std::set<std::pair<std::string, std::string>> seen;
  explain(a, b, store_dir, read, "", seen, derived, out);
  return out;
}

} // namespace kiln
