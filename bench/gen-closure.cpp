// Benchmark fixture: make a closure of N input-addressed store paths and
// push it, signed, to a binary cache. Prints the top path, then the public
// key. Two shapes:
//
//   chain  (default) mixed sizes, log-uniform between 1 KiB and 20 MiB,
//          half random, half text; path i references paths i-1 and i/2, so
//          the closure is one long chain (bench/substitute: throughput).
//   small  sizes log-uniform between 256 bytes and 8 KiB, in layers of 24:
//          a path references two of the layer below, and the top path every
//          path no other references; 14 levels deep for 300 paths, like a
//          crate graph (bench/latency: round trips, not bytes).
//
//   kiln-bench-gen-closure STORE CACHE-URL SECRET-KEY-FILE [N] [COMPRESSION] [SHAPE]
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
    std::cerr << "usage: " << argv[0]
              << " STORE CACHE-URL SECRET-KEY-FILE [N] [COMPRESSION] [chain|small]\n";
    return 2;
  }
  size_t n = argc > 4 ? std::stoul(argv[4]) : 200;
  std::string compression = argc > 5 ? argv[5] : "zstd";
  std::string shape = argc > 6 ? argv[6] : "chain";
  if (shape != "chain" && shape != "small") {
    std::cerr << "unknown shape '" << shape << "' (chain or small)\n";
    return 2;
  }
  bool small = shape == "small";
  LocalStore store({argv[1]});
  auto key = SecretKey::read_file(argv[3]);
  std::mt19937_64 rng(2026);
  std::uniform_real_distribution<double> log_size(small ? std::log(256.0) : std::log(1024.0),
                                                  small ? std::log(8.0 * 1024)
                                                        : std::log(20.0 * 1024 * 1024));
  constexpr size_t k_width = 24; // small: paths per layer
  std::set<size_t> referenced;

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
    if (!small && i > 0) {
      refs.insert(paths[i - 1]);
      refs.insert(paths[i / 2]);
    } else if (small && i + 1 == n) {
      for (size_t r = 0; r < i; ++r) {
        if (!referenced.count(r)) {
          refs.insert(paths[r]);
        }
      }
    } else if (small && i >= k_width) {
      size_t below = (i / k_width - 1) * k_width;
      for (size_t r : {below + i % k_width, below + (i + 1) % k_width}) {
        refs.insert(paths[r]);
        referenced.insert(r);
      }
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
