// GetJob / GetReport (issue 17 "Protocol") over real gRPC on loopback: the
// effective settings as the daemon resolves them, one report by key, the
// NOT_FOUND and bad-argument answers, and which of them count as refusals.
#include <chrono>
#include <limits>
#include <thread>

#include "gtest/gtest.h"
#include "server_test_util.h"
#include "sigma/kernels/estimator.h"

namespace sigma::server::testing {
namespace {

using grpc::StatusCode;

class QueriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonOptions o = TestOptions(dir_.path());
    o.history_cache_per_tap = 2;  // older reports are read back from SQLite
    o.job_defaults.set_seed(7);   // a config-file default the clients must not re-derive
    d_ = StartDaemon(o);
    ASSERT_NE(d_, nullptr);
  }

  // Seals generation `g` of (job, tap) with 64 rows of m columns in one share.
  v1::GenerationReport Seal(const std::string& job, const std::string& tap, int64_t g, int32_t m,
                            v1::DType dtype = v1::DTYPE_FP32) {
    const Rows rows = GaussianRows(64, m, 100 + static_cast<uint64_t>(g));
    v1::IngestResponse resp;
    const grpc::Status s =
        SendShare(d_->stub.get(), MakeOpen(job, g, 0, 1, m, dtype, std::nullopt, nullptr, tap), rows, 0, 64, 64, dtype,
                  &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(resp.sealed());
    return resp.report();
  }

  grpc::Status GetJob(const std::string& job, std::optional<int32_t> m, v1::JobInfo* info) {
    v1::GetJobRequest req;
    req.set_job(job);
    if (m) req.set_m(*m);
    grpc::ClientContext ctx;
    return d_->stub->GetJob(&ctx, req, info);
  }

  grpc::Status GetReport(const std::string& job, const std::string& tap, int64_t g, v1::GenerationReport* r) {
    v1::GetReportRequest req;
    req.set_job(job);
    req.set_tap(tap);
    req.set_generation(g);
    grpc::ClientContext ctx;
    return d_->stub->GetReport(&ctx, req, r);
  }

  double Rejected(const std::string& reason) {
    return MetricValue(Scrape(d_->ports.metrics_port), "sigma_rejected_batches_total", {{"reason", reason}})
        .value_or(-1);
  }

  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
};

TEST_F(QueriesTest, GetJobResolvesTheEffectiveSettingsTapsAndOpenSnapshots) {
  Seal("job", "a", 0, 8);
  Seal("job", "b", 0, 300, v1::DTYPE_BF16);
  // Rank 0 of 2 opens generation 1 of tap a in fp16 and waits for rank 1.
  grpc::ClientContext open_ctx;
  v1::IngestResponse open_resp;
  auto open_stream = d_->stub->Ingest(&open_ctx, &open_resp);
  ASSERT_TRUE(open_stream->Write(MakeOpen("job", 1, 0, 2, 8, v1::DTYPE_FP16, std::nullopt, nullptr, "a")));
  // (the Open is processed in order before the GetJob below is answered: poll for it)
  v1::JobInfo info;
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(GetJob("job", std::nullopt, &info).ok());
    if (info.tap_info_size() == 2 && info.tap_info(0).open_size() == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(info.job(), "job");
  EXPECT_EQ(info.m(), 8);
  EXPECT_EQ(info.generations_sealed(), 1);
  EXPECT_EQ(info.last_generation(), 0);
  // Every default filled in, the config file's seed included; n_a for the job's m.
  const v1::JobConfig& c = info.config();
  EXPECT_EQ(c.n_a(), 4096);
  EXPECT_EQ(c.seed(), 7u);
  EXPECT_EQ(c.delta(), 1e-6);
  EXPECT_EQ(c.rho(), 1.0);
  EXPECT_EQ(c.preprocessing(), v1::PREPROCESSING_L2);
  EXPECT_EQ(c.probe(), v1::PROBE_FRESH);
  const sigma::TrendSettings defaults;  // the one place the calibrated defaults live
  EXPECT_EQ(c.trend_k(), defaults.trend_k);
  EXPECT_EQ(c.trend_z(), defaults.trend_z);
  EXPECT_EQ(c.trend_floor(), defaults.trend_floor);
  EXPECT_EQ(c.thresholds().drift_critical(), 0.5);
  ASSERT_EQ(info.tap_info_size(), 2);
  EXPECT_EQ(info.tap_info(0).tap(), "a");
  EXPECT_EQ(info.tap_info(0).m(), 8);
  EXPECT_EQ(info.tap_info(0).dtype(), v1::DTYPE_FP16);  // the latest opened
  ASSERT_EQ(info.tap_info(0).open_size(), 1);
  EXPECT_EQ(info.tap_info(0).open(0).generation(), 1);
  EXPECT_EQ(info.tap_info(0).open(0).dtype(), v1::DTYPE_FP16);
  EXPECT_EQ(info.tap_info(0).open(0).world_size(), 2);
  EXPECT_EQ(info.tap_info(1).tap(), "b");
  EXPECT_EQ(info.tap_info(1).m(), 300);
  EXPECT_EQ(info.tap_info(1).dtype(), v1::DTYPE_BF16);
  EXPECT_EQ(info.tap_info(1).open_size(), 0);
  // n_a for a given m: the daemon's one default rule max(4096, 16 m).
  ASSERT_TRUE(GetJob("job", 300, &info).ok());
  EXPECT_EQ(info.config().n_a(), 4800);
  ASSERT_TRUE(GetJob("job", 1000, &info).ok());
  EXPECT_EQ(info.config().n_a(), 16000);
  // A set n_a is kept for every m.
  {
    v1::ConfigureJobRequest req;
    req.set_job("fixed");
    req.set_create(true);
    req.mutable_config()->set_n_a(500);
    v1::JobInfo created;
    grpc::ClientContext ctx;
    ASSERT_TRUE(d_->stub->ConfigureJob(&ctx, req, &created).ok());
    ASSERT_TRUE(GetJob("fixed", 1000, &info).ok());
    EXPECT_EQ(info.config().n_a(), 500);
    EXPECT_EQ(info.m(), 0);
  }
  open_stream->WritesDone();
  open_stream->Finish();
}

TEST_F(QueriesTest, GetJobRefusesBadArgumentsAndUnknownJobs) {
  Seal("job", "", 0, 8);
  v1::JobInfo info;
  grpc::Status s = GetJob("nope", std::nullopt, &info);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("unknown job 'nope'"), std::string::npos) << s.error_message();
  s = GetJob("bad name!", std::nullopt, &info);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("invalid job"), std::string::npos) << s.error_message();
  for (int32_t m : {0, -3, (1 << 20) + 1}) {
    s = GetJob("job", m, &info);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << m;
    EXPECT_NE(s.error_message().find("m must be in [1, 2^20]"), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(Rejected("not_found"), 1);
  EXPECT_EQ(Rejected("invalid_name"), 1);
  EXPECT_EQ(Rejected("invalid_request"), 3);
}

TEST_F(QueriesTest, GetReportAnswersOneReportCachedOrFromTheStore) {
  std::vector<v1::GenerationReport> sealed;
  for (int64_t g = 0; g < 6; ++g) sealed.push_back(Seal("job", "t", g, 8));
  // 0..3 were evicted from the cache (2 per tap): read back from SQLite; 4, 5 cached.
  for (int64_t g = 0; g < 6; ++g) {
    v1::GenerationReport r;
    const grpc::Status s = GetReport("job", "t", g, &r);
    ASSERT_TRUE(s.ok()) << g << ": " << s.error_message();
    EXPECT_EQ(r.SerializeAsString(), sealed[static_cast<size_t>(g)].SerializeAsString()) << g;
  }
  // The tap defaults to "default", as everywhere.
  Seal("job", "", 0, 8);
  v1::GenerationReport r;
  ASSERT_TRUE(GetReport("job", "", 0, &r).ok());
  EXPECT_EQ(r.tap(), "default");
}

TEST_F(QueriesTest, GetReportNotFoundNamesTheKeyAndIsNotARefusal) {
  Seal("job", "t", 0, 8);
  v1::GenerationReport r;
  grpc::Status s = GetReport("job", "t", 1, &r);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("job 'job' tap 't' generation 1"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("has not sealed"), std::string::npos) << s.error_message();
  s = GetReport("job", "other", 0, &r);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("tap 'other' generation 0"), std::string::npos) << s.error_message();
  // An open snapshot is said so.
  grpc::ClientContext ctx;
  v1::IngestResponse resp;
  auto w = d_->stub->Ingest(&ctx, &resp);
  ASSERT_TRUE(w->Write(MakeOpen("job", 2, 0, 2, 8, v1::DTYPE_FP32, std::nullopt, nullptr, "t")));
  for (int i = 0; i < 500; ++i) {
    s = GetReport("job", "t", 2, &r);
    if (s.error_message().find("is open") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("generation 2: the snapshot is open"), std::string::npos) << s.error_message();
  w->WritesDone();
  w->Finish();
  // A report that has not sealed yet is an answer, not a refusal: polling
  // clients are not counted. An unknown job is (as in GetHistory).
  EXPECT_EQ(Rejected("not_found"), 0);
  s = GetReport("nope", "t", 0, &r);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("unknown job 'nope'"), std::string::npos) << s.error_message();
  EXPECT_EQ(Rejected("not_found"), 1);
}

TEST_F(QueriesTest, GetReportRefusesBadArguments) {
  Seal("job", "t", 0, 8);
  v1::GenerationReport r;
  grpc::Status s = GetReport("job", "t", -1, &r);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("generation must be >= 0, got -1"), std::string::npos) << s.error_message();
  s = GetReport("job", "bad/tap", 0, &r);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  s = GetReport(std::string(129, 'j'), "t", 0, &r);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Rejected("invalid_request"), 1);
  EXPECT_EQ(Rejected("invalid_name"), 2);
}

// After a restart the taps' m is known from the stored reports; their dtype
// is not stored, so it is unspecified until a snapshot opens again.
TEST_F(QueriesTest, GetJobAfterARestart) {
  Seal("job", "t", 0, 8, v1::DTYPE_FP64);
  DaemonOptions o = TestOptions(dir_.path());
  d_.reset();
  d_ = StartDaemon(o);
  ASSERT_NE(d_, nullptr);
  v1::JobInfo info;
  ASSERT_TRUE(GetJob("job", std::nullopt, &info).ok());
  ASSERT_EQ(info.tap_info_size(), 1);
  EXPECT_EQ(info.tap_info(0).m(), 8);
  EXPECT_EQ(info.tap_info(0).dtype(), v1::DTYPE_UNSPECIFIED);
  v1::GenerationReport r;
  ASSERT_TRUE(GetReport("job", "t", 0, &r).ok());
  EXPECT_EQ(r.generation(), 0);
}

}  // namespace
}  // namespace sigma::server::testing
