// A unit's derivation and its builder's instructions, derived from its
// UnitInputs: the rustc command lines are cargo's (src/compiler/mod.rs:
// build_base_args, build_deps_args; doctests: ops/cargo_test.rs), with
// placeholders for what is particular to a machine (@RUSTC@, @out@, ...:
// see unit_builder.cpp).
#include <kiln/cargo/inputs.hpp>
#include <kiln/cargo/unit_builder.hpp>
#include <kiln/hash/hash.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>

namespace kiln::cargo {

using json = nlohmann::json;

// --- instructions ---

namespace {

bool
has(const std::vector<std::string>& v, const std::string& x)
{
  return std::find(v.begin(), v.end(), x) != v.end();
}

bool
is_test_mode(const UnitInputs& i)
{
  return i.mode == "test" || i.mode == "check-test";
}

// cargo's Unit::requires_upstream_objects: tests, and targets that link.
bool
requires_upstream_objects(const UnitInputs& i)
{
  if (is_test_mode(i)) {
    return true;
  }
  for (const char* t : {"bin", "dylib", "cdylib", "staticlib", "proc-macro"}) {
    if (has(i.crate_types, t)) {
      return true;
    }
  }
  return false;
}

std::string
crate_name(const UnitInputs& i)
{
  std::string n = i.target;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

void
push(std::vector<std::string>& args, std::initializer_list<std::string> items)
{
  args.insert(args.end(), items);
}

// The unit's features as cfgs, and every declared feature as the values
// `--check-cfg` accepts (cargo's build_base_args and rustdoc's alike).
void
feature_args(std::vector<std::string>& args, const UnitInputs& i)
{
  for (const auto& f : i.features) {
    push(args, {"--cfg", "feature=\"" + f + "\""});
  }
  std::string declared;
  for (const auto& f : i.declared_features) {
    declared += (declared.empty() ? "" : ", ") + ("\"" + f + "\"");
  }
  push(args, {"--check-cfg", "cfg(docsrs,test)", "--check-cfg",
              "cfg(feature, values(" + declared + "))"});
}

void
lto_args(std::vector<std::string>& args, const UnitInputs& i)
{
  if (i.lto == "run") {
    const std::string& l = i.profile.lto;
    push(args, {"-C", l == "true" || l == "fat" ? (l == "fat" ? "lto=fat" : "lto") : "lto=" + l});
  } else if (i.lto == "off") {
    push(args, {"-C", "lto=off", "-C", "embed-bitcode=no"});
  } else if (i.lto == "only-bitcode") {
    push(args, {"-C", "linker-plugin-lto"});
  } else if (i.lto == "only-object") {
    push(args, {"-C", "embed-bitcode=no"});
  }
}

// The profile's flags, in cargo's order (build_base_args).
void
profile_args(std::vector<std::string>& args, const UnitInputs& i)
{
  const Profile& p = i.profile;
  if (p.opt_level != "0") {
    push(args, {"-C", "opt-level=" + p.opt_level});
  }
  if (p.panic != "unwind") {
    push(args, {"-C", "panic=" + p.panic});
  }
  lto_args(args, i);
  if (p.codegen_units) {
    push(args, {"-C", "codegen-units=" + std::to_string(*p.codegen_units)});
  }
  if (p.debuginfo != "0") {
    push(args, {"-C", "debuginfo=" + p.debuginfo});
    if (p.split_debuginfo) {
      push(args, {"-C", "split-debuginfo=" + *p.split_debuginfo});
    }
  }
  if (!i.cap_lints) {
    args.insert(args.end(), i.lint_flags.begin(), i.lint_flags.end());
  }
  if (p.opt_level != "0") {
    if (p.debug_assertions) {
      push(args, {"-C", "debug-assertions=on"});
      if (!p.overflow_checks) {
        push(args, {"-C", "overflow-checks=off"});
      }
    } else if (p.overflow_checks) {
      push(args, {"-C", "overflow-checks=on"});
    }
  } else if (!p.debug_assertions) {
    push(args, {"-C", "debug-assertions=off"});
    if (p.overflow_checks) {
      push(args, {"-C", "overflow-checks=on"});
    }
  } else if (!p.overflow_checks) {
    push(args, {"-C", "overflow-checks=off"});
  }
}

std::vector<std::string>
rustc_args(const UnitInputs& i, const std::string& metadata)
{
  // A workspace package's file relative to the workspace's root (the
  // builder runs rustc there), as cargo passes it; another's by its store
  // path, which debuginfo and panic locations then name as
  // <pkg>-<version>/..., not by the store path: a binary's closure is then
  // the binary alone.
  std::string src = !i.in_workspace          ? i.source + "/" + i.src_path
                    : i.workspace_path.empty() ? i.src_path
                                               : i.workspace_path + "/" + i.src_path;
  std::vector<std::string> args = {"--crate-name", crate_name(i), "--edition=" + i.edition, src};
  args.push_back("--remap-path-prefix=" + i.source + "=" + i.package + "-" + i.version);
  bool test = is_test_mode(i);
  if (!test) {
    for (const auto& t : i.crate_types) {
      push(args, {"--crate-type", t});
    }
  }
  bool check = i.mode == "check" || i.mode == "check-test";
  // dep-info as cargo asks for it (it changes the output's bytes): the
  // builder takes the file out of the output, and keeps what the crate read
  // of the environment (env!, option_env!) to be checked against the
  // caller's (k_env_reads_file).
  args.push_back(check ? "--emit=dep-info,metadata"
                 : requires_upstream_objects(i) ? "--emit=dep-info,link"
                                                : "--emit=dep-info,metadata,link");
  bool proc_macro = has(i.target_kind, "proc-macro");
  if (proc_macro || (has(i.crate_types, "dylib") && !i.primary)) {
    push(args, {"-C", "prefer-dynamic"});
  }
  profile_args(args, i);
  if (test && i.harness) {
    args.push_back("--test");
  } else if (test) {
    push(args, {"--cfg", "test"});
  }
  feature_args(args, i);
  push(args, {"-C", "metadata=" + metadata, "-C", "extra-filename=-" + metadata});
  if (i.profile.rpath) {
    push(args, {"-C", "rpath"});
  }
  if (!i.target_triple.empty()) {
    push(args, {"--target", i.target_triple});
  }
  if (!i.linker_path.empty()) {
    push(args, {"-C", "linker=" + i.linker_path});
  }
  if (i.profile.strip != "none") {
    push(args, {"-C", "strip=" + i.profile.strip});
  }
  for (const auto& l : i.library_closure) {
    push(args, {"-L", "dependency=" + l});
  }
  for (const auto& e : i.externs) {
    push(args, {"--extern", e.name + "=" + e.output + "/" + e.file});
  }
  if (proc_macro) {
    push(args, {"--extern", "proc_macro"});
  }
  if (i.cap_lints) {
    push(args, {"--cap-lints", "allow"});
  }
  args.insert(args.end(), i.rustflags.begin(), i.rustflags.end());
  return args;
}

// The environment cargo gives rustc (and, for runs, the build script).
json
process_env(const UnitInputs& i)
{
  json env = i.package_env;
  for (const auto& [k, v] : i.config_env) {
    if (!env.contains(k)) {
      env[k] = v;
    }
  }
  if (!i.own_run.empty()) {
    env["OUT_DIR"] = i.own_run + "/out";
  }
  return env;
}

bool
is_lib_target(const UnitInputs& i)
{
  for (const char* k : {"lib", "rlib", "dylib", "cdylib", "staticlib", "proc-macro"}) {
    if (has(i.target_kind, k)) {
      return true;
    }
  }
  return false;
}

// What rustc writes that dependents and users take: the product's name in
// the output, and a rename of rustc's file into it (executables).
std::pair<std::string, std::string>
compile_product(const UnitInputs& i, const std::string& metadata)
{
  std::string base = crate_name(i) + "-" + metadata;
  if (i.mode == "check" || i.mode == "check-test") {
    return {"lib" + base + ".rmeta", ""};
  }
  if (has(i.target_kind, "custom-build")) {
    return {"build-script-build", base};
  }
  if (!is_test_mode(i) && has(i.target_kind, "proc-macro")) {
    return {"lib" + base + ".so", ""};
  }
  if (!is_test_mode(i) && (is_lib_target(i) || !has(i.crate_types, "bin"))) {
    const char* ext = has(i.crate_types, "lib") || has(i.crate_types, "rlib") ? ".rlib"
                      : has(i.crate_types, "dylib") || has(i.crate_types, "cdylib") ? ".so"
                      : has(i.crate_types, "staticlib")                            ? ".a"
                                                                                   : ".rlib";
    return {"lib" + base + ext, ""};
  }
  return {"bin/" + i.target, base};
}

// Which scoped rustc-link-arg directives apply: "bin", "example", "test",
// "bench" or "lib" (cargo's LinkArgTarget).
std::string
link_arg_scope(const UnitInputs& i)
{
  if (has(i.target_kind, "custom-build")) {
    return "build-script";
  }
  for (const char* k : {"bin", "example", "test", "bench"}) {
    if (has(i.target_kind, k)) {
      return k;
    }
  }
  return is_test_mode(i) ? "test" : "lib";
}

json
compile_instructions(const UnitInputs& i, const std::string& metadata)
{
  json env = process_env(i);
  env["CARGO_CRATE_NAME"] = crate_name(i);
  if (has(i.target_kind, "bin")) {
    env["CARGO_BIN_NAME"] = i.target;
  }
  if (i.primary) {
    env["CARGO_PRIMARY_PACKAGE"] = "1";
  }
  for (const auto& [name, out] : i.bin_exes) {
    env["CARGO_BIN_EXE_" + name] = out + "/bin/" + name;
  }
  if (has(i.target_kind, "test") || has(i.target_kind, "bench")) {
    env["CARGO_TARGET_TMPDIR"] = "/tmp/kiln-target-tmp";
  }
  if (i.driver != "rustc") {
    // As cargo clippy passes them to clippy-driver.
    std::string args;
    for (const auto& a : i.tool_args) {
      args += a + "__CLIPPY_HACKERY__";
    }
    env["CLIPPY_ARGS"] = args;
    if (!i.clippy_conf.empty()) {
      env["CLIPPY_CONF_DIR"] = i.clippy_conf;
    }
  }
  auto [product, rename] = compile_product(i, metadata);
  std::vector<std::string> args = rustc_args(i, metadata);
  if (i.driver != "rustc") {
    // As cargo runs a wrapper: `clippy-driver <rustc> args…` (clippy-driver
    // drops the rustc path; `kiln clippy -v` then shows cargo's line).
    args.insert(args.begin(), "@RUSTC@");
  }
  json spec = {{"mode", "compile"},
               {"program", i.driver == "rustc" ? "@RUSTC@" : "@CLIPPY_DRIVER@"},
               {"args", args},
               {"env", env},
               {"link_search_from", i.link_search_runs},
               {"own_script", i.own_run},
               {"apply_link_libs", i.applies_link_libs},
               {"link_arg_scope", link_arg_scope(i)},
               {"cdylib", has(i.crate_types, "cdylib")},
               {"bin_name", i.target},
               {"product", product}};
  if (!rename.empty()) {
    spec["rename"] = {{"from", rename}, {"to", product}};
  }
  if (i.in_workspace) {
    spec["workspace_path"] = i.workspace_path;
  }
  if (i.incremental) {
    // The builder adds -C incremental with the session kiln keeps for the
    // unit, and compiles from a path that stays the same across edits.
    spec["incremental"] = true;
  }
  return spec;
}

json
run_instructions(const UnitInputs& i)
{
  json env = process_env(i);
  // The caller's variables the script reads, as cargo passes them on.
  for (const auto& [k, v] : i.host_env) {
    env[k] = v;
  }
  // What cargo tells a build script (src/compiler/custom_build.rs).
  for (const auto& [k, v] : i.cfg) {
    env[k] = v;
  }
  if (i.profile.debug_assertions) {
    env["CARGO_CFG_DEBUG_ASSERTIONS"] = "";
  }
  std::string features;
  for (const auto& f : i.features) {
    env["CARGO_FEATURE_" + envify(f)] = "1";
    features += (features.empty() ? "" : ",") + f;
  }
  if (!features.empty()) {
    env["CARGO_CFG_FEATURE"] = features;
  }
  std::string encoded;
  for (const auto& f : i.rustflags) {
    encoded += (encoded.empty() ? "" : "\x1f") + f;
  }
  env["CARGO_ENCODED_RUSTFLAGS"] = encoded;
  if (!i.links.empty()) {
    env["CARGO_MANIFEST_LINKS"] = i.links;
  }
  env["DEBUG"] = i.profile.debuginfo != "0" ? "true" : "false";
  env["OPT_LEVEL"] = i.profile.opt_level;
  env["PROFILE"] = i.profile.root;
  env["HOST"] = i.host;
  env["TARGET"] = i.target_triple.empty() ? i.host : i.target_triple;
  env["NUM_JOBS"] = "@NUM_JOBS@";
  env["RUSTC"] = "@RUSTC@";
  env["RUSTDOC"] = "@RUSTDOC@";
  json links = json::array();
  for (const auto& [name, from] : i.links_runs) {
    links.push_back({{"links", name}, {"from", from}});
  }
  env["OUT_DIR"] = "@out@/out";
  return {{"mode", "run"},
          {"program", i.build_script + "/build-script-build"},
          {"env", env},
          {"links_deps", links},
          {"product", "out"}};
}

// What a test sees at run time besides the package's variables (cargo's
// Compilation::fill_env): its build script's rustc-env values (the builder
// adds them), CARGO_BIN_EXE_*, a writable CARGO_TARGET_TMPDIR, the
// standard library's folder for tests linked to it dynamically.
json
test_env(const UnitInputs& i)
{
  json env = process_env(i);
  for (const auto& [name, out] : i.bin_exes) {
    env["CARGO_BIN_EXE_" + name] = out + "/bin/" + name;
  }
  env["LD_LIBRARY_PATH"] = "@RUST_LIB@";
  return env;
}

// A test harness, run: its output is its report.
json
test_run_instructions(const UnitInputs& i)
{
  return {{"mode", "test-run"},
          {"program", i.test_binary},
          {"args", i.tool_args},
          {"env", test_env(i)},
          {"own_script", i.own_run},
          {"product", "report.json"}};
}

// rustdoc --test: compiles and runs a library's doctests (cargo's
// BuildRunner::compile and run_doc_tests).
json
doctest_instructions(const UnitInputs& i)
{
  std::string src = !i.in_workspace          ? i.source + "/" + i.src_path
                    : i.workspace_path.empty() ? i.src_path
                                               : i.workspace_path + "/" + i.src_path;
  std::vector<std::string> args = {"--edition=" + i.edition};
  for (const auto& t : i.crate_types) {
    push(args, {"--crate-type", t});
  }
  push(args, {"--color", "never", "--crate-name", crate_name(i), "--test", src,
              "--test-run-directory", i.source});
  if (!i.target_triple.empty()) {
    push(args, {"--target", i.target_triple});
  }
  if (!i.linker_path.empty()) {
    push(args, {"-C", "linker=" + i.linker_path});
  }
  if (i.profile.panic != "unwind") {
    push(args, {"-C", "panic=" + i.profile.panic});
  }
  if (!i.tool_args.empty()) {
    for (const auto& a : i.tool_args) {
      push(args, {"--test-args", a});
    }
  }
  if (!i.cap_lints) {
    args.insert(args.end(), i.lint_flags.begin(), i.lint_flags.end());
  }
  for (const auto& e : i.externs) {
    push(args, {"--extern", e.name + "=" + e.output + "/" + e.file});
  }
  if (has(i.target_kind, "proc-macro")) {
    push(args, {"--extern", "proc_macro"});
  }
  for (const auto& l : i.library_closure) {
    push(args, {"-L", "dependency=" + l});
  }
  lto_args(args, i);
  feature_args(args, i);
  args.insert(args.end(), i.rustdocflags.begin(), i.rustdocflags.end());
  json spec = {{"mode", "doctest"},
               {"program", "@RUSTDOC@"},
               {"args", args},
               {"env", test_env(i)},
               {"link_search_from", i.link_search_runs},
               {"own_script", i.own_run},
               {"apply_link_libs", false},
               {"link_arg_scope", "lib"},
               {"cdylib", false},
               {"bin_name", i.target},
               {"product", "report.json"}};
  if (i.in_workspace) {
    spec["workspace_path"] = i.workspace_path;
  }
  return spec;
}

} // namespace

std::string
instructions(const UnitInputs& inputs, const std::string& metadata)
{
  json spec = inputs.mode == "run-build-script" ? run_instructions(inputs)
              : inputs.mode == "doctest"        ? doctest_instructions(inputs)
              : inputs.mode == "test-run"       ? test_run_instructions(inputs)
                                                : compile_instructions(inputs, metadata);
  spec["cwd"] = inputs.source;
  spec["package"] = inputs.package + " " + inputs.version;
  return spec.dump();
}

UnitDerivation
make_derivation(const UnitInputs& inputs, const std::string& system,
                const std::map<std::string, StorePath>& drv_of, const StoreDir& store_dir,
                DrvHasher& hasher, const std::map<std::string, std::string>& stable_names)
{
  UnitDerivation made;
  std::string inputs_json = inputs_to_json(inputs);
  // -C metadata: the same inputs as the output path, so the same on every
  // machine and different whenever anything below differs; for an
  // incremental unit, the same across edits (see inputs.hpp).
  made.metadata = hash_string(HashAlgo::sha256, inputs.incremental
                                                  ? stable_inputs_json(inputs, stable_names)
                                                  : inputs_json)
                    .to_string(HashFormat::base16, false)
                    .substr(0, 16);
  std::string spec = instructions(inputs, made.metadata);
  made.product = json::parse(spec).at("product").get<std::string>();

  Derivation& drv = made.drv;
  // serde-1.0.152, foo-0.1.0-build (its build script), foo-0.1.0-run,
  // app-0.1.0-bin-app, app-0.1.0-check, app-0.1.0-test-test-integration, ...
  std::string suffix;
  if (inputs.mode == "run-build-script") {
    suffix = "-run";
  } else if (inputs.mode == "test-run") {
    suffix = "-test-run-" + inputs.target_kind.front() + "-" + inputs.target;
  } else if (has(inputs.target_kind, "custom-build")) {
    suffix = "-build";
  } else {
    suffix = inputs.mode == "build" ? "" : "-" + inputs.mode;
    if (!is_lib_target(inputs)) {
      suffix += "-" + inputs.target_kind.front() + "-" + inputs.target;
    }
  }
  drv.name = inputs.package + "-" + inputs.version + suffix;
  drv.platform = system;
  drv.builder = k_rust_unit_builder;
  drv.input_srcs.insert(store_dir.parse(inputs.source));
  if (!inputs.clippy_conf.empty()) {
    drv.input_srcs.insert(store_dir.parse(inputs.clippy_conf));
  }
  auto add_input = [&](const std::string& output) {
    if (output.empty()) {
      return;
    }
    auto it = drv_of.find(output);
    if (it == drv_of.end()) {
      throw std::logic_error("no derivation for the input " + output);
    }
    drv.input_drvs[it->second] = {"out"};
  };
  for (const auto& e : inputs.externs) {
    add_input(e.output);
  }
  for (const auto& l : inputs.library_closure) {
    add_input(l);
  }
  for (const auto& l : inputs.link_search_runs) {
    add_input(l);
  }
  for (const auto& [name, out] : inputs.links_runs) {
    add_input(out);
  }
  for (const auto& [name, out] : inputs.bin_exes) {
    add_input(out);
  }
  add_input(inputs.own_run);
  add_input(inputs.build_script);
  if (!inputs.test_binary.empty()) {
    add_input(inputs.test_binary.substr(0, inputs.test_binary.find('/', store_dir.path().size() + 1)));
  }
  drv.env[k_inputs_env] = inputs_json;
  drv.env[k_unit_env] = spec;
  drv.env["name"] = drv.name;
  drv.env["builder"] = drv.builder;
  drv.env["system"] = drv.platform;
  drv.outputs["out"] = {};
  compute_output_paths(drv, store_dir, hasher);
  made.drv_path = derivation_path(drv, store_dir);
  made.out = store_dir.parse(drv.outputs.at("out").path);
  return made;
}

} // namespace kiln::cargo
