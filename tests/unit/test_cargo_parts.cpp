// The Cargo frontend's small parts: cfg(...) expressions and build-script
// directives.
#include <kiln/cargo/units.hpp>
#include <kiln/cargo/workspace.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

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
