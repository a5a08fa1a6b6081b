// Runs (issue 15 item 1; docs/server.md "Runs") through a real in-process
// sigmad over gRPC with real SQLite: a second training under the same job
// name gets its own history and baseline instead of the first run's reports,
// resume = must / never refuse what they promise to, `baseline_run` compares
// against another run, and the runs survive a restart.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server_test_util.h"

namespace sigma::server::testing {
namespace {

constexpr int kM = 8;

class RunsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Start();
    cfg_.set_n_a(2000);
  }
  void Start() {
    d_ = StartDaemon(TestOptions(dir_.path()));
    ASSERT_NE(d_, nullptr);
  }
  // One rank's share of `job` generation `gen` in run `run` ("" = unnamed).
  grpc::Status Share(const std::string& job, int64_t gen, const Rows& rows, const std::string& run,
                     v1::Resume resume, v1::IngestResponse* resp, const v1::JobConfig* config = nullptr) {
    v1::IngestRequest open = MakeOpen(job, gen, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, config ? config : &cfg_);
    open.mutable_open()->set_run(run);
    open.mutable_open()->set_resume(resume);
    return SendShare(d_->stub.get(), open, rows, 0, rows.n(), 1000, v1::DTYPE_FP32, resp);
  }
  std::vector<v1::GenerationReport> History(const std::string& job, const std::string& run) {
    v1::GetHistoryRequest req;
    req.set_job(job);
    req.set_run(run);
    v1::GetHistoryResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = d_->stub->GetHistory(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return {resp.reports().begin(), resp.reports().end()};
  }
  v1::JobInfo Info(const std::string& job) {
    v1::ListJobsResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(d_->stub->ListJobs(&ctx, v1::ListJobsRequest(), &resp).ok());
    for (const v1::JobInfo& j : resp.jobs())
      if (j.job() == job) return j;
    ADD_FAILURE() << "no job " << job;
    return {};
  }
  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
  v1::JobConfig cfg_;
};

std::vector<std::string> Runs(const v1::JobInfo& info) { return {info.runs().begin(), info.runs().end()}; }

// Issue 15 item 1, reproduced: a second training under the same job name
// (no drift of its own) got the first run's stored reports for the
// generations the first run sealed. With resume = never it is a new run "2":
// its generation 0 seals its own data and is its own baseline; the first
// run's history stays readable under run "1".
TEST_F(RunsTest, NewRunHasItsOwnHistoryAndBaseline) {
  v1::IngestResponse r;
  for (int g = 0; g < 3; ++g) {  // run 1 contracts: half the dimensions shrink
    ASSERT_TRUE(Share("train", g, GaussianRows(3000, kM, 100 + g, 1.0 - 0.3 * g, kM / 2), "", v1::RESUME_UNSPECIFIED,
                      &r).ok());
    ASSERT_TRUE(r.sealed());
    EXPECT_EQ(r.run(), "1");
    EXPECT_EQ(r.report().run(), "1");
  }
  const Rows fresh = GaussianRows(3000, kM, 200);
  v1::IngestResponse second;
  ASSERT_TRUE(Share("train", 0, fresh, "", v1::RESUME_NEVER, &second).ok());
  ASSERT_TRUE(second.sealed());
  EXPECT_EQ(second.run(), "2");
  EXPECT_EQ(second.report().run(), "2");
  EXPECT_EQ(second.report().baseline_generation(), 0);  // its own baseline
  EXPECT_EQ(second.report().track2_drift(), 0);
  EXPECT_TRUE(second.report().baseline_run().empty());
  // The gauges show the latest run: generation 0 of run 2, not generation 2 of run 1.
  const std::map<std::string, std::string> labels = {{"job_name", "train"}, {"tap", "default"}};
  EXPECT_EQ(MetricValue(Scrape(d_->ports.metrics_port), "sigma_generation", labels), 0);
  v1::IngestResponse alone;  // the same data as a job of its own: the same values
  ASSERT_TRUE(Share("alone", 0, fresh, "", v1::RESUME_UNSPECIFIED, &alone).ok());
  ExpectSameValues(second.report(), alone.report());

  // The next generation continues the latest run (allow, unnamed).
  v1::IngestResponse next;
  ASSERT_TRUE(Share("train", 1, GaussianRows(3000, kM, 201), "", v1::RESUME_ALLOW, &next).ok());
  EXPECT_EQ(next.run(), "2");
  EXPECT_EQ(next.report().baseline_generation(), 0);
  EXPECT_LT(std::abs(next.report().per_dim().track2_drift()), 0.1);  // no drift of its own

  EXPECT_EQ(History("train", "").size(), 2u);  // default: the latest run
  const auto first = History("train", "1");
  ASSERT_EQ(first.size(), 3u);
  EXPECT_EQ(first[2].run(), "1");
  EXPECT_LT(first[2].track2_drift(), 0);  // run 1's contraction is still there
  const v1::JobInfo info = Info("train");
  EXPECT_EQ(Runs(info), (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(info.run(), "2");
  EXPECT_EQ(info.generations_sealed(), 2);
  EXPECT_EQ(info.last_generation(), 1);

  // GetReport and CloseGeneration take the run; default the latest.
  v1::GetReportRequest get;
  get.set_job("train");
  get.set_generation(2);
  v1::GenerationReport got;
  {
    grpc::ClientContext ctx;
    // Run 2 has no generation 2.
    EXPECT_EQ(d_->stub->GetReport(&ctx, get, &got).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  get.set_run("1");
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(d_->stub->GetReport(&ctx, get, &got).ok());
    EXPECT_EQ(got.SerializeAsString(), first[2].SerializeAsString());
  }

  // Restart: the runs come back from the store, in creation order.
  d_.reset();
  Start();
  EXPECT_EQ(Runs(Info("train")), (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(History("train", "1").size(), 3u);
  v1::IngestResponse after;
  ASSERT_TRUE(Share("train", 2, GaussianRows(3000, kM, 202), "", v1::RESUME_ALLOW, &after).ok());
  EXPECT_EQ(after.run(), "2");
  EXPECT_EQ(after.report().baseline_generation(), 0);
}

// resume = must refuses a run that does not exist (NOT_FOUND), never a named
// run that has sealed (ALREADY_EXISTS); neither creates anything. Ranks of a
// new unnamed run join it while it has sealed nothing.
TEST_F(RunsTest, MustAndNeverRefuseAndNeverJoinsAnUnsealedRun) {
  const Rows rows = GaussianRows(2500, kM, 7);
  v1::IngestResponse r;
  grpc::Status s = Share("res", 0, rows, "", v1::RESUME_MUST, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  ASSERT_TRUE(Share("res", 0, rows, "a", v1::RESUME_ALLOW, &r).ok());
  EXPECT_EQ(r.run(), "a");
  s = Share("res", 1, rows, "b", v1::RESUME_MUST, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  EXPECT_NE(s.error_message().find("job 'res' has no run 'b'"), std::string::npos) << s.error_message();
  s = Share("res", 1, rows, "a", v1::RESUME_NEVER, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("run 'a' has already sealed"), std::string::npos) << s.error_message();
  EXPECT_EQ(Runs(Info("res")), std::vector<std::string>{"a"});
  ASSERT_TRUE(Share("res", 1, rows, "a", v1::RESUME_MUST, &r).ok());
  EXPECT_EQ(r.run(), "a");

  // Two ranks of a new unnamed run: rank 0 opens run "2" (the next number),
  // rank 1 joins it since it has sealed nothing yet.
  v1::IngestRequest open0 = MakeOpen("res", 0, 0, 2, kM, v1::DTYPE_FP32, std::nullopt, &cfg_);
  v1::IngestRequest open1 = MakeOpen("res", 0, 1, 2, kM, v1::DTYPE_FP32, std::nullopt, &cfg_);
  open0.mutable_open()->set_resume(v1::RESUME_NEVER);
  open1.mutable_open()->set_resume(v1::RESUME_NEVER);
  v1::IngestResponse r0, r1;
  ASSERT_TRUE(SendShare(d_->stub.get(), open0, rows, 0, 1200, 600, v1::DTYPE_FP32, &r0).ok());
  ASSERT_TRUE(SendShare(d_->stub.get(), open1, rows, 1200, 2500, 600, v1::DTYPE_FP32, &r1).ok());
  EXPECT_EQ(r0.run(), "2");
  EXPECT_EQ(r1.run(), "2");
  ASSERT_TRUE(r1.sealed());
  EXPECT_EQ(r1.report().world_size(), 2);
  EXPECT_EQ(Runs(Info("res")), (std::vector<std::string>{"a", "2"}));

  v1::IngestRequest bad = MakeOpen("res", 0, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg_);
  bad.mutable_open()->set_run("no spaces");
  v1::IngestResponse none;
  EXPECT_EQ(SendStream(d_->stub.get(), {bad, MakeEnd()}, &none).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// baseline_run (ConfigureJob) compares a run against another run of the job.
TEST_F(RunsTest, BaselineRunComparesAgainstAnotherRun) {
  v1::IngestResponse base, other, self;
  ASSERT_TRUE(Share("cmp", 0, GaussianRows(3000, kM, 11), "base", v1::RESUME_ALLOW, &base).ok());
  const Rows shrunk = GaussianRows(3000, kM, 12, 0.3, kM / 2);  // half the dimensions contract
  ASSERT_TRUE(Share("cmp", 0, shrunk, "self", v1::RESUME_NEVER, &self).ok());
  EXPECT_EQ(self.report().baseline_run(), "");  // its own baseline
  EXPECT_EQ(self.report().track2_drift(), 0);
  v1::ConfigureJobRequest configure;
  configure.set_job("cmp");
  configure.mutable_config()->set_baseline_run("base");
  v1::JobInfo configured;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(d_->stub->ConfigureJob(&ctx, configure, &configured).ok());
  }
  ASSERT_TRUE(Share("cmp", 0, shrunk, "next", v1::RESUME_NEVER, &other).ok());
  EXPECT_EQ(other.report().run(), "next");
  EXPECT_EQ(other.report().baseline_generation(), 0);
  EXPECT_EQ(other.report().baseline_run(), "base");
  EXPECT_LT(other.report().track2_drift(), -1)  // against run "base", not itself
      << base.report().track2() << " " << self.report().track2() << " " << other.report().track2();
}

// DeleteJob of one run (issue 15 item 4, `sigmactl delete-job --run`): the
// run's reports and open snapshots go; the job, its other runs and their
// history stay, and the gauges show the run created before it again. An
// unknown run is NOT_FOUND and changes nothing; after a restart the run is
// still gone, and its name can start a new run.
TEST_F(RunsTest, DeleteOneRunKeepsTheJobAndItsOtherRuns) {
  v1::IngestResponse r;
  v1::GenerationReport last_of_first;
  for (int g = 0; g < 2; ++g) {
    ASSERT_TRUE(Share("del", g, GaussianRows(3000, kM, 300 + g), "", v1::RESUME_UNSPECIFIED, &r).ok());
    last_of_first = r.report();
  }
  ASSERT_TRUE(Share("del", 0, GaussianRows(3000, kM, 400, 0.3, kM / 2), "", v1::RESUME_NEVER, &r).ok());
  ASSERT_EQ(r.run(), "2");
  // An open snapshot of run 2: rank 0 of 2 finished its share, rank 1 missing.
  v1::IngestRequest open0 = MakeOpen("del", 1, 0, 2, kM, v1::DTYPE_FP32, std::nullopt, &cfg_);
  open0.mutable_open()->set_run("2");
  v1::IngestResponse r0;
  ASSERT_TRUE(SendShare(d_->stub.get(), open0, GaussianRows(1200, kM, 401), 0, 1200, 600, v1::DTYPE_FP32, &r0).ok());
  auto snapshots = [&] {
    v1::ListSnapshotsRequest req;
    req.set_job("del");
    v1::ListSnapshotsResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(d_->stub->ListSnapshots(&ctx, req, &resp).ok());
    return resp;
  };
  ASSERT_EQ(snapshots().snapshots_size(), 1);
  EXPECT_EQ(snapshots().snapshots(0).run(), "2");  // ListSnapshots names the run
  const std::map<std::string, std::string> labels = {{"job_name", "del"}, {"tap", "default"}};
  EXPECT_EQ(MetricValue(Scrape(d_->ports.metrics_port), "sigma_generation", labels), 0);  // run 2's

  auto remove = [&](const std::string& run, v1::DeleteJobResponse* resp) {
    v1::DeleteJobRequest req;
    req.set_job("del");
    req.set_run(run);
    grpc::ClientContext ctx;
    return d_->stub->DeleteJob(&ctx, req, resp);
  };
  v1::DeleteJobResponse deleted;
  grpc::Status s = remove("9", &deleted);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  EXPECT_NE(s.error_message().find("job 'del' has no run '9'"), std::string::npos) << s.error_message();
  EXPECT_EQ(Runs(Info("del")), (std::vector<std::string>{"1", "2"}));  // unchanged
  s = remove("2", &deleted);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(deleted.run(), "2");
  EXPECT_EQ(deleted.reports_deleted(), 1);
  EXPECT_EQ(deleted.snapshots_discarded(), 1);
  EXPECT_EQ(snapshots().snapshots_size(), 0);
  const v1::JobInfo info = Info("del");
  EXPECT_EQ(Runs(info), std::vector<std::string>{"1"});
  EXPECT_EQ(info.run(), "1");
  EXPECT_EQ(info.generations_sealed(), 2);
  EXPECT_EQ(History("del", "").size(), 2u);  // the default is run 1 again
  // The gauges are run 1's latest report again.
  const std::string scrape = Scrape(d_->ports.metrics_port);
  EXPECT_EQ(MetricValue(scrape, "sigma_generation", labels), 1);
  ExpectMetricNear(MetricValue(scrape, "sigma_track2", labels), last_of_first.track2());

  d_.reset();  // the store holds no row of run 2
  Start();
  EXPECT_EQ(Runs(Info("del")), std::vector<std::string>{"1"});
  ASSERT_TRUE(Share("del", 0, GaussianRows(3000, kM, 402), "2", v1::RESUME_NEVER, &r).ok());
  EXPECT_EQ(r.run(), "2");
  EXPECT_EQ(r.report().baseline_generation(), 0);  // a new run: its own baseline
  EXPECT_EQ(r.report().track2_drift(), 0);
}

}  // namespace
}  // namespace sigma::server::testing
