// sigmad on the PostgreSQL store (a real server, pg_test_util.h; skipped with
// the reason when PostgreSQL is not installed): history across a restart, and
// replicas on one database with the client switching replicas between
// generations (after a membership change), compared with one daemon on SQLite.
#include <chrono>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pg_test_util.h"
#include "server_test_util.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/server/metrics.h"
#include "sigma/server/scheduler.h"

namespace sigma::server::testing {
namespace {

constexpr int32_t kM = 8;

// A contracting sequence: later generations weigh the first columns more.
Rows GenerationRows(int g) { return GaussianRows(200, kM, 500 + g, 1.0 / (1 + g), 2); }

v1::GenerationReport Seal(TestDaemon* d, const std::string& job, int g) {
  v1::JobConfig cfg;
  cfg.set_n_a(64);
  v1::IngestResponse resp;
  const grpc::Status s = SendShare(d->stub.get(), MakeOpen(job, g, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg),
                                   GenerationRows(g), 0, 200, 50, v1::DTYPE_FP32, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(resp.sealed());
  return resp.report();
}

std::vector<v1::GenerationReport> History(TestDaemon* d, const std::string& job) {
  v1::GetHistoryRequest req;
  req.set_job(job);
  v1::GetHistoryResponse resp;
  grpc::ClientContext ctx;
  const grpc::Status s = d->stub->GetHistory(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return {resp.reports().begin(), resp.reports().end()};
}

// Replicas A and B: in-process daemons on one new database of `pg`.
struct Replicas {
  TempDir dir_a, dir_b;
  std::string db;
  std::unique_ptr<TestDaemon> a, b;
};
std::unique_ptr<Replicas> StartReplicas(PgServer* pg) {
  auto r = std::make_unique<Replicas>();
  DaemonOptions a_opts = TestOptions(r->dir_a.path()), b_opts = TestOptions(r->dir_b.path());
  a_opts.db = b_opts.db = r->db = pg->NewDatabase();
  r->a = StartDaemon(a_opts);
  r->b = StartDaemon(b_opts);
  return r->a && r->b ? std::move(r) : nullptr;
}

TEST(SharedStoreTest, DaemonOnPostgresKeepsHistoryAcrossRestart) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir;
  DaemonOptions options = TestOptions(dir.path());
  options.db = pg->NewDatabase();
  std::vector<v1::GenerationReport> seen;
  {
    auto d = StartDaemon(options);
    ASSERT_NE(d, nullptr);
    for (int g = 0; g < 3; ++g) seen.push_back(Seal(d.get(), "p", g));
  }
  auto d = StartDaemon(options);
  ASSERT_NE(d, nullptr);
  const std::vector<v1::GenerationReport> history = History(d.get(), "p");
  ASSERT_EQ(history.size(), seen.size());
  for (size_t g = 0; g < seen.size(); ++g) EXPECT_EQ(history[g].SerializeAsString(), seen[g].SerializeAsString());
  const v1::GenerationReport next = Seal(d.get(), "p", 3);
  EXPECT_EQ(next.baseline_generation(), 0);
}

// Replicas A and B on one database; generations alternate between them (each
// seals a generation whose predecessor the other one sealed). Baseline, drift
// and forecast equal those of one daemon that saw every generation, and both
// replicas serve the whole history.
TEST(SharedStoreTest, ReplicasSwitchingBetweenGenerationsMatchOneDaemon) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir_ref;
  auto r = StartReplicas(pg);
  ASSERT_NE(r, nullptr);
  TestDaemon* a = r->a.get();
  TestDaemon* b = r->b.get();
  auto ref = StartDaemon(TestOptions(dir_ref.path()));
  ASSERT_NE(ref, nullptr);
  constexpr int kGenerations = 6;
  std::vector<v1::GenerationReport> seen;
  for (int g = 0; g < kGenerations; ++g) {
    const v1::GenerationReport got = Seal(g % 2 ? b : a, "r", g);
    const v1::GenerationReport want = Seal(ref.get(), "r", g);
    ExpectSameValues(got, want);
    EXPECT_EQ(got.baseline_generation(), want.baseline_generation()) << g;
    EXPECT_EQ(got.has_generations_to_critical(), want.has_generations_to_critical()) << g;
    if (want.has_generations_to_critical())
      EXPECT_EQ(got.generations_to_critical(), want.generations_to_critical()) << g;
    seen.push_back(got);
  }
  for (TestDaemon* d : {a, b}) {
    const std::vector<v1::GenerationReport> history = History(d, "r");
    ASSERT_EQ(history.size(), seen.size());
    for (size_t g = 0; g < seen.size(); ++g)
      EXPECT_EQ(history[g].SerializeAsString(), seen[g].SerializeAsString()) << g;
  }
}

// The same generation sealed on both replicas (a retry that failed over after
// A committed): B answers with A's stored report, one report is stored; the
// same generation from different data is refused ALREADY_EXISTS.
TEST(SharedStoreTest, SameGenerationOnTwoReplicasEndsWithOneReport) {
  SIGMA_PG_OR_SKIP(pg);
  auto r = StartReplicas(pg);
  ASSERT_NE(r, nullptr);
  TestDaemon* a = r->a.get();
  TestDaemon* b = r->b.get();
  const v1::GenerationReport first = Seal(a, "twice", 0);
  const v1::GenerationReport second = Seal(b, "twice", 0);
  EXPECT_EQ(second.SerializeAsString(), first.SerializeAsString());
  Seal(a, "twice", 1);
  v1::JobConfig cfg;
  cfg.set_n_a(64);
  v1::IngestResponse resp;
  const grpc::Status s = SendShare(b->stub.get(), MakeOpen("twice", 1, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg),
                                   GenerationRows(7), 0, 200, 50, v1::DTYPE_FP32, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("different data"), std::string::npos) << s.error_message();
  EXPECT_EQ(History(b, "twice").size(), 2u);
}

// ConfigureJob on replica A reaches replica B (read through before B's next
// seal and before a ConfigureJob on B), B's seals do not undo it, and a
// replica started later loads it.
TEST(SharedStoreTest, ConfigurationChangesReachTheOtherReplicas) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir_c;
  auto r = StartReplicas(pg);
  ASSERT_NE(r, nullptr);
  TestDaemon* a = r->a.get();
  TestDaemon* b = r->b.get();
  Seal(a, "c", 0);
  Seal(b, "c", 1);  // B learns the job
  v1::ConfigureJobRequest req;
  req.set_create(true);
  req.set_job("c");
  req.mutable_config()->mutable_thresholds()->set_divergence_warning(0.375);
  v1::JobInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(a->stub->ConfigureJob(&ctx, req, &info).ok());
  }
  Seal(b, "c", 2);
  auto warning_on = [](TestDaemon* d) {
    v1::ListJobsRequest lreq;
    v1::ListJobsResponse jobs;
    grpc::ClientContext ctx;
    EXPECT_TRUE(d->stub->ListJobs(&ctx, lreq, &jobs).ok());
    for (const auto& j : jobs.jobs())
      if (j.job() == "c") return j.config().thresholds().divergence_warning();
    return -1.0;
  };
  EXPECT_EQ(warning_on(b), 0.375);
  DaemonOptions c_opts = TestOptions(dir_c.path());
  c_opts.db = r->db;
  auto c = StartDaemon(c_opts);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(warning_on(c.get()), 0.375);
}

// The database stopped under a running daemon: a seal is refused UNAVAILABLE
// (never reported sealed when not stored) and counted as a store commit
// failure; once the database is back the same daemon seals again, with the
// right baseline, without a restart.
TEST(SharedStoreTest, DatabaseDownRefusesSealsAndTheDaemonRecovers) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir;
  DaemonOptions options = TestOptions(dir.path());
  options.db = pg->NewDatabase();
  auto d = StartDaemon(options);
  ASSERT_NE(d, nullptr);
  Seal(d.get(), "down", 0);
  ASSERT_TRUE(pg->Stop().ok());
  v1::JobConfig cfg;
  cfg.set_n_a(64);
  v1::IngestResponse refused;
  const grpc::Status s = SendShare(d->stub.get(), MakeOpen("down", 1, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg),
                                   GenerationRows(1), 0, 200, 50, v1::DTYPE_FP32, &refused);
  const bool restarted = pg->Start().ok();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_NE(s.error_message().find("store"), std::string::npos) << s.error_message();
  EXPECT_FALSE(refused.sealed());
  const std::optional<double> failures =
      MetricValue(Scrape(d->ports.metrics_port), "sigma_store_commit_failures_total", {});
  ASSERT_TRUE(failures.has_value());
  EXPECT_GE(*failures, 1);
  ASSERT_TRUE(restarted);
  const v1::GenerationReport again = Seal(d.get(), "down", 1);
  EXPECT_EQ(again.generation(), 1);
  EXPECT_EQ(again.baseline_generation(), 0);
  EXPECT_EQ(History(d.get(), "down").size(), 2u);
}

// Readiness (/readyz) follows the database: not ready while it is down, ready
// again once it is back, without a commit and without a restart. Polled: the
// store probes at most once a second.
TEST(SharedStoreTest, ReadinessFollowsTheDatabase) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir;
  DaemonOptions options = TestOptions(dir.path());
  options.db = pg->NewDatabase();
  auto store = Store::Open(options.db);
  ASSERT_TRUE(store.ok()) << store.status();
  sigma::BackendOptions bo;
  bo.kind = sigma::BackendKind::kCpu;
  auto backend = sigma::MakeBackend(bo);
  ASSERT_TRUE(backend.ok()) << backend.status();
  Metrics metrics;
  Engine engine(options, std::move(*store), std::move(*backend), &metrics);
  ASSERT_TRUE(engine.Restore().ok());
  EXPECT_TRUE(engine.Readiness().ok()) << engine.Readiness();
  auto poll = [&](bool want_ok) {
    for (int i = 0; i < 200; ++i) {
      if (engine.Readiness().ok() == want_ok) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  ASSERT_TRUE(pg->Stop().ok());
  const bool went_down = poll(false);
  const absl::Status down = engine.Readiness();
  ASSERT_TRUE(pg->Start().ok());
  EXPECT_TRUE(went_down);
  EXPECT_NE(down.message().find("store: postgresql"), std::string::npos) << down;
  EXPECT_TRUE(poll(true)) << engine.Readiness();
}

}  // namespace
}  // namespace sigma::server::testing
