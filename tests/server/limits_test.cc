// Per-client and per-batch limits (issue: bounded resources): the token
// bucket and stream counting in isolation (fake clock), then every limit
// against a real in-process daemon over loopback: RESOURCE_EXHAUSTED with a
// message, the snapshot left as it was, and another client still served.
#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server_test_util.h"
#include "sigma/client/client.h"
#include "sigma/server/api.h"
#include "sigma/server/limits.h"

namespace sigma::server::testing {
namespace {

using grpc::StatusCode;

// ------------------------------------------------------------ ClientLimiter --

class FakeClock {
 public:
  absl::Time Now() const { return now_; }
  void Advance(absl::Duration d) { now_ += d; }

 private:
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST(ClientLimiterTest, BucketStartsFullRefillsAtTheRateAndSaysWhenToRetry) {
  FakeClock clock;
  ClientLimiter limiter([&] { return clock.Now(); });
  ClientLimits limits;
  limits.bytes_per_second = 1000;
  limits.burst_bytes = 2000;
  absl::Duration after;
  ASSERT_TRUE(limiter.Consume("a", "peer a", limits, 1500, &after).ok());
  EXPECT_EQ(after, absl::ZeroDuration());
  // 500 left: 800 more is short by 300 bytes = 300 ms at 1000 B/s.
  absl::Status s = limiter.Consume("a", "peer a", limits, 800, &after);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("rate limit of 1000 bytes/s"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("peer a"), std::string::npos);
  EXPECT_EQ(after, absl::Milliseconds(300));
  // Another client has its own bucket.
  EXPECT_TRUE(limiter.Consume("b", "peer b", limits, 2000, &after).ok());
  clock.Advance(absl::Milliseconds(299));
  EXPECT_FALSE(limiter.Consume("a", "peer a", limits, 800, &after).ok());
  EXPECT_EQ(after, absl::Milliseconds(1));
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(limiter.Consume("a", "peer a", limits, 800, &after).ok());
  // The refill stops at the burst.
  clock.Advance(absl::Seconds(100));
  EXPECT_TRUE(limiter.Consume("a", "peer a", limits, 2000, &after).ok());
  EXPECT_FALSE(limiter.Consume("a", "peer a", limits, 1, &after).ok());
}

TEST(ClientLimiterTest, BatchLargerThanTheBurstIsRefusedWithoutARetryTime) {
  ClientLimiter limiter;
  ClientLimits limits;
  limits.bytes_per_second = 1000;  // burst 0: one second's worth
  absl::Duration after;
  absl::Status s = limiter.Consume("a", "token 'x'", limits, 1001, &after);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("send smaller batches"), std::string::npos) << s.message();
  EXPECT_EQ(after, absl::ZeroDuration());
  EXPECT_TRUE(limiter.Consume("a", "token 'x'", limits, 1000, &after).ok());
}

TEST(ClientLimiterTest, NoRateMeansNoLimit) {
  ClientLimiter limiter;
  absl::Duration after;
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(limiter.Consume("a", "a", ClientLimits{}, int64_t{1} << 40, &after).ok());
}

TEST(ClientLimiterTest, StreamsAreCountedPerClientAndReleased) {
  ClientLimiter limiter;
  ClientLimits limits;
  limits.max_streams = 2;
  EXPECT_TRUE(limiter.AcquireStream("a", "peer a", limits).ok());
  EXPECT_TRUE(limiter.AcquireStream("a", "peer a", limits).ok());
  absl::Status s = limiter.AcquireStream("a", "peer a", limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("already has 2 open Ingest streams"), std::string::npos) << s.message();
  EXPECT_TRUE(limiter.AcquireStream("b", "peer b", limits).ok());
  EXPECT_EQ(limiter.open_streams("a"), 2);
  limiter.ReleaseStream("a");
  EXPECT_EQ(limiter.open_streams("a"), 1);
  EXPECT_TRUE(limiter.AcquireStream("a", "peer a", limits).ok());
  limiter.ReleaseStream("nobody");  // harmless
  EXPECT_TRUE(limiter.AcquireStream("c", "c", ClientLimits{}).ok());  // 0: unlimited
}

TEST(PeerHostTest, StripsSchemeAndPort) {
  EXPECT_EQ(PeerHost("ipv4:127.0.0.1:5000"), "127.0.0.1");
  EXPECT_EQ(PeerHost("ipv6:[::1]:5000"), "::1");
  EXPECT_EQ(PeerHost("unix:/tmp/s"), "unix:/tmp/s");
}

// ----------------------------------------------------------- real daemon --

constexpr int32_t kM = 16;
constexpr char kTokenA[] = "limits-token-a-0123456789";
constexpr char kTokenB[] = "limits-token-b-0123456789";

std::string WriteText(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wb");
  EXPECT_NE(f, nullptr) << path;
  if (f) {
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  return path;
}

// A client-streaming call kept open: open the snapshot, then write more later.
struct OpenStream {
  grpc::ClientContext context;
  v1::IngestResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::IngestRequest>> writer;
};

std::unique_ptr<OpenStream> Start(v1::SigmaMonitor::Stub* stub, const std::string& token) {
  auto s = std::make_unique<OpenStream>();
  s->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  if (!token.empty()) s->context.AddMetadata("authorization", std::string("Bearer ") + token);
  s->writer = stub->Ingest(&s->context, &s->response);
  return s;
}

// Returns once the daemon has processed the OpenSnapshot of every job in
// `jobs` (they are listed), i.e. their streams are counted: a Write() returning
// only means gRPC took the message.
void WaitUntilOpened(v1::SigmaMonitor::Stub* stub, const std::string& token, const std::set<std::string>& jobs) {
  std::set<std::string> listed;
  for (int i = 0; i < 500 && listed != jobs; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    v1::ListJobsResponse response;
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", std::string("Bearer ") + token);
    ASSERT_TRUE(stub->ListJobs(&ctx, v1::ListJobsRequest(), &response).ok());
    listed.clear();
    for (const auto& j : response.jobs())
      if (jobs.contains(j.job())) listed.insert(j.job());
  }
  ASSERT_EQ(listed, jobs) << "the daemon did not process the OpenSnapshot of every stream";
}

grpc::Status Send(v1::SigmaMonitor::Stub* stub, const std::string& token,
                  const std::vector<v1::IngestRequest>& messages, v1::IngestResponse* response = nullptr,
                  std::string* retry_after = nullptr) {
  auto s = Start(stub, token);
  for (const auto& m : messages) {
    if (!s->writer->Write(m)) break;
  }
  s->writer->WritesDone();
  grpc::Status status = s->writer->Finish();
  if (response) *response = s->response;
  if (retry_after) {
    const auto& trailers = s->context.GetServerTrailingMetadata();
    auto it = trailers.find("sigma-retry-after-ms");
    *retry_after = it == trailers.end() ? "" : std::string(it->second.data(), it->second.size());
  }
  return status;
}

void ExpectStatus(const grpc::Status& s, StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.error_code(), code) << s.error_message();
  EXPECT_NE(s.error_message().find(needle), std::string::npos)
      << "message '" << s.error_message() << "' does not mention '" << needle << "'";
}

v1::GenerationReport CloseGen(v1::SigmaMonitor::Stub* stub, const std::string& token, const std::string& job) {
  v1::CloseGenerationRequest req;
  req.set_job(job);
  req.set_generation(0);
  v1::GenerationReport report;
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", std::string("Bearer ") + token);
  grpc::Status s = stub->CloseGeneration(&ctx, req, &report);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return report;
}

class LimitsTest : public ::testing::Test {
 protected:
  // Token a: 2 streams and 20000 B/s (burst 8000); token b: the flags (4
  // streams, no rate limit). Rows per batch <= 100, m <= 64.
  void SetUp() override {
    DaemonOptions o = TestOptions(dir_.path());
    // The rate limiter's clock: real time plus what the test skips ahead.
    o.limiter_clock = [this] { return absl::Now() + absl::Milliseconds(skipped_ms_.load()); };
    o.max_rows_per_batch = 100;
    o.max_m = 64;
    o.max_streams_per_client = 4;
    o.tokens_file = WriteText(dir_.path() + "/tokens.yaml",
                              std::string("- token: ") + kTokenA +
                                  "\n  role: write\n  job_prefixes: [a.]\n  name: team-a\n"
                                  "  max_streams: 2\n  rate_limit_bytes_per_second: 20000\n"
                                  "  rate_limit_burst_bytes: 8000\n"
                                  "- token: " + kTokenB + "\n  role: write\n  job_prefixes: [b.]\n  name: team-b\n");
    d_ = StartDaemon(o);
    ASSERT_NE(d_, nullptr);
    rows_ = GaussianRows(400, kM, 17);
    cfg_.set_n_a(128);
  }

  v1::IngestRequest Open(const std::string& job, int32_t m = kM) {
    return MakeOpen(job, 0, 0, 1, m, v1::DTYPE_FP32, std::nullopt, &cfg_);
  }
  double Rejected(const std::string& reason) {
    return MetricValue(Scrape(d_->ports.metrics_port), "sigma_rejected_batches_total", {{"reason", reason}})
        .value_or(-1);
  }
  // Team b streams a whole generation of `job` and it seals.
  void OtherClientIsServed(const std::string& job) {
    v1::IngestResponse resp;
    grpc::Status s = Send(d_->stub.get(), kTokenB,
                          {Open(job), MakeBatch(rows_, 0, 100, 0, v1::DTYPE_FP32),
                           MakeBatch(rows_, 100, 200, 1, v1::DTYPE_FP32), MakeEnd()},
                          &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(resp.sealed());
  }

  std::atomic<int64_t> skipped_ms_{0};  // declared before d_: outlives the daemon
  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
  Rows rows_;
  v1::JobConfig cfg_;
};

TEST_F(LimitsTest, DimensionAboveMaxMIsRefusedAtOpen) {
  ExpectStatus(Send(d_->stub.get(), kTokenB, {Open("b.big", 65)}), StatusCode::RESOURCE_EXHAUSTED,
               "m = 65 exceeds --max-m = 64");
  EXPECT_GE(Rejected("m_too_large"), 1);
  OtherClientIsServed("b.ok");
  // Nothing was created for the refused job.
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kTokenB);
  ASSERT_TRUE(d_->stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).job(), "b.ok");
}

TEST_F(LimitsTest, TooManyRowsInOneBatchDropsTheShare) {
  // b.x: 100 good rows, then a 101-row batch (refused: the share is atomic, so
  // the 100 rows go too), then the whole share again.
  v1::IngestResponse resp;
  ASSERT_TRUE(Send(d_->stub.get(), kTokenB, {Open("b.x"), MakeBatch(rows_, 0, 100, 0, v1::DTYPE_FP32)}).ok());
  ExpectStatus(Send(d_->stub.get(), kTokenB, {Open("b.x"), MakeBatch(rows_, 100, 201, 1, v1::DTYPE_FP32)}),
               StatusCode::RESOURCE_EXHAUSTED, "101 rows exceed --max-rows-per-batch = 100");
  EXPECT_GE(Rejected("too_many_rows"), 1);
  ASSERT_TRUE(Send(d_->stub.get(), kTokenB,
                   {Open("b.x"), MakeBatch(rows_, 0, 100, 0, v1::DTYPE_FP32),
                    MakeBatch(rows_, 100, 200, 1, v1::DTYPE_FP32), MakeEnd()},
                   &resp).ok());
  ASSERT_TRUE(resp.sealed());
  EXPECT_EQ(resp.batches_accepted(), 2);  // from scratch
  // The same 200 rows without the refused batch: identical values.
  OtherClientIsServed("b.ref");
  ExpectSameValues(resp.report(), CloseGen(d_->stub.get(), kTokenB, "b.ref"));
}

TEST_F(LimitsTest, StreamsPerClientAreBoundedAndOthersStillServed) {
  // Token a may hold 2 streams; the third is refused, team b is not affected.
  auto s1 = Start(d_->stub.get(), kTokenA);
  auto s2 = Start(d_->stub.get(), kTokenA);
  ASSERT_TRUE(s1->writer->Write(Open("a.one")));
  ASSERT_TRUE(s2->writer->Write(Open("a.two")));
  WaitUntilOpened(d_->stub.get(), kTokenA, {"a.one", "a.two"});
  ExpectStatus(Send(d_->stub.get(), kTokenA, {Open("a.three")}), StatusCode::RESOURCE_EXHAUSTED,
               "token 'team-a' already has 2 open Ingest streams");
  EXPECT_GE(Rejected("too_many_streams"), 1);
  OtherClientIsServed("b.y");
  // Ending one stream frees its slot.
  s1->writer->WritesDone();
  ASSERT_TRUE(s1->writer->Finish().ok());
  grpc::Status third;
  for (int i = 0; i < 100; ++i) {  // the server releases the slot when the call is done
    third = Send(d_->stub.get(), kTokenA, {Open("a.three")});
    if (third.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(third.ok()) << third.error_message();
  s2->writer->WritesDone();
  EXPECT_TRUE(s2->writer->Finish().ok());
}

TEST_F(LimitsTest, StreamsPerPeerWithoutTokens) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.max_streams_per_client = 1;
  auto d = StartDaemon(o);
  ASSERT_NE(d, nullptr);
  auto held = Start(d->stub.get(), "");
  ASSERT_TRUE(held->writer->Write(Open("p.one")));
  WaitUntilOpened(d->stub.get(), "", {"p.one"});
  ExpectStatus(Send(d->stub.get(), "", {Open("p.two")}), StatusCode::RESOURCE_EXHAUSTED,
               "peer 127.0.0.1 already has 1 open Ingest streams");
  held->writer->WritesDone();
  EXPECT_TRUE(held->writer->Finish().ok());
}

TEST_F(LimitsTest, RateLimitRefusesWithRetryAfterAndResendsAreFree) {
  // 60 rows x 16 x 4 = 3840 bytes per batch; the bucket holds 8000.
  const std::vector<v1::IngestRequest> first{Open("a.rate"), MakeBatch(rows_, 0, 60, 0, v1::DTYPE_FP32),
                                             MakeBatch(rows_, 60, 120, 1, v1::DTYPE_FP32)};
  ASSERT_TRUE(Send(d_->stub.get(), kTokenA, first).ok());
  v1::IngestResponse resp;
  std::string retry_after;
  grpc::Status s = Send(d_->stub.get(), kTokenA, {Open("a.rate"), MakeBatch(rows_, 120, 180, 2, v1::DTYPE_FP32)},
                        &resp, &retry_after);
  ExpectStatus(s, StatusCode::RESOURCE_EXHAUSTED, "token 'team-a' exceeded its ingest rate limit of 20000 bytes/s");
  EXPECT_GE(Rejected("rate_limited"), 1);
  ASSERT_FALSE(retry_after.empty());
  EXPECT_GT(std::stoi(retry_after), 0);
  EXPECT_LE(std::stoi(retry_after), 200);  // 3840 - 320 missing bytes at 20000 B/s
  // Team b has no rate limit.
  OtherClientIsServed("b.z");
  // After the hint, a resend of everything costs only the new batch: the two
  // duplicates are not charged, so it passes with the bucket just refilled.
  skipped_ms_ += std::stoi(retry_after) + 20;  // the limiter's clock, not the test, waits
  ASSERT_TRUE(Send(d_->stub.get(), kTokenA,
                   {Open("a.rate"), MakeBatch(rows_, 0, 60, 0, v1::DTYPE_FP32),
                    MakeBatch(rows_, 60, 120, 1, v1::DTYPE_FP32), MakeBatch(rows_, 120, 180, 2, v1::DTYPE_FP32),
                    MakeEnd()},
                   &resp).ok());
  EXPECT_EQ(resp.batches_accepted(), 1);
  EXPECT_EQ(resp.batches_duplicate(), 2);
  EXPECT_TRUE(resp.sealed());
}

TEST_F(LimitsTest, ClientLibraryWaitsOutTheRateLimit) {
  // 400 rows (25.6 KB) through a 20000 B/s limit with an 8000-byte burst in
  // 3840-byte chunks: the client is refused, waits the hinted time, resends
  // and completes; the report equals an unlimited upload of the same rows.
  sigma::client::ClientOptions options;
  options.bearer_token = kTokenA;
  options.chunk_bytes = 60 * kM * 4;
  options.max_retries = 50;
  options.initial_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(50);
  auto client = sigma::client::Client::Create({"127.0.0.1:" + std::to_string(d_->ports.grpc_port)}, options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<float> data(rows_.values.begin(), rows_.values.end());
  sigma::client::Embeddings block{data.data(), v1::DTYPE_FP32, rows_.n(), kM};
  sigma::client::ShareOptions share;
  share.config = cfg_;
  auto response = (*client)->SendGeneration({"a.lib", "default", 0}, block, share);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_TRUE(response->sealed());
  EXPECT_GE((*client)->retries(), 1);
  EXPECT_GE(Rejected("rate_limited"), 1);

  v1::IngestResponse ref;
  std::vector<v1::IngestRequest> msgs{Open("b.lib")};
  for (int64_t b = 0, seq = 0; b < rows_.n(); b += 100) msgs.push_back(MakeBatch(rows_, b, b + 100, seq++, v1::DTYPE_FP32));
  msgs.push_back(MakeEnd());
  ASSERT_TRUE(Send(d_->stub.get(), kTokenB, msgs, &ref).ok());
  ExpectSameValues(response->report(), ref.report());
}

TEST(LimitOptionsTest, FlagsAndTokenKeysAreValidated) {
  const char* bad_args[][3] = {{"sigmad", "--max-rows-per-batch", "0"},
                               {"sigmad", "--max-m", "0"},
                               {"sigmad", "--max-m", "2000000"},
                               {"sigmad", "--max-streams-per-client", "0"},
                               {"sigmad", "--rate-limit-bytes-per-second", "-1"},
                               {"sigmad", "--rate-limit-burst-bytes", "-5"},
                               {"sigmad", "--gpu-min-m", "-1"},
                               {"sigmad", "--max-gpus", "-2"}};
  for (auto& args : bad_args) {
    bool help = false;
    auto o = ParseCommandLine(3, const_cast<char**>(args), &help);
    EXPECT_FALSE(o.ok()) << args[1] << " " << args[2];
  }
  const char* good[] = {"sigmad", "--rate-limit-bytes-per-second", "1000000", "--max-streams-per-client", "8",
                        "--gpu-min-m", "0", "--max-gpus", "2"};
  bool help = false;
  auto o = ParseCommandLine(9, const_cast<char**>(good), &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->rate_limit_bytes_per_second, 1000000);
  EXPECT_EQ(o->max_streams_per_client, 8);
  EXPECT_EQ(o->gpu_min_m, 0);
  EXPECT_EQ(o->max_gpus, 2);
  EXPECT_EQ(DaemonOptions().gpu_min_m, sigma::kDefaultGpuMinM);
  auto bad_token = Authorizer::Parse("- {token: x, role: write, job_prefixes: [a], max_streams: 0}", "t");
  EXPECT_FALSE(bad_token.ok());
  auto good_token =
      Authorizer::Parse("- {token: x, role: write, job_prefixes: [a], rate_limit_bytes_per_second: 5}", "t");
  ASSERT_TRUE(good_token.ok()) << good_token.status();
}

// ------------------------------------------------------- per-token quotas --

// Team a has the quota lines `quota` (tokens file keys, quota.h); team b has
// none: only the daemon-wide flags limit it. Each test starts its own daemon.
class QuotaTest : public LimitsTest {
 protected:
  void SetUp() override { rows_ = GaussianRows(400, kM, 17); cfg_.set_n_a(128); }
  void StartWithQuota(const std::string& quota) {
    DaemonOptions o = TestOptions(dir_.path());
    o.max_streams_per_client = 16;
    o.tokens_file = WriteText(dir_.path() + "/tokens.yaml",
                              std::string("- token: ") + kTokenA +
                                  "\n  role: write\n  job_prefixes: [a.]\n  name: team-a\n" + quota +
                                  "- token: " + kTokenB + "\n  role: write\n  job_prefixes: [b.]\n  name: team-b\n");
    d_ = StartDaemon(o);
    ASSERT_NE(d_, nullptr);
  }
  grpc::Status Seal(const std::string& token, const std::string& job, int64_t generation = 0) {
    return Send(d_->stub.get(), token,
                {MakeOpen(job, generation, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg_),
                 MakeBatch(rows_, 0, 100, 0, v1::DTYPE_FP32), MakeEnd()});
  }
  grpc::Status Configure(const std::string& token, const std::string& job) {
    v1::ConfigureJobRequest req;
    req.set_create(true);
    req.set_job(job);
    req.mutable_config()->set_n_a(128);
    v1::JobInfo info;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string("Bearer ") + token);
    return d_->stub->ConfigureJob(&ctx, req, &info);
  }
  // Waits until the daemon has accepted `rows` rows in all (the batches
  // written on held streams were processed).
  void WaitForRows(double rows) {
    double seen = -1;
    for (int i = 0; i < 500 && seen < rows; ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      seen = MetricValue(Scrape(d_->ports.metrics_port), "sigma_ingested_rows_total", {}).value_or(-1);
    }
    ASSERT_EQ(seen, rows);
  }
};

void ExpectQuotaRefusal(const grpc::Status& s, const std::string& needle) {
  ExpectStatus(s, StatusCode::RESOURCE_EXHAUSTED, needle);
  EXPECT_NE(s.error_message().find("token 'team-a'"), std::string::npos) << s.error_message();
  EXPECT_EQ(s.error_message().find(kTokenA), std::string::npos) << "the token leaked: " << s.error_message();
}

TEST_F(QuotaTest, JobQuotaRefusesTeamAWhileTeamBStillCreatesJobs) {
  ASSERT_NO_FATAL_FAILURE(StartWithQuota("  max_jobs: 2\n"));
  ASSERT_TRUE(Seal(kTokenA, "a.one").ok());
  ASSERT_TRUE(Configure(kTokenA, "a.two").ok());
  ExpectQuotaRefusal(Seal(kTokenA, "a.three"), "its max_jobs quota is 2");
  ExpectQuotaRefusal(Configure(kTokenA, "a.four"), "its max_jobs quota is 2");
  EXPECT_EQ(Rejected("quota_jobs"), 2);
  EXPECT_EQ(Rejected("too_many_jobs"), 0);
  // Team a still works in its own jobs; team b creates jobs past team a's quota.
  EXPECT_TRUE(Seal(kTokenA, "a.one", 1).ok());
  EXPECT_TRUE(Configure(kTokenA, "a.two").ok());
  for (const char* job : {"b.1", "b.2", "b.3"}) EXPECT_TRUE(Seal(kTokenB, job).ok()) << job;
  EXPECT_TRUE(Configure(kTokenB, "b.4").ok());
  // The refused jobs were not created.
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kTokenA);
  ASSERT_TRUE(d_->stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 2);
}

TEST_F(QuotaTest, OpenSnapshotQuotaRefusesTeamAWhileTeamBStillOpens) {
  ASSERT_NO_FATAL_FAILURE(StartWithQuota("  max_open_snapshots: 2\n"));
  auto a1 = Start(d_->stub.get(), kTokenA);
  auto a2 = Start(d_->stub.get(), kTokenA);
  ASSERT_TRUE(a1->writer->Write(Open("a.one")));
  ASSERT_TRUE(a2->writer->Write(Open("a.two")));
  WaitUntilOpened(d_->stub.get(), kTokenA, {"a.one", "a.two"});
  ExpectQuotaRefusal(Send(d_->stub.get(), kTokenA, {Open("a.three")}), "its max_open_snapshots quota is 2");
  EXPECT_EQ(Rejected("quota_open_snapshots"), 1);
  // Team b holds three snapshots open at once, and seals one.
  std::vector<std::unique_ptr<OpenStream>> b;
  for (const char* job : {"b.1", "b.2", "b.3"}) {
    b.push_back(Start(d_->stub.get(), kTokenB));
    ASSERT_TRUE(b.back()->writer->Write(Open(job)));
  }
  WaitUntilOpened(d_->stub.get(), kTokenB, {"b.1", "b.2", "b.3"});
  OtherClientIsServed("b.4");
  // A snapshot that seals leaves team a's count: it may open another.
  ASSERT_TRUE(a1->writer->Write(MakeBatch(rows_, 0, 100, 0, v1::DTYPE_FP32)));
  ASSERT_TRUE(a1->writer->Write(MakeEnd()));
  a1->writer->WritesDone();
  ASSERT_TRUE(a1->writer->Finish().ok());
  EXPECT_TRUE(Seal(kTokenA, "a.three").ok());
  for (auto* s : {a2.get(), b[0].get(), b[1].get(), b[2].get()}) s->context.TryCancel();
}

TEST_F(QuotaTest, MemoryQuotaRefusesTeamAWhileTeamBStillIngests) {
  // n_a = 128, m = 16 fp32: a snapshot holds 6144 bytes of sketch bookkeeping
  // at open; its rank's own row store 64 + 48 bytes per kept row (at most
  // 128) until its EndOfShare (atomic shares), and 32 per batch seq.
  ASSERT_NO_FATAL_FAILURE(StartWithQuota("  max_memory_bytes: 24000\n"));
  auto a1 = Start(d_->stub.get(), kTokenA);
  ASSERT_TRUE(a1->writer->Write(Open("a.one")));
  ASSERT_TRUE(a1->writer->Write(MakeBatch(rows_, 0, 50, 0, v1::DTYPE_FP32)));
  WaitForRows(50);  // a.one holds 6144 + 50 x (64 + 48) + 32 = 11776 bytes
  // A batch that would take team a past 24000 bytes is refused...
  ExpectQuotaRefusal(Send(d_->stub.get(), kTokenA, {Open("a.two"), MakeBatch(rows_, 0, 100, 0, v1::DTYPE_FP32)}),
                     "> the max_memory_bytes quota of token 'team-a' = 24000");
  // ... and so is an OpenSnapshot once team a holds 6144 + 128 x 112 + 64 = 20544 bytes.
  ASSERT_TRUE(a1->writer->Write(MakeBatch(rows_, 50, 150, 1, v1::DTYPE_FP32)));
  WaitForRows(150);
  ExpectQuotaRefusal(
      Send(d_->stub.get(), kTokenA, {Open("a.three")}),
      "would bring open snapshots to 26688 bytes > the max_memory_bytes quota of token 'team-a' = 24000");
  EXPECT_EQ(Rejected("quota_memory"), 2);
  EXPECT_EQ(Rejected("memory_exhausted"), 0);
  // Team b is not limited by team a's quota: 3 x 20544 bytes at once.
  std::vector<std::unique_ptr<OpenStream>> b;
  for (const char* job : {"b.1", "b.2", "b.3"}) {
    b.push_back(Start(d_->stub.get(), kTokenB));
    ASSERT_TRUE(b.back()->writer->Write(Open(job)));
    ASSERT_TRUE(b.back()->writer->Write(MakeBatch(rows_, 0, 150, 0, v1::DTYPE_FP32)));
  }
  WaitForRows(600);
  for (auto& s : b) {
    ASSERT_TRUE(s->writer->Write(MakeEnd()));
    s->writer->WritesDone();
    EXPECT_TRUE(s->writer->Finish().ok());
    EXPECT_TRUE(s->response.sealed());
  }
  // Once a.one seals its memory is back: team a opens again.
  ASSERT_TRUE(a1->writer->Write(MakeEnd()));
  a1->writer->WritesDone();
  ASSERT_TRUE(a1->writer->Finish().ok());
  EXPECT_TRUE(Seal(kTokenA, "a.three").ok());
}

TEST(QuotaOptionsTest, BadQuotaValuesRefuseToStartNamingTheEntry) {
  for (const char* key : {"max_jobs", "max_open_snapshots", "max_memory_bytes"}) {
    for (const char* value : {"0", "-3", "lots", "1.5", "[1]"}) {
      TempDir dir;
      DaemonOptions o = TestOptions(dir.path());
      o.tokens_file = WriteText(dir.path() + "/t.yaml",
                                std::string("- {token: ok-secret-1, role: read, job_prefixes: [a]}\n"
                                            "- {token: quota-secret-2, role: write, job_prefixes: [b], ") +
                                    key + ": " + value + "}\n");
      Daemon d;
      auto st = d.Start(o);
      ASSERT_FALSE(st.ok()) << key << ": " << value;
      const std::string msg(st.status().message());
      EXPECT_NE(msg.find("entry 2"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string(key) + " must be an integer >= 1"), std::string::npos) << msg;
      EXPECT_EQ(msg.find("quota-secret-2"), std::string::npos) << msg;
    }
  }
  auto good = Authorizer::Parse(
      "- {token: x, role: write, job_prefixes: [a], max_jobs: 3, max_open_snapshots: 4, max_memory_bytes: 5}", "t");
  ASSERT_TRUE(good.ok()) << good.status();
}

}  // namespace
}  // namespace sigma::server::testing
