// Unit tests of the Engine's parts, without gRPC: MemoryBudget, Snapshot's
// state machine, ReportHistory, BuildReport, SealQueue, JobRegistry, and the
// refusal model.
#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <new>
#include <thread>

#include "gtest/gtest.h"
#include "sigma/server/job_registry.h"
#include "sigma/server/quota.h"
#include "sigma/server/refusal.h"
#include "sigma/server/report_builder.h"
#include "sigma/server/report_history.h"
#include "sigma/server/seal_queue.h"
#include "sigma/server/share.h"
#include "sigma/server/snapshot.h"

namespace sigma::server {
namespace {

namespace v1 = sigma::v1;
using absl::StatusCode;

const SteadyTime kT0{};

Snapshot::Params Params(const std::string& job, int64_t generation, int32_t world_size = 1, int32_t m = 2) {
  Snapshot::Params p;
  p.key = SnapshotKey{job, "default", generation};
  p.m = m;
  p.world_size = world_size;
  p.k = 16;
  p.row_bytes = static_cast<size_t>(m) * 8;
  p.dtype = sigma::DType::kFloat64;
  return p;
}

v1::Batch Batch(int64_t seq, int64_t rows, int32_t m = 2) {
  v1::Batch b;
  b.set_seq(seq);
  b.set_rows(rows);
  b.set_data(std::string(static_cast<size_t>(rows * m * 8), '\0'));
  return b;
}

std::shared_ptr<Snapshot> NewSnapshot(MemoryBudget* budget, int32_t world_size = 1, int64_t generation = 0) {
  return std::make_shared<Snapshot>(Params("j", generation, world_size), std::nullopt, MemoryBudget::Charge(budget),
                                    kT0);
}

TEST(RefusalTest, ReasonTravelsWithTheStatus) {
  const absl::Status s = Refusal(StatusCode::kNotFound, "not_found", "unknown job 'x'");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "unknown job 'x'");
  EXPECT_EQ(RefusalReason(s), "not_found");
  EXPECT_EQ(RefusalReason(absl::UnavailableError("store")), "");
}

TEST(MemoryBudgetTest, ChargesAreBoundedAndReturnedOnDestruction) {
  MemoryBudget budget(1000);
  {
    MemoryBudget::Charge a(&budget);
    ASSERT_TRUE(a.Grow(600));
    MemoryBudget::Charge b(&budget);
    int64_t would = 0;
    EXPECT_FALSE(b.Grow(500, &would));
    EXPECT_EQ(would, 1100);
    EXPECT_EQ(budget.used(), 600);
    ASSERT_TRUE(b.Grow(400));
    MemoryBudget::Charge moved = std::move(b);
    EXPECT_EQ(budget.used(), 1000);
    EXPECT_TRUE(a.Grow(-100));
    EXPECT_EQ(budget.used(), 900);
  }
  EXPECT_EQ(budget.used(), 0);
}

// A token's memory quota (quota.h): a charge must fit the token's budget and
// the daemon's; whichever refuses is named, and nothing is left charged.
TEST(MemoryBudgetTest, QuotaBudgetChargesItsParentAndNamesWhoRefused) {
  MemoryBudget global(1000);
  TenantBook book(&global);
  const Tenant a{"token:a", "token 'team-a'", 0, 0, 400};
  const Tenant b{"token:b", "token 'team-b'", 5, 0, 0};  // no memory quota: the global budget
  ASSERT_EQ(book.Budget(b), &global);
  MemoryBudget* quota = book.Budget(a);
  ASSERT_EQ(book.Budget(a), quota);
  MemoryBudget::Charge ca(quota), cb(&global);
  int64_t would = 0;
  const MemoryBudget* refused = nullptr;
  ASSERT_TRUE(ca.Grow(300));
  EXPECT_EQ(global.used(), 300);
  EXPECT_FALSE(ca.Grow(200, &would, &refused));  // 500 > team a's 400
  EXPECT_EQ(refused, quota);
  EXPECT_EQ(would, 500);
  EXPECT_EQ(refused->naming().reason, "quota_memory");
  EXPECT_EQ(refused->naming().limit, "the max_memory_bytes quota of token 'team-a'");
  ASSERT_TRUE(cb.Grow(650));
  EXPECT_FALSE(ca.Grow(100, &would, &refused));  // fits team a's quota, not the daemon's
  EXPECT_EQ(refused, &global);
  EXPECT_EQ(would, 1050);
  EXPECT_EQ(refused->naming().reason, "memory_exhausted");
  EXPECT_EQ(quota->used(), 300);  // the refused charge was rolled back in the quota too
  ca.Force(200);                  // a forced charge reaches both
  EXPECT_EQ(quota->used(), 500);
  EXPECT_EQ(global.used(), 1150);
  ca.Release();
  EXPECT_EQ(quota->used(), 0);
  EXPECT_EQ(global.used(), 650);
}

TEST(TenantBookTest, CountsJobsAndOpenSnapshotsPerToken) {
  MemoryBudget global(1000);
  TenantBook book(&global);
  const Tenant a{"token:a", "token 'team-a'", 1, 1, 0};
  const Tenant none{};  // auth off: never limited, never counted
  EXPECT_TRUE(book.AdmitJob(a).ok());
  book.JobCreated(a);
  absl::Status s = book.AdmitJob(a);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RefusalReason(s), "quota_jobs");
  book.Opened(a);
  EXPECT_EQ(RefusalReason(book.AdmitOpen(a)), "quota_open_snapshots");
  book.Closed(a.key);
  EXPECT_TRUE(book.AdmitOpen(a).ok());
  for (int i = 0; i < 3; ++i) {
    book.JobCreated(none);
    book.Opened(none);
  }
  EXPECT_TRUE(book.AdmitJob(none).ok());
  EXPECT_TRUE(book.AdmitOpen(none).ok());
  EXPECT_EQ(book.jobs(""), 0);
}

// The CUDA backend's kept scratch counts against --max-memory-bytes through
// BackendScratchBudget: charged, refused beyond the limit, carried across Bind,
// returned by Unbind.
TEST(MemoryBudgetTest, BackendScratchCountsAgainstTheDaemonsBudget) {
  MemoryBudget budget(1000);
  BackendScratchBudget scratch;
  EXPECT_TRUE(scratch.TryCharge(300));  // before Bind: refused nothing, remembered
  scratch.Bind(&budget);
  EXPECT_EQ(budget.used(), 300);
  EXPECT_TRUE(scratch.TryCharge(600));
  EXPECT_EQ(budget.used(), 900);
  EXPECT_FALSE(scratch.TryCharge(200));  // over the limit: nothing reserved
  EXPECT_EQ(budget.used(), 900);
  MemoryBudget::Charge rows(&budget);
  EXPECT_FALSE(rows.Grow(200));  // the scratch leaves no room for snapshot rows
  scratch.Release(600);
  EXPECT_TRUE(rows.Grow(200));
  EXPECT_EQ(scratch.held(), 300);
  scratch.Unbind();
  EXPECT_EQ(budget.used(), 200);
  scratch.Release(300);  // after Unbind (the backend's destructor): the budget is not touched
  EXPECT_EQ(budget.used(), 200);
  EXPECT_EQ(scratch.held(), 0);
}

TEST(SnapshotTest, LastEndOfShareRequestsTheSealAndSettleAnswersEveryWaiter) {
  MemoryBudget budget(1 << 20);
  auto snap = NewSnapshot(&budget, /*world_size=*/2);
  ASSERT_TRUE(*snap->AddRows(0, Batch(0, 3), sigma::EnergyStats(), 0, "b", kT0));
  EXPECT_FALSE(*snap->AddRows(0, Batch(0, 3), sigma::EnergyStats(), 0, "b", kT0));  // duplicate seq
  EXPECT_GT(budget.used(), 0);
  std::vector<absl::Status> got;
  auto waiter = [&got](const absl::Status& s, ReportPtr) { got.push_back(s); };
  v1::EndOfShare end;
  EXPECT_EQ(snap->EndShare(0, &end, waiter, kT0).kind, Snapshot::Step::kReply);  // rank 1 still streaming
  // A finished rank may not send more rows.
  EXPECT_EQ(RefusalReason(snap->AddRows(0, Batch(1, 1), sigma::EnergyStats(), 0, "b", kT0).status()), "finished_rank");
  EXPECT_EQ(snap->EndShare(1, &end, waiter, kT0).kind, Snapshot::Step::kSeal);
  EXPECT_EQ(snap->state(), Snapshot::State::kSealing);
  EXPECT_EQ(snap->Close(waiter, kT0).kind, Snapshot::Step::kWait);  // joins the seal
  SealJob job;
  snap->Gather(&job);
  EXPECT_EQ(job.input.rows.num_rows, 3);
  EXPECT_EQ(job.ranks_finished, 2);
  EXPECT_EQ(budget.used(), 0);  // rows returned at gather
  auto report = std::make_shared<const v1::GenerationReport>();
  for (auto& w : snap->Settle(absl::OkStatus(), report)) w(absl::OkStatus(), report);
  EXPECT_EQ(got.size(), 2u);
  const Snapshot::Step after = snap->EndShare(0, &end, waiter, kT0);  // settled: replies at once
  EXPECT_EQ(after.kind, Snapshot::Step::kReply);
  EXPECT_EQ(after.report, report);
}

TEST(SnapshotTest, NoRowsGivesDiscardOrRefusal) {
  MemoryBudget budget(1 << 20);
  auto snap = NewSnapshot(&budget);
  const Snapshot::Step close = snap->Close([](const absl::Status&, ReportPtr) {}, kT0);
  EXPECT_EQ(close.kind, Snapshot::Step::kReply);
  EXPECT_EQ(close.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(snap->state(), Snapshot::State::kOpen);  // a refused Close changes nothing
  v1::EndOfShare end;
  const Snapshot::Step step = snap->EndShare(0, &end, [](const absl::Status&, ReportPtr) {}, kT0);
  EXPECT_EQ(step.kind, Snapshot::Step::kDiscard);
  EXPECT_EQ(snap->state(), Snapshot::State::kFailed);
}

TEST(SnapshotTest, BadEndOfShareIsRefusedAndLeavesTheRankOpen) {
  MemoryBudget budget(1 << 20);
  auto snap = NewSnapshot(&budget);
  ASSERT_TRUE(*snap->AddRows(0, Batch(0, 5), sigma::EnergyStats(), 0, "b", kT0));
  v1::EndOfShare end;
  end.set_count(2);  // fewer than sent
  const Snapshot::Step step = snap->EndShare(0, &end, [](const absl::Status&, ReportPtr) {}, kT0);
  EXPECT_EQ(step.status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RefusalReason(step.status), "invalid_request");
  EXPECT_TRUE(*snap->AddRows(0, Batch(1, 1), sigma::EnergyStats(), 0, "b", kT0));
}

TEST(SnapshotTest, ExpireOnlyWhenIdleAndOpen) {
  MemoryBudget budget(1 << 20);
  auto snap = NewSnapshot(&budget);
  const SteadyTime t1 = kT0 + std::chrono::seconds(10);
  ASSERT_TRUE(*snap->AddRows(0, Batch(0, 2), sigma::EnergyStats(), 0, "b", t1));
  EXPECT_FALSE(snap->Expire(kT0 + std::chrono::seconds(5), absl::FailedPreconditionError("expired")));
  EXPECT_TRUE(snap->Expire(t1, absl::FailedPreconditionError("expired")));
  EXPECT_EQ(snap->state(), Snapshot::State::kFailed);
  EXPECT_EQ(budget.used(), 0);
}

// Atomic shares: DropShare forgets a rank's rows, seqs and memory (the rank
// resends from scratch); a taken seq with other rows is a share_conflict.
TEST(SnapshotTest, DropShareForgetsTheRankAndConflictsAreNamed) {
  MemoryBudget budget(1 << 20);
  auto snap = NewSnapshot(&budget, /*world_size=*/2);
  const int64_t empty = budget.used();
  ASSERT_TRUE(*snap->AddRows(1, Batch(0, 2), sigma::EnergyStats(), 7, "b", kT0));
  ASSERT_TRUE(*snap->AddRows(0, Batch(0, 3), sigma::EnergyStats(), 5, "b", kT0));
  const int64_t with_rank1 = budget.used();
  EXPECT_EQ(RefusalReason(snap->AddRows(0, Batch(0, 3), sigma::EnergyStats(), 6, "b", kT0).status()),
            "share_conflict");
  EXPECT_EQ(snap->Digest(0).digest(), 5u);
  snap->DropShare(0);
  EXPECT_EQ(snap->total_rows(), 2);
  EXPECT_EQ(snap->Digest(0).rows(), 0);
  EXPECT_LT(budget.used(), with_rank1);
  EXPECT_GT(budget.used(), empty);  // rank 1's rows stay
  EXPECT_TRUE(*snap->AddRows(0, Batch(0, 3), sigma::EnergyStats(), 6, "b", kT0));  // from scratch, any rows
}

TEST(SnapshotTest, MemoryRefusalChangesNothing) {
  MemoryBudget budget(100);  // less than one 16-slot row store (16 x 16 bytes)
  auto snap = NewSnapshot(&budget);
  absl::StatusOr<bool> r = snap->AddRows(0, Batch(0, 10), sigma::EnergyStats(), 0, "b", kT0);
  EXPECT_EQ(RefusalReason(r.status()), "memory_exhausted");
  EXPECT_EQ(snap->total_rows(), 0);
  EXPECT_EQ(budget.used(), 0);
}

ReportPtr Report(const std::string& job, int64_t generation, bool failed, int64_t baseline = -1, double pd = 0) {
  auto r = std::make_shared<v1::GenerationReport>();
  r->set_job(job);
  r->set_tap("default");
  r->set_generation(generation);
  r->set_m(2);
  r->mutable_flags()->set_cholesky_failed(failed);
  r->set_baseline_generation(baseline);
  r->mutable_per_dim()->set_track2_drift(pd);
  return r;
}

// A batch's digest is the sum of its rows' hashes whatever the batch cut
// (rows hashed two at a time or one at a time give the same values), with and
// without sample ids, and its value never changes: stored digests are
// compared with resends sealed by earlier versions (golden values below).
TEST(ShareDigestTest, BatchDigestIsTheSumOfItsRowsAndStable) {
  constexpr size_t kRowBytes = 4100;  // 128 blocks of 32 bytes, one 8-byte word, a 4-byte tail
  constexpr int kRows = 5;
  std::string data(kRowBytes * kRows, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 2654435761u) >> 13);
  for (bool ids : {false, true}) {
    v1::Batch whole;
    whole.set_rows(kRows);
    whole.set_data(data);
    uint64_t sum = 0;
    for (int r = 0; r < kRows; ++r) {
      v1::Batch one;
      one.set_rows(1);
      one.set_data(data.substr(r * kRowBytes, kRowBytes));
      if (ids) {
        whole.add_sample_ids(1000 + r);
        one.add_sample_ids(1000 + r);
      }
      sum += BatchDigest(one, kRowBytes);
    }
    EXPECT_EQ(BatchDigest(whole, kRowBytes), sum) << "ids " << ids;
    EXPECT_EQ(DigestString(kRows, BatchDigest(whole, kRowBytes)), ids ? "5:971f1ec8731a625a" : "5:5e01fe9ab7aa40c7");
  }
}

TEST(ReportHistoryTest, RecordSaysWhetherTheGaugesShowIt) {
  ReportHistory h(64, nullptr);
  EXPECT_TRUE(h.Record(Report("j", 5, false)));
  EXPECT_FALSE(h.Record(Report("j", 3, false)));  // an older generation sealed late
  EXPECT_TRUE(h.Contains({"j", "default", 3}));
  int64_t last = 0;
  EXPECT_EQ(h.Generations("j", "1", &last), 2);
  EXPECT_EQ(last, 5);
  EXPECT_EQ((*h.Read({"j", "default", 3}))->generation(), 3);
  EXPECT_EQ(h.Read({"j", "default", 4}).status().code(), StatusCode::kNotFound);
  // Runs keep their own histories: another run's generation 0 is a highest of its own.
  auto other = std::make_shared<v1::GenerationReport>(*Report("j", 0, false));
  other->set_run("2");
  EXPECT_TRUE(h.Record(other));
  EXPECT_EQ(h.Generations("j", "2", &last), 1);
  EXPECT_EQ(last, 0);
  EXPECT_FALSE(h.Contains({"j", "default", 3, "2"}));
  EXPECT_EQ(h.Generations("j", "1", &last), 2);
}

TEST(ReportHistoryTest, ReplayPublishesTheLastGoodValuesThenAFailedLatest) {
  ReportHistory h(64, nullptr);
  std::vector<v1::GenerationReport> stored{*Report("j", 0, false), *Report("j", 1, false), *Report("j", 2, true)};
  const std::vector<ReportPtr> publish = h.Replay(stored);
  ASSERT_EQ(publish.size(), 2u);
  EXPECT_EQ(publish[0]->generation(), 1);
  EXPECT_EQ(publish[1]->generation(), 2);
}

TEST(ReportHistoryTest, StagingResolvesTheFirstSealAndForecastPoints) {
  ReportHistory h(64, nullptr);
  ReportHistory::Staging st = h.Stage();
  const BaselineInputs first = st.Resolve({"j", "default", 0}, {"j", "1"}, std::nullopt);
  EXPECT_EQ(first.generation, 0);
  EXPECT_TRUE(first.self);  // the first successful seal is its own baseline
  st.Stage(Report("j", 0, false, 0, 0.0));
  st.Stage(Report("j", 1, false, 0, 0.5));
  const BaselineInputs third = st.Resolve({"j", "default", 2}, {"j", "1"}, std::nullopt);
  EXPECT_EQ(third.generation, 0);
  EXPECT_FALSE(third.self);
  ASSERT_TRUE(third.entry.has_value());
  EXPECT_EQ(third.drift_points.size(), 2u);
  EXPECT_EQ(third.drift_points.at(1), 0.5);
  // Another job as baseline: none sealed yet.
  EXPECT_EQ(st.Resolve({"k", "default", 0}, {"other", "1"}, std::nullopt).generation, -1);
}

TEST(ReportBuilderTest, FailedSealHasNoBaselineAndSelfBaselineNoDrift) {
  ReportInputs in;
  in.key = {"j", "default", 4};
  in.m = 2;
  in.n = 10;
  in.backend = "cpu";
  in.config.mutable_thresholds()->set_drift_critical(1);
  sigma::TrackValues failed;
  failed.flags.cholesky_failed = true;
  BaselineInputs base;
  base.generation = 4;
  base.job = "j";
  base.self = true;
  EXPECT_EQ(BuildReport(in, failed, base).baseline_generation(), -1);
  sigma::TrackValues ok;
  ok.m = 2;
  ok.track2_ci_halfwidth = 0.25;
  const v1::GenerationReport r = BuildReport(in, ok, base);
  EXPECT_EQ(r.baseline_generation(), 4);
  EXPECT_EQ(r.track2_drift(), 0);
  EXPECT_DOUBLE_EQ(r.drift_halfwidth(), std::hypot(0.25, 0.25));
  EXPECT_EQ(r.job(), "j");
  EXPECT_EQ(r.backend(), "cpu");
}

TEST(SealQueueTest, SmallSealsDoNotWaitBehindALargeOne) {
  std::promise<void> large_started, release_large;
  std::shared_future<void> release = release_large.get_future().share();
  std::atomic<int> small_done{0};
  SealQueue::Options o;
  o.window_ms = 0;
  o.small_max_m = 64;
  SealQueue q(o, [&](SealQueue::Batch b) {
        if (b[0]->params().m > 64) {
          large_started.set_value();
          release.wait();
        } else {
          small_done += static_cast<int>(b.size());
        }
      },
      [](const SealQueue::Batch&, const absl::Status&) {});
  q.Start();
  MemoryBudget budget(1 << 20);
  auto large = std::make_shared<Snapshot>(Params("big", 0, 1, 4096), std::nullopt, MemoryBudget::Charge(&budget), kT0);
  q.EnqueueSeal(large, std::chrono::steady_clock::now());
  large_started.get_future().wait();
  q.EnqueueSeal(NewSnapshot(&budget, 1, 1), std::chrono::steady_clock::now());
  for (int i = 0; i < 2000 && small_done.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(small_done.load(), 1);  // sealed while the large seal is still running
  release_large.set_value();
  q.Stop();
}

TEST(SealQueueTest, LaneSurvivesBadAlloc) {
  std::atomic<int> calls{0}, failed{0};
  SealQueue q(SealQueue::Options{0, 64, 1024, 8},
              [&](SealQueue::Batch) {
                if (calls++ == 0) throw std::bad_alloc();
              },
              [&](const SealQueue::Batch& b, const absl::Status& s) {
                EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
                failed += static_cast<int>(b.size());
              });
  q.Start();
  MemoryBudget budget(1 << 20);
  q.EnqueueSeal(NewSnapshot(&budget, 1, 0), std::chrono::steady_clock::now());
  q.Stop();  // runs everything queued
  q.Start();
  q.EnqueueSeal(NewSnapshot(&budget, 1, 1), std::chrono::steady_clock::now());
  q.Stop();
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(failed.load(), 1);
}

TEST(SealQueueTest, TaskLaneIsBounded) {
  SealQueue q(SealQueue::Options{0, 64, 1024, 1}, [](SealQueue::Batch) {},
              [](const SealQueue::Batch&, const absl::Status&) {});
  // Not started: tasks stay queued.
  EXPECT_TRUE(q.TryEnqueueTask([] {}));
  EXPECT_FALSE(q.TryEnqueueTask([] {}));
  EXPECT_EQ(q.depth(), 1);
  q.Start();
  q.Stop();
  EXPECT_EQ(q.depth(), 0);
}

TEST(JobRegistryTest, CapsAndConfigurationRules) {
  DaemonOptions o;
  o.max_jobs = 1;
  o.max_taps_per_job = 1;
  JobRegistry reg(o);
  ASSERT_TRUE(reg.AdmitOpen("a", "t", 8, v1::JobConfig()).ok());
  reg.OpenSnapshot("a", "t", 8, v1::JobConfig());
  EXPECT_EQ(RefusalReason(reg.AdmitOpen("b", "t", 8, v1::JobConfig()).status()), "too_many_jobs");
  EXPECT_EQ(RefusalReason(reg.AdmitOpen("a", "u", 8, v1::JobConfig()).status()), "too_many_taps");
  EXPECT_EQ(RefusalReason(reg.AdmitOpen("a", "t", 4, v1::JobConfig()).status()), "dimension_mismatch");
  v1::JobConfig sketch;
  sketch.set_n_a(100);
  EXPECT_EQ(RefusalReason(reg.PrepareConfigure("a", sketch).status()), "sketch_fixed");  // a snapshot is open
  // The snapshot leaves without rows: the tap takes a new m again.
  reg.CloseSnapshot("a", "t", false, false);
  EXPECT_TRUE(reg.AdmitOpen("a", "t", 4, v1::JobConfig()).ok());
  absl::StatusOr<StoredJob> updated = reg.PrepareConfigure("a", sketch);
  ASSERT_TRUE(updated.ok());
  reg.ApplyConfigure(*updated);
  EXPECT_EQ(reg.Effective(*reg.Find("a"), 8).n_a(), 100);
}

}  // namespace
}  // namespace sigma::server
