// Ingest through a raw stub into an in-process daemon: the shared test
// vectors, drift and divergence over generations, multi-rank order
// independence, replays, and the metrics scrape.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <limits>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server_test_util.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/estimator.h"
#include "sigma/kernels/sketch.h"
#include "sigma/server/refusal.h"
#include "sigma/server/scheduler.h"

namespace sigma::server::testing {
namespace {

void ExpectRel(double got, double want, const std::string& what) {
  EXPECT_LE(std::fabs(got - want), 1e-9 * std::max(1.0, std::fabs(want)))
      << what << ": got " << got << " want " << want;
}

class IngestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    d_ = StartDaemon(TestOptions(dir_.path()));
    ASSERT_NE(d_, nullptr);
  }
  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
};

TEST_F(IngestTest, SharedTestVectors) {
  const std::string shared = SIGMA_SHARED_DIR;
  int checked = 0;
  for (const char* name : {"small_full", "sampled_tenth", "n_a_below_m", "near_rank_deficient",
                           "raw_unnormalised"}) {
    SCOPED_TRACE(name);
    std::ifstream f(shared + "/testvectors/" + name + ".json");
    ASSERT_TRUE(f.good()) << "missing test vector " << name << " under " << shared;
    const nlohmann::json j = nlohmann::json::parse(f);
    Rows rows;
    rows.m = j["m"].get<int64_t>();
    for (const auto& row : j["rows"])
      for (const auto& v : row) rows.values.push_back(v.get<double>());
    ASSERT_EQ(rows.n(), j["n_A"].get<int64_t>());
    v1::JobConfig cfg;
    cfg.set_n_a(j["n_A"].get<int64_t>());
    cfg.set_delta(j["delta"].get<double>());
    cfg.set_rho(j["rho"].get<double>());
    cfg.set_preprocessing(j["preprocessing"] == "none" ? v1::PREPROCESSING_NONE : v1::PREPROCESSING_L2);
    const std::string job = std::string("vec_") + name;
    v1::IngestResponse resp;
    grpc::Status s = SendShare(d_->stub.get(),
                               MakeOpen(job, 0, 0, 1, static_cast<int32_t>(rows.m), v1::DTYPE_FP64,
                                        j["n"].get<int64_t>(), &cfg),
                               rows, 0, rows.n(), 37, v1::DTYPE_FP64, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_TRUE(resp.sealed());
    const v1::GenerationReport& r = resp.report();
    const auto& e = j["expected"];
    EXPECT_EQ(r.n_a(), j["n_A"].get<int64_t>());
    EXPECT_EQ(r.n(), j["n"].get<double>());
    ExpectRel(r.track1_lower(), e["track1_lower"].get<double>(), "track1_lower");
    ExpectRel(r.track1_upper(), e["track1_upper"].get<double>(), "track1_upper");
    ExpectRel(r.track2(), e["track2"].get<double>(), "track2");
    ExpectRel(r.track2_raw(), e["track2_raw"].get<double>(), "track2_raw");
    ExpectRel(r.track2_bias(), e["track2_bias"].get<double>(), "track2_bias");
    ExpectRel(r.track2_ci_halfwidth(), e["track2_ci_halfwidth"].get<double>(), "track2_ci_halfwidth");
    ExpectRel(r.flags().max_energy(), j["max_energy"].get<double>(), "max_energy");
    EXPECT_EQ(r.flags().rho_violated(), j["expected_flags"]["rho_violated"].get<bool>());
    EXPECT_EQ(r.flags().n_a_below_m(), j["expected_flags"]["n_a_below_m"].get<bool>());
    EXPECT_EQ(r.flags().low_confidence(), j["expected_flags"]["low_confidence"].get<bool>());
    EXPECT_FALSE(r.flags().cholesky_failed());
    EXPECT_EQ(r.baseline_generation(), 0);
    EXPECT_EQ(r.backend(), "cpu");
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

// Generation 1 contracts (the tail dimensions shrink): drift, divergence,
// per-dimension values and the contraction alert; generation 2 adds a forecast.
TEST_F(IngestTest, TwoGenerationsDriftAndDivergence) {
  const int64_t n = 2000, m = 16;
  v1::JobConfig cfg;
  cfg.set_n_a(512);
  std::vector<v1::GenerationReport> reports;
  for (int g = 0; g < 3; ++g) {
    const Rows rows = GaussianRows(n, m, 100 + g, g == 0 ? 1.0 : (g == 1 ? 0.05 : 0.02), 4);
    v1::IngestResponse resp;
    auto s = SendShare(d_->stub.get(), MakeOpen("drift", g, 0, 1, m, v1::DTYPE_FP32, std::nullopt, &cfg),
                       rows, 0, n, 250, v1::DTYPE_FP32, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_TRUE(resp.sealed());
    reports.push_back(resp.report());
  }
  const auto& b = reports[0];
  EXPECT_EQ(b.baseline_generation(), 0);
  EXPECT_EQ(b.track2_drift(), 0);
  EXPECT_EQ(b.n(), n);
  EXPECT_EQ(b.n_a(), 512);
  for (int g = 1; g < 3; ++g) {
    const auto& r = reports[g];
    EXPECT_EQ(r.baseline_generation(), 0);
    EXPECT_DOUBLE_EQ(r.track1_drift(), r.track1_upper() - b.track1_upper());
    EXPECT_DOUBLE_EQ(r.track2_drift(), r.track2() - b.track2());
    EXPECT_DOUBLE_EQ(r.divergence(), r.track1_drift() - r.track2_drift());
    EXPECT_DOUBLE_EQ(r.drift_halfwidth(), std::hypot(r.track2_ci_halfwidth(), b.track2_ci_halfwidth()));
    EXPECT_DOUBLE_EQ(r.per_dim().track2_drift(), r.track2_drift() / m);
    EXPECT_DOUBLE_EQ(r.per_dim().track1_drift(), r.track1_drift() / m);
    EXPECT_DOUBLE_EQ(r.per_dim().divergence(), r.divergence() / m);
    EXPECT_LT(r.per_dim().track2_drift(), -0.5);
    EXPECT_GT(r.divergence(), 0);  // Track II contracts faster than the envelope
    bool critical = false;
    for (const auto& a : r.alerts()) critical |= a.rule() == "collapse_contraction" && a.severity() == "critical";
    EXPECT_TRUE(critical) << r.DebugString();
    EXPECT_EQ(r.generations_to_critical(), 0.0);  // already past the threshold
    EXPECT_TRUE(r.has_generations_to_critical());
  }
  // The daemon's track values equal an offline computation on the same I_A.
  {
    const Rows rows = GaussianRows(n, m, 101, 0.05, 4);
    auto backend = sigma::MakeBackend({sigma::BackendKind::kCpu});
    ASSERT_TRUE(backend.ok());
    // The daemon kept the bottom-512 by (priority, id) of default ids 0..n-1.
    sigma::BottomKSketch sketch(0, 512);
    std::vector<int64_t> slot_row(512, -1);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t slot = sketch.Offer(sigma::DefaultSampleId(0, i));
      if (slot >= 0) slot_row[static_cast<size_t>(slot)] = i;
    }
    std::vector<float> kept;
    for (const auto& e : sketch.Sorted()) {
      const int64_t i = slot_row[static_cast<size_t>(e.slot)];
      for (int64_t j = 0; j < m; ++j) kept.push_back(static_cast<float>(rows.values[static_cast<size_t>(i * m + j)]));
    }
    sigma::SealInput in;
    in.rows = sigma::RowBlock{kept.data(), sigma::DType::kFloat32, 512, m};
    in.corpus_size = n;
    auto vals = sigma::EvaluateSnapshot(**backend, in);
    ASSERT_TRUE(vals.ok());
    EXPECT_EQ(vals->track2, reports[1].track2());
    EXPECT_EQ(vals->track1_upper, reports[1].track1_upper());
    EXPECT_EQ(vals->track2_ci_halfwidth, reports[1].track2_ci_halfwidth());
  }
  // History, and the scrape carries the latest generation.
  v1::GetHistoryRequest hreq;
  hreq.set_job("drift");
  v1::GetHistoryResponse hist;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d_->stub->GetHistory(&ctx, hreq, &hist).ok());
  ASSERT_EQ(hist.reports_size(), 3);
  for (int g = 0; g < 3; ++g) EXPECT_EQ(hist.reports(g).SerializeAsString(), reports[g].SerializeAsString());
  const std::string scrape = Scrape(d_->ports.metrics_port);
  const std::map<std::string, std::string> l{{"job_name", "drift"}, {"tap", "default"}};
  EXPECT_EQ(MetricValue(scrape, "sigma_generation", l), 2.0);
  ExpectMetricNear(MetricValue(scrape, "sigma_track2", l), reports[2].track2());
  ExpectMetricNear(MetricValue(scrape, "sigma_track2_drift_per_dim", l), reports[2].per_dim().track2_drift());
  EXPECT_EQ(MetricValue(scrape, "sigma_alert",
                        {{"job_name", "drift"}, {"tap", "default"}, {"rule", "collapse_contraction"}, {"severity", "critical"}}),
            1.0);
  EXPECT_EQ(MetricValue(scrape, "sigma_alert",
                        {{"job_name", "drift"}, {"tap", "default"}, {"rule", "collapse_expansion"}, {"severity", "critical"}}),
            0.0);
}

// A generation whose Cholesky fails becomes the tap's latest: its track values
// are not published, but sigma_alert shows the alerts of that generation (not
// the previous one's) and the forecast gauge goes away with the forecast.
TEST_F(IngestTest, FailedSealRepublishesAlertsAndRemovesTheForecast) {
  const int64_t n = 400, m = 8;
  v1::JobConfig cfg;
  cfg.set_preprocessing(v1::PREPROCESSING_NONE);
  cfg.set_rho(1e6);
  std::vector<v1::GenerationReport> reports;
  for (int g = 0; g < 3; ++g) {
    Rows rows = GaussianRows(n, m, 300 + g, g == 0 ? 1.0 : 0.05, 4);
    if (g == 2) {
      // Each row's ||x||^2 (~1e307) is a float64 (ingest refuses larger), but the
      // Gram matrix of 400 rows overflows: the seal fails.
      for (double& v : rows.values) v *= 1e153;
    }
    v1::IngestResponse resp;
    auto s = SendShare(d_->stub.get(), MakeOpen("failing", g, 0, 1, m, v1::DTYPE_FP64, std::nullopt, &cfg), rows,
                       0, n, 100, v1::DTYPE_FP64, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_TRUE(resp.sealed());
    reports.push_back(resp.report());
  }
  ASSERT_TRUE(reports[1].has_generations_to_critical());
  bool contraction = false;
  for (const auto& a : reports[1].alerts())
    contraction |= a.rule() == "collapse_contraction" && a.severity() == "critical";
  ASSERT_TRUE(contraction) << reports[1].DebugString();
  ASSERT_FALSE(reports[2].has_generations_to_critical());
  ASSERT_TRUE(reports[2].flags().cholesky_failed()) << reports[2].DebugString();
  bool rho_alert = false;
  for (const auto& a : reports[2].alerts()) {
    EXPECT_NE(a.rule(), "collapse_contraction");
    rho_alert |= a.rule() == "track1_invalid_rho" && a.severity() == "warning";
  }
  ASSERT_TRUE(rho_alert) << reports[2].DebugString();

  const std::string scrape = Scrape(d_->ports.metrics_port);
  const std::map<std::string, std::string> l{{"job_name", "failing"}, {"tap", "default"}};
  auto alert = [&](const std::string& rule, const std::string& severity) {
    return MetricValue(scrape, "sigma_alert", {{"job_name", "failing"}, {"tap", "default"}, {"rule", rule}, {"severity", severity}});
  };
  EXPECT_EQ(MetricValue(scrape, "sigma_generation", l), 2.0);
  EXPECT_EQ(MetricValue(scrape, "sigma_seal_failures_total", l), 1.0);
  ExpectMetricNear(MetricValue(scrape, "sigma_track2", l), reports[1].track2());  // not a made-up 0
  EXPECT_EQ(alert("collapse_contraction", "critical"), 0.0);
  EXPECT_EQ(alert("track1_invalid_rho", "warning"), 1.0);
  EXPECT_FALSE(MetricValue(scrape, "sigma_generations_to_critical", l).has_value());
}

// 4 ranks whose batches interleave in random order (and finish in random
// order) give bitwise the same report as 1 rank sending everything.
TEST_F(IngestTest, FourRanksRandomInterleaveEqualsOneRank) {
  const int64_t n = 3000, m = 24;
  const Rows rows = GaussianRows(n, m, 7);
  std::mt19937_64 rng(42);
  std::vector<uint64_t> ids(n);
  for (auto& id : ids) id = rng();
  v1::JobConfig cfg;
  cfg.set_n_a(400);
  cfg.set_seed(1234);

  v1::IngestResponse one;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("one_rank", 0, 0, 1, m, v1::DTYPE_BF16, std::nullopt, &cfg),
                        rows, 0, n, 100, v1::DTYPE_BF16, &one, &ids)
                  .ok());
  ASSERT_TRUE(one.sealed());

  for (int trial = 0; trial < 3; ++trial) {
    const std::string job = "four_ranks_" + std::to_string(trial);
    // Random assignment of rows to ranks, in random order within each rank.
    std::vector<int64_t> perm(n);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    Rows shuffled;
    shuffled.m = m;
    std::vector<uint64_t> sids;
    for (int64_t i : perm) {
      shuffled.values.insert(shuffled.values.end(), rows.values.begin() + i * m, rows.values.begin() + (i + 1) * m);
      sids.push_back(ids[static_cast<size_t>(i)]);
    }
    const int64_t cuts[5] = {0, 500, 1400, 2100, n};
    struct RankStream {
      grpc::ClientContext ctx;
      v1::IngestResponse resp;
      std::unique_ptr<grpc::ClientWriter<v1::IngestRequest>> writer;
      std::vector<v1::IngestRequest> pending;
    };
    std::vector<std::unique_ptr<RankStream>> streams;
    for (int r = 0; r < 4; ++r) {
      auto st = std::make_unique<RankStream>();
      st->writer = d_->stub->Ingest(&st->ctx, &st->resp);
      ASSERT_TRUE(st->writer->Write(MakeOpen(job, 0, r, 4, m, v1::DTYPE_BF16, std::nullopt, &cfg)));
      int64_t seq = 0;
      for (int64_t b = cuts[r]; b < cuts[r + 1]; b += 73)
        st->pending.push_back(MakeBatch(shuffled, b, std::min(cuts[r + 1], b + 73), seq++, v1::DTYPE_BF16, &sids));
      streams.push_back(std::move(st));
    }
    // Interleave batch writes across the ranks at random.
    for (;;) {
      std::vector<int> live;
      for (int r = 0; r < 4; ++r) if (!streams[r]->pending.empty()) live.push_back(r);
      if (live.empty()) break;
      RankStream& st = *streams[live[rng() % live.size()]];
      ASSERT_TRUE(st.writer->Write(st.pending.front()));
      st.pending.erase(st.pending.begin());
    }
    std::vector<int> order{0, 1, 2, 3};
    std::shuffle(order.begin(), order.end(), rng);
    v1::GenerationReport sealed;
    int sealed_count = 0;
    for (int r : order) {
      ASSERT_TRUE(streams[r]->writer->Write(MakeEnd()));
      streams[r]->writer->WritesDone();
      grpc::Status s = streams[r]->writer->Finish();
      ASSERT_TRUE(s.ok()) << s.error_message();
      if (streams[r]->resp.sealed()) {
        ++sealed_count;
        sealed = streams[r]->resp.report();
      }
    }
    EXPECT_EQ(sealed_count, 1);
    EXPECT_TRUE(streams[order.back()]->resp.sealed());
    EXPECT_EQ(sealed.world_size(), 4);
    EXPECT_EQ(sealed.ranks_finished(), 4);
    ExpectSameValues(sealed, one.report());
  }
}

// Ranks that pre-sketch locally (send only their local bottom-k rows plus
// EndOfShare{count, max_energy, mean_energy, rho_violations}) get the same
// report as ranks that stream everything.
TEST_F(IngestTest, PreSketchedRanksEqualFullStreams) {
  const int64_t n = 2000, m = 10, k = 150;
  const Rows rows = GaussianRows(n, m, 31);
  std::vector<uint64_t> ids(n);
  std::mt19937_64 rng(8);
  for (auto& id : ids) id = rng();
  v1::JobConfig cfg;
  cfg.set_n_a(k);
  cfg.set_seed(99);
  cfg.set_preprocessing(v1::PREPROCESSING_NONE);
  cfg.set_rho(20.0);
  const int64_t cut = 1100;
  // Full streams, two ranks.
  v1::IngestResponse f0, f1;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("full", 0, 0, 2, m, v1::DTYPE_FP64, std::nullopt, &cfg), rows, 0, cut,
                        100, v1::DTYPE_FP64, &f0, &ids)
                  .ok());
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("full", 0, 1, 2, m, v1::DTYPE_FP64, std::nullopt, &cfg), rows, cut, n,
                        100, v1::DTYPE_FP64, &f1, &ids)
                  .ok());
  ASSERT_TRUE(f1.sealed());
  // Pre-sketched: each rank keeps its local bottom-k and its energy statistics.
  v1::IngestResponse last;
  for (int r = 0; r < 2; ++r) {
    const int64_t begin = r == 0 ? 0 : cut, end = r == 0 ? cut : n;
    sigma::BottomKSketch local(99, k);
    std::vector<int64_t> slot_row(k, -1);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t slot = local.Offer(ids[static_cast<size_t>(i)]);
      if (slot >= 0) slot_row[static_cast<size_t>(slot)] = i;
    }
    Rows kept;
    kept.m = m;
    std::vector<uint64_t> kept_ids;
    for (const auto& e : local.Sorted()) {
      const int64_t i = slot_row[static_cast<size_t>(e.slot)];
      kept.values.insert(kept.values.end(), rows.values.begin() + i * m, rows.values.begin() + (i + 1) * m);
      kept_ids.push_back(ids[static_cast<size_t>(i)]);
    }
    std::vector<double> all(rows.values.begin() + begin * m, rows.values.begin() + end * m);
    sigma::EnergyStats energy;
    sigma::PreprocessRows(sigma::Preprocessing::kNone, 20.0, all.data(), end - begin, m, &energy);
    std::vector<v1::IngestRequest> msgs{MakeOpen("presketched", 0, r, 2, m, v1::DTYPE_FP64, std::nullopt, &cfg)};
    msgs.push_back(MakeBatch(kept, 0, kept.n(), 0, v1::DTYPE_FP64, &kept_ids));
    v1::IngestRequest end_msg = MakeEnd(end - begin);
    end_msg.mutable_end()->set_max_energy(energy.max_energy);
    end_msg.mutable_end()->set_mean_energy(energy.mean_energy());
    end_msg.mutable_end()->set_rho_violations(energy.rho_violations);
    msgs.push_back(end_msg);
    ASSERT_TRUE(SendStream(d_->stub.get(), msgs, &last).ok());
  }
  ASSERT_TRUE(last.sealed());
  const auto& a = last.report();
  const auto& b = f1.report();
  EXPECT_EQ(a.n(), n);
  EXPECT_EQ(a.n_a(), k);
  for (auto [x, y] : {std::pair{a.track1_lower(), b.track1_lower()}, {a.track1_upper(), b.track1_upper()},
                      {a.track2(), b.track2()}, {a.track2_ci_halfwidth(), b.track2_ci_halfwidth()}})
    EXPECT_EQ(x, y);
  EXPECT_EQ(a.flags().max_energy(), b.flags().max_energy());
  EXPECT_EQ(a.flags().rho_violations(), b.flags().rho_violations());
  EXPECT_GT(a.flags().rho_violations(), 0);  // chi-square(10) rows above 20 exist
  EXPECT_TRUE(a.flags().rho_violated());
  EXPECT_NEAR(a.flags().mean_energy(), b.flags().mean_energy(), 1e-12 * b.flags().mean_energy());
}

// Replayed batches (same stream, a retried stream, and after the seal)
// change nothing.
TEST_F(IngestTest, ReplayedBatchesChangeNothing) {
  const int64_t n = 1000, m = 8;
  const Rows rows = GaussianRows(n, m, 11);
  v1::JobConfig cfg;
  cfg.set_n_a(300);
  v1::IngestResponse clean;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("clean", 0, 0, 1, m, v1::DTYPE_FP32, std::nullopt, &cfg), rows,
                        0, n, 100, v1::DTYPE_FP32, &clean)
                  .ok());
  // Stream 1: seq 0..4, then 2 and 0 again, then the stream breaks off (no EndOfShare).
  std::vector<v1::IngestRequest> first{MakeOpen("replay", 0, 0, 1, m, v1::DTYPE_FP32, std::nullopt, &cfg)};
  for (int s = 0; s < 5; ++s) first.push_back(MakeBatch(rows, s * 100, (s + 1) * 100, s, v1::DTYPE_FP32));
  first.push_back(MakeBatch(rows, 200, 300, 2, v1::DTYPE_FP32));
  first.push_back(MakeBatch(rows, 0, 100, 0, v1::DTYPE_FP32));
  v1::IngestResponse r1;
  ASSERT_TRUE(SendStream(d_->stub.get(), first, &r1).ok());
  EXPECT_FALSE(r1.sealed());
  EXPECT_EQ(r1.batches_accepted(), 5);
  EXPECT_EQ(r1.batches_duplicate(), 2);
  EXPECT_EQ(r1.rows_accepted(), 500);
  // Stream 2: the client retries the whole share.
  v1::IngestResponse r2;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("replay", 0, 0, 1, m, v1::DTYPE_FP32, std::nullopt, &cfg), rows,
                        0, n, 100, v1::DTYPE_FP32, &r2)
                  .ok());
  EXPECT_EQ(r2.batches_accepted(), 5);
  EXPECT_EQ(r2.batches_duplicate(), 5);
  ASSERT_TRUE(r2.sealed());
  ExpectSameValues(r2.report(), clean.report());
  EXPECT_EQ(r2.report().n(), n);
  // Stream 3: after the seal, a retry gets the stored report.
  v1::IngestResponse r3;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("replay", 0, 0, 1, m, v1::DTYPE_FP32, std::nullopt, &cfg), rows,
                        0, n, 100, v1::DTYPE_FP32, &r3)
                  .ok());
  ASSERT_TRUE(r3.sealed());
  EXPECT_EQ(r3.batches_accepted(), 0);
  EXPECT_EQ(r3.report().SerializeAsString(), r2.report().SerializeAsString());
  // CloseGeneration on the sealed snapshot is idempotent.
  v1::CloseGenerationRequest creq;
  creq.set_job("replay");
  creq.set_generation(0);
  v1::GenerationReport closed;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d_->stub->CloseGeneration(&ctx, creq, &closed).ok());
  EXPECT_EQ(closed.SerializeAsString(), r2.report().SerializeAsString());
  v1::GetHistoryRequest hreq;
  hreq.set_job("replay");
  v1::GetHistoryResponse hist;
  grpc::ClientContext hctx;
  ASSERT_TRUE(d_->stub->GetHistory(&hctx, hreq, &hist).ok());
  EXPECT_EQ(hist.reports_size(), 1);
}

// Explicit close before every rank finished; other taps; ListJobs; ConfigureJob.
TEST_F(IngestTest, CloseGenerationConfigureAndListJobs) {
  const int64_t m = 8;
  const Rows rows = GaussianRows(400, m, 3);
  v1::IngestResponse resp;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("closing", 5, 0, 2, m, v1::DTYPE_FP16, 10000, nullptr, "layer.3"),
                        rows, 0, 400, 100, v1::DTYPE_FP16, &resp)
                  .ok());
  EXPECT_FALSE(resp.sealed());  // rank 1 has not finished
  v1::CloseGenerationRequest creq;
  creq.set_job("closing");
  creq.set_tap("layer.3");
  creq.set_generation(5);
  v1::GenerationReport report;
  grpc::ClientContext ctx;
  grpc::Status s = d_->stub->CloseGeneration(&ctx, creq, &report);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(report.flags().closed_explicitly());
  EXPECT_EQ(report.ranks_finished(), 1);
  EXPECT_EQ(report.world_size(), 2);
  EXPECT_EQ(report.n(), 10000);
  EXPECT_EQ(report.n_a(), 400);
  EXPECT_EQ(report.tap(), "layer.3");

  // Sketch parameters are fixed now; thresholds are not.
  v1::ConfigureJobRequest cj;
  cj.set_create(true);
  cj.set_job("closing");
  cj.mutable_config()->set_delta(1e-3);
  v1::JobInfo info;
  grpc::ClientContext c1;
  EXPECT_EQ(d_->stub->ConfigureJob(&c1, cj, &info).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  cj.mutable_config()->clear_delta();
  cj.mutable_config()->mutable_thresholds()->set_drift_warning(0.2);
  grpc::ClientContext c2;
  ASSERT_TRUE(d_->stub->ConfigureJob(&c2, cj, &info).ok());
  EXPECT_EQ(info.config().thresholds().drift_warning(), 0.2);
  EXPECT_EQ(info.config().thresholds().drift_critical(), 0.5);
  EXPECT_EQ(info.config().n_a(), 4096);
  EXPECT_EQ(info.m(), m);
  EXPECT_EQ(info.last_generation(), 5);
  EXPECT_EQ(info.generations_sealed(), 1);

  // A new job configured before its first snapshot.
  v1::ConfigureJobRequest nj;
  nj.set_create(true);
  nj.set_job("preconfigured");
  nj.mutable_config()->set_n_a(64);
  nj.mutable_config()->set_preprocessing(v1::PREPROCESSING_NONE);
  nj.mutable_config()->set_rho(50);
  grpc::ClientContext c3;
  ASSERT_TRUE(d_->stub->ConfigureJob(&c3, nj, &info).ok());
  EXPECT_EQ(info.last_generation(), -1);
  EXPECT_EQ(info.m(), 0);
  v1::IngestResponse presp;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("preconfigured", 0, 0, 1, m, v1::DTYPE_FP32), rows, 0, 400, 100,
                        v1::DTYPE_FP32, &presp)
                  .ok());
  ASSERT_TRUE(presp.sealed());
  EXPECT_EQ(presp.report().n_a(), 64);
  EXPECT_GT(presp.report().flags().max_energy(), 2.0);  // raw rows, not normalised

  v1::ListJobsResponse jobs;
  grpc::ClientContext c4;
  ASSERT_TRUE(d_->stub->ListJobs(&c4, v1::ListJobsRequest(), &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 2);
  EXPECT_EQ(jobs.jobs(0).job(), "closing");
  EXPECT_EQ(jobs.jobs(0).taps(0), "layer.3");
  EXPECT_EQ(jobs.jobs(1).job(), "preconfigured");
}

// Several snapshots sealed together go through the batched path and each
// gets its own, correct report.
TEST_F(IngestTest, ConcurrentSealsAcrossJobs) {
  const int64_t m = 12, n = 600;
  std::vector<std::thread> threads;
  std::vector<v1::IngestResponse> resp(6);
  std::vector<grpc::Status> status(6);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      const Rows rows = GaussianRows(n, m, 500 + i);
      status[i] = SendShare(d_->stub.get(), MakeOpen("batch" + std::to_string(i), 0, 0, 1, m, v1::DTYPE_FP64),
                            rows, 0, n, 200, v1::DTYPE_FP64, &resp[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(status[i].ok()) << status[i].error_message();
    ASSERT_TRUE(resp[i].sealed());
    const Rows rows = GaussianRows(n, m, 500 + i);
    auto backend = sigma::MakeBackend({sigma::BackendKind::kCpu});
    sigma::SealInput in;
    in.rows = sigma::RowBlock{rows.values.data(), sigma::DType::kFloat64, n, m};
    in.corpus_size = n;
    auto vals = sigma::EvaluateSnapshot(**backend, in);
    ASSERT_TRUE(vals.ok());
    ExpectRel(resp[i].report().track2(), vals->track2, "track2");
    ExpectRel(resp[i].report().track1_upper(), vals->track1_upper, "track1_upper");
  }
}

// Explicit closes requested together share one batched SealBatch call.
TEST(SealBatchingTest, ClosesWithinTheWindowShareOneBackendCall) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.seal_batch_window_ms = 500;
  auto d = StartDaemon(o);
  ASSERT_NE(d, nullptr);
  const int kJobs = 4;
  for (int i = 0; i < kJobs; ++i) {
    v1::IngestResponse resp;
    ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("w" + std::to_string(i), 0, 0, 2, 8, v1::DTYPE_FP32),
                          GaussianRows(200, 8, 60 + i), 0, 200, 100, v1::DTYPE_FP32, &resp)
                    .ok());
    EXPECT_FALSE(resp.sealed());
  }
  std::vector<std::thread> threads;
  std::vector<grpc::Status> status(kJobs);
  std::vector<v1::GenerationReport> reports(kJobs);
  for (int i = 0; i < kJobs; ++i) {
    threads.emplace_back([&, i] {
      v1::CloseGenerationRequest req;
      req.set_job("w" + std::to_string(i));
      grpc::ClientContext ctx;
      status[i] = d->stub->CloseGeneration(&ctx, req, &reports[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(status[i].ok()) << status[i].error_message();
    EXPECT_TRUE(reports[i].flags().closed_explicitly());
  }
  const std::string scrape = Scrape(d->ports.metrics_port);
  const auto calls = MetricValue(scrape, "sigma_seal_batch_snapshots_count", {});
  const auto sealed = MetricValue(scrape, "sigma_seal_batch_snapshots_sum", {});
  ASSERT_TRUE(calls.has_value() && sealed.has_value());
  EXPECT_EQ(*sealed, kJobs);
  EXPECT_LT(*calls, kJobs);  // at least two snapshots went through one call
}

TEST_F(IngestTest, ScrapeParsesAndPromtoolIsClean) {
  const Rows rows = GaussianRows(300, 8, 9);
  v1::IngestResponse resp;
  ASSERT_TRUE(SendShare(d_->stub.get(), MakeOpen("scraped", 0, 0, 1, 8, v1::DTYPE_FP32), rows, 0, 300, 100,
                        v1::DTYPE_FP32, &resp)
                  .ok());
  ASSERT_TRUE(resp.sealed());
  const std::string scrape = Scrape(d_->ports.metrics_port);
  ASSERT_FALSE(scrape.empty());
  const std::map<std::string, std::string> l{{"job_name", "scraped"}, {"tap", "default"}};
  for (const char* name : {"sigma_track1_upper", "sigma_track1_lower", "sigma_track2", "sigma_track2_ci_halfwidth",
                           "sigma_track1_drift", "sigma_track2_drift", "sigma_divergence", "sigma_drift_halfwidth",
                           "sigma_track1_drift_per_dim", "sigma_track2_drift_per_dim", "sigma_divergence_per_dim",
                           "sigma_generation", "sigma_corpus_size", "sigma_sample_size", "sigma_rho_violations_total"}) {
    EXPECT_TRUE(MetricValue(scrape, name, l).has_value()) << name;
  }
  ExpectMetricNear(MetricValue(scrape, "sigma_track2", l), resp.report().track2());
  EXPECT_EQ(MetricValue(scrape, "sigma_sample_size", l), 300);
  // n_A = 300 >= 16 m: not low confidence.
  EXPECT_EQ(MetricValue(scrape, "sigma_alert",
                        {{"job_name", "scraped"}, {"tap", "default"}, {"rule", "low_confidence"}, {"severity", "info"}}),
            0.0);
  EXPECT_EQ(MetricValue(scrape, "sigma_ingested_rows_total", {}), 300);
  EXPECT_EQ(MetricValue(scrape, "sigma_ingested_batches_total", {}), 3);
  EXPECT_EQ(MetricValue(scrape, "sigma_ingested_bytes_total", {}), 300 * 8 * 4);
  EXPECT_EQ(MetricValue(scrape, "sigma_seal_duration_seconds_count", {}), 1);
  EXPECT_EQ(MetricValue(scrape, "sigma_open_snapshots", {}), 0);
  EXPECT_EQ(MetricValue(scrape, "sigma_compute_queue_depth", {}), 0);
  EXPECT_EQ(MetricValue(scrape, "sigma_backend_info", {{"backend", "cpu"}, {"fallback_reason", ""}}), 1.0);
  EXPECT_TRUE(MetricValue(scrape, "sigma_rejected_batches_total", {{"reason", "non_finite"}}).has_value());
  if (!HavePromtool()) GTEST_SKIP() << "promtool not found (Debian package prometheus): lint skipped";
  int rc = -1;
  const std::string out = PromtoolCheck(scrape, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "") << out;
}

}  // namespace
}  // namespace sigma::server::testing

namespace sigma::server::testing {
namespace {

// The one-pass energy of the ingest path agrees with the kernels'
// ConvertToDouble + PreprocessRows for every dtype and both preprocessings.
TEST(BatchEnergyTest, MatchesPreprocessRows) {
  const int64_t n = 300, m = 37;
  const Rows nonzero = GaussianRows(n, m, 5);
  Rows rows = nonzero;
  for (int64_t i = 0; i < m; ++i) rows.values[static_cast<size_t>(10 * m + i)] = 0;  // a zero row
  for (auto dtype : {v1::DTYPE_FP32, v1::DTYPE_FP16, v1::DTYPE_BF16, v1::DTYPE_FP64}) {
    const sigma::DType kd = dtype == v1::DTYPE_FP32   ? sigma::DType::kFloat32
                            : dtype == v1::DTYPE_FP16 ? sigma::DType::kFloat16
                            : dtype == v1::DTYPE_BF16 ? sigma::DType::kBFloat16
                                                      : sigma::DType::kFloat64;
    const std::string bytes = Pack(rows, 0, n, dtype);
    const std::string l2_bytes = Pack(nonzero, 0, n, dtype);
    // Under l2 a zero row is refused, naming it (ingest_rules.h), stats untouched.
    sigma::EnergyStats untouched;
    const absl::Status zero = BatchEnergy({bytes.data(), kd, n, m}, sigma::Preprocessing::kL2, 1.0, &untouched);
    EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(zero.message()).find("row 10 has norm 0"), std::string::npos) << zero.message();
    EXPECT_EQ(RefusalReason(zero), "invalid_norm");  // not counted as non_finite (issue 17)
    EXPECT_EQ(untouched.count, 0);
    for (auto p : {sigma::Preprocessing::kL2, sigma::Preprocessing::kNone}) {
      const sigma::RowBlock block{p == sigma::Preprocessing::kL2 ? l2_bytes.data() : bytes.data(), kd, n, m};
      for (double rho : {0.5, 1.0, 40.0}) {
        sigma::EnergyStats fast, slow;
        ASSERT_TRUE(BatchEnergy(block, p, rho, &fast).ok());
        std::vector<double> x(static_cast<size_t>(n * m));
        sigma::ConvertToDouble(block, x.data());
        sigma::PreprocessRows(p, rho, x.data(), n, m, &slow);
        EXPECT_EQ(fast.count, slow.count);
        EXPECT_EQ(fast.rho_violations, slow.rho_violations) << static_cast<int>(dtype) << " rho " << rho;
        EXPECT_NEAR(fast.max_energy, slow.max_energy, 1e-12 * slow.max_energy);
        EXPECT_NEAR(fast.sum_energy, slow.sum_energy, 1e-12 * slow.sum_energy);
      }
    }
    // NaN and Inf are reported by CheckFinite's message, stats untouched.
    std::string bad = bytes;
    Rows r2 = rows;
    r2.values[static_cast<size_t>(7 * m + 3)] = std::numeric_limits<double>::quiet_NaN();
    bad = Pack(r2, 0, n, dtype);
    sigma::EnergyStats stats;
    const absl::Status s = BatchEnergy({bad.data(), kd, n, m}, sigma::Preprocessing::kL2, 1.0, &stats);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.message()).find("row 7, column 3"), std::string::npos) << s.message();
    EXPECT_EQ(RefusalReason(s), "non_finite");
    EXPECT_EQ(stats.count, 0);
  }
  // Finite float64 values whose squares overflow are not NaN/Inf inputs: under
  // l2 the scaled norm normalises them, under none ||x||^2 is not a float64.
  Rows huge = GaussianRows(2, 4, 1);
  huge.values[0] = 1e200;
  const std::string hb = Pack(huge, 0, 2, v1::DTYPE_FP64);
  sigma::EnergyStats st;
  ASSERT_TRUE(BatchEnergy({hb.data(), sigma::DType::kFloat64, 2, 4}, sigma::Preprocessing::kL2, 1.0, &st).ok());
  EXPECT_EQ(st.count, 2);
  EXPECT_EQ(st.sum_energy, 2.0);
  const absl::Status none = BatchEnergy({hb.data(), sigma::DType::kFloat64, 2, 4}, sigma::Preprocessing::kNone, 1.0, &st);
  EXPECT_EQ(none.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(none.message()).find("row 0 has a squared norm above"), std::string::npos) << none.message();
  EXPECT_EQ(RefusalReason(none), "invalid_norm");
  EXPECT_EQ(st.count, 2);
}

// Issue 14 item 6: rows scaled by 1e155 / 1e-170 / 1e-300 give the energies
// of the unscaled rows (the plain sum of squares over/underflows).
TEST(BatchEnergyTest, ScaledFloat64RowsGiveTheUnscaledEnergies) {
  const int64_t n = 50, m = 19;
  const Rows base = GaussianRows(n, m, 6);
  const std::string bb = Pack(base, 0, n, v1::DTYPE_FP64);
  sigma::EnergyStats ref;
  ASSERT_TRUE(BatchEnergy({bb.data(), sigma::DType::kFloat64, n, m}, sigma::Preprocessing::kL2, 1.0, &ref).ok());
  for (double scale : {1e155, 1e-170, 1e-300}) {
    Rows scaled = base;
    for (double& v : scaled.values) v *= scale;
    const std::string sb = Pack(scaled, 0, n, v1::DTYPE_FP64);
    sigma::EnergyStats got;
    ASSERT_TRUE(BatchEnergy({sb.data(), sigma::DType::kFloat64, n, m}, sigma::Preprocessing::kL2, 1.0, &got).ok());
    EXPECT_EQ(got.count, ref.count) << scale;
    EXPECT_EQ(got.sum_energy, ref.sum_energy) << scale;
    EXPECT_EQ(got.max_energy, 1.0) << scale;
    // Under none the energy scales by scale^2: representable for 1e-170 only as 0.
    sigma::EnergyStats raw;
    const absl::Status s = BatchEnergy({sb.data(), sigma::DType::kFloat64, n, m}, sigma::Preprocessing::kNone, 1.0, &raw);
    EXPECT_EQ(s.ok(), scale < 1) << scale << " " << s;
  }
}

}  // namespace
}  // namespace sigma::server::testing
