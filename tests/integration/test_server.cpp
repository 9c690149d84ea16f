// kiln serve, run as the real binary on an ephemeral port: reads (Range,
// HEAD, path tricks), pushes and substitutes through it, and every way an
// upload is refused (token, size, hash, closure, signature), /metrics and
// SIGTERM.
#include "support/test_support.hpp"

#include <kiln/cache/narinfo.hpp>
#include <kiln/signing/signing.hpp>
#include <kiln/util/error.hpp>
#include <kiln/util/io.hpp>

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <regex>
#include <span>
#include <thread>

using namespace kiln;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

// `kiln serve ARGS` on a free loopback port, each with a log of its own in `dir`.
class Server : public test::KilnServe
{
public:
  Server(const fs::path& dir, std::vector<std::string> args)
    : KilnServe(std::move(args), dir / ("serve-" + std::to_string(++s_count) + ".log"))
  {
  }

private:
  static inline int s_count = 0;
};

// Send all of `data`; false if the peer went away (no SIGPIPE).
bool
send_all(int fd, std::string_view data)
{
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string
read_to_eof(int fd)
{
  std::string data;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) {
      break;
    }
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

struct Reply
{
  int status = 0;
  std::map<std::string, std::string> headers; // lower-case names
  std::string body;
  std::string raw;

  std::string
  header(const std::string& name) const
  {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

Reply
parse_reply(const std::string& raw)
{
  Reply r;
  r.raw = raw;
  auto end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.compare(0, 9, "HTTP/1.1 ") != 0) {
    return r;
  }
  r.status = std::stoi(raw.substr(9, 3));
  size_t pos = raw.find("\r\n") + 2;
  while (pos < end) {
    size_t eol = raw.find("\r\n", pos);
    std::string line = raw.substr(pos, eol - pos);
    auto colon = line.find(':');
    std::string name = line.substr(0, colon);
    for (auto& c : name) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    pos = eol + 2;
  }
  r.body = raw.substr(end + 4);
  return r;
}

// Send `raw` bytes on a fresh connection; the reply read to EOF.
Reply
send_raw(int port, const std::string& raw)
{
  int fd = test::connect_loopback(port);
  REQUIRE(fd >= 0);
  send_all(fd, raw); // a refused upload may be answered before it is all sent
  Reply r = parse_reply(read_to_eof(fd));
  ::close(fd);
  return r;
}

Reply
request(int port, const std::string& method, const std::string& path,
        const std::vector<std::string>& headers = {}, const std::optional<std::string>& body = {})
{
  std::string raw = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  for (const auto& h : headers) {
    raw += h + "\r\n";
  }
  if (body) {
    raw += "Content-Length: " + std::to_string(body->size()) + "\r\n";
  }
  raw += "\r\n" + body.value_or("");
  return send_raw(port, raw);
}

std::string
bearer(const std::string& token)
{
  return "Authorization: Bearer " + token;
}

// One store object as an upload: its NAR and a narinfo for it.
struct Upload
{
  StorePath path;
  std::string nar;
  NarInfo narinfo;

  std::string
  nar_key() const
  {
    return narinfo.url;
  }
  std::string
  narinfo_key() const
  {
    return std::string(path.hash_part()) + ".narinfo";
  }
  std::string
  text() const
  {
    return narinfo.to_string(StoreDir());
  }
  void
  sign(const SecretKey& key)
  {
    narinfo.info.signatures.insert(
      key.sign(path_fingerprint(StoreDir(), narinfo.info)).to_string());
  }
};

Upload
make_upload(LocalStore& store, const StorePath& path)
{
  auto info = *store.query_path_info(path);
  info.signatures.clear();
  std::string nar = test::nar_of(store.physical_path(path));
  NarInfo narinfo(info);
  narinfo.compression = "none";
  narinfo.url = "nar/" + hash_string(HashAlgo::sha256, nar).to_string(HashFormat::nix32, false) +
                ".nar";
  return {path, nar, narinfo};
}

std::string
metric(const std::string& metrics, const std::string& name)
{
  std::smatch m;
  std::regex re("(^|\n)" + std::regex_replace(name, std::regex(R"([{}"\\.])"), R"(\$&)") +
                " (\\d+)");
  return std::regex_search(metrics, m, re) ? m[2].str() : "";
}

} // namespace

TEST_CASE("kiln serve DIR serves reads: nix-cache-info, narinfo, NAR with ranges, HEAD",
          "[server]")
{
  TempDir dir;
  auto store = (dir / "a").string();
  REQUIRE(test::kiln({"key", "generate", "t-1", "--secret-file", (dir / "sk").string()}).status == 0);
  test::write_file(dir / "blob", test::random_bytes(300000, 7));
  auto path = test::output_of(test::kiln({"--store", store, "store", "add", (dir / "blob").string()}),
                              "add");
  auto cache = dir / "cache";
  test::RunOptions with_key;
  with_key.env = {{"KILN_SECRET_KEY_FILE", (dir / "sk").string()}};
  REQUIRE(test::kiln({"--store", store, "push", "--compression", "none", "file://" + cache.string(),
                      path},
                     with_key)
            .status == 0);
  std::string hash = fs::path(path).filename().string().substr(0, 32);
  auto narinfo_text = read_file(cache / (hash + ".narinfo"));
  auto narinfo = NarInfo::parse(narinfo_text, StoreDir(), "narinfo");
  auto nar_bytes = read_file(cache / narinfo.url);
  REQUIRE(nar_bytes.size() > 300000);

  Server server(dir.path(), {cache.string()});

  SECTION("files, with their types")
  {
    auto info = request(server.port, "GET", "/nix-cache-info");
    CHECK(info.status == 200);
    CHECK_THAT(info.body, Catch::Contains("StoreDir: /kiln/store"));
    auto ni = request(server.port, "GET", "/" + hash + ".narinfo");
    CHECK(ni.status == 200);
    CHECK(ni.header("content-type") == "text/x-nix-narinfo");
    CHECK(ni.body == narinfo_text);
    auto nar = request(server.port, "GET", "/" + narinfo.url);
    CHECK(nar.status == 200);
    CHECK(nar.header("content-type") == "application/x-nix-nar");
    CHECK(nar.header("accept-ranges") == "bytes");
    CHECK(nar.body == nar_bytes);
    CHECK(server.stop() == 0);
    CHECK_THAT(server.log(), Catch::Contains("\"GET /" + hash + ".narinfo\" 200 " +
                                             std::to_string(narinfo_text.size())));
  }

  SECTION("HEAD answers like GET, without a body")
  {
    auto head = request(server.port, "HEAD", "/" + narinfo.url);
    CHECK(head.status == 200);
    CHECK(head.header("content-length") == std::to_string(nar_bytes.size()));
    CHECK(head.body.empty());
    CHECK(request(server.port, "HEAD", "/" + hash + ".narinfo").status == 200);
    CHECK(request(server.port, "HEAD", "/00000000000000000000000000000000.narinfo").status == 404);
  }

  SECTION("byte ranges: 206 with exactly the bytes asked for, clamped; 416 beyond the end")
  {
    auto first = request(server.port, "GET", "/" + narinfo.url, {"Range: bytes=0-99"});
    CHECK(first.status == 206);
    CHECK(first.body == nar_bytes.substr(0, 100));
    CHECK(first.header("content-range") ==
          "bytes 0-99/" + std::to_string(nar_bytes.size()));
    auto tail = request(server.port, "GET", "/" + narinfo.url, {"Range: bytes=300000-99999999"});
    CHECK(tail.status == 206);
    CHECK(tail.body == nar_bytes.substr(300000));
    CHECK(tail.header("content-length") == std::to_string(nar_bytes.size() - 300000));
    auto suffix = request(server.port, "GET", "/" + narinfo.url, {"Range: bytes=-10"});
    CHECK(suffix.status == 206);
    CHECK(suffix.body == nar_bytes.substr(nar_bytes.size() - 10));
    auto beyond = request(server.port, "GET", "/" + narinfo.url, {"Range: bytes=99999999-"});
    CHECK(beyond.status == 416);
    CHECK(beyond.header("content-range") == "bytes */" + std::to_string(nar_bytes.size()));
    // Ranges apply to NARs only; a narinfo comes whole.
    auto ni = request(server.port, "GET", "/" + hash + ".narinfo", {"Range: bytes=0-9"});
    CHECK(ni.status == 200);
    CHECK(ni.body == narinfo_text);
    if (test::have_program("curl")) {
      auto curl = test::run({"curl", "-s", "-r", "0-99", "-o", (dir / "part").string(), "-w",
                             "%{http_code}", server.url + "/" + narinfo.url});
      CHECK(curl.out == "206");
      CHECK(read_file(dir / "part") == nar_bytes.substr(0, 100));
    }
  }

  SECTION("malformed keys are 400, absent ones 404, and nothing outside the cache is served")
  {
    for (std::string bad :
         {"/nar/..%2F..%2Fetc%2Fpasswd", "/../x", "/nar/../nix-cache-info", "/%2e%2e/etc/passwd",
          "/nar/%2e%2e/%2e%2e/etc/passwd", "/nar//x.nar", "/nar/x%00.nar", "/nar/..",
          "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo", "/abc.narinfo",
          "/nar/x.txt", "/nar/.staging.nar", "//etc/passwd"}) {
      auto r = request(server.port, "GET", bad);
      INFO(bad << " -> " << r.raw.substr(0, 300));
      CHECK(r.status == 400);
      CHECK_THAT(r.body, !Catch::Contains("root:"));
    }
    for (std::string absent : {"/00000000000000000000000000000000.narinfo", "/nar/abc.nar.xz",
                               "/.staging/x", "/log/x", "/"}) {
      INFO(absent);
      CHECK(request(server.port, "GET", absent).status == 404);
    }
    CHECK(request(server.port, "POST", "/nix-cache-info", {}, std::string("x")).status == 405);
    CHECK(request(server.port, "DELETE", "/" + hash + ".narinfo").status == 405);
  }

  SECTION("/metrics counts what happened")
  {
    request(server.port, "GET", "/" + hash + ".narinfo");
    request(server.port, "GET", "/00000000000000000000000000000000.narinfo");
    request(server.port, "GET", "/" + narinfo.url);
    auto m = request(server.port, "GET", "/metrics");
    CHECK(m.status == 200);
    CHECK(metric(m.body, "kiln_narinfo_requests_total{result=\"hit\"}") == "1");
    CHECK(metric(m.body, "kiln_narinfo_requests_total{result=\"miss\"}") == "1");
    CHECK(metric(m.body, "kiln_http_requests_total{method=\"GET\",status=\"2xx\"}") == "2");
    CHECK(std::stoull(metric(m.body, "kiln_http_sent_bytes_total")) >= nar_bytes.size());
  }

  CHECK(server.stop() == 0);
}

TEST_CASE("kiln serve generates nix-cache-info for a folder without one", "[server]")
{
  TempDir dir;
  Server server(dir.path(), {(dir / "empty").string()});
  auto info = request(server.port, "GET", "/nix-cache-info");
  CHECK(info.status == 200);
  CHECK(info.body == "StoreDir: /kiln/store\nWantMassQuery: 1\nPriority: 40\n");
  CHECK(server.stop() == 0);
}

TEST_CASE("kiln push to kiln serve, then kiln copy from it, verified", "[server]")
{
  TempDir dir;
  auto pub = test::output_of(
    test::kiln({"key", "generate", "ci-1", "--secret-file", (dir / "ci.sk").string()}), "keygen");
  test::write_file(dir / "server.yaml",
                   "caches:\n"
                   "  main:\n"
                   "    path: main\n"
                   "    trusted-keys: [\"" + pub + "\"]\n"
                   "tokens:\n"
                   "  - token: pusher-secret\n"
                   "    name: ci\n"
                   "    caches: [main]\n"
                   "    scopes: [write]\n");
  auto store_a = (dir / "a").string();
  auto store_b = (dir / "b").string();
  StorePath dep("00000000000000000000000000000000-x"), app = dep;
  {
    LocalStore a({store_a});
    dep = test::add_test_object(a, "libdep", "dependency");
    app = test::add_test_object(a, "app", "application", {dep});
  }
  test::write_file(dir / "src" / "main.rs", "fn main() {}\n");
  auto added = test::output_of(
    test::kiln({"--store", store_a, "store", "add", (dir / "src").string()}), "add");

  Server server(dir.path(), {"--config", (dir / "server.yaml").string()});
  std::string url = server.url + "/main";
  std::string app_path = "/kiln/store/" + app.base();

  // Without a token the server refuses, and push says so.
  auto refused = test::kiln({"--store", store_a, "push", url, app_path, "--secret-key-file",
                             (dir / "ci.sk").string()});
  CHECK(refused.status == 1);
  CHECK_THAT(refused.err, Catch::Contains("401"));

  test::RunOptions with_token;
  with_token.env = {{"KILN_TOKEN", "pusher-secret"}};
  auto pushed = test::kiln({"--store", store_a, "push", url, app_path, added, "--secret-key-file",
                            (dir / "ci.sk").string()},
                           with_token);
  INFO(pushed.err);
  REQUIRE(pushed.status == 0);
  CHECK_THAT(pushed.err, Catch::Contains("pushed 3 paths"));
  CHECK(fs::exists(dir / "main" / (std::string(app.hash_part()) + ".narinfo")));
  CHECK(fs::exists(dir / "main" / (std::string(dep.hash_part()) + ".narinfo")));
  // Nothing is left staged once the narinfos claimed their NARs.
  CHECK(fs::is_empty(dir / "main" / ".staging"));

  // (--from takes several values: the paths come first.)
  auto copied = test::kiln({"--store", store_b, "--trusted-public-keys", pub, "copy", app_path,
                            added, "--from", url});
  INFO(copied.err);
  CHECK(copied.status == 0);
  CHECK(test::kiln({"--store", store_b, "path-info", "/kiln/store/" + dep.base()}).status == 0);
  auto verified = test::kiln({"--store", store_b, "store", "verify"});
  INFO(verified.err);
  CHECK(verified.status == 0);

  auto m = request(server.port, "GET", "/metrics");
  CHECK(metric(m.body, "kiln_narinfos_published_total") == "3");
  CHECK(metric(m.body, "kiln_nars_uploaded_total") == "3");
  CHECK(metric(m.body, "kiln_uploads_rejected_total{reason=\"unauthorized\"}") != "");
  CHECK(server.stop() == 0);
  // The access log names the token's user, never the token.
  CHECK_THAT(server.log(), Catch::Contains(" ci \"PUT /main/"));
  CHECK_THAT(server.log(), !Catch::Contains("pusher-secret"));
}

TEST_CASE("uploads are checked before publication", "[server]")
{
  TempDir dir;
  SecretKey trusted = SecretKey::generate("builder-1");
  SecretKey stranger = SecretKey::generate("stranger-1");
  REQUIRE(test::kiln({"key", "generate", "server-1", "--secret-file",
                      (dir / "server.sk").string()})
            .status == 0);
  PublicKey server_key = SecretKey::read_file((dir / "server.sk").string()).public_key();
  test::write_file(dir / "server.yaml",
                   "max-upload-size: 1M\n"
                   "caches:\n"
                   "  main:\n"
                   "    path: main\n"
                   "    trusted-keys: [\"" + trusted.public_key().to_string() + "\"]\n"
                   "  signing:\n"
                   "    path: signing\n"
                   "    private: true\n"
                   "    secret-key-file: server.sk\n"
                   "tokens:\n"
                   "  - token: writer\n"
                   "    caches: [\"*\"]\n"
                   "    scopes: [read, write]\n"
                   "  - token: reader\n"
                   "    caches: [main, signing]\n"
                   "    scopes: [read]\n");

  LocalStore store({dir / "store"});
  StorePath dep = test::add_test_object(store, "dep", "the dependency");
  StorePath app = test::add_test_object(store, "app", "the application", {dep});
  StorePath other = test::add_test_object(store, "other", "something else");
  Upload up_dep = make_upload(store, dep);
  Upload up_app = make_upload(store, app);
  Upload up_other = make_upload(store, other);
  up_dep.sign(trusted);
  up_app.sign(trusted);

  Server server(dir.path(), {"--config", (dir / "server.yaml").string()});
  int port = server.port;
  auto put = [&](const std::string& key, const std::string& body,
                 const std::string& token = "writer") {
    std::vector<std::string> headers;
    if (!token.empty()) {
      headers.push_back(bearer(token));
    }
    return request(port, "PUT", "/" + key, headers, body);
  };

  SECTION("tokens: none or unknown is 401, without the scope 403")
  {
    CHECK(put("main/" + up_dep.nar_key(), up_dep.nar, "").status == 401);
    CHECK(put("main/" + up_dep.nar_key(), up_dep.nar, "guess").status == 401);
    CHECK(put("main/" + up_dep.nar_key(), up_dep.nar, "reader").status == 403);
    std::string user_pass = "u:writer";
    auto basic = request(port, "PUT", "/main/" + up_dep.nar_key(),
                         {"Authorization: Basic " +
                          base64_encode(std::span<const uint8_t>(
                            reinterpret_cast<const uint8_t*>(user_pass.data()), user_pass.size()))},
                         up_dep.nar);
    CHECK(basic.status == 201);
    // The private cache: reads need a token too.
    CHECK(request(port, "GET", "/signing/nix-cache-info").status == 401);
    CHECK(request(port, "GET", "/signing/nix-cache-info", {bearer("reader")}).status == 200);
    CHECK(request(port, "GET", "/main/nix-cache-info").status == 200);
    // nix-cache-info may be replaced, for this cache's store directory only.
    CHECK(put("main/nix-cache-info", "StoreDir: /nix/store\n").status == 400);
    CHECK(put("main/nix-cache-info", "StoreDir: /kiln/store\nPriority: 10\n", "reader").status ==
          403);
    CHECK(put("main/nix-cache-info", "StoreDir: /kiln/store\nPriority: 10\n").status == 204);
    CHECK(request(port, "GET", "/main/nix-cache-info").body ==
          "StoreDir: /kiln/store\nPriority: 10\n");
  }

  SECTION("too large: 413 from the headers alone, and the unread body is never a request")
  {
    // Only the headers are sent: the answer must come without the body.
    auto huge = send_raw(port, "PUT /main/nar/big.nar HTTP/1.1\r\nHost: x\r\n" + bearer("writer") +
                                 "\r\nContent-Length: 10000000000000\r\n\r\n");
    CHECK(huge.status == 413);
    auto over = send_raw(port, "PUT /main/nar/big.nar HTTP/1.1\r\nHost: x\r\n" + bearer("writer") +
                                 "\r\nContent-Length: 1100000\r\n\r\n");
    CHECK(over.status == 413); // max-upload-size: 1M
    CHECK(put("main/nar/small.nar", std::string(1000, 'x')).status == 201);
    auto expect = send_raw(port, "PUT /main/nar/big.nar HTTP/1.1\r\nHost: x\r\n" +
                                   bearer("writer") +
                                   "\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n");
    CHECK(expect.status == 413);
    CHECK_THAT(expect.raw, !Catch::Contains("100 Continue"));
    // A refused upload's body smuggling a second request: one answer only.
    std::string smuggled = "GET /main/nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n";
    auto one = send_raw(port, "PUT /main/nar/x.nar HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                std::to_string(smuggled.size()) + "\r\n\r\n" + smuggled);
    CHECK(one.status == 401);
    CHECK_THAT(one.body, !Catch::Contains("HTTP/1.1"));
  }

  SECTION("a NAR that does not match its narinfo: 400, and nothing is published")
  {
    REQUIRE(put("main/" + up_dep.nar_key(), up_dep.nar).status == 201);
    CHECK(request(port, "GET", "/main/" + up_dep.nar_key()).status == 404); // staged only
    Upload lying = up_dep;
    lying.narinfo.info.nar_hash = hash_string(HashAlgo::sha256, "something else");
    lying.narinfo.info.signatures.clear();
    lying.sign(trusted);
    auto r = put("main/" + lying.narinfo_key(), lying.text());
    CHECK(r.status == 400);
    CHECK_THAT(r.body, Catch::Contains("hash mismatch"));
    CHECK(request(port, "GET", "/main/" + up_dep.narinfo_key()).status == 404);
    CHECK(request(port, "GET", "/main/" + up_dep.nar_key()).status == 404);
    CHECK(fs::is_empty(dir / "main" / ".staging"));
    CHECK(fs::is_empty(dir / "main" / "nar"));

    // A wrong size and a truncated NAR fail alike.
    REQUIRE(put("main/" + up_dep.nar_key(), up_dep.nar.substr(0, 64)).status == 201);
    CHECK(put("main/" + up_dep.narinfo_key(), up_dep.text()).status == 400);
    CHECK(fs::is_empty(dir / "main" / "nar"));
  }

  SECTION("the closure invariant: a missing reference is 409")
  {
    REQUIRE(put("main/" + up_app.nar_key(), up_app.nar).status == 201);
    auto r = put("main/" + up_app.narinfo_key(), up_app.text());
    CHECK(r.status == 409);
    CHECK_THAT(r.body, Catch::Contains(dep.base()));
    CHECK(request(port, "GET", "/main/" + up_app.narinfo_key()).status == 404);

    REQUIRE(put("main/" + up_dep.nar_key(), up_dep.nar).status == 201);
    CHECK(put("main/" + up_dep.narinfo_key(), up_dep.text()).status == 201);
    CHECK(put("main/" + up_app.narinfo_key(), up_app.text()).status == 201);
    auto got = request(port, "GET", "/main/" + up_app.narinfo_key());
    CHECK(got.status == 200);
    CHECK(request(port, "GET", "/main/" + up_app.nar_key()).body == up_app.nar);
    // The same narinfo again is fine; another NAR for the same path is not.
    CHECK(put("main/" + up_app.narinfo_key(), up_app.text()).status == 200);
    Upload changed = up_app;
    changed.narinfo.info.nar_hash = hash_string(HashAlgo::sha256, "x");
    changed.narinfo.info.signatures.clear();
    changed.sign(trusted);
    CHECK(put("main/" + changed.narinfo_key(), changed.text()).status == 409);
  }

  SECTION("malformed narinfos are 400 with the parser's message")
  {
    auto garbage = put("main/" + up_dep.narinfo_key(), "StorePath: /kiln/store/nope\n");
    CHECK(garbage.status == 400);
    CHECK_THAT(garbage.body, Catch::Contains("StorePath"));
    CHECK(put("main/" + up_other.narinfo_key(), up_dep.text()).status == 400); // wrong hash part
    Upload foreign = up_dep;
    auto text = foreign.text();
    text.replace(text.find("/kiln/store/"), 12, "/nix/store/");
    CHECK(put("main/" + up_dep.narinfo_key(), text).status == 400);
    // The narinfo names a NAR nobody uploaded.
    CHECK(put("main/" + up_dep.narinfo_key(), up_dep.text()).status == 409);
  }

  SECTION("signatures: unsigned or untrusted is 403, unless the cache signs itself")
  {
    REQUIRE(put("main/" + up_other.nar_key(), up_other.nar).status == 201);
    CHECK(put("main/" + up_other.narinfo_key(), up_other.text()).status == 403);
    Upload strange = up_other;
    strange.sign(stranger);
    CHECK(put("main/" + strange.narinfo_key(), strange.text()).status == 403);
    CHECK(request(port, "GET", "/main/" + up_other.narinfo_key()).status == 404);

    REQUIRE(put("signing/" + up_other.nar_key(), up_other.nar).status == 201);
    auto r = put("signing/" + up_other.narinfo_key(), up_other.text());
    CHECK(r.status == 201);
    auto got = request(port, "GET", "/signing/" + up_other.narinfo_key(), {bearer("reader")});
    REQUIRE(got.status == 200);
    auto published = NarInfo::parse(got.body, StoreDir(), "published");
    TrustPolicy policy({server_key.to_string()}, 1);
    CHECK(policy.accepts(path_fingerprint(StoreDir(), published.info), published.info.signatures));
    CHECK(request(port, "GET", "/signing/" + up_other.nar_key(), {bearer("reader")}).body ==
          up_other.nar);
  }

  auto m = request(port, "GET", "/metrics");
  CHECK(!metric(m.body, "kiln_http_requests_total{method=\"PUT\",status=\"4xx\"}").empty());
  CHECK(server.stop() == 0);
}

TEST_CASE("SIGTERM: stop accepting, finish the download in flight, exit 0", "[server]")
{
  TempDir dir;
  auto cache = dir / "cache";
  fs::create_directories(cache / "nar");
  std::string big = test::random_bytes(24 << 20, 3);
  test::write_file(cache / "nar" / "big.nar", big);
  Server server(dir.path(), {cache.string()});

  int fd = test::connect_loopback(server.port);
  REQUIRE(fd >= 0);
  REQUIRE(send_all(fd, "GET /nar/big.nar HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  char buf[4096];
  ssize_t got = ::read(fd, buf, sizeof buf);
  REQUIRE(got > 0); // the response has started
  ::kill(server.pid(), SIGTERM);
  // New connections are refused soon...
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    int other = test::connect_loopback(server.port);
    refused = other < 0;
    if (other >= 0) {
      ::close(other);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(refused);
  // ...while the download in flight completes.
  std::string rest = read_to_eof(fd);
  ::close(fd);
  auto reply = parse_reply(std::string(buf, static_cast<size_t>(got)) + rest);
  CHECK(reply.status == 200);
  CHECK(reply.body.size() == big.size());
  CHECK((reply.body == big));
  CHECK(server.stop() == 0);
}

TEST_CASE("kiln serve config errors name file:line and exit 2", "[server]")
{
  TempDir dir;
  test::write_file(dir / "bad.yaml", "caches:\n  main:\n    path: x\n    colour: blue\n");
  auto r = test::kiln({"serve", "--config", (dir / "bad.yaml").string()});
  CHECK(r.status == 2);
  CHECK_THAT(r.err, Catch::Contains("bad.yaml:4:") && Catch::Contains("colour"));
  test::write_file(dir / "bad2.yaml", "tokens:\n  - token: t\n    caches: [nope]\n    scopes: [read]\n");
  r = test::kiln({"serve", "--config", (dir / "bad2.yaml").string()});
  CHECK(r.status == 2);
  CHECK_THAT(r.err, Catch::Contains("bad2.yaml:3:") && Catch::Contains("nope"));
  test::write_file(dir / "bad3.yaml", "listen: [1, 2\n");
  r = test::kiln({"serve", "--config", (dir / "bad3.yaml").string()});
  CHECK(r.status == 2);
  CHECK_THAT(r.err, Catch::Contains("bad3.yaml:"));
  CHECK(test::kiln({"serve"}).status == 2);
  CHECK(test::kiln({"serve", (dir / "c").string(), "--listen", "nowhere"}).status == 2);
}

TEST_CASE("kiln serve speaks HTTPS with a certificate", "[server]")
{
  if (!test::have_program("openssl") || !test::have_program("curl")) {
    test::skip("openssl or curl missing: HTTPS not tested");
    return;
  }
  TempDir dir;
  auto made = test::run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                         "-subj", "/CN=127.0.0.1", "-keyout", (dir / "key.pem").string(), "-out",
                         (dir / "cert.pem").string()});
  REQUIRE(made.status == 0);
  Server server(dir.path(), {(dir / "cache").string(), "--tls-cert", (dir / "cert.pem").string(),
                             "--tls-key", (dir / "key.pem").string()});
  auto r = test::run({"curl", "-sk", "https://127.0.0.1:" + std::to_string(server.port) +
                                       "/nix-cache-info"});
  CHECK(r.status == 0);
  CHECK_THAT(r.out, Catch::Contains("StoreDir: /kiln/store"));
  CHECK(server.stop() == 0);
}

TEST_CASE("Nix substitutes from kiln serve and pushes to it (netrc auth)", "[server][nix]")
{
  if (!test::have_program("nix")) {
    test::skip("nix is not installed (./setup installs nix-bin): not tested against Nix");
    return;
  }
  TempDir dir;
  for (const char* d : {"home", "cache", "state", "log"}) {
    fs::create_directories(dir / "nix" / d);
  }
  auto nix = [&](std::vector<std::string> args) {
    if (args[0] == "nix") {
      args.insert(args.begin() + 1, {"--extra-experimental-features", "nix-command"});
    }
    test::RunOptions o;
    o.env = {{"HOME", (dir / "nix" / "home").string()},
             {"XDG_CACHE_HOME", (dir / "nix" / "cache").string()},
             {"NIX_STORE_DIR", "/kiln/store"},
             {"NIX_STATE_DIR", (dir / "nix" / "state").string()},
             {"NIX_LOG_DIR", (dir / "nix" / "log").string()}};
    o.unset_env = {"NIX_REMOTE", "NIX_PATH"};
    o.cwd = dir.path();
    return test::run(args, o);
  };
  std::string nix_store = "local?root=" + (dir / "nix" / "root").string() + "&store=/kiln/store";

  auto pub = test::output_of(
    test::kiln({"key", "generate", "kiln-1", "--secret-file", (dir / "kiln.sk").string()}), "keygen");
  REQUIRE(nix({"nix-store", "--generate-binary-cache-key", "nix-1", "nix.sk", "nix.pk"}).status == 0);
  std::string nix_pub = read_file(dir / "nix.pk");
  test::write_file(dir / "server.yaml",
                   "caches:\n"
                   "  main: {path: main, trusted-keys: [\"" + pub + "\"]}\n"
                   "  other: {path: other, trusted-keys: [\"" + nix_pub + "\"]}\n"
                   "tokens:\n"
                   "  - {token: writer, caches: [\"*\"], scopes: [write]}\n");
  test::write_file(dir / "netrc", "machine 127.0.0.1 login nix password writer\n");

  auto store_a = (dir / "a").string();
  StorePath dep("00000000000000000000000000000000-x"), top = dep;
  {
    LocalStore a({store_a});
    dep = test::add_test_object(a, "dep", test::random_bytes(100000, 5));
    top = test::add_test_object(a, "top", "top", {dep});
  }
  std::string top_path = "/kiln/store/" + top.base();
  Server server(dir.path(), {"--config", (dir / "server.yaml").string()});
  test::RunOptions with_token;
  with_token.env = {{"KILN_TOKEN", "writer"}};
  REQUIRE(test::kiln({"--store", store_a, "push", server.url + "/main", top_path,
                      "--secret-key-file", (dir / "kiln.sk").string()},
                     with_token)
            .status == 0);

  auto pulled = nix({"nix", "copy", "--from", server.url + "/main?store=/kiln/store", "--store",
                     nix_store, "--option", "trusted-public-keys", pub, top_path});
  INFO(pulled.err);
  REQUIRE(pulled.status == 0);
  CHECK(nix({"nix", "store", "verify", "--store", nix_store, "-r", top_path, "--option",
             "trusted-public-keys", pub})
          .status == 0);

  // Nix uploads (xz) with Basic auth from its netrc; without it, 401.
  std::string to = server.url + "/other?store=/kiln/store&secret-key=" + (dir / "nix.sk").string();
  auto anonymous = nix({"nix", "copy", "--store", nix_store, "--to", to, top_path});
  CHECK(anonymous.status != 0);
  auto pushed = nix({"nix", "copy", "--store", nix_store, "--to", to, "--option", "netrc-file",
                     (dir / "netrc").string(), top_path});
  INFO(pushed.err);
  REQUIRE(pushed.status == 0);

  auto store_b = (dir / "b").string();
  auto copied = test::kiln({"--store", store_b, "--trusted-public-keys", nix_pub, "copy",
                            top_path, "--from", server.url + "/other"});
  INFO(copied.err);
  CHECK(copied.status == 0);
  CHECK_THAT(copied.err, Catch::Contains("fetched 2 paths"));
  CHECK(test::kiln({"--store", store_b, "store", "verify"}).status == 0);
  CHECK(server.stop() == 0);
}

TEST_CASE("kiln serve takes many connections at once without dropping any", "[server]")
{
  // A client (kiln's own opens 16) connecting all at once must not wait for
  // the kernel's one-second SYN retry because the listen queue was full.
  TempDir dir;
  fs::create_directories(dir / "cache");
  Server server(dir.path(), {(dir / "cache").string()});
  constexpr int k_clients = 64;
  std::vector<double> seconds(k_clients, 0);
  std::vector<std::string> replies(k_clients);
  std::atomic<bool> go{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < k_clients; ++i) {
    clients.emplace_back([&, i] {
      while (!go) {
        std::this_thread::yield();
      }
      auto t0 = std::chrono::steady_clock::now();
      int fd = test::connect_loopback(server.port);
      if (fd < 0) {
        return;
      }
      send_all(fd, "GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
      replies[i] = read_to_eof(fd);
      ::close(fd);
      seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  }
  go = true;
  for (auto& c : clients) {
    c.join();
  }
  for (int i = 0; i < k_clients; ++i) {
    INFO("client " << i << " took " << seconds[i] << " s");
    CHECK(replies[i].starts_with("HTTP/1.1 200"));
    CHECK(seconds[i] < 0.9);
  }
  CHECK(server.stop() == 0);
}

TEST_CASE("a second kiln serve on a port in use refuses to start", "[server]")
{
  TempDir dir;
  Server first(dir.path(), {(dir / "cache").string()});
  test::BackgroundProcess second({test::kiln_binary(), "serve", (dir / "cache").string(),
                                  "--listen", "127.0.0.1:" + std::to_string(first.port)},
                                 dir / "second.log");
  // It either says it listens (the bug: SO_REUSEPORT shares the port) or
  // fails; within 20 s either way.
  bool said = second.wait_for_stderr("kiln", 20);
  std::string err = second.stderr_text();
  INFO(err);
  REQUIRE(said);
  CHECK_THAT(err, !Catch::Contains("listening on"));
  CHECK_THAT(err, Catch::Contains("cannot listen on 127.0.0.1:" + std::to_string(first.port)) &&
                    Catch::Contains("in use"));
  CHECK(second.stop() != 0);
  // The first one still answers, and said that without tokens it is read-only.
  CHECK(request(first.port, "GET", "/nix-cache-info").status == 200);
  CHECK_THAT(first.log(), Catch::Contains("read-only: no token has the write scope"));
}
