// Crash safety of the real sigmad binary (labels server, slow).
//
// KillNineLosesNoSealedReport: 4 client threads stream and seal small
// generations through raw stubs, retrying every failed attempt on the daemon's
// current port, while a killer thread SIGKILLs sigmad at seeded random moments
// (at least 20 times) and restarts it on the same --db (a new port each time,
// read from --port-file). Afterwards every report a client saw as sealed is in
// the history byte for byte, every generation a client started completed, and
// `PRAGMA integrity_check` says ok.
//
// ReplicaKillOnSharedStoreLosesNoSealedReport: two sigmad replicas on one
// PostgreSQL database; clients alternate generations between them and fail
// over to the survivor while replica A is SIGKILLed and restarted. Every
// report a client saw as sealed is stored byte for byte, once.
//
// SigtermDrainsInFlightSeals: SIGTERM while a seal waits in the compute queue:
// the waiting client still gets its sealed report, new connections are
// refused, and sigmad exits 0 within a bound; the report is durable.
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "pg_test_util.h"
#include "server_test_util.h"

namespace sigma::server::testing {
namespace {

using Clock = std::chrono::steady_clock;

pid_t Spawn(const std::vector<std::string>& args, const std::string& log_path) {
  return SpawnSigmad(args, log_path, /*with_stderr=*/true);
}

// A port from the port file ("grpc_port" or "metrics_port"), or 0 when
// sigmad exited or timed out.
int WaitPort(const std::string& path, pid_t pid, double timeout_s = 20, const char* key = "grpc_port") {
  const auto end = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (Clock::now() < end) {
    std::ifstream f(path);
    if (f.good()) {
      try {
        return nlohmann::json::parse(f)[key].get<int>();
      } catch (const std::exception&) {
      }
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return 0;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string IntegrityCheck(const std::string& db_path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return "cannot open";
  }
  std::string result;
  sqlite3_exec(
      db, "PRAGMA integrity_check",
      [](void* out, int n, char** values, char**) {
        for (int i = 0; i < n; ++i) *static_cast<std::string*>(out) += values[i] ? values[i] : "NULL";
        return 0;
      },
      &result, nullptr);
  sqlite3_close(db);
  return result;
}

std::vector<std::string> SigmadArgs(const std::string& dir, int64_t window_ms) {
  return {"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db", dir + "/sigma.db", "--backend",
          "cpu", "--port-file", dir + "/ports.json", "--seal-batch-window-ms", std::to_string(window_ms)};
}

// The messages of client `c`'s generation `g`: m = 8, n_a = 64, 160 rows in 4 batches.
std::vector<v1::IngestRequest> Share(int c, int64_t g) {
  v1::JobConfig config;
  config.set_n_a(64);
  std::vector<v1::IngestRequest> msgs{
      MakeOpen("crash.c" + std::to_string(c), g, 0, 1, 8, v1::DTYPE_FP32, std::nullopt, &config)};
  const Rows rows = GaussianRows(160, 8, static_cast<uint64_t>(1000 * c + g));
  for (int b = 0; b < 4; ++b) msgs.push_back(MakeBatch(rows, 40 * b, 40 * (b + 1), b, v1::DTYPE_FP32));
  msgs.push_back(MakeEnd());
  return msgs;
}

TEST(CrashTest, KillNineLosesNoSealedReport) {
  constexpr int kClients = 4;
  constexpr int kKills = 20;
  TempDir dir;
  const std::string port_file = dir.path() + "/ports.json";
  const std::string log = dir.path() + "/sigmad.log";
  const auto started = Clock::now();

  std::atomic<int> port{0};         // the live daemon's port, 0 while down
  std::atomic<bool> killing{true};  // the killer still kills
  std::atomic<bool> clients_done{false};
  std::atomic<int> kills{0};
  std::atomic<bool> broken{false};  // sigmad did not come back
  pid_t pid = -1;

  std::thread killer([&] {
    std::mt19937_64 rng(20261129);
    std::uniform_int_distribution<int> uptime_ms(30, 350);
    for (;;) {
      std::filesystem::remove(port_file);
      pid = Spawn(SigmadArgs(dir.path(), 1), log);
      const int p = WaitPort(port_file, pid);
      if (p == 0) {
        broken = true;
        port = 0;
        return;
      }
      port = p;
      if (kills.load() >= kKills) {  // leave it running for the clients to finish
        killing = false;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(uptime_ms(rng)));
      port = 0;
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      ++kills;
    }
  });

  // Per client: the serialized report of every generation seen sealed.
  std::vector<std::map<int64_t, std::string>> seen(kClients);
  std::vector<int64_t> generations(kClients, 0);
  std::vector<int64_t> attempts(kClients, 0), failed_attempts(kClients, 0);
  std::vector<std::string> errors(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      int channel_port = 0;
      std::unique_ptr<v1::SigmaMonitor::Stub> stub;
      for (int64_t g = 0;; ++g) {
        // Keep streaming while the killer kills, then finish.
        if (!killing.load() || broken.load()) {
          generations[c] = g;
          return;
        }
        const std::vector<v1::IngestRequest> msgs = Share(c, g);
        for (;;) {  // retry the whole share until it is sealed
          if (broken.load() || Clock::now() - started > std::chrono::seconds(75)) {
            errors[c] = "gave up on generation " + std::to_string(g);
            generations[c] = g + 1;
            return;
          }
          const int p = port.load();
          if (p == 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            continue;
          }
          if (p != channel_port) {
            stub = MakeStub(p);
            channel_port = p;
          }
          ++attempts[c];
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
          v1::IngestResponse resp;
          auto w = stub->Ingest(&ctx, &resp);
          for (const auto& m : msgs) {
            if (!w->Write(m)) break;
          }
          w->WritesDone();
          const grpc::Status s = w->Finish();
          if (s.ok() && resp.sealed()) {
            const std::string bytes = resp.report().SerializeAsString();
            if (auto [it, fresh] = seen[c].emplace(g, bytes); !fresh && it->second != bytes)
              errors[c] = "generation " + std::to_string(g) + " answered two different reports";
            break;
          }
          ++failed_attempts[c];
          const auto code = s.error_code();
          if (s.ok() || !(code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                          code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::UNKNOWN ||
                          code == grpc::StatusCode::INTERNAL)) {
            errors[c] = "generation " + std::to_string(g) + ": unexpected " + std::to_string(code) + " " +
                        s.error_message() + (s.ok() ? " (ok but not sealed)" : "");
            generations[c] = g + 1;
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  clients_done = true;
  killer.join();
  ASSERT_FALSE(broken.load()) << "sigmad did not restart; log:\n" << ReadFile(log).substr(0, 4000);
  EXPECT_GE(kills.load(), kKills);

  // Every generation completed and every report seen is stored, byte for byte.
  auto stub = MakeStub(port.load());
  int64_t total = 0, total_attempts = 0, total_failed = 0;
  for (int c = 0; c < kClients; ++c) {
    SCOPED_TRACE("client " + std::to_string(c));
    EXPECT_EQ(errors[c], "");
    total += generations[c];
    total_attempts += attempts[c];
    total_failed += failed_attempts[c];
    EXPECT_EQ(static_cast<int64_t>(seen[c].size()), generations[c]);
    grpc::ClientContext ctx;
    v1::GetHistoryRequest req;
    req.set_job("crash.c" + std::to_string(c));
    v1::GetHistoryResponse hist;
    grpc::Status s = stub->GetHistory(&ctx, req, &hist);
    if (generations[c] == 0) continue;
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(hist.reports_size(), generations[c]);
    for (const auto& r : hist.reports()) {
      auto it = seen[c].find(r.generation());
      ASSERT_NE(it, seen[c].end()) << "generation " << r.generation() << " stored but never seen";
      EXPECT_EQ(r.SerializeAsString(), it->second) << "generation " << r.generation();
    }
  }
  EXPECT_GT(total, 4 * kClients);
  EXPECT_GT(total_failed, 0) << "no attempt was interrupted: the kills missed the clients";
  std::cerr << "crash test: " << kills.load() << " kills, " << total << " generations sealed, " << total_attempts
            << " attempts (" << total_failed << " interrupted), "
            << std::chrono::duration<double>(Clock::now() - started).count() << " s\n";
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  EXPECT_EQ(WaitExit(pid, 20), 0);
  EXPECT_EQ(IntegrityCheck(dir.path() + "/sigma.db"), "ok");
  EXPECT_LT(Clock::now() - started, std::chrono::seconds(90));
}

// Replica A is killed at seeded random moments and restarted; replica B stays.
// Even generations go to A (to B while A is down: a membership change), odd
// ones to B; a retry of a generation A committed before dying gets the stored
// report from B.
TEST(CrashTest, ReplicaKillOnSharedStoreLosesNoSealedReport) {
  SIGMA_PG_OR_SKIP(pg);
  constexpr int kClients = 2;
  constexpr int kKills = 8;
  TempDir dir_a, dir_b;
  const std::string db = pg->NewDatabase();
  auto args = [&](const std::string& dir) {
    return std::vector<std::string>{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db", db,
                                    "--backend", "cpu", "--port-file", dir + "/ports.json",
                                    "--seal-batch-window-ms", "1"};
  };
  const pid_t pid_b = Spawn(args(dir_b.path()), dir_b.path() + "/sigmad.log");
  const int port_b = WaitPort(dir_b.path() + "/ports.json", pid_b);
  ASSERT_NE(port_b, 0) << ReadFile(dir_b.path() + "/sigmad.log");
  std::atomic<int> port_a{0};
  std::atomic<bool> killing{true};
  std::atomic<int> kills{0};
  pid_t pid_a = -1;
  std::thread killer([&] {
    std::mt19937_64 rng(20261202);
    std::uniform_int_distribution<int> uptime_ms(50, 400);
    for (;;) {
      std::filesystem::remove(dir_a.path() + "/ports.json");
      pid_a = Spawn(args(dir_a.path()), dir_a.path() + "/sigmad.log");
      port_a = WaitPort(dir_a.path() + "/ports.json", pid_a);
      if (port_a.load() == 0 || kills.load() >= kKills) {
        killing = false;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(uptime_ms(rng)));
      port_a = 0;
      kill(pid_a, SIGKILL);
      waitpid(pid_a, nullptr, 0);
      ++kills;
    }
  });
  std::vector<std::map<int64_t, std::string>> seen(kClients);
  std::vector<int64_t> generations(kClients, 0), failovers(kClients, 0);
  std::vector<std::string> errors(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      std::map<int, std::unique_ptr<v1::SigmaMonitor::Stub>> stubs;
      for (int64_t g = 0; killing.load(); ++g) {
        generations[c] = g + 1;
        for (int attempt = 0;; ++attempt) {
          if (attempt > 2000) {
            errors[c] = "gave up on generation " + std::to_string(g);
            return;
          }
          const int pa = port_a.load();
          const int p = g % 2 == 0 && pa != 0 ? pa : port_b;
          if (g % 2 == 0 && p == port_b) ++failovers[c];
          auto& stub = stubs[p];
          if (!stub) stub = MakeStub(p);
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
          v1::IngestResponse resp;
          auto w = stub->Ingest(&ctx, &resp);
          for (const auto& m : Share(c, g)) {
            if (!w->Write(m)) break;
          }
          w->WritesDone();
          const grpc::Status s = w->Finish();
          if (s.ok() && resp.sealed()) {
            seen[c][g] = resp.report().SerializeAsString();
            break;
          }
          if (s.error_code() == grpc::StatusCode::ALREADY_EXISTS || s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
            errors[c] = "generation " + std::to_string(g) + ": " + s.error_message();
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  killer.join();
  ASSERT_NE(port_a.load(), 0) << "replica A did not restart:\n" << ReadFile(dir_a.path() + "/sigmad.log").substr(0, 4000);
  EXPECT_GE(kills.load(), kKills);
  int64_t lost = 0, total = 0, failed_over = 0;
  for (int port : {port_a.load(), port_b}) {
    auto stub = MakeStub(port);
    for (int c = 0; c < kClients; ++c) {
      SCOPED_TRACE("client " + std::to_string(c) + " on port " + std::to_string(port));
      EXPECT_EQ(errors[c], "");
      grpc::ClientContext ctx;
      v1::GetHistoryRequest req;
      req.set_job("crash.c" + std::to_string(c));
      v1::GetHistoryResponse hist;
      ASSERT_TRUE(stub->GetHistory(&ctx, req, &hist).ok());
      EXPECT_EQ(hist.reports_size(), static_cast<int>(seen[c].size()));  // each generation once
      std::map<int64_t, std::string> stored;
      for (const auto& r : hist.reports()) stored[r.generation()] = r.SerializeAsString();
      for (const auto& [g, bytes] : seen[c]) {
        if (stored[g] != bytes) ++lost;
      }
      if (port == port_b) total += static_cast<int64_t>(seen[c].size()), failed_over += failovers[c];
    }
  }
  EXPECT_EQ(lost, 0);
  std::cerr << "replica kill test: " << kills.load() << " kills of replica A, " << total
            << " generations sealed, " << failed_over << " attempts failed over to B, " << lost << " reports lost\n";
  kill(pid_a, SIGTERM);
  kill(pid_b, SIGTERM);
  EXPECT_EQ(WaitExit(pid_a, 20), 0);
  EXPECT_EQ(WaitExit(pid_b, 20), 0);
}

TEST(CrashTest, SigtermDrainsInFlightSeals) {
  TempDir dir;
  const std::string port_file = dir.path() + "/ports.json";
  const std::string log = dir.path() + "/sigmad.log";
  // A 1.5 s batching window: the seals wait in the compute queue when SIGTERM comes.
  const pid_t pid = Spawn(SigmadArgs(dir.path(), 1500), log);
  const int p = WaitPort(port_file, pid);
  ASSERT_GT(p, 0) << ReadFile(log);
  constexpr int kStreams = 3;
  std::vector<grpc::Status> status(kStreams);
  std::vector<v1::IngestResponse> resp(kStreams);
  std::atomic<int> sent{0};
  std::vector<std::thread> streams;
  for (int c = 0; c < kStreams; ++c) {
    streams.emplace_back([&, c] {
      auto stub = MakeStub(p);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      auto w = stub->Ingest(&ctx, &resp[c]);
      for (const auto& m : Share(c, 0)) w->Write(m);
      w->WritesDone();
      ++sent;
      status[c] = w->Finish();
    });
  }
  // The three seals wait in the compute queue (its depth counts seals in
  // their batching window).
  const int metrics_port = WaitPort(port_file, pid, 20, "metrics_port");
  ASSERT_GT(metrics_port, 0);
  double depth = 0;
  for (int i = 0; i < 2000 && depth < kStreams; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    depth = MetricValue(Scrape(metrics_port), "sigma_compute_queue_depth", {}).value_or(0);
  }
  ASSERT_EQ(depth, kStreams);
  const auto t0 = Clock::now();
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  {
    // Not accepting any more: a new connection is refused (polled until the
    // listener is closed).
    grpc::StatusCode code = grpc::StatusCode::OK;
    for (int i = 0; i < 1000 && code != grpc::StatusCode::UNAVAILABLE; ++i) {
      auto fresh = MakeStub(p);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::ListJobsResponse jobs;
      code = fresh->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).error_code();
    }
    EXPECT_EQ(code, grpc::StatusCode::UNAVAILABLE);
  }
  const int rc = WaitExit(pid, 15);
  const double drain_s = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& t : streams) t.join();
  EXPECT_EQ(rc, 0) << ReadFile(log);
  EXPECT_LT(drain_s, 10.0);
  for (int c = 0; c < kStreams; ++c) {
    EXPECT_TRUE(status[c].ok()) << c << ": " << status[c].error_message();
    EXPECT_TRUE(resp[c].sealed()) << c;
  }
  std::cerr << "SIGTERM drain: exit " << rc << " after " << drain_s << " s\n";
  // Durable: a restart on the same db has all three reports, identical.
  std::filesystem::remove(port_file);
  const pid_t again = Spawn(SigmadArgs(dir.path(), 1), log);
  const int p2 = WaitPort(port_file, again);
  ASSERT_GT(p2, 0);
  auto stub = MakeStub(p2);
  for (int c = 0; c < kStreams; ++c) {
    grpc::ClientContext ctx;
    v1::GetHistoryRequest req;
    req.set_job("crash.c" + std::to_string(c));
    v1::GetHistoryResponse hist;
    ASSERT_TRUE(stub->GetHistory(&ctx, req, &hist).ok());
    ASSERT_EQ(hist.reports_size(), 1);
    EXPECT_EQ(hist.reports(0).SerializeAsString(), resp[c].report().SerializeAsString());
  }
  kill(again, SIGTERM);
  EXPECT_EQ(WaitExit(again, 20), 0);
  EXPECT_EQ(IntegrityCheck(dir.path() + "/sigma.db"), "ok");
}

}  // namespace
}  // namespace sigma::server::testing
