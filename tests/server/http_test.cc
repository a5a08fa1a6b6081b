// The metrics port (docs/server.md, "The metrics port"): every method, path and
// malformed request gets a proper status, never a crash (the civetweb exposer
// died with SIGSEGV on any 404), basic auth covers every path, slow and huge
// requests are bounded. Real HTTP over loopback, against the in-process daemon
// and the real sigmad binary.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sigma/server/auth.h"
#include "sigma/server/http_server.h"
#include "sigma/server/metrics_endpoint.h"
#include "sigma/version.h"
#include "server_test_util.h"

namespace sigma::server::testing {
namespace {

int Connect(int port) {
  const int fd = ConnectLoopback(port);
  timeval tv{5, 0};
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

std::string ReadAllFrom(int fd) {
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<size_t>(n));
  return resp;
}

// Sends `raw` as is and returns the whole response ("" when none came).
std::string RawHttp(int port, const std::string& raw) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  (void)!send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);  // the request is complete, or never will be
  std::string resp = ReadAllFrom(fd);
  close(fd);
  return resp;
}

std::string WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int StatusOf(const std::string& resp) {
  if (resp.rfind("HTTP/1.1 ", 0) != 0 || resp.size() < 12) return -1;
  return std::stoi(resp.substr(9, 3));
}

std::string BodyOf(const std::string& resp) {
  const size_t at = resp.find("\r\n\r\n");
  return at == std::string::npos ? "" : resp.substr(at + 4);
}

std::string Request(const std::string& method, const std::string& path, const std::string& headers = "") {
  return absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n", headers, "\r\n");
}

TEST(HttpParseTest, RequestLinesAndHeaders) {
  int status = 0;
  auto ok = ParseHttpRequest("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nX-Y:  z ", &status);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->method, "GET");
  EXPECT_EQ(ok->path, "/metrics");
  EXPECT_EQ(ok->headers.at("x-y"), "z");
  for (const char* bad : {"", "GET", "GET /", "GET / HTTP/1.1 extra", "G\x01T / HTTP/1.0", "GET nopath HTTP/1.0",
                          "GET / HTTP/1.0\r\nno colon", "GET / HTTP/1.0\r\n: empty name", "GET / FTP/1.0",
                          "GET / HTTP/1.1", "GET /\x7f HTTP/1.0", "GET / HTTP/1.0\r\nA: b\x01"}) {
    status = 0;
    EXPECT_FALSE(ParseHttpRequest(bad, &status).ok()) << bad;
    EXPECT_EQ(status, 400) << bad;
  }
  EXPECT_FALSE(ParseHttpRequest("GET / HTTP/2.0", &status).ok());
  EXPECT_EQ(status, 505);
}

class MetricsPortTest : public ::testing::Test {
 protected:
  void SetUp() override {
    d_ = StartDaemon(TestOptions(dir_.path()));
    ASSERT_NE(d_, nullptr);
    port_ = d_->ports.metrics_port;
  }
  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
  int port_ = 0;
};

TEST_F(MetricsPortTest, EveryMethodAndPathGetsAProperStatus) {
  const std::vector<std::string> known = {"/", "/metrics", "/healthz", "/readyz"};
  const std::vector<std::string> unknown = {"/favicon.ico", "/metrics/", "/../etc/passwd", "/%00", "*", "/robots.txt"};
  for (const std::string method : {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"}) {
    const bool readable = method == "GET" || method == "HEAD";
    for (const auto& path : known) {
      const std::string resp = RawHttp(port_, Request(method, path, "Content-Length: 3\r\n") + "abc");
      EXPECT_EQ(StatusOf(resp), readable ? 200 : 405) << method << " " << path << ": " << resp;
      if (!readable) EXPECT_NE(resp.find("Allow: GET, HEAD"), std::string::npos) << resp;
      if (method == "HEAD") EXPECT_EQ(BodyOf(resp), "") << path;
    }
    for (const auto& path : unknown) EXPECT_EQ(StatusOf(RawHttp(port_, Request(method, path))), 404) << method << path;
  }
  const std::string index = RawHttp(port_, Request("GET", "/"));
  EXPECT_NE(index.find("Content-Type: text/html"), std::string::npos);
  EXPECT_NE(index.find(absl::StrCat("sigmad ", sigma::kSigmaVersion)), std::string::npos) << index;
  EXPECT_NE(index.find("href=\"/metrics\""), std::string::npos);
  const std::string metrics = RawHttp(port_, Request("GET", "/metrics"));
  EXPECT_NE(metrics.find("text/plain; version=0.0.4"), std::string::npos);
  EXPECT_EQ(MetricValue(BodyOf(metrics), "sigma_build_info",
                        {{"version", sigma::kSigmaVersion}, {"revision", sigma::kSigmaRevision}}),
            1.0);
  EXPECT_EQ(BodyOf(RawHttp(port_, Request("GET", "/healthz"))), "ok\n");
  EXPECT_EQ(BodyOf(RawHttp(port_, Request("GET", "/readyz"))), "ready\n");
  // Still serving gRPC and metrics afterwards.
  grpc::ClientContext ctx;
  v1::ListJobsResponse jobs;
  EXPECT_TRUE(MakeStub(d_->ports.grpc_port)->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  EXPECT_NE(Scrape(port_).find("sigma_open_snapshots"), std::string::npos);
}

TEST_F(MetricsPortTest, MalformedHugeAndSlowRequestsAreBounded) {
  EXPECT_EQ(StatusOf(RawHttp(port_, "GARBAGE\r\n\r\n")), 400);
  EXPECT_EQ(StatusOf(RawHttp(port_, "GET / HTTP/9.9\r\n\r\n")), 505);
  EXPECT_EQ(StatusOf(RawHttp(port_, Request("GET", "/metrics", "X: " + std::string(1 << 20, 'a') + "\r\n"))), 431);
  // 100 slow clients (one byte of a request line each) do not block a scrape.
  std::vector<int> slow;
  for (int i = 0; i < 100; ++i) {
    const int fd = Connect(port_);
    ASSERT_GE(fd, 0);
    (void)!send(fd, "G", 1, MSG_NOSIGNAL);
    slow.push_back(fd);
  }
  EXPECT_EQ(StatusOf(RawHttp(port_, Request("GET", "/metrics"))), 200);
  for (int fd : slow) close(fd);
  // A client that closes before finishing, or sends nothing, changes nothing.
  for (int i = 0; i < 20; ++i) close(Connect(port_));
  EXPECT_EQ(StatusOf(RawHttp(port_, Request("GET", "/healthz"))), 200);
}

TEST(MetricsBasicAuthEverywhereTest, EveryPathNeedsThePassword) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.metrics_basic_auth_file = WriteText(
      dir.path() + "/htpasswd", "scraper:926d3a2dd68393416b7a8348aaadfe4e0c56de6259e17078a0fa1f4dd6e519ae\n");
  auto d = StartDaemon(o);
  ASSERT_NE(d, nullptr);
  const std::string good = "Authorization: Basic c2NyYXBlcjpzM2NyZXQtcGFzcw==\r\n";  // scraper:s3cret-pass
  for (const std::string path : {"/", "/metrics", "/healthz", "/readyz", "/favicon.ico"}) {
    for (const std::string method : {"GET", "HEAD", "POST", "DELETE"}) {
      const std::string resp = RawHttp(d->ports.metrics_port, Request(method, path));
      EXPECT_EQ(StatusOf(resp), 401) << method << " " << path;
      EXPECT_NE(resp.find("WWW-Authenticate: Basic realm=\"sigmad\""), std::string::npos);
      EXPECT_EQ(StatusOf(RawHttp(d->ports.metrics_port, Request(method, path, "Authorization: Basic !!!\r\n"))), 401);
    }
    const int want = path == "/favicon.ico" ? 404 : 200;
    EXPECT_EQ(StatusOf(RawHttp(d->ports.metrics_port, Request("GET", path, good))), want) << path;
  }
}

// The server itself: the request timeout (408), the connection cap (503), an
// unhealthy readiness (503 naming the reason).
TEST(HttpServerTest, TimeoutConnectionCapAndReadiness) {
  HttpServerOptions opts;
  opts.request_timeout = std::chrono::milliseconds(300);
  opts.max_connections = 4;
  absl::Status ready = absl::UnavailableError("store ./x.db is not writable");
  auto registry = std::make_shared<prometheus::Registry>();
  HttpServer server(opts, MakeMetricsHandler(registry, nullptr, [&ready] { return ready; }));
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());
  const std::string not_ready = RawHttp(server.port(), Request("GET", "/readyz"));
  EXPECT_EQ(StatusOf(not_ready), 503);
  EXPECT_NE(BodyOf(not_ready).find("store ./x.db is not writable"), std::string::npos);

  const int slow = Connect(server.port());
  (void)!send(slow, "GET /met", 8, MSG_NOSIGNAL);
  EXPECT_EQ(StatusOf(ReadAllFrom(slow)), 408);  // closed by the server after the timeout
  close(slow);

  std::vector<int> held;
  for (int i = 0; i < 4; ++i) held.push_back(Connect(server.port()));
  // The cap is counted on the loop thread: wait until it has taken all four.
  std::string over;
  for (int tries = 0; tries < 50 && StatusOf(over) != 503; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    over = RawHttp(server.port(), Request("GET", "/healthz"));
  }
  EXPECT_EQ(StatusOf(over), 503);
  EXPECT_GE(server.refused_connections(), 1);
  for (int fd : held) close(fd);
  // The slots come back when the held connections end (408 after 300 ms at most).
  std::string after;
  for (int tries = 0; tries < 100 && StatusOf(after) != 200; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    after = RawHttp(server.port(), Request("GET", "/healthz"));
  }
  EXPECT_EQ(StatusOf(after), 200);
  server.Stop();
}

// A bounded raw-HTTP fuzz against the real sigmad binary (fixed seed): random
// bytes, mutated request lines, header floods. sigmad must answer or close
// every connection and still be alive and serving afterwards.
TEST(SigmadHttpFuzzTest, RandomRequestsNeverKillTheDaemon) {
  TempDir dir;
  const std::string port_file = dir.path() + "/ports.json";
  pid_t pid = SpawnSigmad({"--backend", "cpu", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db",
                           dir.path() + "/s.db", "--port-file", port_file},
                          dir.path() + "/log", true);
  ASSERT_GT(pid, 0);
  int metrics_port = 0;
  for (int i = 0; i < 300 && metrics_port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::ifstream in(port_file);
    if (in) metrics_port = nlohmann::json::parse(in, nullptr, false).value("metrics_port", 0);
  }
  ASSERT_GT(metrics_port, 0);
  std::mt19937_64 rng(20261202);
  const std::vector<std::string> seeds = {Request("GET", "/"), Request("POST", "/metrics"), Request("HEAD", "/x"),
                                          "GET / HTTP/1.0\r\n\r\n"};
  int answered = 0;
  for (int i = 0; i < 300; ++i) {
    std::string req = seeds[i % seeds.size()];
    if (i % 3 == 0) {  // random bytes
      req.resize(1 + rng() % 600);
      for (char& c : req) c = static_cast<char>(rng());
      req += "\r\n\r\n";
    } else {  // a few byte flips in a valid request
      for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) req[rng() % req.size()] = static_cast<char>(rng());
    }
    const int status = StatusOf(RawHttp(metrics_port, req));
    if (status > 0) ++answered;
  }
  EXPECT_EQ(answered, 300);  // complete or not, every request gets a status
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, WNOHANG), 0) << "sigmad died: " << ReadText(dir.path() + "/log");
  EXPECT_EQ(StatusOf(RawHttp(metrics_port, Request("GET", "/metrics"))), 200);
  kill(pid, SIGTERM);
  EXPECT_EQ(WaitExit(pid, 30), 0);
}

}  // namespace
}  // namespace sigma::server::testing
