// Benchmark fixture: make a closure of N input-addressed store paths of
// mixed sizes (log-uniform between 1 KiB and 20 MiB, half random, half
// text), each referencing a few earlier ones, and push it, signed, to a
// binary cache. Prints the top path, then the public key.
//
//   kiln-bench-gen-closure STORE CACHE-URL SECRET-KEY-FILE [N] [COMPRESSION]
#include <kiln/cache/cache_client.hpp>
#include <kiln/nar/nar.hpp>

#include <cmath>
#include <iostream>
#include <random>

using namespace kiln;

int
main(int argc, char** argv)
{
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " STORE CACHE-URL SECRET-KEY-FILE [N] [COMPRESSION]\n";
    return 2;
  }
  size_t n = argc > 4 ? std::stoul(argv[4]) : 200;
  std::string compression = argc > 5 ? argv[5] : "zstd";
  LocalStore store({argv[1]});
  auto key = SecretKey::read_file(argv[3]);
  std::mt19937_64 rng(2026);
  std::uniform_real_distribution<double> log_size(std::log(1024.0), std::log(20.0 * 1024 * 1024));

  std::vector<StorePath> paths;
  for (size_t i = 0; i < n; ++i) {
    size_t size = static_cast<size_t>(std::exp(log_size(rng)));
    std::string body;
    body.reserve(size + 200);
    if (i % 2 == 0) {
      while (body.size() < size) {
        uint64_t v = rng();
        body.append(reinterpret_cast<const char*>(&v), 8);
      }
    } else {
      while (body.size() < size) {
        body += "line " + std::to_string(rng() % 100000) + " of crate output\n";
      }
    }
    body.resize(size);
    std::set<StorePath> refs;
    if (i > 0) {
      refs.insert(paths[i - 1]);
      refs.insert(paths[i / 2]);
    }
    for (const auto& r : refs) {
      body += "\n" + store.print(r);
    }
    StringSink nar;
    {
      NarWriter writer(nar);
      writer.begin_regular_file("", false, body.size());
      writer.file_data(body);
      writer.end_regular_file();
      writer.finish();
    }
    StorePath path = store.store_dir().make_store_path(
      "output:out", hash_string(HashAlgo::sha256, body), "bench-" + std::to_string(i));
    if (!store.is_valid(path)) {
      PathInfo info(path);
      info.nar_hash = hash_string(HashAlgo::sha256, nar.s);
      info.nar_size = nar.s.size();
      info.references = refs;
      StringSource in(nar.s);
      store.add_nar(info, in);
    }
    paths.push_back(path);
  }
  CacheClient cache(open_binary_cache(argv[2]), store.store_dir());
  PushOptions options;
  options.key = &key;
  options.compression = compression;
  push(store, cache, {paths.back()}, options);
  std::cout << store.print(paths.back()) << "\n" << key.public_key().to_string() << "\n";
  return 0;
}
