#include "cargo_queries.hpp"
#include <kiln/cargo/cache_dir.hpp>
#include <kiln/cargo/digest_cache.hpp>

#include <kiln/hash/hash.hpp>
#include <kiln/util/io.hpp>
#include <kiln/util/process.hpp>

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <future>

namespace kiln::cargo {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string
files_fingerprint(const std::vector<fs::path>& files)
{
  std::string text;
  for (const auto& f : files) {
    struct stat st;
    if (::stat(f.c_str(), &st) != 0) {
      text += f.string() + " -\n";
    } else {
      text += f.string() + " " + std::to_string(st.st_size) + " " +
              std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + " " +
              std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec) + " " +
              std::to_string(st.st_ino) + "\n";
    }
  }
  return hash_string(HashAlgo::sha256, text).to_string(HashFormat::base16, false);
}

namespace {

// The variables cargo reads (its configuration, RUSTFLAGS, RUSTC, rustup's
// choice of toolchain, where homes are), as part of a query's key.
std::string
environment_key(const Environment& env)
{
  std::string key;
  for (const auto& [name, value] : env) {
    if (name.starts_with("CARGO") || name.starts_with("RUST") || name == "PATH" ||
        name == "HOME") {
      key += name + "=" + value + "\n";
    }
  }
  return key;
}

// Did cargo fail because something is not downloaded and it may not fetch?
bool
offline_failure(const std::string& err)
{
  for (const char* sign : {"--offline", "offline mode", "net.offline", "--frozen",
                           "attempting to make an HTTP request", "no matching package named"}) {
    if (err.find(sign) != std::string::npos) {
      return true;
    }
  }
  return false;
}

std::string
first_line(const std::string& text)
{
  auto start = text.find("error:");
  std::string from = start == std::string::npos ? text : text.substr(start);
  return from.substr(0, from.find('\n'));
}

} // namespace

CargoQueries::CargoQueries(fs::path cache_dir, fs::path cwd, const Environment& env,
                           std::string toolchain, std::vector<fs::path> files)
  : m_cache_dir(std::move(cache_dir)), m_cwd(std::move(cwd)), m_env(env),
    m_toolchain(std::move(toolchain)), m_files(std::move(files))
{
}

std::vector<std::string>
CargoQueries::answers(const std::vector<CargoQuery>& queries, bool offline,
                      const std::function<std::vector<fs::path>(size_t, const std::vector<std::string>&)>&
                        more_files)
{
  std::vector<std::string> out(queries.size());
  std::vector<fs::path> cache_files(queries.size());
  std::vector<std::future<ProcessResult>> running(queries.size());
  for (size_t q = 0; q < queries.size(); ++q) {
    std::string id = json(queries[q].argv).dump() + "\n" + json(queries[q].env).dump() + "\n" +
                     m_cwd.string() + "\n" + environment_key(m_env) + m_toolchain;
    cache_files[q] = m_cache_dir / keyed_file_name("query-", id, ".json");
    try {
      json cached = json::parse(read_cache_file(cache_files[q]));
      std::vector<fs::path> files = m_files;
      for (const auto& f : cached.at("files")) {
        files.emplace_back(f.get<std::string>());
      }
      if (cached.at("fingerprint") == files_fingerprint(files)) {
        out[q] = cached.at("answer").get<std::string>();
        continue;
      }
    } catch (const std::exception&) {
      // Not remembered (or damaged: only a cache): ask cargo.
    }
    ProcessOptions options;
    options.cwd = m_cwd;
    options.env = queries[q].env;
    running[q] = std::async(std::launch::async, [argv = queries[q].argv, options] {
      return run_process(argv, options);
    });
  }
  for (size_t q = 0; q < queries.size(); ++q) {
    if (!running[q].valid()) {
      continue;
    }
    ProcessResult result = running[q].get();
    if (!result.ok()) {
      if (offline && offline_failure(result.err)) {
        throw CargoError("some dependencies of this project are not downloaded, and the build is "
                         "offline (--offline, --frozen or net.offline): run `cargo fetch` first "
                         "(cargo said: " + first_line(result.err) + ")");
      }
      throw CargoQueryError(describe_failure(queries[q].argv, result), q, result.err);
    }
    out[q] = result.out;
    std::vector<fs::path> extra = more_files(q, out);
    std::vector<fs::path> files = m_files;
    files.insert(files.end(), extra.begin(), extra.end());
    std::vector<std::string> extra_names;
    for (const auto& f : extra) {
      extra_names.push_back(f.string());
    }
    json record = {{"files", extra_names}, {"fingerprint", files_fingerprint(files)}, {"answer", result.out}};
    try {
      fs::create_directories(m_cache_dir);
      write_file_atomic(cache_files[q], record.dump());
    } catch (const std::exception&) {
      // Only a cache.
    }
  }
  return out;
}

} // namespace kiln::cargo
