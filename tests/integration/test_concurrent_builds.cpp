// kiln processes sharing one store, as a team's machines use it: garbage
// collection in a loop beside builds, two builds of one graph at once, a
// build killed with its helpers running, and waits for locks that say for
// whom they wait. Real kiln processes, real signals.
#include "support/test_support.hpp"

#include <kiln/store/local_store.hpp>
#include <kiln/util/lock.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A chain (or, with `diamond`, a diamond) of derivations c1 … cN, each
// sleeping a little and writing its input's value and `seed` to its output.
std::string
graph_yaml(int count, const std::string& seed, double sleep_seconds, bool diamond = false)
{
  std::ostringstream yaml;
  yaml << "derivations:\n";
  for (int i = 1; i <= count; ++i) {
    std::string name = "c" + std::to_string(i);
    std::vector<std::string> deps;
    if (i > 1) {
      deps.push_back("c" + std::to_string(diamond ? 1 : i - 1));
    }
    if (diamond && i == count && count > 2) {
      deps.clear();
      for (int d = 2; d < count; ++d) {
        deps.push_back("c" + std::to_string(d));
      }
    }
    std::string script = "busybox sleep " + std::to_string(sleep_seconds) +
                         " && busybox mkdir $out && busybox echo " + seed + "-" + name +
                         " > $out/v";
    std::string dep_list;
    for (const auto& d : deps) {
      script += " && busybox cat $" + d + "/v >> $out/v";
      dep_list += (dep_list.empty() ? "" : ", ") + d;
    }
    yaml << "  " << name << ":\n"
         << "    builder: /bin/sh\n"
         << "    tools: [/bin/sh, /bin/busybox]\n"
         << "    deps: [" << dep_list << "]\n"
         << "    args: [\"-c\", \"" << script << "\"]\n";
  }
  return yaml.str();
}

std::vector<nlohmann::json>
json_lines(const std::string& text)
{
  std::vector<nlohmann::json> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line[0] == '{') {
      out.push_back(nlohmann::json::parse(line));
    }
  }
  return out;
}

// `kiln gc` in a loop on another thread until the object goes; counts the
// runs and records any that failed.
class GcLoop
{
public:
  explicit GcLoop(std::string store)
    : m_store(std::move(store)), m_thread([this] { loop(); })
  {
  }
  ~GcLoop() { stop(); }
  void
  stop()
  {
    m_stop = true;
    if (m_thread.joinable()) {
      m_thread.join();
    }
  }
  int runs() const { return m_runs; }
  std::vector<std::string> failures() const
  {
    std::lock_guard guard(m_mutex);
    return m_failures;
  }

private:
  void
  loop()
  {
    while (!m_stop) {
      // Every other run under the harshest size cap: it too must never
      // take what a running build uses.
      std::vector<std::string> args = {"--store", m_store, "-q", "gc"};
      if (m_runs % 2 == 1) {
        args.insert(args.end(), {"--max-size", "1"});
      }
      auto r = test::kiln(args);
      ++m_runs;
      if (r.status != 0) {
        std::lock_guard guard(m_mutex);
        m_failures.push_back(r.err);
      }
    }
  }

  std::string m_store;
  std::atomic<bool> m_stop{false};
  std::atomic<int> m_runs{0};
  mutable std::mutex m_mutex;
  std::vector<std::string> m_failures;
  std::thread m_thread;
};

// Processes whose command line contains `marker`.
std::vector<pid_t>
processes_with(const std::string& marker)
{
  std::vector<pid_t> found;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    // A process may end between the listing and the read (ESRCH): not one.
    std::string cmdline;
    try {
      std::ifstream in(entry.path() / "cmdline");
      cmdline.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    } catch (const std::exception&) {
      continue;
    }
    for (auto& c : cmdline) {
      c = c == '\0' ? ' ' : c;
    }
    if (cmdline.find(marker) != std::string::npos && std::stoi(name) != ::getpid()) {
      found.push_back(std::stoi(name));
    }
  }
  return found;
}

// Wait until `done` holds, polling; false after `limit`.
template <typename F>
bool
wait_until(F done, std::chrono::milliseconds limit)
{
  auto end = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > end) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

bool
log_says(const fs::path& store, const std::string& text)
{
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(store / "logs", ec)) {
    if (read_file(entry.path()).find(text) != std::string::npos) {
      return true;
    }
  }
  return false;
}

} // namespace

TEST_CASE("kiln gc in a loop never breaks a kiln build, and what is rooted stays",
          "[build][concurrency][gc]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  GcLoop gc(store);
  int failures = 0;
  for (int round = 0; round < 6; ++round) {
    test::write_file(dir / "kiln.yaml", graph_yaml(5, "round" + std::to_string(round), 0.15));
    auto r = test::kiln({"--store", store, "build", "-j", "2"}, test::in_dir(dir.path()));
    if (r.status != 0) {
      ++failures;
      UNSCOPED_INFO("round " << round << ": " << r.err);
    }
  }
  gc.stop();
  for (const auto& f : gc.failures()) {
    UNSCOPED_INFO("gc failed: " << f);
  }
  INFO(gc.runs() << " gc runs beside 6 builds");
  CHECK(failures == 0);
  CHECK(gc.failures().empty());
  CHECK(gc.runs() >= 3);
  // The last build's result links are roots: its outputs are whole.
  LocalStore s({dir / "store"});
  CHECK(s.is_valid(s.resolve((dir / "result-c5").string())));
  CHECK(read_file(dir / "result-c5" / "v").find("round5-c1") != std::string::npos);
  CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);
}

TEST_CASE("kiln gc in a loop never breaks a cargo kiln build", "[cargo][concurrency][gc]")
{
  if (!test::have_program("cargo") || !test::have_program("rustc")) {
    test::skip("cargo and rustc are needed for a Cargo build");
    return;
  }
  TempDir dir;
  fs::path ws = dir / "ws";
  fs::copy(fs::path(KILN_SOURCE_DIR) / "examples" / "cargo-workspace", ws,
           fs::copy_options::recursive);
  fs::remove_all(ws / "target");
  std::string store = (dir / "store").string();
  GcLoop gc(store);
  auto r = test::kiln({"--store", store, "build", "-j", "2"}, test::in_dir(ws));
  gc.stop();
  INFO(r.err);
  CHECK(r.status == 0);
  INFO(gc.runs() << " gc runs beside the build");
  CHECK(gc.failures().empty());
  CHECK(gc.runs() >= 2);
  CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);
}

TEST_CASE("two builds of one graph at once build each derivation once", "[build][concurrency]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  for (int round = 0; round < 3; ++round) {
    test::write_file(dir / "kiln.yaml",
                     // Round 0 long enough that the two surely overlap on a busy machine.
                     graph_yaml(6, "twice" + std::to_string(round), round == 0 ? 1.0 : 0.3,
                                /*diamond=*/true));
    test::RunResult a, b;
    std::thread first([&] {
      a = test::kiln({"--store", store, "build", "--json", "--no-link", "-j", "2"}, test::in_dir(dir.path()));
    });
    std::thread second([&] {
      b = test::kiln({"--store", store, "build", "--json", "--no-link", "-j", "2"}, test::in_dir(dir.path()));
    });
    first.join();
    second.join();
    INFO("round " << round << "\nfirst:\n" << a.err << "\nsecond:\n" << b.err);
    REQUIRE(a.status == 0);
    REQUIRE(b.status == 0);
    std::map<std::string, int> built;
    std::map<std::string, std::set<std::string>> paths;
    for (const auto* r : {&a, &b}) {
      for (const auto& j : json_lines(r->out)) {
        std::string name = j["name"];
        built[name] += j["status"] == "built" ? 1 : 0;
        paths[name].insert(j["path"].get<std::string>());
      }
    }
    REQUIRE(built.size() == 6);
    for (const auto& [name, times] : built) {
      INFO(name);
      CHECK(times == 1);
      CHECK(paths[name].size() == 1);
    }
    if (round == 0) {
      // Both started at once: one waited for the other, and said so.
      CHECK_THAT(a.err + b.err, Catch::Contains("waiting for another kiln building"));
    }
  }
}

TEST_CASE("a waiting kiln names the lock and its holder, and gives up at its timeout",
          "[build][concurrency]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  LocalStore s({dir / "store"});
  {
    // A kiln adding paths holds the GC lock shared: gc waits for it.
    FileLock adder(dir / "store" / "locks" / "gc.lock", LockMode::shared);
    auto start = Clock::now();
    auto r = test::kiln({"--store", store, "gc", "--timeout", "1"});
    CHECK(r.status != 0);
    CHECK_THAT(r.err, Catch::Contains("timed out after 1 s waiting for the store's GC lock") &&
                        Catch::Contains("pid " + std::to_string(::getpid())));
    CHECK(Clock::now() - start < std::chrono::seconds(10));
    auto global = test::kiln({"--store", store, "--lock-timeout", "1", "gc"});
    CHECK(global.status != 0);
    CHECK_THAT(global.err, Catch::Contains("waiting for the store's GC lock (held by pid " +
                                           std::to_string(::getpid())));
  }
  CHECK(test::kiln({"--store", store, "gc", "--timeout", "1"}).status == 0);

  // A build waits for another kiln building the same output; with a lock
  // timeout it gives up, naming the path and the builder's pid.
  test::write_file(dir / "kiln.yaml", graph_yaml(1, "slow", 3));
  test::BackgroundProcess builder({test::kiln_binary(), "--store", store, "build", "--no-link",
                                   "-f", (dir / "kiln.yaml").string()},
                                  dir / "builder.log");
  REQUIRE(wait_until([&] { return !processes_with("busybox sleep 3").empty(); },
                     std::chrono::seconds(30)));
  auto impatient = test::kiln({"--store", store, "--lock-timeout", "1", "build", "--no-link"},
                              test::in_dir(dir.path()));
  CHECK(impatient.status != 0);
  CHECK_THAT(impatient.err,
             Catch::Contains("waiting for another kiln building /kiln/store/") &&
               Catch::Contains("-c1 (held by pid " + std::to_string(builder.pid()) + ")"));
  auto patient = test::kiln({"--store", store, "build", "--no-link", "--json"}, test::in_dir(dir.path()));
  INFO(patient.err);
  CHECK(patient.status == 0);
  CHECK_THAT(patient.out, Catch::Contains("\"status\":\"present\""));
}

TEST_CASE("a killed build leaves no process behind, and gc runs at once",
          "[build][sandbox][crash]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  // The builder starts a helper in the background and waits: both must die
  // with kiln. The sleep lengths mark them among the machine's processes.
  test::write_file(dir / "kiln.yaml", R"(derivations:
  stuck:
    builder: /bin/sh
    tools: [/bin/sh, /bin/busybox]
    args: ["-c", "busybox sleep 917.25 & busybox echo started; busybox sleep 917.5"]
)");
  auto start_build = [&] {
    return std::make_unique<test::BackgroundProcess>(
      std::vector<std::string>{test::kiln_binary(), "--store", store, "build", "--no-link", "-f",
                               (dir / "kiln.yaml").string()},
      dir / "build.log");
  };
  auto none_left = [&] { return processes_with("sleep 917.").empty(); };

  SECTION("killed while the builder runs")
  {
    auto build = start_build();
    REQUIRE(wait_until([&] { return log_says(dir / "store", "started"); }, std::chrono::seconds(30)));
    REQUIRE(!none_left());
    ::kill(build->pid(), SIGKILL);
    build->stop();
    CHECK(wait_until(none_left, std::chrono::seconds(5)));
  }
  SECTION("killed at random moments while the sandbox is being set up")
  {
    std::mt19937 rng(17);
    int kills = 0;
    for (int i = 0; i < 15; ++i) {
      auto build = start_build();
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 120));
      ::kill(build->pid(), SIGKILL);
      build->stop();
      ++kills;
      INFO("kill " << i);
      CHECK(wait_until(none_left, std::chrono::seconds(5)));
    }
    CHECK(kills == 15);
  }
  auto start = Clock::now();
  auto gc = test::kiln({"--store", store, "gc", "--timeout", "5", "--json"});
  INFO(gc.err);
  CHECK(gc.status == 0);
  CHECK(Clock::now() - start < std::chrono::seconds(5));
  // Nothing of the dead builds is left: no temporaries, no roots.
  CHECK(fs::is_empty(dir / "store" / "tmp"));
  CHECK(fs::is_empty(dir / "store" / "temproots"));
}

TEST_CASE("temporaries and temporary roots last as long as their process",
          "[store][gc][concurrency]")
{
  TempDir dir;
  std::string store = (dir / "store").string();
  LocalStore s({dir / "store"});
  // This process is alive: its folder, file and added path stay.
  auto folder = s.make_temp_folder("kept");
  fs::path file = s.new_temp_path("kept-file");
  test::write_file(file, "x");
  test::write_file(dir / "src" / "a", "mine");
  StorePath mine = s.add_path(dir / "src");
  // A process that has ended: its temporaries go.
  pid_t gone = ::fork();
  if (gone == 0) {
    ::_exit(0);
  }
  ::waitpid(gone, nullptr, 0);
  fs::path dead = dir / "store" / "tmp" / (std::to_string(gone) + "-build-x-abcdef");
  fs::create_directories(dead / "inner");
  // A path another kiln process added, and then ended: no root of anyone's.
  test::write_file(dir / "other" / "b", "theirs");
  auto theirs = test::output_of(
    test::kiln({"--store", store, "store", "add", (dir / "other").string()}), "add");

  auto gc = test::kiln({"--store", store, "gc", "--json"});
  REQUIRE(gc.status == 0);
  auto result = nlohmann::json::parse(gc.out);
  CHECK(result["tempRoots"] == 1);
  CHECK(fs::is_directory(folder->path()));
  CHECK(fs::exists(file));
  CHECK_FALSE(fs::exists(dead));
  CHECK(s.is_valid(mine));
  CHECK_FALSE(s.is_valid(s.resolve(theirs)));
  CHECK(test::kiln({"--store", store, "store", "verify"}).status == 0);
}
