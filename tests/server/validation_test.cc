// Every bad-input class gets its gRPC status with a message naming the
// problem, and the snapshot is exactly as before (verified by sealing it and
// comparing with a snapshot that only ever saw the good batches).
#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "server_test_util.h"

namespace sigma::server::testing {
namespace {

using grpc::StatusCode;

class ValidationTest : public ::testing::Test {
 protected:
  static constexpr int64_t kM = 16;
  void SetUp() override {
    DaemonOptions o = TestOptions(dir_.path());
    o.max_message_bytes = 64 * 1024;
    o.max_jobs = 4;
    o.max_open_snapshots = 3;
    o.max_memory_bytes = 200 * 1024;
    d_ = StartDaemon(o);
    ASSERT_NE(d_, nullptr);
    rows_ = GaussianRows(400, kM, 77);
    cfg_.set_n_a(256);
  }

  // Opens `job` gen 0 as rank 0 of 2 and sends seq 0..1 (200 good rows).
  void OpenWithGoodBatches(const std::string& job) {
    v1::IngestResponse resp;
    std::vector<v1::IngestRequest> msgs{MakeOpen(job, 0, 0, 2, kM, v1::DTYPE_FP32, std::nullopt, &cfg_),
                                        MakeBatch(rows_, 0, 100, 0, v1::DTYPE_FP32),
                                        MakeBatch(rows_, 100, 200, 1, v1::DTYPE_FP32)};
    ASSERT_TRUE(SendStream(d_->stub.get(), msgs, &resp).ok());
    EXPECT_EQ(resp.batches_accepted(), 2);
  }

  // A stream for `rank` of `job` whose last message is `bad` (rank 1 by
  // default: a refused batch drops its own rank's share, atomic shares).
  grpc::Status SendBad(const std::string& job, const v1::IngestRequest& bad, bool open_first = true, int rank = 1) {
    std::vector<v1::IngestRequest> msgs;
    if (open_first) msgs.push_back(MakeOpen(job, 0, rank, 2, kM, v1::DTYPE_FP32, std::nullopt, &cfg_));
    msgs.push_back(bad);
    v1::IngestResponse resp;
    return SendStream(d_->stub.get(), msgs, &resp);
  }

  v1::GenerationReport Close(const std::string& job) {
    v1::CloseGenerationRequest req;
    req.set_job(job);
    req.set_generation(0);
    v1::GenerationReport report;
    grpc::ClientContext ctx;
    grpc::Status s = d_->stub->CloseGeneration(&ctx, req, &report);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return report;
  }

  void ExpectStatus(const grpc::Status& s, StatusCode code, const std::string& needle) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_NE(s.error_message().find(needle), std::string::npos)
        << "message '" << s.error_message() << "' does not mention '" << needle << "'";
  }

  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
  Rows rows_;
  v1::JobConfig cfg_;
};

TEST_F(ValidationTest, EveryBadBatchIsRefusedAndLeavesTheSnapshotUnchanged) {
  OpenWithGoodBatches("reference");
  OpenWithGoodBatches("target");

  // Byte size not rows x m x width.
  {
    auto b = MakeBatch(rows_, 200, 300, 2, v1::DTYPE_FP32);
    b.mutable_batch()->mutable_data()->resize(b.batch().data().size() - 3);
    ExpectStatus(SendBad("target", b), StatusCode::INVALID_ARGUMENT, "expected rows (100) x m (16)");
  }
  // Wrong dtype width (fp64 bytes for an fp32 snapshot).
  ExpectStatus(SendBad("target", MakeBatch(rows_, 200, 300, 2, v1::DTYPE_FP64)), StatusCode::INVALID_ARGUMENT,
               "bytes");
  // NaN and Inf.
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    Rows r = rows_;
    r.values[static_cast<size_t>(250 * kM + 3)] = bad;
    ExpectStatus(SendBad("target", MakeBatch(r, 200, 300, 2, v1::DTYPE_FP32)), StatusCode::INVALID_ARGUMENT,
                 "row 50");
  }
  // A zero row under l2: refused under its own reason, not as non_finite (issue 17).
  {
    Rows r = rows_;
    for (int64_t c = 0; c < kM; ++c) r.values[static_cast<size_t>(260 * kM + c)] = 0;
    ExpectStatus(SendBad("target", MakeBatch(r, 200, 300, 2, v1::DTYPE_FP32)), StatusCode::INVALID_ARGUMENT,
                 "row 60 has norm 0");
  }
  // rows = 0.
  {
    v1::IngestRequest b;
    b.mutable_batch()->set_seq(2);
    b.mutable_batch()->set_rows(0);
    ExpectStatus(SendBad("target", b), StatusCode::INVALID_ARGUMENT, "rows must be >= 1");
  }
  // sample_ids count mismatch.
  {
    auto b = MakeBatch(rows_, 200, 300, 2, v1::DTYPE_FP32);
    for (int i = 0; i < 7; ++i) b.mutable_batch()->add_sample_ids(i);
    ExpectStatus(SendBad("target", b), StatusCode::INVALID_ARGUMENT, "7 sample_ids for 100 rows");
  }
  // Over --max-message-bytes (our check names the flag) and far over (transport limit).
  ExpectStatus(SendBad("target", MakeBatch(GaussianRows(1100, kM, 1), 0, 1100, 2, v1::DTYPE_FP32)),
               StatusCode::RESOURCE_EXHAUSTED, "--max-message-bytes");
  EXPECT_EQ(SendBad("target", MakeBatch(GaussianRows(20000, kM, 1), 0, 20000, 2, v1::DTYPE_FP32)).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
  // m different from the snapshot's / the tap's.
  ExpectStatus(SendBad("target", MakeOpen("target", 0, 1, 2, kM + 1, v1::DTYPE_FP32), false),
               StatusCode::INVALID_ARGUMENT, "m = 17 differs");
  ExpectStatus(SendBad("target", MakeOpen("target", 1, 0, 1, kM + 1, v1::DTYPE_FP32), false),
               StatusCode::INVALID_ARGUMENT, "m = 17 differs from m = 16 of job 'target'");
  // Unknown dtype.
  ExpectStatus(SendBad("target", MakeOpen("target", 0, 1, 2, kM, v1::DTYPE_UNSPECIFIED), false),
               StatusCode::INVALID_ARGUMENT, "unknown dtype");
  ExpectStatus(SendBad("target", MakeOpen("target", 0, 1, 2, kM, static_cast<v1::DType>(42)), false),
               StatusCode::INVALID_ARGUMENT, "unknown dtype 42");
  // A dtype different from the other ranks'.
  ExpectStatus(SendBad("target", MakeOpen("target", 0, 1, 2, kM, v1::DTYPE_FP16), false),
               StatusCode::INVALID_ARGUMENT, "dtype");
  // Rank and world size.
  ExpectStatus(SendBad("target", MakeOpen("target", 0, 2, 2, kM, v1::DTYPE_FP32), false),
               StatusCode::INVALID_ARGUMENT, "rank must be in [0, world_size = 2)");
  ExpectStatus(SendBad("target", MakeOpen("target", 0, -1, 2, kM, v1::DTYPE_FP32), false),
               StatusCode::INVALID_ARGUMENT, "rank");
  ExpectStatus(SendBad("target", MakeOpen("target", 0, 0, 0, kM, v1::DTYPE_FP32), false),
               StatusCode::INVALID_ARGUMENT, "world_size must be");
  ExpectStatus(SendBad("target", MakeOpen("target", 0, 1, 3, kM, v1::DTYPE_FP32), false),
               StatusCode::FAILED_PRECONDITION, "world_size 3 differs from 2");
  // Malformed and too long names.
  ExpectStatus(SendBad("", MakeOpen("bad name!", 0, 0, 1, kM, v1::DTYPE_FP32), false),
               StatusCode::INVALID_ARGUMENT, "invalid job name 'bad name!'");
  ExpectStatus(SendBad("", MakeOpen(std::string(129, 'j'), 0, 0, 1, kM, v1::DTYPE_FP32), false),
               StatusCode::INVALID_ARGUMENT, "invalid job name");
  ExpectStatus(SendBad("", MakeOpen("target", 0, 0, 2, kM, v1::DTYPE_FP32, std::nullopt, nullptr, "tap/1"), false),
               StatusCode::INVALID_ARGUMENT, "invalid tap name 'tap/1'");
  // Batch before open; EndOfShare before open.
  ExpectStatus(SendBad("", MakeBatch(rows_, 0, 10, 0, v1::DTYPE_FP32), false), StatusCode::FAILED_PRECONDITION,
               "Batch before OpenSnapshot");
  ExpectStatus(SendBad("", MakeEnd(), false), StatusCode::FAILED_PRECONDITION, "EndOfShare before OpenSnapshot");
  // EndOfShare count smaller than the rows sent.
  ExpectStatus(SendBad("target", MakeEnd(50), true, 0), StatusCode::INVALID_ARGUMENT, "EndOfShare.count = 50");

  // The target is untouched (each refused share of rank 1 left nothing, rank
  // 0's rows stay): sealing it gives bitwise the reference's report.
  const v1::GenerationReport ref = Close("reference");
  const v1::GenerationReport got = Close("target");
  EXPECT_EQ(got.n(), 200);
  EXPECT_EQ(got.n_a(), 200);
  ExpectSameValues(got, ref);

  const std::string scrape = Scrape(d_->ports.metrics_port);
  for (const char* reason : {"size_mismatch", "non_finite", "empty_batch", "sample_ids_mismatch", "too_large",
                             "dimension_mismatch", "invalid_dtype", "invalid_rank", "invalid_name", "not_open",
                             "invalid_norm"}) {
    auto v = MetricValue(scrape, "sigma_rejected_batches_total", {{"reason", reason}});
    ASSERT_TRUE(v.has_value()) << reason;
    EXPECT_GE(*v, 1) << reason;
  }
  // The NaN and the Inf batch only: the zero row is invalid_norm.
  EXPECT_EQ(MetricValue(scrape, "sigma_rejected_batches_total", {{"reason", "non_finite"}}), 2.0);
}

TEST_F(ValidationTest, LimitsGiveResourceExhausted) {
  OpenWithGoodBatches("j1");
  OpenWithGoodBatches("j2");
  OpenWithGoodBatches("j3");
  // Too many open snapshots (3).
  ExpectStatus(SendBad("", MakeOpen("j1", 1, 0, 1, kM, v1::DTYPE_FP32), false), StatusCode::RESOURCE_EXHAUSTED,
               "too many open snapshots");
  const v1::GenerationReport before = Close("j3");  // frees a slot; j1 got the same batches
  // Bytes in memory: job j4 (n_a 2048: a 96 KiB sketch) exceeds 200 KiB with its first 1000 rows.
  {
    v1::ConfigureJobRequest cj;
    cj.set_create(true);
    cj.set_job("j4");
    cj.mutable_config()->set_n_a(2048);
    v1::JobInfo info;
    grpc::ClientContext ctx;
    ASSERT_TRUE(d_->stub->ConfigureJob(&ctx, cj, &info).ok());
    const Rows rows = GaussianRows(1000, kM, 5);
    v1::IngestResponse resp;
    ExpectStatus(SendStream(d_->stub.get(), {MakeOpen("j4", 0, 0, 2, kM, v1::DTYPE_FP32),
                                             MakeBatch(rows, 0, 1000, 0, v1::DTYPE_FP32)}, &resp),
                 StatusCode::RESOURCE_EXHAUSTED, "--max-memory-bytes");
  }
  // Too many jobs (4 exist now: j1..j4).
  ExpectStatus(SendBad("", MakeOpen("j5", 0, 0, 1, kM, v1::DTYPE_FP32), false), StatusCode::RESOURCE_EXHAUSTED,
               "too many jobs");
  v1::ConfigureJobRequest cj;
  cj.set_create(true);
  cj.set_job("j6");
  v1::JobInfo info;
  grpc::ClientContext ctx;
  EXPECT_EQ(d_->stub->ConfigureJob(&ctx, cj, &info).error_code(), StatusCode::RESOURCE_EXHAUSTED);
  // Unknown job on close; known job, unknown generation.
  v1::CloseGenerationRequest creq;
  creq.set_job("nope");
  v1::GenerationReport r;
  grpc::ClientContext c1;
  grpc::Status s = d_->stub->CloseGeneration(&c1, creq, &r);
  ExpectStatus(s, StatusCode::NOT_FOUND, "unknown job 'nope'");
  creq.set_job("j1");
  creq.set_generation(9);
  grpc::ClientContext c2;
  ExpectStatus(d_->stub->CloseGeneration(&c2, creq, &r), StatusCode::NOT_FOUND, "no open snapshot or report");
  v1::GetHistoryRequest h;
  h.set_job("nope");
  v1::GetHistoryResponse hr;
  grpc::ClientContext c3;
  EXPECT_EQ(d_->stub->GetHistory(&c3, h, &hr).error_code(), StatusCode::NOT_FOUND);
  // The snapshots that hit limits are unchanged.
  const v1::GenerationReport j1 = Close("j1");
  ExpectSameValues(j1, before);
}

TEST_F(ValidationTest, EmptyIngestRequestIsCountedAsRefused) {
  OpenWithGoodBatches("target");
  auto refused = [&] {
    return MetricValue(Scrape(d_->ports.metrics_port), "sigma_rejected_batches_total",
                       {{"reason", "invalid_request"}});
  };
  const std::optional<double> before = refused();
  ASSERT_TRUE(before.has_value());
  ExpectStatus(SendBad("target", v1::IngestRequest()), StatusCode::INVALID_ARGUMENT, "empty IngestRequest");
  ExpectStatus(SendBad("", v1::IngestRequest(), false), StatusCode::INVALID_ARGUMENT, "empty IngestRequest");
  EXPECT_EQ(refused(), *before + 2);
  EXPECT_EQ(Close("target").n(), 200);  // unchanged
}

TEST_F(ValidationTest, CloseWithoutRowsIsFailedPrecondition) {
  v1::IngestResponse resp;
  ASSERT_TRUE(SendStream(d_->stub.get(), {MakeOpen("empty", 0, 0, 2, kM, v1::DTYPE_FP32)}, &resp).ok());
  v1::CloseGenerationRequest req;
  req.set_job("empty");
  v1::GenerationReport r;
  grpc::ClientContext ctx;
  EXPECT_EQ(d_->stub->CloseGeneration(&ctx, req, &r).error_code(), StatusCode::FAILED_PRECONDITION);
}

TEST_F(ValidationTest, BadNamesAndGenerationsInQueriesAreInvalidArgument) {
  OpenWithGoodBatches("queried");
  v1::CloseGenerationRequest close;
  close.set_job("queried");
  close.set_generation(-1);
  v1::GenerationReport r;
  grpc::ClientContext c1;
  ExpectStatus(d_->stub->CloseGeneration(&c1, close, &r), StatusCode::INVALID_ARGUMENT, "generation must be >= 0");
  v1::GetHistoryRequest history;
  history.set_job("queried");
  history.set_tap("no spaces allowed");
  v1::GetHistoryResponse h;
  grpc::ClientContext c2;
  ExpectStatus(d_->stub->GetHistory(&c2, history, &h), StatusCode::INVALID_ARGUMENT, "invalid tap name");
  EXPECT_EQ(Close("queried").n(), 200);  // the open snapshot was left alone
}

TEST_F(ValidationTest, WarningAboveCriticalIsRefusedAndChangesNothing) {
  auto configure = [&](std::optional<double> warning, std::optional<double> critical, v1::JobInfo* info) {
    v1::ConfigureJobRequest req;
    req.set_create(true);
    req.set_job("thresholds");
    if (warning) req.mutable_config()->mutable_thresholds()->set_drift_warning(*warning);
    if (critical) req.mutable_config()->mutable_thresholds()->set_drift_critical(*critical);
    grpc::ClientContext ctx;
    return d_->stub->ConfigureJob(&ctx, req, info);
  };
  v1::JobInfo info;
  ASSERT_TRUE(configure(0.2, std::nullopt, &info).ok());
  // Both in one request, and a partial update against the effective critical 0.5.
  ExpectStatus(configure(0.9, 0.3, &info), StatusCode::INVALID_ARGUMENT, "drift_warning (0.9) must be <= drift_critical (0.3)");
  ExpectStatus(configure(0.6, std::nullopt, &info), StatusCode::INVALID_ARGUMENT, "must be <= drift_critical (0.5)");
  ExpectStatus(configure(std::nullopt, 0.1, &info), StatusCode::INVALID_ARGUMENT, "drift_warning (0.2)");
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d_->stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).config().thresholds().drift_warning(), 0.2);
  EXPECT_EQ(jobs.jobs(0).config().thresholds().drift_critical(), 0.5);
  ASSERT_TRUE(configure(0.6, 0.9, &info).ok());  // raising both together is fine
  EXPECT_EQ(info.config().thresholds().drift_warning(), 0.6);
  // A new job's OpenSnapshot.config is checked the same way.
  v1::JobConfig inverted;
  inverted.mutable_thresholds()->set_drift_warning(0.7);
  v1::IngestResponse resp;
  ExpectStatus(SendStream(d_->stub.get(), {MakeOpen("inverted", 0, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &inverted)},
                          &resp),
               StatusCode::INVALID_ARGUMENT, "must be <= drift_critical (0.5)");
}

}  // namespace
}  // namespace sigma::server::testing

namespace sigma::server::testing {
namespace {

TEST(ValidationEdgeTest, CorpusSizeAndEmptyShares) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  const Rows rows = GaussianRows(300, 4, 2);
  // More rows than the declared corpus_size.
  v1::IngestResponse resp;
  grpc::Status s = SendShare(d->stub.get(), MakeOpen("corpus", 0, 0, 1, 4, v1::DTYPE_FP32, 250), rows, 0, 300, 100,
                             v1::DTYPE_FP32, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("corpus_size 250"), std::string::npos) << s.error_message();
  // The refused share left nothing (atomic shares): its snapshot is gone, and
  // the 250 declared rows sent again seal with n = 250.
  v1::CloseGenerationRequest req;
  req.set_job("corpus");
  v1::GenerationReport r;
  grpc::ClientContext ctx;
  EXPECT_EQ(d->stub->CloseGeneration(&ctx, req, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("corpus", 0, 0, 1, 4, v1::DTYPE_FP32, 250), rows, 0, 250, 100,
                        v1::DTYPE_FP32, &resp)
                  .ok());
  ASSERT_TRUE(resp.sealed());
  EXPECT_EQ(resp.report().n(), 250);
  EXPECT_EQ(resp.report().n_a(), 250);
  // Every rank finished without rows: FAILED_PRECONDITION, and the snapshot can be re-sent.
  EXPECT_EQ(SendStream(d->stub.get(), {MakeOpen("nothing", 0, 0, 1, 4, v1::DTYPE_FP32), MakeEnd()}, &resp).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("nothing", 0, 0, 1, 4, v1::DTYPE_FP32), rows, 0, 300, 100,
                        v1::DTYPE_FP32, &resp)
                  .ok());
  EXPECT_TRUE(resp.sealed());
  // Second OpenSnapshot in one stream; empty message.
  EXPECT_EQ(SendStream(d->stub.get(), {MakeOpen("x", 0, 0, 1, 4, v1::DTYPE_FP32), MakeOpen("x", 0, 0, 1, 4, v1::DTYPE_FP32)},
                       &resp)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(SendStream(d->stub.get(), {v1::IngestRequest()}, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// A snapshot opened with a wrong m that never got a row, ended by every rank
// (and so discarded), does not fix the tap's m: the share is re-sent with the
// right m, as it could be after a restart.
TEST(ValidationEdgeTest, DiscardedEmptySnapshotDoesNotFixTheTapsDimension) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  v1::IngestResponse resp;
  EXPECT_EQ(SendStream(d->stub.get(), {MakeOpen("mistake", 0, 0, 1, 16, v1::DTYPE_FP32), MakeEnd()}, &resp)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  const Rows rows = GaussianRows(300, 8, 3);
  grpc::Status s = SendShare(d->stub.get(), MakeOpen("mistake", 0, 0, 1, 8, v1::DTYPE_FP32), rows, 0, 300, 100,
                             v1::DTYPE_FP32, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_TRUE(resp.sealed());
  EXPECT_EQ(resp.report().m(), 8);
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d->stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).m(), 8);
  // Once a generation sealed, the tap's m is fixed.
  s = SendShare(d->stub.get(), MakeOpen("mistake", 1, 0, 1, 16, v1::DTYPE_FP32), GaussianRows(10, 16, 4), 0, 10, 10,
                v1::DTYPE_FP32, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("m = 16 differs from m = 8"), std::string::npos) << s.error_message();
}

// A dimension whose seal (m x m float64 matrices) cannot fit in
// --max-memory-bytes is refused at OpenSnapshot; the daemon keeps serving.
TEST(SealMemoryTest, DimensionBeyondTheBudgetIsRefusedAtOpen) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.max_memory_bytes = 1 << 20;  // 32 m^2 <= 1 MiB: m <= 181
  auto d = StartDaemon(o);
  ASSERT_NE(d, nullptr);
  v1::IngestResponse resp;
  const Rows wide = GaussianRows(4, 256, 1);
  grpc::Status s = SendShare(d->stub.get(), MakeOpen("wide", 0, 0, 1, 256, v1::DTYPE_FP32), wide, 0, 4, 4,
                             v1::DTYPE_FP32, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("--max-memory-bytes"), std::string::npos) << s.error_message();
  // The message names the working set (32 m^2 + 8 n_a m) with one row and with the job's n_a.
  EXPECT_NE(s.error_message().find("m = 256 needs at least 2099200 bytes"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("10485760 with n_a = 4096"), std::string::npos) << s.error_message();
  EXPECT_EQ(MetricValue(Scrape(d->ports.metrics_port), "sigma_open_snapshots", {}).value_or(-1), 0);
  v1::JobConfig cfg;
  cfg.set_n_a(512);
  const Rows ok = GaussianRows(600, 128, 2);
  s = SendShare(d->stub.get(), MakeOpen("narrow", 0, 0, 1, 128, v1::DTYPE_FP32, std::nullopt, &cfg), ok, 0, 600, 200,
                v1::DTYPE_FP32, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(resp.sealed());
  EXPECT_EQ(resp.report().m(), 128);
}

// The seqs a rank has sent are kept with each batch's digest (share.h,
// BatchLog::kBytesPerSeq = 32 bytes each) and charged against
// --max-memory-bytes: endless 1-row batches run into the budget instead of
// growing the daemon without bound; the refusal drops the share (atomic
// shares) and gives every byte back.
TEST(SealMemoryTest, BatchSeqsAreChargedAgainstTheBudget) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.max_memory_bytes = 64 << 10;
  auto d = StartDaemon(o);
  ASSERT_NE(d, nullptr);
  constexpr int kM = 4;
  v1::JobConfig cfg;
  cfg.set_n_a(64);
  const Rows rows = GaussianRows(1, kM, 5);
  auto share = [&](const std::string& job, const std::vector<int64_t>& seqs, bool end) {
    std::vector<v1::IngestRequest> msgs{MakeOpen(job, 0, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg)};
    for (int64_t seq : seqs) msgs.push_back(MakeBatch(rows, 0, 1, seq, v1::DTYPE_FP32));
    if (end) msgs.push_back(MakeEnd(static_cast<int64_t>(seqs.size())));
    v1::IngestResponse resp;
    grpc::Status s = SendStream(d->stub.get(), msgs, &resp);
    return std::make_pair(s, resp);
  };
  // 1000 batches: 32 KB of seq log, inside 64 KiB.
  std::vector<int64_t> some(1000);
  for (int64_t i = 0; i < 1000; ++i) some[i] = 2 * i;
  auto [some_status, some_resp] = share("some", some, true);
  ASSERT_TRUE(some_status.ok()) << some_status.error_message();
  ASSERT_TRUE(some_resp.sealed());
  EXPECT_EQ(some_resp.report().n(), 1000);

  // 3000 batches: refused near the budget, and the share is dropped whole.
  std::vector<int64_t> many(3000);
  for (int64_t i = 0; i < 3000; ++i) many[i] = i;
  auto [many_status, unused] = share("many", many, false);
  EXPECT_EQ(many_status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << many_status.error_message();
  EXPECT_NE(many_status.error_message().find("--max-memory-bytes"), std::string::npos)
      << many_status.error_message();
  EXPECT_NE(many_status.error_message().find("rank 0's share of job 'many' tap 'default' generation 0, batch seq "),
            std::string::npos)
      << many_status.error_message();
  const double held = *MetricValue(Scrape(d->ports.metrics_port), "sigma_open_snapshot_bytes", {});
  // The refused share left nothing, and its snapshot, now empty, was discarded.
  EXPECT_EQ(held, 0);
  v1::CloseGenerationRequest close;
  close.set_job("many");
  v1::GenerationReport report;
  grpc::ClientContext ctx;
  EXPECT_EQ(d->stub->CloseGeneration(&ctx, close, &report).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace sigma::server::testing

namespace sigma::server::testing {
namespace {

// Refusals of CloseGeneration, GetHistory and ConfigureJob are counted like
// those of Ingest (sigma_rejected_batches_total{reason}); they were not.
TEST(RefusalCountTest, UnaryRefusalsAreCounted) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  auto rejected = [&](const std::string& reason) {
    return MetricValue(Scrape(d->ports.metrics_port), "sigma_rejected_batches_total", {{"reason", reason}})
        .value_or(-1);
  };
  {
    grpc::ClientContext ctx;
    v1::CloseGenerationRequest req;
    req.set_job("nobody");
    v1::GenerationReport report;
    EXPECT_EQ(d->stub->CloseGeneration(&ctx, req, &report).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::GetHistoryRequest req;
    req.set_job("bad name");
    v1::GetHistoryResponse resp;
    EXPECT_EQ(d->stub->GetHistory(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::ConfigureJobRequest req;
    req.set_create(true);
    req.set_job("j");
    req.mutable_config()->set_n_a(0);
    v1::JobInfo info;
    EXPECT_EQ(d->stub->ConfigureJob(&ctx, req, &info).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(rejected("not_found"), 1);
  EXPECT_EQ(rejected("invalid_name"), 1);
  EXPECT_EQ(rejected("invalid_request"), 1);
}

}  // namespace
}  // namespace sigma::server::testing
