// Job lifecycle (issue 15 item 4) through a real in-process sigmad (gRPC over
// loopback, SQLite, /metrics) and, for the clock-driven parts (finished series
// TTL, retention) and the seal-in-flight race, an Engine on a real SQLite file
// with an injected wall clock:
// - DeleteJob removes reports, configs, open snapshots (memory returned),
//   state and series, frees the job slot, needs an admin token;
// - DeleteJob with a seal in flight stores and publishes nothing of it;
// - FinishJob keeps the history, refuses new generations, survives a restart;
// - ConfigureJob on an unknown job is refused unless create;
// - ListSnapshots shows the open snapshots with their ranks.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server_test_util.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/server/scheduler.h"

namespace sigma::server::testing {
namespace {

using grpc::StatusCode;

// SELECT COUNT(*) ... on the SQLite file `db`.
int64_t Count(const std::string& db, const std::string& sql) {
  sqlite3* h = nullptr;
  EXPECT_EQ(sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(h, 5000);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(h);
  int64_t n = -1;
  if (st && sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(h);
  return n;
}

class JobLifecycleTest : public ::testing::Test {
 protected:
  void Start(DaemonOptions o) {
    o_ = o;
    d_ = StartDaemon(o);
    ASSERT_NE(d_, nullptr);
  }
  void SetUp() override { Start(TestOptions(dir_.path())); }

  // Rank `rank` of `world` sends its whole share of (job, default tap, g).
  grpc::Status Share(const std::string& job, int64_t g, int32_t rank = 0, int32_t world = 1,
                     v1::IngestResponse* resp = nullptr) {
    v1::IngestResponse local;
    const Rows rows = GaussianRows(64, 8, 100 * static_cast<uint64_t>(g) + static_cast<uint64_t>(rank));
    return SendShare(d_->stub.get(), MakeOpen(job, g, rank, world, 8, v1::DTYPE_FP64), rows, 0, rows.n(), 32,
                     v1::DTYPE_FP64, resp ? resp : &local);
  }
  std::vector<std::string> Jobs() {
    grpc::ClientContext ctx;
    v1::ListJobsResponse r;
    EXPECT_TRUE(d_->stub->ListJobs(&ctx, {}, &r).ok());
    std::vector<std::string> names;
    for (const auto& j : r.jobs()) names.push_back(j.job());
    return names;
  }
  grpc::Status Delete(const std::string& job, v1::DeleteJobResponse* r, const std::string& token = "") {
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    v1::DeleteJobRequest req;
    req.set_job(job);
    return d_->stub->DeleteJob(&ctx, req, r);
  }
  grpc::Status Finish(const std::string& job, v1::JobInfo* info) {
    grpc::ClientContext ctx;
    v1::FinishJobRequest req;
    req.set_job(job);
    return d_->stub->FinishJob(&ctx, req, info);
  }
  grpc::Status Configure(const std::string& job, bool create, v1::JobInfo* info) {
    grpc::ClientContext ctx;
    v1::ConfigureJobRequest req;
    req.set_job(job);
    req.set_create(create);
    req.mutable_config()->mutable_thresholds()->set_drift_warning(0.2);
    return d_->stub->ConfigureJob(&ctx, req, info);
  }
  v1::ListSnapshotsResponse Snapshots(const std::string& job = "") {
    grpc::ClientContext ctx;
    v1::ListSnapshotsRequest req;
    req.set_job(job);
    v1::ListSnapshotsResponse r;
    EXPECT_TRUE(d_->stub->ListSnapshots(&ctx, req, &r).ok());
    return r;
  }
  std::string Metrics() { return Scrape(d_->ports.metrics_port); }

  TempDir dir_;
  DaemonOptions o_;
  std::unique_ptr<TestDaemon> d_;
};

TEST_F(JobLifecycleTest, DeleteJobRemovesReportsSnapshotsStateAndSeries) {
  ASSERT_TRUE(Share("del", 0).ok());
  ASSERT_TRUE(Share("del", 1).ok());
  ASSERT_TRUE(Share("keep", 0).ok());
  v1::IngestResponse half;
  ASSERT_TRUE(Share("del", 2, 0, 2, &half).ok());  // rank 1 of 2 never comes: the snapshot stays open
  EXPECT_FALSE(half.sealed());
  const v1::ListSnapshotsResponse open = Snapshots("del");
  ASSERT_EQ(open.snapshots_size(), 1);
  EXPECT_EQ(open.snapshots(0).generation(), 2);
  ASSERT_EQ(open.snapshots(0).ranks_finished_size(), 1);
  EXPECT_EQ(open.snapshots(0).ranks_finished(0), 0);
  ASSERT_EQ(open.snapshots(0).ranks_missing_size(), 1);
  EXPECT_EQ(open.snapshots(0).ranks_missing(0), 1);
  EXPECT_EQ(open.snapshots(0).rows(), 64);
  EXPECT_EQ(open.snapshots(0).state(), "open");
  EXPECT_GE(open.snapshots(0).age_seconds(), 0);
  EXPECT_TRUE(MetricValue(Metrics(), "sigma_track2", {{"job_name", "del"}, {"tap", "default"}}).has_value());
  EXPECT_GT(MetricValue(Metrics(), "sigma_open_snapshot_bytes", {}).value_or(0), 0);

  v1::DeleteJobResponse r;
  const grpc::Status s = Delete("del", &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.reports_deleted(), 2);
  EXPECT_EQ(r.snapshots_discarded(), 1);
  EXPECT_EQ(Jobs(), std::vector<std::string>{"keep"});
  EXPECT_EQ(Snapshots().snapshots_size(), 0);
  const std::string scrape = Metrics();
  EXPECT_FALSE(MetricValue(scrape, "sigma_track2", {{"job_name", "del"}, {"tap", "default"}}).has_value());
  EXPECT_FALSE(MetricValue(scrape, "sigma_generation", {{"job_name", "del"}, {"tap", "default"}}).has_value());
  EXPECT_FALSE(MetricValue(scrape, "sigma_job_finished", {{"job_name", "del"}}).has_value());
  EXPECT_TRUE(MetricValue(scrape, "sigma_track2", {{"job_name", "keep"}, {"tap", "default"}}).has_value());
  EXPECT_EQ(MetricValue(scrape, "sigma_open_snapshot_bytes", {}), 0.0);  // memory returned
  EXPECT_EQ(MetricValue(scrape, "sigma_open_snapshots", {}), 0.0);
  EXPECT_EQ(Count(o_.db, "SELECT COUNT(*) FROM reports WHERE job = 'del'"), 0);
  EXPECT_EQ(Count(o_.db, "SELECT COUNT(*) FROM configs WHERE job = 'del'"), 0);
  EXPECT_EQ(Count(o_.db, "SELECT COUNT(*) FROM jobs WHERE name = 'del'"), 0);
  EXPECT_EQ(Count(o_.db, "SELECT COUNT(*) FROM reports WHERE job = 'keep'"), 1);
  {
    grpc::ClientContext ctx;
    v1::GetHistoryRequest req;
    req.set_job("del");
    v1::GetHistoryResponse h;
    EXPECT_EQ(d_->stub->GetHistory(&ctx, req, &h).error_code(), StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(Delete("del", &r).error_code(), StatusCode::NOT_FOUND);  // bad input: clear status, nothing changed
  EXPECT_EQ(Jobs(), std::vector<std::string>{"keep"});
  {
    grpc::ClientContext ctx;
    v1::DeleteJobRequest req;
    req.set_job("keep");
    req.set_run("r1");  // a run the job does not have: refused, never widened to every run
    EXPECT_EQ(d_->stub->DeleteJob(&ctx, req, &r).error_code(), StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(Jobs(), std::vector<std::string>{"keep"});
  // The name starts afresh, and the deletion survives a restart.
  ASSERT_TRUE(Share("del", 0).ok());
  d_.reset();
  Start(o_);
  EXPECT_EQ(Jobs(), (std::vector<std::string>{"del", "keep"}));
  EXPECT_EQ(Count(o_.db, "SELECT COUNT(*) FROM reports WHERE job = 'del'"), 1);
}

// The store goes first: a DeleteJob whose store delete fails (another writer
// holds the SQLite file's write lock past the busy timeout) leaves the job,
// its history and its series as they were, and a retry then deletes it.
TEST_F(JobLifecycleTest, DeleteJobWhoseStoreDeleteFailsChangesNothing) {
  ASSERT_TRUE(Share("held", 0).ok());
  sqlite3* writer = nullptr;
  ASSERT_EQ(sqlite3_open(o_.db.c_str(), &writer), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(writer, "BEGIN EXCLUSIVE;", nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(writer);
  v1::DeleteJobResponse r;
  const grpc::Status refused = Delete("held", &r);  // waits out the store's 5 s busy timeout
  sqlite3_exec(writer, "ROLLBACK;", nullptr, nullptr, nullptr);
  sqlite3_close(writer);
  EXPECT_EQ(refused.error_code(), StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_NE(refused.error_message().find("unchanged"), std::string::npos) << refused.error_message();
  EXPECT_EQ(Jobs(), std::vector<std::string>{"held"});
  EXPECT_TRUE(MetricValue(Metrics(), "sigma_track2", {{"job_name", "held"}, {"tap", "default"}}).has_value());
  EXPECT_EQ(Count(o_.db, "SELECT COUNT(*) FROM reports WHERE job = 'held'"), 1);
  const grpc::Status retried = Delete("held", &r);
  ASSERT_TRUE(retried.ok()) << retried.error_message();
  EXPECT_EQ(r.reports_deleted(), 1);
  EXPECT_TRUE(Jobs().empty());
}

TEST_F(JobLifecycleTest, DeletingAJobFreesItsSlot) {
  d_.reset();
  DaemonOptions o = TestOptions(dir_.path());
  o.max_jobs = 2;
  Start(o);
  ASSERT_TRUE(Share("a", 0).ok());
  ASSERT_TRUE(Share("b", 0).ok());
  EXPECT_EQ(Share("c", 0).error_code(), StatusCode::RESOURCE_EXHAUSTED);
  v1::DeleteJobResponse r;
  ASSERT_TRUE(Delete("a", &r).ok());
  EXPECT_TRUE(Share("c", 0).ok());
  EXPECT_EQ(MetricValue(Metrics(), "sigma_jobs", {}), 2.0);
}

TEST_F(JobLifecycleTest, DeleteJobNeedsAnAdminToken) {
  d_.reset();
  DaemonOptions o = TestOptions(dir_.path());
  o.tokens_file = dir_.path() + "/tokens.yaml";
  std::ofstream(o.tokens_file) << "- token: writer-secret\n  role: write\n  job_prefixes: [\"\"]\n"
                                  "- token: admin-secret\n  role: admin\n  job_prefixes: [\"\"]\n"
                                  "- token: reader-secret\n  role: read\n  job_prefixes: [\"\"]\n";
  Start(o);
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer writer-secret");
    v1::IngestResponse resp;
    auto stream = d_->stub->Ingest(&ctx, &resp);
    const Rows rows = GaussianRows(64, 8, 1);
    ASSERT_TRUE(stream->Write(MakeOpen("j", 0, 0, 1, 8, v1::DTYPE_FP64)));
    ASSERT_TRUE(stream->Write(MakeBatch(rows, 0, 64, 0, v1::DTYPE_FP64)));
    ASSERT_TRUE(stream->Write(MakeEnd()));
    stream->WritesDone();
    ASSERT_TRUE(stream->Finish().ok());
  }
  v1::DeleteJobResponse r;
  for (const char* token : {"writer-secret", "reader-secret"}) {
    const grpc::Status s = Delete("j", &r, token);
    EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << token;
    EXPECT_NE(s.error_message().find("admin"), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(Count(o.db, "SELECT COUNT(*) FROM reports WHERE job = 'j'"), 1);  // untouched
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer reader-secret");
  v1::ListSnapshotsResponse snaps;
  EXPECT_TRUE(d_->stub->ListSnapshots(&ctx, {}, &snaps).ok());  // a read token may list
  EXPECT_TRUE(Delete("j", &r, "admin-secret").ok());
  EXPECT_EQ(Count(o.db, "SELECT COUNT(*) FROM reports WHERE job = 'j'"), 0);
}

TEST_F(JobLifecycleTest, FinishedJobKeepsItsHistoryAndRefusesNewGenerations) {
  ASSERT_TRUE(Share("fin", 0).ok());
  EXPECT_EQ(MetricValue(Metrics(), "sigma_job_finished", {{"job_name", "fin"}}), 0.0);
  v1::JobInfo info;
  ASSERT_TRUE(Finish("fin", &info).ok());
  EXPECT_TRUE(info.finished());
  EXPECT_GT(info.finished_unix_ms(), 0);
  EXPECT_EQ(info.generations_sealed(), 1);
  EXPECT_EQ(MetricValue(Metrics(), "sigma_job_finished", {{"job_name", "fin"}}), 1.0);
  const int64_t first = info.finished_unix_ms();
  ASSERT_TRUE(Finish("fin", &info).ok());  // idempotent: the first time is kept
  EXPECT_EQ(info.finished_unix_ms(), first);
  grpc::Status s = Share("fin", 1);
  EXPECT_EQ(s.error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("job 'fin' is finished"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("delete-job"), std::string::npos) << s.error_message();
  EXPECT_TRUE(Share("fin", 0).ok());  // a retry of a sealed generation still gets its report
  EXPECT_EQ(Finish("nope", &info).error_code(), StatusCode::NOT_FOUND);
  // Persisted: after a restart the job is still finished.
  d_.reset();
  Start(o_);
  grpc::ClientContext ctx;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(d_->stub->ListJobs(&ctx, {}, &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_TRUE(jobs.jobs(0).finished());
  EXPECT_EQ(jobs.jobs(0).finished_unix_ms(), first);
  EXPECT_EQ(Share("fin", 1).error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(MetricValue(Metrics(), "sigma_job_finished", {{"job_name", "fin"}}), 1.0);
  EXPECT_EQ(Count(o_.db, "SELECT finished_unix_ms FROM jobs WHERE name = 'fin'"), first);
}

TEST_F(JobLifecycleTest, ConfigureJobOfAnUnknownJobIsRefusedUnlessCreate) {
  v1::JobInfo info;
  grpc::Status s = Configure("typo", false, &info);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("'typo'"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("--create"), std::string::npos) << s.error_message();
  EXPECT_TRUE(Jobs().empty());
  EXPECT_EQ(Count(o_.db, "SELECT COUNT(*) FROM jobs"), 0);
  ASSERT_TRUE(Configure("new", true, &info).ok());
  EXPECT_EQ(Jobs(), std::vector<std::string>{"new"});
  EXPECT_TRUE(Configure("new", false, &info).ok());  // known now
  // A job of the configuration file is known.
  d_.reset();
  DaemonOptions o = TestOptions(dir_.path());
  o.job_configs["from-file"].set_n_a(256);
  Start(o);
  s = Configure("from-file", false, &info);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(info.config().n_a(), 256);
}

TEST(LifecycleFlagsTest, FlagsParseAndBadValuesAreRefused) {
  auto parse = [](std::vector<std::string> args, bool* help) {
    std::vector<char*> argv{const_cast<char*>("sigmad")};
    for (std::string& a : args) argv.push_back(a.data());
    return ParseCommandLine(static_cast<int>(argv.size()), argv.data(), help);
  };
  bool help = false;
  auto o = parse({"--finished-series-ttl-s", "30", "--retention-days", "7"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->finished_series_ttl_s, 30);
  EXPECT_EQ(o->retention_days, 7);
  EXPECT_EQ(DaemonOptions().finished_series_ttl_s, 86400);
  EXPECT_EQ(DaemonOptions().retention_days, 0);
  for (auto bad : {std::vector<std::string>{"--retention-days", "-1"}, {"--finished-series-ttl-s", "-5"}}) {
    auto r = parse(bad, &help);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad[0];
    EXPECT_NE(r.status().message().find(bad[0]), std::string::npos) << r.status();
  }
}

// ------------------------------------------------ Engine with a wall clock --

struct WallClock {
  std::atomic<int64_t> ms{1'800'000'000'000};
  absl::Time now() const { return absl::FromUnixMillis(ms.load()); }
};

// An Engine on a real SQLite file, the CPU backend, no reaper thread.
struct EngineOnFile {
  WallClock wall;
  Metrics metrics;
  DaemonOptions o;
  std::unique_ptr<Engine> engine;

  EngineOnFile(const std::string& dir, DaemonOptions options) : o(std::move(options)) {
    o.db = dir + "/engine.db";
    auto store = Store::Open(o.db);
    EXPECT_TRUE(store.ok()) << store.status();
    sigma::BackendOptions bo;
    bo.kind = sigma::BackendKind::kCpu;
    EngineHooks hooks;
    hooks.wall_clock = [this] { return wall.now(); };
    hooks.reaper = false;
    hooks.log_sink = [](const std::string&) {};
    engine = std::make_unique<Engine>(o, std::move(*store), std::move(*sigma::MakeBackend(bo)), &metrics, hooks);
    EXPECT_TRUE(engine->Restore().ok());
    engine->StartWorker();
  }
  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics.registry()->Collect()); }
  // Opens (job, g) as rank 0 of `world` in `run` ("": the default) and
  // sends 64 rows; with `end` and world 1 it seals, `done` getting the outcome.
  void Send(const std::string& job, int64_t g, int32_t world, IngestSession* s, const std::string& run = "") {
    v1::IngestRequest open = MakeOpen(job, g, 0, world, 8, v1::DTYPE_FP64);
    open.mutable_open()->set_run(run);
    ASSERT_TRUE(engine->Open(open.open(), s).ok());
    const Rows rows = GaussianRows(64, 8, static_cast<uint64_t>(g) + 7);
    ASSERT_TRUE(engine->Batch(s, MakeBatch(rows, 0, 64, 0, v1::DTYPE_FP64).batch()).ok());
  }
  // EndShare of `s` and DeleteJob of `job` (one `run` when not empty), their
  // outcomes as futures.
  std::future<absl::Status> End(IngestSession* s) {
    auto done = std::make_shared<std::promise<absl::Status>>();
    const v1::EndOfShare end;
    engine->EndShare(s, &end, [done](const absl::Status& st, const v1::IngestResponse&) { done->set_value(st); });
    return done->get_future();
  }
  std::future<absl::Status> Delete(const std::string& job, const std::string& run = "") {
    auto done = std::make_shared<std::promise<absl::Status>>();
    v1::DeleteJobRequest req;
    req.set_job(job);
    req.set_run(run);
    engine->DeleteJob(req, [done](const absl::Status& st, const v1::DeleteJobResponse&) { done->set_value(st); });
    return done->get_future();
  }
  absl::Status SealOne(const std::string& job, int64_t g) {
    IngestSession s;
    Send(job, g, 1, &s);
    return End(&s).get();
  }
  absl::Status Finish(const std::string& job) {
    std::promise<absl::Status> out;
    v1::FinishJobRequest req;
    req.set_job(job);
    engine->FinishJob(req, [&out](const absl::Status& st, const v1::JobInfo&) { out.set_value(st); });
    return out.get_future().get();
  }
  std::vector<std::string> Jobs() {
    v1::ListJobsResponse r;
    std::promise<absl::Status> out;
    engine->ListJobs(&r, [&out](const absl::Status& st) { out.set_value(st); });
    EXPECT_TRUE(out.get_future().get().ok());
    std::vector<std::string> names;
    for (const auto& j : r.jobs()) names.push_back(j.job());
    return names;
  }
};

TEST(FinishedSeriesTest, SeriesLeaveMetricsAfterTheTtl) {
  TempDir dir;
  DaemonOptions o;
  o.finished_series_ttl_s = 600;
  EngineOnFile f(dir.path(), o);
  ASSERT_TRUE(f.SealOne("done", 0).ok());
  ASSERT_TRUE(f.SealOne("running", 0).ok());
  ASSERT_TRUE(f.Finish("done").ok());
  const std::map<std::string, std::string> done{{"job_name", "done"}, {"tap", "default"}};
  f.wall.ms += 599'000;
  f.engine->SweepLifecycle();
  EXPECT_TRUE(MetricValue(f.Scrape(), "sigma_track2", done).has_value());
  EXPECT_EQ(MetricValue(f.Scrape(), "sigma_job_finished", {{"job_name", "done"}}), 1.0);
  f.wall.ms += 2'000;
  EXPECT_TRUE(f.engine->SweepLifecycle().empty());  // no retention: nothing deleted
  const std::string scrape = f.Scrape();
  EXPECT_FALSE(MetricValue(scrape, "sigma_track2", done).has_value());
  EXPECT_FALSE(MetricValue(scrape, "sigma_last_seal_timestamp_seconds", done).has_value());
  EXPECT_FALSE(MetricValue(scrape, "sigma_job_finished", {{"job_name", "done"}}).has_value());
  EXPECT_FALSE(MetricValue(scrape, "sigma_alert_threshold", {{"job_name", "done"}, {"threshold", "drift_warning"}})
                   .has_value());
  EXPECT_TRUE(MetricValue(scrape, "sigma_track2", {{"job_name", "running"}, {"tap", "default"}}).has_value());
  EXPECT_EQ(f.Jobs(), (std::vector<std::string>{"done", "running"}));  // the history stays
}

TEST(RetentionTest, JobsFinishedLongerThanRetentionDaysAreDeleted) {
  TempDir dir;
  DaemonOptions o;
  o.retention_days = 2;
  EngineOnFile f(dir.path(), o);
  ASSERT_TRUE(f.SealOne("old", 0).ok());
  ASSERT_TRUE(f.SealOne("old", 1).ok());
  ASSERT_TRUE(f.SealOne("live", 0).ok());
  ASSERT_TRUE(f.Finish("old").ok());
  f.wall.ms += 2 * 86'400'000 - 1'000;
  EXPECT_TRUE(f.engine->SweepLifecycle().empty());
  f.wall.ms += 2'000;
  EXPECT_EQ(f.engine->SweepLifecycle(), std::vector<std::string>{"old"});
  f.engine->WaitForTasks();
  EXPECT_EQ(f.Jobs(), std::vector<std::string>{"live"});
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports WHERE job = 'old'"), 0);
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM jobs WHERE name = 'old'"), 0);
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports WHERE job = 'live'"), 1);
  EXPECT_FALSE(MetricValue(f.Scrape(), "sigma_track2", {{"job_name", "old"}, {"tap", "default"}}).has_value());
  f.wall.ms += 100LL * 86'400'000;  // an unfinished job is never retired
  EXPECT_TRUE(f.engine->SweepLifecycle().empty());
}

// A seal waits out its batching window (the lane holds it in kSealing) while
// DeleteJob runs on the task lane: the seal then stores and publishes nothing
// and its waiter hears ABORTED; the job's name starts afresh.
TEST(DeleteJobRaceTest, SealInFlightStoresNothing) {
  TempDir dir;
  DaemonOptions o;
  o.seal_batch_window_ms = 1500;
  EngineOnFile f(dir.path(), o);
  IngestSession s;
  f.Send("race", 0, 1, &s);
  std::promise<absl::Status> sealed;
  const v1::EndOfShare end;
  f.engine->EndShare(&s, &end, [&](const absl::Status& st, const v1::IngestResponse&) { sealed.set_value(st); });
  std::promise<v1::DeleteJobResponse> deleted;
  v1::DeleteJobRequest req;
  req.set_job("race");
  f.engine->DeleteJob(req, [&](const absl::Status& st, const v1::DeleteJobResponse& r) {
    EXPECT_TRUE(st.ok()) << st;
    deleted.set_value(r);
  });
  const v1::DeleteJobResponse r = deleted.get_future().get();
  EXPECT_EQ(r.snapshots_discarded(), 0);  // it was sealing: its commit drops it
  const absl::Status st = sealed.get_future().get();
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_TRUE(f.Jobs().empty());
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports"), 0);
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM jobs"), 0);
  EXPECT_FALSE(MetricValue(f.Scrape(), "sigma_generation", {{"job_name", "race"}, {"tap", "default"}}).has_value());
  EXPECT_EQ(MetricValue(f.Scrape(), "sigma_open_snapshot_bytes", {}), 0.0);
}

// The same for DeleteJob --run: a seal of the run in flight stores nothing
// (the run's id changed), the job and its other run keep their reports.
TEST(DeleteJobRaceTest, SealOfADeletedRunInFlightStoresNothing) {
  TempDir dir;
  DaemonOptions o;
  o.seal_batch_window_ms = 1500;
  EngineOnFile f(dir.path(), o);
  ASSERT_TRUE(f.SealOne("race", 0).ok());  // run "1"
  IngestSession s;
  f.Send("race", 0, 1, &s, "2");
  std::future<absl::Status> sealed = f.End(&s);  // held 1.5 s by the batching window
  const absl::Status d = f.Delete("race", "2").get();
  EXPECT_TRUE(d.ok()) << d;
  const absl::Status st = sealed.get();
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_EQ(f.Jobs(), std::vector<std::string>{"race"});
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports WHERE run = '2'"), 0);
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports WHERE run = '1'"), 1);
}

// Seals and deletes of the same jobs racing on their lanes: whatever the
// order, a deleted job leaves no row and no state behind.
TEST(DeleteJobRaceTest, ConcurrentSealsAndDeletesLeaveNothingBehind) {
  TempDir dir;
  DaemonOptions o;
  o.seal_batch_window_ms = 0;
  EngineOnFile f(dir.path(), o);
  std::vector<std::future<absl::Status>> seals, deletes;
  std::vector<std::unique_ptr<std::promise<absl::Status>>> promises;
  std::vector<std::unique_ptr<IngestSession>> sessions;
  for (int i = 0; i < 12; ++i) {
    const std::string job = "r" + std::to_string(i % 4);
    sessions.push_back(std::make_unique<IngestSession>());
    IngestSession* s = sessions.back().get();
    if (!f.engine->Open(MakeOpen(job, i, 0, 1, 8, v1::DTYPE_FP64).open(), s).ok()) continue;  // deleted meanwhile
    const Rows rows = GaussianRows(64, 8, static_cast<uint64_t>(i));
    (void)f.engine->Batch(s, MakeBatch(rows, 0, 64, 0, v1::DTYPE_FP64).batch());
    promises.push_back(std::make_unique<std::promise<absl::Status>>());
    seals.push_back(promises.back()->get_future());
    const v1::EndOfShare end;
    std::promise<absl::Status>* p = promises.back().get();
    f.engine->EndShare(s, &end, [p](const absl::Status& st, const v1::IngestResponse&) { p->set_value(st); });
    promises.push_back(std::make_unique<std::promise<absl::Status>>());
    deletes.push_back(promises.back()->get_future());
    p = promises.back().get();
    v1::DeleteJobRequest req;
    req.set_job(job);
    f.engine->DeleteJob(req, [p](const absl::Status& st, const v1::DeleteJobResponse&) { p->set_value(st); });
  }
  for (auto& s : seals) {
    const absl::Status st = s.get();
    EXPECT_TRUE(st.ok() || st.code() == absl::StatusCode::kAborted) << st;
  }
  for (auto& d : deletes) {
    const absl::Status st = d.get();
    EXPECT_TRUE(st.ok() || st.code() == absl::StatusCode::kNotFound) << st;
  }
  f.engine->WaitForTasks();
  // A job the registry no longer knows has nothing in the store: every seal
  // either committed before its job's delete (then deleted with it) or was dropped.
  const std::vector<std::string> known = f.Jobs();
  for (int i = 0; i < 4; ++i) {
    const std::string job = "r" + std::to_string(i);
    if (std::find(known.begin(), known.end(), job) != known.end()) continue;
    EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports WHERE job = '" + job + "'"), 0) << job;
    EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM jobs WHERE name = '" + job + "'"), 0) << job;
  }
  for (const std::string& job : f.Jobs()) {
    v1::DeleteJobRequest req;
    req.set_job(job);
    std::promise<void> done;
    f.engine->DeleteJob(req, [&](const absl::Status&, const v1::DeleteJobResponse&) { done.set_value(); });
    done.get_future().wait();
  }
  EXPECT_TRUE(f.Jobs().empty());
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports"), 0);
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM jobs"), 0);
  EXPECT_EQ(MetricValue(f.Scrape(), "sigma_open_snapshots", {}), 0.0);
}

// Seals of two runs racing with DeleteJob --run of them: whatever the order,
// a run the job no longer lists has no report in the store, and the job stays.
TEST(DeleteJobRaceTest, ConcurrentSealsAndRunDeletesLeaveNothingBehind) {
  TempDir dir;
  DaemonOptions o;
  o.seal_batch_window_ms = 0;
  EngineOnFile f(dir.path(), o);
  ASSERT_TRUE(f.SealOne("runs", 100).ok());  // run "1" keeps the job
  std::vector<std::future<absl::Status>> outcomes;
  std::vector<std::unique_ptr<IngestSession>> sessions;
  for (int i = 0; i < 16; ++i) {
    const std::string run = i % 2 ? "a" : "b";
    sessions.push_back(std::make_unique<IngestSession>());
    f.Send("runs", i, 1, sessions.back().get(), run);
    outcomes.push_back(f.End(sessions.back().get()));
    outcomes.push_back(f.Delete("runs", run));
  }
  for (auto& outcome : outcomes) {
    const absl::Status st = outcome.get();
    EXPECT_TRUE(st.ok() || st.code() == absl::StatusCode::kAborted || st.code() == absl::StatusCode::kNotFound) << st;
  }
  f.engine->WaitForTasks();
  EXPECT_EQ(f.Jobs(), std::vector<std::string>{"runs"});
  v1::GetJobRequest get;
  get.set_job("runs");
  v1::JobInfo info;
  ASSERT_TRUE(f.engine->GetJob(get, &info).ok());
  for (const std::string run : {"a", "b"}) {
    if (std::find(info.runs().begin(), info.runs().end(), run) != info.runs().end()) continue;
    EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports WHERE run = '" + run + "'"), 0) << run;
  }
  EXPECT_EQ(Count(f.o.db, "SELECT COUNT(*) FROM reports WHERE run = '1'"), 1);
  EXPECT_EQ(MetricValue(f.Scrape(), "sigma_open_snapshots", {}), 0.0);
}

}  // namespace
}  // namespace sigma::server::testing
