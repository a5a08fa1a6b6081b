// Out of file descriptors (docs/reliability.md, "File descriptors"): with a
// hard limit of 256, 400 silent TCP connections exhaust sigmad's descriptors.
// gRPC's listener then stops for good (grpc/grpc#16058); sigmad must notice,
// and accept gRPC and metrics connections again once the connections close.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <iterator>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server_test_util.h"

namespace sigma::server::testing {
namespace {

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// sigmad with RLIMIT_NOFILE soft = hard = `limit` (as `prlimit --nofile`).
pid_t SpawnLimitedSigmad(rlim_t limit, const std::vector<std::string>& args, const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    rlimit lim{limit, limit};
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) _exit(125);
    if (!std::freopen(log.c_str(), "a", stdout) || !std::freopen(log.c_str(), "a", stderr)) _exit(126);
    std::vector<std::string> copy = args;
    std::string bin = SIGMAD_PATH;
    std::vector<char*> argv{bin.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// A fresh channel with its own subchannel pool, so that the reconnect backoff
// of earlier failed attempts does not delay this one.
bool ListJobsOk(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = v1::SigmaMonitor::NewStub(
      grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
  v1::ListJobsResponse resp;
  return stub->ListJobs(&ctx, v1::ListJobsRequest(), &resp).ok();
}

TEST(FdLimitTest, SigmadRecoversAfterRunningOutOfDescriptors) {
  rlimit own{};
  getrlimit(RLIMIT_NOFILE, &own);
  if (own.rlim_max < 2048) GTEST_SKIP() << "the test needs 2048 descriptors of its own (hard limit " << own.rlim_max << ")";
  own.rlim_cur = own.rlim_max;
  setrlimit(RLIMIT_NOFILE, &own);

  TempDir dir;
  const std::string log = dir.path() + "/log";
  const std::string port_file = dir.path() + "/ports.json";
  const pid_t pid = SpawnLimitedSigmad(256,
                                       {"--backend", "cpu", "--listen", "127.0.0.1:0", "--metrics-listen",
                                        "127.0.0.1:0", "--db", dir.path() + "/s.db", "--port-file", port_file},
                                       log);
  ASSERT_GT(pid, 0);
  int grpc_port = 0, metrics_port = 0;
  for (int i = 0; i < 500 && grpc_port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::ifstream in(port_file);
    if (!in) continue;
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded()) continue;
    grpc_port = j.value("grpc_port", 0);
    metrics_port = j.value("metrics_port", 0);
  }
  ASSERT_GT(grpc_port, 0) << ReadText(log);
  ASSERT_TRUE(ListJobsOk(grpc_port));

  // 400 silent connections to each port: more than sigmad may hold.
  std::vector<int> held;
  for (int i = 0; i < 400; ++i) {
    for (int port : {grpc_port, metrics_port}) {
      const int fd = ConnectLoopback(port, /*nonblocking=*/true);  // a full backlog must not stall the test
      if (fd >= 0) held.push_back(fd);
    }
  }
  bool exhausted = false;
  for (int i = 0; i < 500 && !exhausted; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    exhausted = ReadText(log).find("Too many open files") != std::string::npos;
  }
  EXPECT_TRUE(exhausted) << "sigmad never ran out of descriptors: " << ReadText(log);
  for (int fd : held) close(fd);

  // Both ports serve again once the descriptors are free.
  bool grpc_back = false;
  for (int i = 0; i < 30 && !grpc_back; ++i) {
    grpc_back = ListJobsOk(grpc_port);
    if (!grpc_back) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_TRUE(grpc_back) << "gRPC never accepted again: " << ReadText(log);
  EXPECT_NE(ReadText(log).find("gRPC accepts connections again"), std::string::npos) << ReadText(log);
  std::string scrape;
  for (int i = 0; i < 50 && scrape.empty(); ++i) {
    scrape = Scrape(metrics_port);
    if (scrape.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(scrape.find("sigma_open_snapshots"), std::string::npos);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, WNOHANG), 0) << "sigmad died: " << ReadText(log);
  kill(pid, SIGTERM);
  EXPECT_EQ(WaitExit(pid, 30), 0) << ReadText(log);
}

}  // namespace
}  // namespace sigma::server::testing
