// The Cargo frontend's small parts: cfg(...) expressions and build-script
// directives.
#include <kiln/cargo/error.hpp>
#include <kiln/cargo/inputs.hpp>
#include <kiln/cargo/toolchain.hpp>
#include <kiln/cargo/units.hpp>
#include <kiln/cargo/workspace.hpp>

#include "support/test_support.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace kiln;
using namespace kiln::cargo;

TEST_CASE("cfg expressions evaluate against rustc's --print cfg", "[cargo]")
{
  CfgSet linux = parse_cfg_lines("panic=\"unwind\"\ntarget_arch=\"x86_64\"\ntarget_family=\"unix\"\n"
                                 "target_feature=\"sse2\"\ntarget_os=\"linux\"\nunix\n");
  const std::string triple = "x86_64-unknown-linux-gnu";
  CHECK(platform_matches("cfg(unix)", triple, linux));
  CHECK_FALSE(platform_matches("cfg(windows)", triple, linux));
  CHECK(platform_matches("cfg(target_os = \"linux\")", triple, linux));
  CHECK_FALSE(platform_matches("cfg(target_os = \"macos\")", triple, linux));
  CHECK(platform_matches("cfg(all(unix, target_arch = \"x86_64\"))", triple, linux));
  CHECK(platform_matches("cfg(any(windows, target_feature = \"sse2\"))", triple, linux));
  CHECK(platform_matches("cfg(not(any(windows, target_os = \"wasi\")))", triple, linux));
  CHECK(platform_matches("cfg(all())", triple, linux));
  CHECK_FALSE(platform_matches("cfg(any())", triple, linux));
  CHECK(platform_matches(triple, triple, linux));
  CHECK_FALSE(platform_matches("aarch64-unknown-linux-gnu", triple, linux));
  CHECK_THROWS_AS(platform_matches("cfg(all(unix)", triple, linux), CargoError);
  CHECK_THROWS_AS(platform_matches("cfg(target_os = linux)", triple, linux), CargoError);
  CHECK_THROWS_AS(platform_matches("cfg(maybe(unix))", triple, linux), CargoError);
}

TEST_CASE("build-script directives are read as cargo reads them", "[cargo]")
{
  std::string error;
  std::vector<std::string> warnings;
  auto text = parse_build_script_output(
    "cargo::rustc-cfg=has_gen\n"
    "cargo:rustc-cfg=feature_x=\"y\"\n"
    "cargo::rustc-check-cfg=cfg(has_gen)\n"
    "cargo::rustc-env=ANSWER=42=yes\n"
    "cargo::rustc-link-lib=static=foo\n"
    "cargo::rustc-link-search=native=/somewhere\n"
    "cargo:rustc-flags=-l bar -L/elsewhere\n"
    "cargo::rustc-link-arg-bins=-Wl,-z,now\n"
    "cargo::rustc-link-arg-bin=app=--verbose\n"
    "cargo::metadata=include=/inc\n"
    "cargo:root=/old-style-metadata\n"
    "cargo::rerun-if-changed=build.rs\n"
    "cargo::warning=be careful\n"
    "not a directive\n",
    error, warnings);
  auto d = nlohmann::json::parse(text);
  CHECK(d["cfgs"] == nlohmann::json({"has_gen", "feature_x=\"y\""}));
  CHECK(d["check_cfgs"] == nlohmann::json({"cfg(has_gen)"}));
  CHECK(d["env"].dump() == R"([["ANSWER","42=yes"]])");
  CHECK(d["link_libs"] == nlohmann::json({"static=foo", "bar"}));
  CHECK(d["link_search"] == nlohmann::json({"native=/somewhere", "/elsewhere"}));
  CHECK(d["link_args"].size() == 2);
  CHECK(d["link_args"][1]["bin"] == "app");
  CHECK(d["metadata"].dump() == R"([["include","/inc"],["root","/old-style-metadata"]])");
  CHECK(warnings == std::vector<std::string>{"be careful"});
  CHECK(error.empty());

  parse_build_script_output("cargo::error=no libfoo found\ncargo::error=second\n", error, warnings);
  CHECK(error == "no libfoo found");
}

namespace {

using json = nlohmann::json;

const std::string k_dep_a = "/kiln/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-dep-a";
const std::string k_dep_b = "/kiln/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-dep-b";

UnitInputs
sample_inputs()
{
  UnitInputs i;
  i.package = "serde";
  i.version = "1.0.152";
  i.mode = "build";
  i.target = "serde";
  i.target_kind = {"lib"};
  i.crate_types = {"lib"};
  i.src_path = "src/lib.rs";
  i.edition = "2018";
  i.source = "/kiln/store/cccccccccccccccccccccccccccccccc-serde-1.0.152-src";
  i.package_env = {{"CARGO_PKG_NAME", "serde"}};
  i.declared_features = {"default", "std"};
  i.compiler = "rustc 1.95.0 content sha256:x";
  i.standard_library = "host";
  i.linker = "cc 12";
  i.driver = "rustc";
  i.host = "x86_64-unknown-linux-gnu";
  i.cfg = {{"CARGO_CFG_UNIX", ""}};
  i.features = {"std"};
  i.lto = "only-object";
  i.rustflags = {"--cfg", "x"};
  i.lint_flags = {"--warn=unused"};
  i.config_env = {{"MY_VAR", "1"}};
  i.host_env = {{"OPENSSL_DIR", "/opt/ssl"}};
  i.host_files = {{"/usr/include/zlib.h", "sha256:y"}};
  i.bin_exes = {{"tool", k_dep_a}};
  i.externs = {{"dep", k_dep_a, "libdep-0123456789abcdef.rmeta"}};
  i.library_closure = {k_dep_a};
  i.link_search_runs = {k_dep_a};
  i.own_run = k_dep_a;
  i.build_script = k_dep_a;
  i.links_runs = {{"z", k_dep_a}};
  i.tool_args = {"-D", "warnings"};
  i.rustdocflags = {"--cfg", "doc"};
  i.test_binary = k_dep_a + "/bin/t";
  i.rerun = "1";
  i.clippy_conf = "/kiln/store/dddddddddddddddddddddddddddddddd-clippy-conf";
  return i;
}

// Change one value: strings and numbers get another value (a store path
// another store path), booleans flip, lists and maps gain an entry.
json
changed(const std::string& name, const json& v)
{
  if (name == "profile.split_debuginfo") {
    return "packed";
  }
  if (v.is_boolean()) {
    return !v.get<bool>();
  }
  if (v.is_string()) {
    std::string s = v;
    if (s.starts_with(k_dep_a + "/")) {
      return k_dep_b + s.substr(k_dep_a.size());
    }
    return s.starts_with("/kiln/store/") ? json(s == k_dep_a ? k_dep_b : k_dep_a) : json(s + "-changed");
  }
  if (v.is_number() || v.is_null()) {
    return json(3);
  }
  bool of_paths = (v.is_array() && !v.empty() && v[0].is_string() &&
                   v[0].get<std::string>().starts_with("/kiln/store/")) ||
                  (v.is_object() && !v.empty() && v.begin()->is_string() &&
                   v.begin()->get<std::string>().starts_with("/kiln/store/"));
  if (v.is_array()) {
    json out = v;
    out.push_back(of_paths ? json(k_dep_b) : v.empty() || v[0].is_string() ? json("extra") : v[0]);
    if (!v.empty() && v[0].is_object()) {
      out.back()["name"] = "extra";
    }
    return out;
  }
  json out = v;
  out["EXTRA"] = of_paths ? k_dep_b : "1";
  return out;
}

StorePath
output_of(const UnitInputs& inputs)
{
  StoreDir dir;
  std::map<std::string, StorePath> drv_of;
  for (const auto& out : {k_dep_a, k_dep_b}) {
    drv_of.emplace(out, StorePath(out.substr(12, 32) + "-dep.drv"));
  }
  DrvHasher hasher(dir, [](const StorePath& p) {
    Derivation d;
    d.name = std::string(p.name()).substr(0, std::string(p.name()).size() - 4);
    d.builder = "/bin/sh";
    d.platform = "x86_64-linux";
    d.outputs["out"] = {"/kiln/store/" + std::string(p.hash_part()) + "-dep", "", ""};
    return d;
  });
  return make_derivation(inputs, "x86_64-linux", drv_of, dir, hasher).out;
}

} // namespace

TEST_CASE("a unit's output path is a hash of its named inputs, each of them, and nothing else",
          "[cargo][inputs]")
{
  UnitInputs base = sample_inputs();
  // Round trip, and the same inputs give the same path every time.
  CHECK(inputs_from_json(inputs_to_json(base)) == base);
  StorePath out = output_of(base);
  CHECK(output_of(inputs_from_json(inputs_to_json(base))) == out);

  // Every field, changed alone, gives another path — and says which.
  json fields = json::parse(inputs_to_json(base));
  size_t checked = 0;
  std::function<void(const std::string&, json&, json&)> each;
  auto try_change = [&](const std::string& name, json& slot) {
    json saved = slot;
    slot = changed(name, saved);
    UnitInputs other = inputs_from_json(fields.dump());
    INFO("field " << name);
    CHECK(output_of(other) != out);
    auto diff = diff_inputs(base, other);
    REQUIRE(diff.size() >= 1);
    CHECK(diff[0].starts_with(name.substr(0, name.find('.'))));
    slot = saved;
    ++checked;
  };
  for (auto& [key, value] : fields.items()) {
    if (key == "profile") {
      for (auto& [pkey, pvalue] : value.items()) {
        try_change("profile." + pkey, pvalue);
      }
    } else {
      try_change(key, value);
    }
  }
  CHECK(checked >= 50);
}

TEST_CASE("target-cpu=native is found in every spelling rustc takes, and names the processor",
          "[cargo]")
{
  using V = std::vector<std::string>;
  CHECK(asks_for_native_cpu(V{"-C", "target-cpu=native"}));
  CHECK(asks_for_native_cpu(V{"--cfg", "x", "-Ctarget-cpu=native"}));
  CHECK(asks_for_native_cpu(V{"--codegen", "target-cpu=native"}));
  CHECK(asks_for_native_cpu(V{"--codegen=target-cpu=native"}));
  CHECK_FALSE(asks_for_native_cpu(V{"-C", "target-cpu=znver4"}));
  CHECK_FALSE(asks_for_native_cpu(V{"--cfg", "target-cpu=native"}));
  CHECK_FALSE(asks_for_native_cpu(V{"-C"}));
  CHECK_FALSE(asks_for_native_cpu(V{"-Ctarget-feature=+avx2"}));

  test::TempDir dir;
  auto cpuinfo = [&](const std::string& name, const std::string& mhz, const std::string& flags) {
    // Two processors: the identity is the first's.
    std::string one = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                      "model name\t: AMD EPYC Test\nstepping\t: 1\ncpu MHz\t\t: " + mhz +
                      "\nmicrocode\t: 0x1\nbogomips\t: 5000.00\nflags\t\t: " + flags + "\n\n";
    std::string two = "processor\t: 1\nvendor_id\t: Other\nflags\t\t: none\n\n";
    test::write_file(dir / name, one + two);
    return host_cpu_identity(dir / name);
  };
  std::string base = cpuinfo("a", "2600.000", "fpu sse2 avx2");
  CHECK_THAT(base, Catch::StartsWith("AMD EPYC Test (family 26, model 2) sha256:"));
  CHECK(cpuinfo("b", "3100.123", "fpu sse2 avx2") == base); // the clock changes, not the processor
  CHECK(cpuinfo("c", "2600.000", "fpu sse2 avx2 avx512f") != base);
  CHECK_THROWS_AS(host_cpu_identity(dir / "missing"), CargoError);
  test::write_file(dir / "empty", "");
  CHECK_THROWS_WITH(host_cpu_identity(dir / "empty"), Catch::Contains("target-cpu=native"));
}
