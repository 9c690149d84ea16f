// The Rust toolchain that compiles a project, found as cargo finds it, and
// its identity by content: what rustc loads (the rustc binary, its
// libraries, the host's rustlib folder with the standard library and the
// linker it ships) and the standard library of each target compiled for.
// Two toolchains that differ in any byte never share an output.
#pragma once

#include <kiln/cargo/build_config.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cargo {

class DigestCache;

// --- Interface ---

class Toolchain
{
public:
  std::filesystem::path rustc;            // <sysroot>/bin/rustc, not rustup's proxy
  std::filesystem::path rustdoc;
  std::filesystem::path cargo;            // the cargo that plans (rustup's proxy is fine)
  std::filesystem::path sysroot;
  std::string version;                    // `rustc -vV`
  std::string host;                       // host triple
  // What enters every unit's hash: the version text and the content digest
  // of the compiler and the host's rustlib.
  std::string identity;
  // The C compiler driver rustc links with (`cc`), and its identity (its
  // version line and the digest of the program).
  std::filesystem::path linker;
  std::string linker_version;             // the first line of `cc --version`
  std::string linker_identity;

  // The standard library of `triple` by content (for the host: part of
  // `identity` already, returned as "host"). An uninstalled target is a
  // CargoError naming `rustup target add`.
  std::string target_identity(const std::string& triple) const;
  // A host program by content (a linker named in the configuration,
  // clippy-driver): "<path> sha256:<digest>".
  std::string program_identity(const std::filesystem::path& program) const;
  // `rustc --print cfg --target TRIPLE FLAGS`, remembered on disk; with
  // `bootstrap`, as rustc answers under RUSTC_BOOTSTRAP=1.
  const CfgSet& cfg(const std::string& triple, const std::vector<std::string>& rustflags,
                    bool bootstrap = false) const;

  // Which toolchain this is, without its contents (the version text and
  // where the programs are): the key of answers that depend on the
  // toolchain's choice, not on its bytes (cargo's plan).
  std::string located_key() const;

  // Set by detect_toolchain: where answers are remembered.
  std::filesystem::path cache_dir;
  std::shared_ptr<DigestCache> digests;

private:
  mutable std::mutex m_mutex;
  mutable std::map<std::string, CfgSet> m_cfg;
  mutable std::map<std::string, std::string> m_targets;
};

// Find the toolchain as cargo would from `cwd`: rustc from $RUSTC, else
// build.rustc, else rustc on PATH (rustup's proxy picks the toolchain from
// RUSTUP_TOOLCHAIN, rust-toolchain.toml above `cwd`, overrides, default);
// cargo from $CARGO else PATH; cc. Identities are remembered in `cache_dir`
// by file metadata, so a toolchain is hashed once.
std::unique_ptr<Toolchain> detect_toolchain(const std::filesystem::path& cwd,
                                            const BuildConfig& config, const Environment& env,
                                            const std::filesystem::path& cache_dir);

// detect_toolchain in two steps, so that the hashing (seconds on a store
// that has not seen the toolchain) can run beside other work: where the
// programs are and what they say (`identity` and `linker_identity` still
// empty), then their contents.
std::unique_ptr<Toolchain> locate_toolchain(const std::filesystem::path& cwd,
                                            const BuildConfig& config, const Environment& env,
                                            const std::filesystem::path& cache_dir);
void identify_toolchain(Toolchain& toolchain);

// Do these rustc flags ask for this machine's processor (`-C
// target-cpu=native`, in any of rustc's spellings)? Then the output is
// compiled for whatever processor builds it, and that processor is an
// input like the flags themselves.
bool asks_for_native_cpu(const std::vector<std::string>& flags);

// This machine's processor, as far as it decides what `target-cpu=native`
// compiles for: its model and every feature flag the kernel reports
// (/proc/cpuinfo's first processor, less what changes from moment to moment
// or core to core: clock, numbering, microcode), e.g. "AMD EPYC 9R45 (family
// 26, model 2) sha256:<digest>". Machines that agree share outputs; any
// difference keeps them apart. A CargoError if it cannot be read.
std::string host_cpu_identity(const std::filesystem::path& cpuinfo);
// host_cpu_identity of this machine (/proc/cpuinfo), read once a process.
const std::string& this_cpu_identity();

} // namespace kiln::cargo
