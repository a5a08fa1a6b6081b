// The real sigmad binary: --port-file, the banner, health and reflection
// services, ingest, metrics, SIGTERM -> exit 0, restart on the same --db.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server_test_util.h"
#include "sigma/version.h"

namespace sigma::server::testing {
namespace {

struct Child {
  pid_t pid = -1;
  std::string stdout_path;
};

Child Spawn(const std::vector<std::string>& args, const std::string& stdout_path) {
  return Child{SpawnSigmad(args, stdout_path, /*with_stderr=*/false), stdout_path};
}

std::optional<nlohmann::json> WaitPortFile(const std::string& path, pid_t pid) {
  for (int i = 0; i < 400; ++i) {
    std::ifstream f(path);
    if (f.good()) return nlohmann::json::parse(f);
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return std::nullopt;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

grpc::Status HealthCheck(int port, std::string* response_bytes) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::ByteBuffer request, response;  // HealthCheckRequest{service: ""} is empty
  grpc::Slice empty("");
  request = grpc::ByteBuffer(&empty, 1);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  grpc::Status s = done.get_future().get();
  std::vector<grpc::Slice> slices;
  if (s.ok() && response.Dump(&slices).ok()) {
    for (auto& sl : slices) response_bytes->append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  }
  return s;
}

TEST(SigmadBinaryTest, PortFileBannerHealthIngestSigtermRestart) {
  TempDir dir;
  const std::string port_file = dir.path() + "/run/ports.json";
  std::filesystem::create_directories(dir.path() + "/run");
  const std::string db = dir.path() + "/nested/dir/sigma.db";  // parent created by sigmad
  const std::vector<std::string> args{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db", db,
                                      "--backend", "cpu", "--port-file", port_file, "--seal-batch-window-ms", "1"};
  v1::GenerationReport first_report;
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE(run);
    std::filesystem::remove(port_file);
    Child c = Spawn(args, dir.path() + "/stdout" + std::to_string(run));
    auto ports = WaitPortFile(port_file, c.pid);
    ASSERT_TRUE(ports.has_value()) << "no port file; stdout: " << ReadFile(c.stdout_path);
    const int grpc_port = (*ports)["grpc_port"].get<int>();
    const int metrics_port = (*ports)["metrics_port"].get<int>();
    EXPECT_EQ((*ports)["pid"].get<int>(), c.pid);
    EXPECT_GT(grpc_port, 0);
    EXPECT_GT(metrics_port, 0);
    const std::string banner = ReadFile(c.stdout_path);
    EXPECT_NE(banner.find("sigmad: gRPC on 127.0.0.1:" + std::to_string(grpc_port) +
                          ", metrics on http://127.0.0.1:" + std::to_string(metrics_port) +
                          "/metrics, backend cpu"),
              std::string::npos)
        << banner;
    std::string health;
    grpc::Status hs = HealthCheck(grpc_port, &health);
    ASSERT_TRUE(hs.ok()) << hs.error_message();
    EXPECT_EQ(health, std::string("\x08\x01", 2));  // status: SERVING

    auto stub = MakeStub(grpc_port);
    if (run == 0) {
      v1::IngestResponse resp;
      ASSERT_TRUE(SendShare(stub.get(), MakeOpen("bin", 0, 0, 1, 8, v1::DTYPE_FP32), GaussianRows(500, 8, 3), 0, 500,
                            100, v1::DTYPE_FP32, &resp)
                      .ok());
      ASSERT_TRUE(resp.sealed());
      first_report = resp.report();
    } else {
      v1::GetHistoryRequest h;
      h.set_job("bin");
      v1::GetHistoryResponse hist;
      grpc::ClientContext ctx;
      ASSERT_TRUE(stub->GetHistory(&ctx, h, &hist).ok());
      ASSERT_EQ(hist.reports_size(), 1);
      EXPECT_EQ(hist.reports(0).SerializeAsString(), first_report.SerializeAsString());
    }
    const std::string scrape = Scrape(metrics_port);
    ExpectMetricNear(MetricValue(scrape, "sigma_track2", {{"job_name", "bin"}, {"tap", "default"}}), first_report.track2());
    if (HavePromtool()) {
      int rc = -1;
      EXPECT_EQ(PromtoolCheck(scrape, &rc), "");
      EXPECT_EQ(rc, 0);
    }

    ASSERT_EQ(kill(c.pid, SIGTERM), 0);
    EXPECT_EQ(WaitExit(c.pid, 30), 0);
  }
  EXPECT_TRUE(std::filesystem::exists(db));
}

// Server reflection lists the SigmaMonitor service (grpc.reflection.v1alpha).
TEST(SigmadBinaryTest, ReflectionListsTheService) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  grpc::GenericStub stub(d->channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto wait = [&cq](intptr_t want) {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(wait(1));
  // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
  grpc::Slice req_slice(std::string("\x3a\x00", 2));
  grpc::ByteBuffer request(&req_slice, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(wait(2));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(wait(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  wait(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  wait(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("sigma.v1.SigmaMonitor"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
}

// --tls-cert/--tls-key: gRPC over TLS; plaintext clients are refused.
TEST(SigmadBinaryTest, TlsServing) {
  TempDir dir;
  const std::string key = dir.path() + "/key.pem", cert = dir.path() + "/cert.pem";
  const std::string cmd = "/usr/bin/openssl req -x509 -newkey rsa:2048 -nodes -keyout " + key + " -out " + cert +
                          " -days 1 -subj /CN=sigmad.test -addext subjectAltName=DNS:sigmad.test >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "no usable openssl";
  DaemonOptions o = TestOptions(dir.path());
  o.tls_cert = cert;
  o.tls_key = key;
  Daemon daemon;
  auto ports = daemon.Start(o);
  ASSERT_TRUE(ports.ok()) << ports.status();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(cert);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("sigmad.test");
  auto stub = v1::SigmaMonitor::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(ports->grpc_port), grpc::SslCredentials(ssl), args));
  v1::IngestResponse resp;
  ASSERT_TRUE(SendShare(stub.get(), MakeOpen("tls", 0, 0, 1, 4, v1::DTYPE_FP32), GaussianRows(50, 4, 1), 0, 50, 25,
                        v1::DTYPE_FP32, &resp)
                  .ok());
  EXPECT_TRUE(resp.sealed());
  auto plain = MakeStub(ports->grpc_port);
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(plain->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).error_code(), grpc::StatusCode::UNAVAILABLE);
  // A key without its certificate, and unreadable files, refuse to start.
  DaemonOptions bad = TestOptions(dir.path() + "/b");
  bad.tls_key = key;
  Daemon d2;
  EXPECT_FALSE(d2.Start(bad).ok());
  bad.tls_cert = dir.path() + "/missing.pem";
  Daemon d3;
  auto st = d3.Start(bad);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.status().message()).find("--tls-cert"), std::string::npos) << st.status();
}

TEST(SigmadBinaryTest, HelpAndBadFlags) {
  TempDir dir;
  Child help = Spawn({"--help"}, dir.path() + "/help");
  EXPECT_EQ(WaitExit(help.pid, 10), 0);
  EXPECT_NE(ReadFile(help.stdout_path).find("--metrics-listen"), std::string::npos);
  Child bad = Spawn({"--backend", "tpu"}, dir.path() + "/bad");
  EXPECT_EQ(WaitExit(bad.pid, 10), 2);
}

// sigmad --version and sigmactl --version print the version and revision that
// sigma_build_info exports, and exit 0.
TEST(SigmadBinaryTest, VersionOfBothBinaries) {
  TempDir dir;
  Child v = Spawn({"--version"}, dir.path() + "/version");
  EXPECT_EQ(WaitExit(v.pid, 10), 0);
  EXPECT_EQ(ReadFile(v.stdout_path),
            std::string("sigmad ") + sigma::kSigmaVersion + " (revision " + sigma::kSigmaRevision + ")\n");
  FILE* p = popen(SIGMACTL_PATH " --version", "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {};
  const size_t n = fread(buf, 1, sizeof buf - 1, p);
  EXPECT_EQ(pclose(p), 0);
  EXPECT_EQ(std::string(buf, n),
            std::string("sigmactl ") + sigma::kSigmaVersion + " (revision " + sigma::kSigmaRevision + ")\n");
  EXPECT_STRNE(sigma::kSigmaRevision, "");
}

TEST(SigmadBinaryTest, SigintAlsoStopsCleanly) {
  TempDir dir;
  const std::string port_file = dir.path() + "/p.json";
  Child c = Spawn({"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db", dir.path() + "/s.db",
                   "--backend", "cpu", "--port-file", port_file},
                  dir.path() + "/out");
  ASSERT_TRUE(WaitPortFile(port_file, c.pid).has_value());
  ASSERT_EQ(kill(c.pid, SIGINT), 0);
  EXPECT_EQ(WaitExit(c.pid, 30), 0);
}

}  // namespace
}  // namespace sigma::server::testing
