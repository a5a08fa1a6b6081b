// Atomic shares, share digests and resends to sealed generations (issue 15
// items 1-3) through a real in-process sigmad over gRPC with real SQLite.
#include <sqlite3.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server_test_util.h"

namespace sigma::server::testing {
namespace {

constexpr int kM = 8;

class ShareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    d_ = StartDaemon(TestOptions(dir_.path()));
    ASSERT_NE(d_, nullptr);
    cfg_.set_n_a(3000);
  }
  v1::IngestRequest Open(const std::string& job, int64_t gen = 0, int32_t rank = 0, int32_t world = 1) {
    return MakeOpen(job, gen, rank, world, kM, v1::DTYPE_FP32, std::nullopt, &cfg_);
  }
  grpc::Status Share(const std::string& job, const Rows& rows, v1::IngestResponse* resp, int64_t gen = 0,
                     int32_t rank = 0, int32_t world = 1, int64_t batch_rows = 2048) {
    return SendShare(d_->stub.get(), Open(job, gen, rank, world), rows, 0, rows.n(), batch_rows, v1::DTYPE_FP32,
                     resp);
  }
  double Rejected(const std::string& reason) {
    return MetricValue(Scrape(d_->ports.metrics_port), "sigma_rejected_batches_total", {{"reason", reason}})
        .value_or(0);
  }
  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
  v1::JobConfig cfg_;
};

// Issue 15 item 2, reproduced: a share with a NaN at row 5000 is refused at
// batch seq 2 after batches 0-1 were taken; the clean share sent next must
// seal exactly what the clean share alone seals (before the fix batches 0-1
// of the first attempt stayed and the seal was a mixture of both).
TEST_F(ShareTest, RefusedShareLeavesNothingAndNamesTheShareRow) {
  const Rows clean = GaussianRows(8000, kM, 21);
  Rows other = GaussianRows(8000, kM, 22);  // another file, with a NaN at row 5000
  other.values[5000 * kM + 3] = std::numeric_limits<double>::quiet_NaN();
  v1::IngestResponse alone;
  ASSERT_TRUE(Share("alone", clean, &alone).ok());
  ASSERT_TRUE(alone.sealed());

  v1::IngestResponse refused;
  const grpc::Status bad = Share("mixed", other, &refused);
  ASSERT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("batch seq 2 (share rows 4096..6143)"), std::string::npos)
      << bad.error_message();
  EXPECT_NE(bad.error_message().find("at row 5000, column 3"), std::string::npos) << bad.error_message();
  v1::IngestResponse fixed;
  ASSERT_TRUE(Share("mixed", clean, &fixed).ok());
  ASSERT_TRUE(fixed.sealed());
  EXPECT_EQ(fixed.batches_accepted(), 4);  // from scratch: nothing of the refused share was kept
  EXPECT_EQ(fixed.batches_duplicate(), 0);
  ExpectSameValues(fixed.report(), alone.report());
  EXPECT_EQ(fixed.report().track2(), alone.report().track2());
  EXPECT_EQ(fixed.report().n(), 8000);
  EXPECT_EQ(fixed.report().data_digest(), alone.report().data_digest());
}

// A refused share of one rank leaves the other ranks' rows as they were.
TEST_F(ShareTest, RefusedShareKeepsTheOtherRanks) {
  const Rows r0 = GaussianRows(3000, kM, 31), r1 = GaussianRows(3000, kM, 32);
  Rows bad1 = GaussianRows(3000, kM, 33);  // another file, with an Inf at row 2500
  bad1.values[2500 * kM] = std::numeric_limits<double>::infinity();
  v1::IngestResponse a0, a1, b0, b1, refused;
  ASSERT_TRUE(Share("two.clean", r0, &a0, 0, 0, 2, 1000).ok());
  ASSERT_TRUE(Share("two.clean", r1, &a1, 0, 1, 2, 1000).ok());
  ASSERT_TRUE(a1.sealed());
  ASSERT_TRUE(Share("two.retry", r0, &b0, 0, 0, 2, 1000).ok());
  const grpc::Status s = Share("two.retry", bad1, &refused, 0, 1, 2, 1000);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("at row 2500, column 0"), std::string::npos) << s.error_message();
  ASSERT_TRUE(Share("two.retry", r1, &b1, 0, 1, 2, 1000).ok());
  ASSERT_TRUE(b1.sealed());
  ExpectSameValues(b1.report(), a1.report());
  EXPECT_EQ(b1.report().data_digest(), a1.report().data_digest());
  ASSERT_EQ(b1.report().shares_size(), 2);
  EXPECT_EQ(b1.report().shares(1).rows(), 3000);
  EXPECT_TRUE(b1.report().shares(1).finished());
}

// Issue 15 item 1: a resend of the same data to a sealed generation returns
// the stored report (in any batch cut); other data is ALREADY_EXISTS naming
// job, tap, generation and the way out, and nothing changes.
TEST_F(ShareTest, SealedGenerationAnswersOnlyTheSameData) {
  const Rows first = GaussianRows(4000, kM, 41), second = GaussianRows(4000, kM, 42);
  v1::IngestResponse sealed, again, other;
  ASSERT_TRUE(Share("resend", first, &sealed).ok());
  ASSERT_TRUE(sealed.sealed());
  ASSERT_EQ(sealed.report().shares_size(), 1);
  EXPECT_EQ(sealed.report().shares(0).rows(), 4000);
  EXPECT_EQ(sealed.report().data_digest().size(), 16u);
  ASSERT_TRUE(Share("resend", first, &again, 0, 0, 1, 999).ok());  // other batch sizes: same digest
  ASSERT_TRUE(again.sealed());
  EXPECT_EQ(again.report().SerializeAsString(), sealed.report().SerializeAsString());
  const grpc::Status s = Share("resend", second, &other);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("job 'resend' tap 'default' generation 0 was sealed with rank 0's share 4000:"),
            std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("next generation"), std::string::npos) << s.error_message();
  EXPECT_GE(Rejected("share_conflict"), 1);
  v1::GetHistoryRequest req;
  req.set_job("resend");
  v1::GetHistoryResponse history;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d_->stub->GetHistory(&ctx, req, &history).ok());
  ASSERT_EQ(history.reports_size(), 1);
  EXPECT_EQ(history.reports(0).SerializeAsString(), sealed.report().SerializeAsString());
}

// A resend to a sealed generation is answered from the task lane (the stored
// report is read there). A Batch after the EndOfShare is refused at once,
// which finishes and deletes the stream while the answer is still queued; the
// answer must not touch the stream's state any more (it read the freed session
// before: valgrind reported invalid reads in Engine::CheckResent). The task
// lane is held up by a ConfigureJob waiting on a locked database.
TEST_F(ShareTest, ResendRefusedWhileItsReportIsReadLeavesTheDaemonServing) {
  const Rows rows = GaussianRows(3000, kM, 61);
  v1::IngestResponse sealed;
  ASSERT_TRUE(Share("cancelled", rows, &sealed).ok());
  ASSERT_TRUE(sealed.sealed());
  sqlite3* writer = nullptr;
  ASSERT_EQ(sqlite3_open(TestOptions(dir_.path()).db.c_str(), &writer), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(writer, "BEGIN EXCLUSIVE;", nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(writer);
  std::thread stall([&] {  // the task lane waits out the store's busy timeout
    v1::ConfigureJobRequest req;
    req.set_job("stall");
    req.set_create(true);
    v1::JobInfo info;
    grpc::ClientContext ctx;
    d_->stub->ConfigureJob(&ctx, req, &info);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  {
    grpc::ClientContext ctx;
    v1::IngestResponse resp;
    auto stream = d_->stub->Ingest(&ctx, &resp);
    ASSERT_TRUE(stream->Write(Open("cancelled")));
    ASSERT_TRUE(stream->Write(MakeBatch(rows, 0, rows.n(), 0, v1::DTYPE_FP32)));
    ASSERT_TRUE(stream->Write(MakeEnd(rows.n())));  // the report is read behind the ConfigureJob
    stream->Write(MakeBatch(rows, 0, 10, 1, v1::DTYPE_FP32));  // refused: the share has ended
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the stream is gone on the server too
  sqlite3_exec(writer, "ROLLBACK;", nullptr, nullptr, nullptr);
  sqlite3_close(writer);
  stall.join();
  v1::IngestResponse again;
  ASSERT_TRUE(Share("cancelled", rows, &again).ok());
  EXPECT_EQ(again.report().SerializeAsString(), sealed.report().SerializeAsString());
}

// Issue 15 item 3: two processes that both think they are rank 0 of 1.
// Concurrently, the second one's batches are refused (not skipped as
// duplicates); one after the other, the second share is refused by the sealed
// generation. Neither is silently dropped.
TEST_F(ShareTest, TwoSendersOfOneRankAreToldNotMerged) {
  const Rows a = GaussianRows(3000, kM, 51), b = GaussianRows(3000, kM, 52);
  // Concurrent: A has sent batches 0-1 and not finished; B starts its share.
  std::vector<v1::IngestRequest> first{Open("claim")};
  first.push_back(MakeBatch(a, 0, 1000, 0, v1::DTYPE_FP32));
  first.push_back(MakeBatch(a, 1000, 2000, 1, v1::DTYPE_FP32));
  v1::IngestResponse ra, rb, rc;
  ASSERT_TRUE(SendStream(d_->stub.get(), first, &ra).ok());
  const grpc::Status sb = Share("claim", b, &rb, 0, 0, 1, 1000);
  ASSERT_EQ(sb.error_code(), grpc::StatusCode::ALREADY_EXISTS) << sb.error_message();
  EXPECT_NE(sb.error_message().find("two senders claim rank 0 of 1"), std::string::npos) << sb.error_message();
  EXPECT_NE(sb.error_message().find("RANK and WORLD_SIZE"), std::string::npos) << sb.error_message();
  // A completes its share: the seal holds A's rows only.
  ASSERT_TRUE(Share("claim", a, &ra, 0, 0, 1, 1000).ok());
  ASSERT_TRUE(ra.sealed());
  v1::IngestResponse alone;
  ASSERT_TRUE(Share("claim.alone", a, &alone, 0, 0, 1, 1000).ok());
  ExpectSameValues(ra.report(), alone.report());
  // Sequential: B after the seal.
  const grpc::Status late = Share("claim", b, &rc, 0, 0, 1, 1000);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::ALREADY_EXISTS) << late.error_message();
}

// A rank missing from a generation sealed by CloseGeneration is told that its
// share is not in the seal.
TEST_F(ShareTest, LateRankAfterCloseIsTold) {
  const Rows r0 = GaussianRows(500, kM, 61), r1 = GaussianRows(500, kM, 62);
  v1::IngestResponse a, late;
  ASSERT_TRUE(Share("late", r0, &a, 0, 0, 2).ok());
  v1::CloseGenerationRequest close;
  close.set_job("late");
  v1::GenerationReport closed;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d_->stub->CloseGeneration(&ctx, close, &closed).ok());
  EXPECT_EQ(closed.shares_size(), 1);
  const grpc::Status s = Share("late", r1, &late, 0, 1, 2);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("sealed without a share of rank 1"), std::string::npos) << s.error_message();
}

}  // namespace
}  // namespace sigma::server::testing
