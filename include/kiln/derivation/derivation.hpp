// Derivations: a build step described completely by its inputs, in Nix's
// .drv (ATerm) form, with output paths computed by Nix's "hash derivation
// modulo" rule, so that the same derivation gets the same paths as in Nix.
//
//   Derive([outputs],[inputDrvs],[inputSrcs],"platform","builder",[args],[env])
//   outputs   ("name","path","hashAlgo","hash"), sorted by name
//   inputDrvs ("drv path",["output",...]), sorted
//   inputSrcs ["path",...], sorted
//   env       ("KEY","VALUE"), sorted by key
// Strings escape '"', '\', newline, CR and tab; no spaces, no final newline.
#pragma once

#include <kiln/store/local_store.hpp>
#include <kiln/store/store_path.hpp>

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kiln {

struct DerivationOutput
{
  std::string path;       // full store path; "" before it is computed
  std::string hash_algo;  // "" (input-addressed), "sha256" (flat) or "r:sha256" (recursive)
  std::string hash;       // base16, for fixed outputs

  bool operator==(const DerivationOutput&) const = default;
};

struct Derivation
{
  std::string name;
  std::map<std::string, DerivationOutput> outputs;
  std::map<StorePath, std::set<std::string>> input_drvs;
  std::set<StorePath> input_srcs;
  std::string platform;
  std::string builder;
  std::vector<std::string> args;
  std::map<std::string, std::string> env;

  bool is_fixed_output() const;

  // The ATerm text. With `mask_outputs`, output paths and the environment
  // variables named after outputs are empty; `input_hashes` (when given)
  // replaces the input derivation paths (hash modulo → outputs).
  std::string unparse(const StoreDir& store_dir, bool mask_outputs = false,
                      const std::map<std::string, std::set<std::string>>* input_hashes =
                        nullptr) const;
  // Parse ATerm text; `name` is the derivation's name (the .drv path's name
  // without ".drv"). Errors are FormatError with the byte offset.
  static Derivation parse(std::string_view text, const StoreDir& store_dir, std::string name);

  // Every store path the .drv file refers to: input sources and input drvs.
  std::set<StorePath> references() const;
};

// Reads an input derivation by its .drv path.
using DrvReader = std::function<Derivation(const StorePath&)>;

// Computes hashDerivationModulo, remembering results per .drv path.
class DrvHasher
{
public:
  DrvHasher(const StoreDir& store_dir, DrvReader read);
  // `mask_outputs` is true for the derivation whose outputs are being
  // computed, false for its inputs (as in Nix).
  Hash hash_modulo(const Derivation& drv, bool mask_outputs);
  Hash hash_modulo(const StorePath& drv_path);

private:
  const StoreDir& m_store_dir;
  DrvReader m_read;
  std::map<StorePath, Hash> m_cache;
};

// The name of output `output` of derivation `drv_name` in a store path.
std::string output_path_name(const std::string& drv_name, const std::string& output);

// Fill in the output paths (and the matching environment variables) of an
// input-addressed or fixed-output derivation.
void compute_output_paths(Derivation& drv, const StoreDir& store_dir, DrvHasher& hasher);

// The .drv file's own store path.
StorePath derivation_path(const Derivation& drv, const StoreDir& store_dir);

// Read a .drv from the store.
Derivation read_derivation(const LocalStore& store, const StorePath& drv_path);

// Import a .drv file's text into the store after checking it: its inputs
// must be valid and its output paths must be the ones its inputs imply.
StorePath add_derivation(LocalStore& store, const Derivation& drv);

// What differs between two JSON texts, object fields one by one
// ("NAME.features: [...] → [...]"); arrays of named objects element by
// element. Texts that are not JSON differ as a whole.
std::vector<std::string> json_differences(const std::string& name, std::string_view a,
                                          std::string_view b);

// Why do two derivations differ? One line per difference, input by input;
// an environment variable holding a JSON object field by field; differing
// input derivations of the same name explained recursively, indented (or
// said to be missing when `read` cannot read them). Environment variables
// in `derived` (which follow from others) are left out.
std::vector<std::string> explain_difference(const Derivation& a, const Derivation& b,
                                            const StoreDir& store_dir, const DrvReader& read,
                                            const std::set<std::string>& derived = {});

} // namespace kiln
