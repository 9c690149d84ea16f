// Derivations: ATerm round trips, output paths by hash modulo, .drv paths,
// all checked against what Nix (nix-instantiate, nix show-derivation) makes
// of the same derivations; and why-rebuild.
#include "support/test_support.hpp"

#include <kiln/derivation/derivation.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

#include <sstream>
#include <nlohmann/json.hpp>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// Shapes of derivation graphs, as one Nix expression.
const char* const k_shapes = R"(
let
  sys = "x86_64-linux";
  mk = args: derivation ({ system = sys; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; } // args);
  leaf = mk { name = "leaf"; };
  chain2 = mk { name = "chain2"; dep = leaf; };
  chain3 = mk { name = "chain3"; dep = chain2; };
  left = mk { name = "left"; dep = leaf; };
  right = mk { name = "right"; dep = leaf; FLAG = "x\ny\t\"quoted\" \\ back"; };
  diamond = mk { name = "diamond"; a = left; b = right; };
  multi = mk { name = "multi"; outputs = [ "out" "dev" "lib" ]; };
  usesDev = mk { name = "uses-dev"; d = multi.dev; l = multi.lib; };
  fixed = mk { name = "fixed"; outputHashMode = "recursive"; outputHashAlgo = "sha256";
               outputHash = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"; };
  fixedFlat = mk { name = "fixed-flat"; outputHashAlgo = "sha256";
                   outputHash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; };
  usesFixed = mk { name = "uses-fixed"; f = fixed; g = fixedFlat; };
  withSrc = mk { name = "with-src"; src = ./src.txt; dep = leaf; };
in { inherit leaf chain3 diamond multi usesDev fixed usesFixed withSrc; }
)";

const std::vector<std::string> k_attrs = {"leaf",    "chain3", "diamond",   "multi",
                                          "usesDev", "fixed",  "usesFixed", "withSrc"};

Derivation
read_nix_drv(const test::PrivateNix& nix, const StoreDir& dir, const std::string& drv_path)
{
  std::string name(dir.parse(drv_path).name());
  return Derivation::parse(read_file(nix.physical(drv_path)), dir, name.substr(0, name.size() - 4));
}

} // namespace

TEST_CASE("derivations get the same output and .drv paths as Nix gives them",
          "[derivation][nix][interop]")
{
  test::PrivateNix nix;
  StoreDir dir("/kiln/store");
  test::write_file(nix.dir() / "shapes.nix", k_shapes);
  test::write_file(nix.dir() / "src.txt", "some source\n");

  std::map<std::string, std::string> drv_of;
  for (const auto& attr : k_attrs) {
    drv_of[attr] = test::output_of(
      nix.run({"nix-instantiate", "--store", nix.store(), "shapes.nix", "-A", attr}), attr);
  }
  DrvReader reader = [&](const StorePath& p) { return read_nix_drv(nix, dir, dir.print(p)); };
  DrvHasher hasher(dir, reader);

  for (const auto& attr : k_attrs) {
    INFO(attr << " = " << drv_of[attr]);
    std::string text = read_file(nix.physical(drv_of[attr]));
    Derivation drv = read_nix_drv(nix, dir, drv_of[attr]);
    // Parse and print back byte for byte.
    CHECK(drv.unparse(dir) == text);
    // The .drv's own path.
    CHECK(dir.print(derivation_path(drv, dir)) == drv_of[attr]);
    // Output paths recomputed from scratch.
    Derivation blank = drv;
    for (auto& [name, out] : blank.outputs) {
      out.path.clear();
      blank.env[name] = "";
    }
    compute_output_paths(blank, dir, hasher);
    CHECK(blank.unparse(dir) == text);
  }

  SECTION("kiln derivation add / show agree with nix show-derivation")
  {
    TempDir kdir;
    std::string store = (kdir / "s").string();
    // The source, added by content, lands where Nix put it.
    auto src = dir.print(*read_nix_drv(nix, dir, drv_of["withSrc"]).input_srcs.begin());
    CHECK(test::output_of(
            test::kiln({"--store", store, "store", "add", (nix.dir() / "src.txt").string()}),
            "add src") == src);
    std::set<std::string> added = {src};
    for (const auto& attr : k_attrs) {
      INFO(attr);
      // Nix lists a closure dependencies first.
      auto closure = test::output_of(
        nix.run({"nix-store", "--store", nix.store(), "-qR", drv_of[attr]}), "closure");
      std::istringstream lines(closure);
      for (std::string path; std::getline(lines, path);) {
        if (!path.ends_with(".drv") || !added.insert(path).second) {
          continue;
        }
        CHECK(test::output_of(test::kiln({"--store", store, "derivation", "add",
                                          nix.physical(path).string()}),
                              "derivation add") == path);
      }
      auto ours = nlohmann::json::parse(test::output_of(
        test::kiln({"--store", store, "derivation", "show", "--json", drv_of[attr]}), "show"));
      auto theirs = nlohmann::json::parse(test::output_of(
        nix.run({"nix", "show-derivation", "--store", nix.store(), drv_of[attr]}), "nix show"));
      // kiln adds "platform" beside Nix's "system"; otherwise identical.
      for (auto& [path, d] : ours.items()) {
        CHECK(d["platform"] == d["system"]);
        d.erase("platform");
      }
      CHECK(ours == theirs);
    }
    // Recursive show covers the whole graph.
    auto all = nlohmann::json::parse(test::output_of(
      test::kiln({"--store", store, "derivation", "show", "--json", "-r", drv_of["diamond"]}),
      "show -r"));
    CHECK(all.size() == 4);
  }
}

TEST_CASE("derivation add refuses what does not add up", "[derivation]")
{
  TempDir dir;
  StoreDir sd("/kiln/store");
  LocalStore store({dir / "s"});
  Derivation drv;
  drv.name = "hello";
  drv.platform = "x86_64-linux";
  drv.builder = "/bin/sh";
  drv.args = {"-c", "echo hi > $out"};
  drv.outputs["out"] = {};
  DrvHasher hasher(sd, [&](const StorePath& p) { return read_derivation(store, p); });
  compute_output_paths(drv, sd, hasher);
  auto path = add_derivation(store, drv);
  CHECK(path.name() == "hello.drv");
  CHECK(read_derivation(store, path).unparse(sd) == drv.unparse(sd));

  SECTION("a wrong output path")
  {
    Derivation wrong = drv;
    wrong.env["X"] = "changed"; // outputs no longer match the inputs
    CHECK_THROWS_WITH(add_derivation(store, wrong), Catch::Contains("its inputs make it"));
  }
  SECTION("an input that is not in the store")
  {
    Derivation child;
    child.name = "child";
    child.platform = "x86_64-linux";
    child.builder = "/bin/sh";
    child.outputs["out"] = {};
    child.input_drvs[StorePath("00000000000000000000000000000000-ghost.drv")] = {"out"};
    CHECK_THROWS_WITH(add_derivation(store, child), Catch::Contains("add inputs first"));
  }
  SECTION("malformed ATerm names the offset")
  {
    CHECK_THROWS_WITH(Derivation::parse("Derive([(\"out\"", sd, "x"),
                      Catch::Contains("invalid derivation") && Catch::Contains("offset"));
    CHECK_THROWS_WITH(Derivation::parse(drv.unparse(sd) + "x", sd, "x"),
                      Catch::Contains("trailing data"));
  }
}

TEST_CASE("why-rebuild explains input by input", "[derivation][cli]")
{
  TempDir dir;
  StoreDir sd("/kiln/store");
  std::string store_root = (dir / "s").string();
  LocalStore store({store_root});
  auto make = [&](const std::string& name, std::map<std::string, std::string> env,
                  std::vector<StorePath> inputs) {
    Derivation d;
    d.name = name;
    d.platform = "x86_64-linux";
    d.builder = "/bin/sh";
    d.args = {"-c", "true"};
    d.env = env;
    d.outputs["out"] = {};
    for (const auto& i : inputs) {
      d.input_drvs[i] = {"out"};
    }
    DrvHasher hasher(sd, [&](const StorePath& p) { return read_derivation(store, p); });
    compute_output_paths(d, sd, hasher);
    return add_derivation(store, d);
  };
  auto serde1 = make("serde-1.0.100", {{"RUSTFLAGS", "-O"}}, {});
  auto serde2 = make("serde-1.0.100", {{"RUSTFLAGS", "-O -g"}}, {});
  auto app1 = make("app", {{"PROFILE", "release"}}, {serde1});
  auto app2 = make("app", {{"PROFILE", "release"}, {"NEW", "1"}}, {serde2});
  auto r = test::kiln({"--store", store_root, "why-rebuild", sd.print(app1), sd.print(app2)});
  CHECK(r.status == 1);
  CHECK_THAT(r.out, Catch::Contains("environment NEW added: \"1\""));
  CHECK_THAT(r.out, Catch::Contains("input derivation serde-1.0.100.drv differs"));
  CHECK_THAT(r.out, Catch::Contains("    environment RUSTFLAGS: \"-O\" → \"-O -g\""));
  auto same = test::kiln({"--store", store_root, "why-rebuild", sd.print(app1), sd.print(app1)});
  CHECK(same.status == 0);
}
