// Replicas on one PostgreSQL store agree on runs and on deleted jobs (issue
// 15 items 1 and 4; a real server, pg_test_util.h, skipped with the reason
// when PostgreSQL is not installed):
// - the store refuses a commit that would write back a job another replica
//   deleted (or deleted and created again), and lists every job's runs;
// - a run created and sealed on replica A is resumable on replica B (resume
//   must), and B continues A's latest run (resume allow, no name) once it
//   has synced (at most a second: the reaper's sync);
// - a job A deletes while B holds it: B's next seal of it is refused and
//   stores nothing, B stops listing it, and the name works again afterwards;
//   B's open share of it is aborted and its series leave B's /metrics.
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "pg_test_util.h"
#include "server_test_util.h"
#include "sigma/server/storage.h"

namespace sigma::server::testing {
namespace {

constexpr int32_t kM = 8;

// Polls `done` every 20 ms for at most 10 s (the sync runs every second).
bool Eventually(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

StoredJob Job(const std::string& name, int64_t created = 0) {
  StoredJob j{name, {}, kM};
  j.config.set_n_a(64);
  j.created_unix_ms = created;
  return j;
}

v1::GenerationReport Report(const std::string& job, const std::string& run, int64_t generation) {
  v1::GenerationReport r;
  r.set_job(job);
  r.set_run(run);
  r.set_tap("default");
  r.set_generation(generation);
  r.set_m(kM);
  r.set_n(100);
  r.set_n_a(64);
  r.set_backend("cpu");
  return r;
}

// A commit that expects the incarnation it loaded is refused once another
// Store deleted the job, or deleted and created it again; nothing of it is
// stored. A job nobody stored is created by the first commit (created 0).
TEST(SharedRunsStoreTest, CommitToAJobDeletedElsewhereIsRefused) {
  SIGMA_PG_OR_SKIP(pg);
  const std::string db = pg->NewDatabase();
  auto a = Store::Open(db);
  auto b = Store::Open(db);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  std::vector<int64_t> created;
  ASSERT_TRUE((*a)->Commit({Job("j")}, {Report("j", "1", 0)}, &created).ok());
  ASSERT_EQ(created.size(), 1u);
  absl::StatusOr<StoredJob> loaded = (*b)->LoadJob("j");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->created_unix_ms, created[0]);
  ASSERT_TRUE((*a)->Commit({Job("j", created[0])}, {Report("j", "1", 1)}).ok());  // the same incarnation

  ASSERT_TRUE((*b)->DeleteJob("j").ok());
  for (const absl::Status& s : {(*a)->Commit({Job("j", created[0])}, {Report("j", "1", 2)}),
                                (*a)->Commit({Job("j", created[0])}, {})}) {  // a seal, a ConfigureJob
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_EQ(DeletedJob(s), "j") << s;
    EXPECT_NE(s.message().find("job 'j' was deleted on another replica"), std::string::npos) << s;
  }
  EXPECT_EQ(*pg->Query(db, "SELECT count(*) FROM jobs"), std::vector<std::string>{"0"});
  EXPECT_EQ(*pg->Query(db, "SELECT count(*) FROM reports"), std::vector<std::string>{"0"});

  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // another creation time
  std::vector<int64_t> again;
  ASSERT_TRUE((*b)->Commit({Job("j")}, {Report("j", "1", 0)}, &again).ok());  // created anew
  ASSERT_EQ(again.size(), 1u);
  EXPECT_NE(again[0], created[0]);
  const absl::Status stale = (*a)->Commit({Job("j", created[0])}, {Report("j", "1", 1)});
  EXPECT_EQ(DeletedJob(stale), "j") << stale;
  ASSERT_TRUE((*a)->Commit({Job("j", again[0])}, {Report("j", "1", 1)}).ok());
  EXPECT_EQ(*pg->Query(db, "SELECT count(*) FROM reports"), std::vector<std::string>{"2"});
}

// ListRuns: every job with its incarnation and its runs in first-sealed
// order, without reading the reports; a job without reports has none.
TEST(SharedRunsStoreTest, ListRunsGivesEveryJobsRunsInFirstSealedOrder) {
  SIGMA_PG_OR_SKIP(pg);
  const std::string db = pg->NewDatabase();
  auto store = Store::Open(db);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<int64_t> created;
  ASSERT_TRUE((*store)->Commit({Job("k"), Job("empty")}, {}, &created).ok());
  ASSERT_TRUE((*store)->Commit({}, {Report("k", "1", 0), Report("k", "zz", 0)}).ok());
  ASSERT_TRUE((*store)->Commit({}, {Report("k", "2", 0), Report("k", "1", 1)}).ok());
  absl::StatusOr<std::vector<StoredRuns>> runs = (*store)->ListRuns();
  ASSERT_TRUE(runs.ok()) << runs.status();
  ASSERT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[0].job, "empty");
  EXPECT_EQ((*runs)[0].created_unix_ms, created[1]);
  EXPECT_TRUE((*runs)[0].runs.empty());
  EXPECT_EQ((*runs)[1].job, "k");
  EXPECT_EQ((*runs)[1].created_unix_ms, created[0]);
  EXPECT_EQ((*runs)[1].runs, (std::vector<std::string>{"1", "zz", "2"}));
}

// Two in-process replicas on one new database.
class SharedRunsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    pg_ = PgServer::Get(&why);
    if (pg_ == nullptr) GTEST_SKIP() << "PostgreSQL: " << why;
    DaemonOptions a = TestOptions(dir_a_.path()), b = TestOptions(dir_b_.path());
    a.db = b.db = db_ = pg_->NewDatabase();
    a_ = StartDaemon(a);
    b_ = StartDaemon(b);
    ASSERT_NE(a_, nullptr);
    ASSERT_NE(b_, nullptr);
    cfg_.set_n_a(64);
  }
  v1::IngestRequest Open(const std::string& job, int64_t gen, const std::string& run, v1::Resume resume) {
    v1::IngestRequest open = MakeOpen(job, gen, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg_);
    open.mutable_open()->set_run(run);
    open.mutable_open()->set_resume(resume);
    return open;
  }
  grpc::Status Share(TestDaemon* d, const std::string& job, int64_t gen, const std::string& run, v1::Resume resume,
                     v1::IngestResponse* resp) {
    const Rows rows = GaussianRows(200, kM, 700 + static_cast<uint64_t>(gen));
    return SendShare(d->stub.get(), Open(job, gen, run, resume), rows, 0, rows.n(), 50, v1::DTYPE_FP32, resp);
  }
  grpc::Status GetJob(TestDaemon* d, const std::string& job, v1::JobInfo* info) {
    v1::GetJobRequest req;
    req.set_job(job);
    grpc::ClientContext ctx;
    return d->stub->GetJob(&ctx, req, info);
  }
  // A share on `d` with every row sent and its EndOfShare held back, returned
  // once `d` shows the snapshot open (GetJob); End() sends the EndOfShare and
  // returns the share's outcome.
  struct HeldShare {
    grpc::ClientContext ctx;
    v1::IngestResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::IngestRequest>> stream;
    grpc::Status End() {
      stream->Write(MakeEnd());
      stream->WritesDone();
      return stream->Finish();
    }
  };
  std::unique_ptr<HeldShare> Hold(TestDaemon* d, const std::string& job, int64_t gen, const std::string& run,
                                  v1::Resume resume) {
    auto held = std::make_unique<HeldShare>();
    held->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    held->stream = d->stub->Ingest(&held->ctx, &held->response);
    const Rows rows = GaussianRows(200, kM, 700 + static_cast<uint64_t>(gen));
    EXPECT_TRUE(held->stream->Write(Open(job, gen, run, resume)));
    for (int64_t i = 0, seq = 0; i < rows.n(); i += 50)
      EXPECT_TRUE(held->stream->Write(MakeBatch(rows, i, i + 50, seq++, v1::DTYPE_FP32)));
    EXPECT_TRUE(Eventually([&] {
      v1::JobInfo info;
      if (!GetJob(d, job, &info).ok()) return false;
      for (const v1::TapInfo& tap : info.tap_info())
        for (const v1::OpenGeneration& open : tap.open())
          if (open.generation() == gen) return true;
      return false;
    })) << "the held share never showed as open";
    return held;
  }
  // DeleteJob on `d` (one `run` when not empty).
  grpc::Status Delete(TestDaemon* d, const std::string& job, const std::string& run, v1::DeleteJobResponse* r) {
    v1::DeleteJobRequest req;
    req.set_job(job);
    req.set_run(run);
    grpc::ClientContext ctx;
    return d->stub->DeleteJob(&ctx, req, r);
  }
  bool Lists(TestDaemon* d, const std::string& job) {
    v1::ListJobsResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(d->stub->ListJobs(&ctx, v1::ListJobsRequest(), &resp).ok());
    for (const v1::JobInfo& j : resp.jobs())
      if (j.job() == job) return true;
    return false;
  }
  std::string Count(const std::string& sql) {
    auto r = pg_->Query(db_, sql);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && !r->empty() ? (*r)[0] : "";
  }

  PgServer* pg_ = nullptr;
  TempDir dir_a_, dir_b_;
  std::string db_;
  std::unique_ptr<TestDaemon> a_, b_;
  v1::JobConfig cfg_;
};

// Runs created and sealed on A: B resumes run "2" with resume = must (refused
// unknown_run only until it syncs), continues A's latest run with resume =
// allow and no name, and names the next run with resume = never.
TEST_F(SharedRunsTest, RunsSealedOnOneReplicaAreResumedOnTheOther) {
  v1::IngestResponse r;
  ASSERT_TRUE(Share(a_.get(), "train", 0, "", v1::RESUME_UNSPECIFIED, &r).ok());
  EXPECT_EQ(r.run(), "1");
  ASSERT_TRUE(Share(a_.get(), "train", 0, "", v1::RESUME_NEVER, &r).ok());
  ASSERT_EQ(r.run(), "2");
  const v1::GenerationReport a_first = r.report();

  grpc::Status must;
  ASSERT_TRUE(Eventually([&] {
    must = Share(b_.get(), "train", 1, "2", v1::RESUME_MUST, &r);
    return must.error_code() != grpc::StatusCode::NOT_FOUND;  // unknown_run until B syncs
  })) << must.error_message();
  ASSERT_TRUE(must.ok()) << must.error_message();
  ASSERT_TRUE(r.sealed());
  EXPECT_EQ(r.run(), "2");
  EXPECT_EQ(r.report().baseline_generation(), a_first.generation());  // run 2's baseline, sealed on A

  ASSERT_TRUE(Share(a_.get(), "train", 0, "", v1::RESUME_NEVER, &r).ok());
  ASSERT_EQ(r.run(), "3");
  ASSERT_TRUE(Eventually([&] {
    v1::JobInfo info;
    return GetJob(b_.get(), "train", &info).ok() && info.run() == "3";
  }));
  ASSERT_TRUE(Share(b_.get(), "train", 1, "", v1::RESUME_ALLOW, &r).ok());
  EXPECT_EQ(r.run(), "3");
  ASSERT_TRUE(Share(b_.get(), "train", 0, "", v1::RESUME_NEVER, &r).ok());
  EXPECT_EQ(r.run(), "4");
  EXPECT_EQ(Count("SELECT string_agg(run, ' ' ORDER BY first_report) FROM runs WHERE job = 'train'"), "1 2 3 4");
}

// DeleteJob --run on A: B, which learned the run, forgets it within the sync
// (its runs, its latest run and its history), aborts its open share of the
// run, and the run's name starts a new run on B afterwards.
TEST_F(SharedRunsTest, RunDeletedOnOneReplicaIsForgottenByTheOther) {
  v1::IngestResponse r;
  ASSERT_TRUE(Share(a_.get(), "cut", 0, "", v1::RESUME_UNSPECIFIED, &r).ok());
  ASSERT_TRUE(Share(a_.get(), "cut", 0, "", v1::RESUME_NEVER, &r).ok());
  ASSERT_EQ(r.run(), "2");
  ASSERT_TRUE(Eventually([&] {
    v1::JobInfo info;
    return GetJob(b_.get(), "cut", &info).ok() && info.run() == "2";
  }));
  ASSERT_TRUE(Share(b_.get(), "cut", 1, "2", v1::RESUME_MUST, &r).ok());  // B seals into run 2 too
  std::unique_ptr<HeldShare> held = Hold(b_.get(), "cut", 2, "2", v1::RESUME_MUST);  // B: an open share of run 2

  v1::DeleteJobResponse deleted;
  ASSERT_TRUE(Delete(a_.get(), "cut", "2", &deleted).ok());
  EXPECT_EQ(deleted.reports_deleted(), 2);  // A's and B's generations of run 2
  ASSERT_TRUE(Eventually([&] {
    v1::JobInfo info;
    return GetJob(b_.get(), "cut", &info).ok() && info.run() == "1" && info.runs_size() == 1;
  }));
  const grpc::Status aborted = held->End();
  EXPECT_EQ(aborted.error_code(), grpc::StatusCode::ABORTED) << aborted.error_message();
  EXPECT_NE(aborted.error_message().find("run '2' was deleted on another replica"), std::string::npos)
      << aborted.error_message();
  {
    v1::GetHistoryRequest req;
    req.set_job("cut");
    v1::GetHistoryResponse history;
    grpc::ClientContext h_ctx;
    ASSERT_TRUE(b_->stub->GetHistory(&h_ctx, req, &history).ok());
    ASSERT_EQ(history.reports_size(), 1);  // run 1 again
    EXPECT_EQ(history.reports(0).run(), "1");
  }
  EXPECT_EQ(Count("SELECT count(*) FROM reports WHERE job = 'cut' AND run = '2'"), "0");
  ASSERT_TRUE(Share(b_.get(), "cut", 0, "2", v1::RESUME_NEVER, &r).ok());  // the name starts a new run
  EXPECT_EQ(r.run(), "2");
  EXPECT_EQ(r.report().baseline_generation(), 0);
}

// A deletes a job while B holds it with a share open: B's seal of it is
// refused naming the deletion, nothing of it is stored, B stops listing and
// serving the job; then the name works again on either replica.
TEST_F(SharedRunsTest, JobDeletedOnOneReplicaIsForgottenByTheOther) {
  v1::IngestResponse r;
  ASSERT_TRUE(Share(a_.get(), "gone", 0, "", v1::RESUME_UNSPECIFIED, &r).ok());
  ASSERT_TRUE(Share(b_.get(), "gone", 1, "", v1::RESUME_UNSPECIFIED, &r).ok());  // B holds the job

  // B: a share of generation 2, every row sent, EndOfShare held back.
  std::unique_ptr<HeldShare> held = Hold(b_.get(), "gone", 2, "", v1::RESUME_UNSPECIFIED);

  v1::DeleteJobResponse deleted;
  ASSERT_TRUE(Delete(a_.get(), "gone", "", &deleted).ok());
  EXPECT_EQ(deleted.reports_deleted(), 2);

  const grpc::Status sealed = held->End();
  // The store refused the commit (FAILED_PRECONDITION), or B's sync forgot the
  // job first and discarded the snapshot (ABORTED): either names the deletion.
  EXPECT_TRUE(sealed.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
              sealed.error_code() == grpc::StatusCode::ABORTED)
      << sealed.error_code() << " " << sealed.error_message();
  EXPECT_NE(sealed.error_message().find("'gone' was deleted on another replica"), std::string::npos)
      << sealed.error_message();
  EXPECT_FALSE(held->response.sealed());
  EXPECT_EQ(Count("SELECT count(*) FROM jobs WHERE name = 'gone'"), "0");
  EXPECT_EQ(Count("SELECT count(*) FROM reports WHERE job = 'gone'"), "0");
  EXPECT_EQ(Count("SELECT count(*) FROM runs WHERE job = 'gone'"), "0");

  ASSERT_TRUE(Eventually([&] {
    v1::JobInfo info;
    return !Lists(b_.get(), "gone") && GetJob(b_.get(), "gone", &info).error_code() == grpc::StatusCode::NOT_FOUND;
  }));
  EXPECT_FALSE(Lists(a_.get(), "gone"));

  // The name again, on B, then on A: a new job with its own history.
  ASSERT_TRUE(Share(b_.get(), "gone", 0, "", v1::RESUME_UNSPECIFIED, &r).ok());
  ASSERT_TRUE(r.sealed());
  ASSERT_TRUE(Share(a_.get(), "gone", 1, "", v1::RESUME_UNSPECIFIED, &r).ok());
  ASSERT_TRUE(r.sealed());
  EXPECT_EQ(r.report().baseline_generation(), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM reports WHERE job = 'gone'"), "2");
  EXPECT_TRUE(Lists(a_.get(), "gone"));
  EXPECT_TRUE(Lists(b_.get(), "gone"));
}

// A deletes a job while B holds an open share of it and has published its
// series: B forgets the job (here found by B's ListJobs, else by its sync):
// the share is aborted naming the deletion, the series leave B's /metrics.
TEST_F(SharedRunsTest, OpenShareOnTheOtherReplicaIsAbortedWhenTheJobIsDeleted) {
  v1::IngestResponse r;
  ASSERT_TRUE(Share(b_.get(), "held", 0, "", v1::RESUME_UNSPECIFIED, &r).ok());
  ASSERT_NE(Scrape(b_->ports.metrics_port).find("job_name=\"held\""), std::string::npos);
  std::unique_ptr<HeldShare> held = Hold(b_.get(), "held", 1, "", v1::RESUME_UNSPECIFIED);
  ASSERT_TRUE(Lists(a_.get(), "held"));  // A learns the job from the store
  v1::DeleteJobResponse deleted;
  ASSERT_TRUE(Delete(a_.get(), "held", "", &deleted).ok());
  EXPECT_EQ(deleted.reports_deleted(), 1);
  ASSERT_TRUE(Eventually([&] { return !Lists(b_.get(), "held"); }));
  EXPECT_EQ(Scrape(b_->ports.metrics_port).find("job_name=\"held\""), std::string::npos);
  const grpc::Status s = held->End();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED) << s.error_message();
  EXPECT_NE(s.error_message().find("'held' was deleted on another replica"), std::string::npos) << s.error_message();
  EXPECT_EQ(Count("SELECT count(*) FROM jobs WHERE name = 'held'"), "0");
}

}  // namespace
}  // namespace sigma::server::testing
