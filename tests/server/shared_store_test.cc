// sigmad on the PostgreSQL store (a real server, pg_test_util.h; skipped with
// the reason when PostgreSQL is not installed): history across a restart, and
// replicas on one database with the client switching replicas between
// generations (after a membership change), compared with one daemon on SQLite.
#include <libpq-fe.h>

#include <chrono>
#include <future>
#include <map>
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
#include "sigma/server/store_migrate.h"

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

v1::ListJobsResponse Jobs(TestDaemon* d) {
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  const grpc::Status s = d->stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return jobs;
}

// Polls `ready` (the store probes at most once a second) until it is `want`.
bool PollReady(TestDaemon* d, bool want) {
  for (int i = 0; i < 200; ++i) {
    if (d->daemon->Readiness().ok() == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
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

// A replica lists and serves jobs only another replica has seen (read
// through the store): the jobs, taps and sealed generations any replica
// committed, a configuration set on the other replica, the whole history.
TEST(SharedStoreTest, ReplicaListsAndServesJobsItHasNeverSeen) {
  SIGMA_PG_OR_SKIP(pg);
  auto r = StartReplicas(pg);
  ASSERT_NE(r, nullptr);
  TestDaemon* a = r->a.get();
  TestDaemon* b = r->b.get();
  std::vector<v1::GenerationReport> seen;
  for (int g = 0; g < 3; ++g) seen.push_back(Seal(a, "only_a", g));
  v1::ConfigureJobRequest req;
  req.set_job("configured_on_a");
  req.set_create(true);
  req.mutable_config()->mutable_thresholds()->set_divergence_warning(0.375);
  {
    v1::JobInfo info;
    grpc::ClientContext ctx;
    ASSERT_TRUE(a->stub->ConfigureJob(&ctx, req, &info).ok());
  }
  std::map<std::string, v1::JobInfo> on_b;
  const v1::ListJobsResponse listed = Jobs(b);
  for (const v1::JobInfo& j : listed.jobs()) on_b[j.job()] = j;
  ASSERT_EQ(on_b.size(), 2u);
  const v1::JobInfo& only_a = on_b["only_a"];
  EXPECT_EQ(only_a.generations_sealed(), 3);
  EXPECT_EQ(only_a.last_generation(), 2);
  EXPECT_EQ(std::vector<std::string>(only_a.taps().begin(), only_a.taps().end()), std::vector<std::string>{"default"});
  EXPECT_EQ(only_a.m(), kM);
  EXPECT_EQ(on_b["configured_on_a"].config().thresholds().divergence_warning(), 0.375);
  EXPECT_EQ(on_b["configured_on_a"].last_generation(), -1);
  const std::vector<v1::GenerationReport> history = History(b, "only_a");
  ASSERT_EQ(history.size(), seen.size());
  for (size_t g = 0; g < seen.size(); ++g) EXPECT_EQ(history[g].SerializeAsString(), seen[g].SerializeAsString());
  v1::GetHistoryRequest none;
  none.set_job("nobody");
  v1::GetHistoryResponse resp;
  grpc::ClientContext ctx;
  EXPECT_EQ(b->stub->GetHistory(&ctx, none, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

// A replica that joins late (its first seal of a tap whose long history the
// other replica sealed, pinned baseline, trend over 3 generations) seals what
// one daemon that saw every generation seals: it reads only the window a
// seal needs (HistoryReader::SealWindow), which must hold everything used.
TEST(SharedStoreTest, LateReplicaSealsLikeOneDaemonFromTheSealWindow) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir_ref;
  auto r = StartReplicas(pg);
  ASSERT_NE(r, nullptr);
  auto ref = StartDaemon(TestOptions(dir_ref.path()));
  ASSERT_NE(ref, nullptr);
  v1::ConfigureJobRequest req;
  req.set_job("late");
  req.set_create(true);
  req.mutable_config()->set_n_a(64);
  req.mutable_config()->set_baseline_generation(2);
  req.mutable_config()->set_trend_k(3);
  for (TestDaemon* d : {r->a.get(), ref.get()}) {
    v1::JobInfo info;
    grpc::ClientContext ctx;
    ASSERT_TRUE(d->stub->ConfigureJob(&ctx, req, &info).ok());
  }
  for (int g = 0; g < 14; ++g) {
    const v1::GenerationReport got = Seal(g < 11 ? r->a.get() : r->b.get(), "late", g);
    const v1::GenerationReport want = Seal(ref.get(), "late", g);
    ExpectSameValues(got, want);
    EXPECT_EQ(got.baseline_generation(), want.baseline_generation()) << g;
    EXPECT_EQ(got.trend_evaluated(), want.trend_evaluated()) << g;
    EXPECT_EQ(got.alerts_size(), want.alerts_size()) << g;
    EXPECT_EQ(got.has_generations_to_critical(), want.has_generations_to_critical()) << g;
    if (want.has_generations_to_critical())
      EXPECT_EQ(got.generations_to_critical(), want.generations_to_critical()) << g;
  }
}

// A database that holds the seal's commit (another session locks the reports
// table against writes; reads go on) past --db-timeout-ms: the seal is
// refused UNAVAILABLE naming the timeout (never reported sealed), counted as
// a store failure, /readyz says not ready; once the lock goes the daemon is
// ready and seals again without a restart.
TEST(SharedStoreTest, LockedDatabaseTimesOutTheSealAndTheDaemonRecovers) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir;
  DaemonOptions options = TestOptions(dir.path());
  options.db = pg->NewDatabase();
  options.db_timeout_ms = 300;
  auto d = StartDaemon(options);
  ASSERT_NE(d, nullptr);
  Seal(d.get(), "locked", 0);
  PGconn* locker = PQconnectdb(options.db.c_str());
  ASSERT_EQ(PQstatus(locker), CONNECTION_OK) << PQerrorMessage(locker);
  PGresult* lock = PQexec(locker, "BEGIN; LOCK TABLE reports IN EXCLUSIVE MODE");
  ASSERT_EQ(PQresultStatus(lock), PGRES_COMMAND_OK) << PQerrorMessage(locker);
  PQclear(lock);
  auto unlock = [&] {
    PQclear(PQexec(locker, "ROLLBACK"));
    PQfinish(locker);
    locker = nullptr;
  };
  v1::IngestResponse refused;
  auto sealing = std::async(std::launch::async, [&] {
    v1::JobConfig cfg;
    cfg.set_n_a(64);
    return SendShare(d->stub.get(), MakeOpen("locked", 1, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg),
                     GenerationRows(1), 0, 200, 50, v1::DTYPE_FP32, &refused);
  });
  if (sealing.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    unlock();
    FAIL() << "the seal waited on the locked table for 30 s";
  }
  const grpc::Status s = sealing.get();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_NE(s.error_message().find("statement timeout (in: INSERT INTO reports"), std::string::npos)
      << s.error_message();
  EXPECT_FALSE(refused.sealed());
  const std::optional<double> failures =
      MetricValue(Scrape(d->ports.metrics_port), "sigma_store_commit_failures_total", {});
  EXPECT_TRUE(failures.has_value() && *failures >= 1);
  const bool went_unready = PollReady(d.get(), false);
  const absl::Status unready = d->daemon->Readiness();
  unlock();
  EXPECT_TRUE(went_unready);
  // The commit's timeout, or the probe's lock it cannot take NOWAIT.
  EXPECT_TRUE(unready.message().find("statement timeout") != std::string::npos ||
              unready.message().find("could not obtain lock") != std::string::npos)
      << unready;
  EXPECT_TRUE(PollReady(d.get(), true)) << d->daemon->Readiness();
  const v1::GenerationReport again = Seal(d.get(), "locked", 1);
  EXPECT_EQ(again.baseline_generation(), 0);
  EXPECT_EQ(History(d.get(), "locked").size(), 2u);
}

// An SQLite daemon's history migrated into PostgreSQL (MigrateStore, what
// sigmad-migrate runs): the configs log survives with its times, and the
// daemon on PostgreSQL reports the thresholds configured before and seals
// the next generation with them against the migrated baseline.
TEST(SharedStoreTest, MigratedHistoryKeepsItsConfigurationOnPostgres) {
  SIGMA_PG_OR_SKIP(pg);
  TempDir dir;
  DaemonOptions options = TestOptions(dir.path());
  {
    auto d = StartDaemon(options);
    ASSERT_NE(d, nullptr);
    Seal(d.get(), "moved", 0);
    v1::ConfigureJobRequest req;
    req.set_job("moved");
    req.mutable_config()->mutable_thresholds()->set_divergence_warning(0.375);
    v1::JobInfo info;
    grpc::ClientContext ctx;
    ASSERT_TRUE(d->stub->ConfigureJob(&ctx, req, &info).ok());
    Seal(d.get(), "moved", 1);
  }
  const std::string sqlite = options.db;
  options.db = pg->NewDatabase();
  absl::StatusOr<MigrateCounts> n = MigrateStore(sqlite, options.db);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->configs, 2);
  auto log_of = [](const std::string& db) {
    auto store = Store::Open(db);
    EXPECT_TRUE(store.ok()) << store.status();
    std::vector<ConfigRecord> log;
    if (store.ok()) EXPECT_TRUE((*store)->LoadConfigLog(&log).ok());
    std::vector<std::string> out;
    for (const ConfigRecord& c : log)
      out.push_back(c.job + std::to_string(c.set_unix_ms) + c.config.SerializeAsString());
    return out;
  };
  EXPECT_EQ(log_of(options.db), log_of(sqlite));
  auto d = StartDaemon(options);
  ASSERT_NE(d, nullptr);
  const v1::ListJobsResponse jobs = Jobs(d.get());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).config().thresholds().divergence_warning(), 0.375);
  EXPECT_EQ(jobs.jobs(0).generations_sealed(), 2);
  const v1::GenerationReport next = Seal(d.get(), "moved", 2);
  EXPECT_EQ(next.baseline_generation(), 0);
  EXPECT_EQ(next.thresholds_at_seal().divergence_warning(), 0.375);
}

}  // namespace
}  // namespace sigma::server::testing
