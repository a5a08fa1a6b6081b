// Estimator tests: shared test vectors, Track I bounds, failure handling,
// drift/divergence, alerts and the forecast (spec §3).
#include "sigma/kernels/estimator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "reference.h"
#include "sigma/kernels/backend_factory.h"

namespace sigma {
namespace {

using testing::CloseRel;

std::unique_ptr<Backend> AnyBackend() {
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend({BackendKind::kAuto, 0});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

class TestVectorTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TestVectorTest, ReproducesExpectedValues) {
  const testing::TestVector tv = testing::LoadTestVector(GetParam());
  auto backend = AnyBackend();
  const SealInput input{{tv.rows.data(), DType::kFloat64, tv.n_a, tv.m}, tv.preprocessing, tv.n,
                        tv.delta, tv.rho};
  absl::StatusOr<TrackValues> v = EvaluateSnapshot(*backend, input);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->flags.cholesky_failed) << v->flags.failure_reason;
  EXPECT_PRED3(CloseRel, v->track1_lower, tv.track1_lower, 1e-9);
  EXPECT_PRED3(CloseRel, v->track1_upper, tv.track1_upper, 1e-9);
  EXPECT_PRED3(CloseRel, v->track2, tv.track2, 1e-9);
  EXPECT_PRED3(CloseRel, v->track2_raw, tv.track2_raw, 1e-9);
  EXPECT_PRED3(CloseRel, v->track2_bias, tv.track2_bias, 1e-9);
  EXPECT_PRED3(CloseRel, v->track2_ci_halfwidth, tv.track2_ci_halfwidth, 1e-9);
  EXPECT_EQ(v->flags.rho_violated, tv.rho_violated);
  EXPECT_EQ(v->flags.n_a_below_m, tv.n_a_below_m);
  EXPECT_EQ(v->flags.low_confidence, tv.low_confidence);
  EXPECT_PRED3(CloseRel, v->max_energy, tv.max_energy, 1e-12);
}

std::string VectorName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param.substr(info.param.find_last_of('/') + 1);
  name = name.substr(0, name.size() - 5);
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

INSTANTIATE_TEST_SUITE_P(Shared, TestVectorTest, ::testing::ValuesIn(testing::TestVectorFiles()),
                         VectorName);

TEST(SharedVectorsPresent, AtLeastFive) {
  EXPECT_GE(testing::TestVectorFiles().size(), 5u)
      << "test vectors not found under " << testing::SharedDir();
}

// Track I (Weyl envelope): lower <= S <= upper on 200 seeded data sets whose
// columns respect rho; equality at f = 1.
TEST(TrackOneTest, BoundsHoldOnRandomDataSets) {
  auto backend = AnyBackend();
  std::mt19937_64 rng(20260101);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t m = 2 + trial % 11;
    const int64_t n = 40 + static_cast<int64_t>(rng() % 200);
    const int64_t n_a = 1 + static_cast<int64_t>(rng() % n);
    const bool normalise = trial % 2 == 0;
    const double decay = 0.3 + 0.7 * (trial % 7) / 6.0;
    std::vector<double> rows = testing::AnisotropicRows(rng, n, m, decay, normalise);
    double max_energy = 0;
    for (int64_t r = 0; r < n; ++r) {
      double e = 0;
      for (int64_t c = 0; c < m; ++c) e += rows[r * m + c] * rows[r * m + c];
      max_energy = std::max(max_energy, e);
    }
    const double budget = normalise ? 1.0 + 1e-12 : max_energy * 1.01;
    const double delta = std::pow(10.0, -1.0 - trial % 6);
    // Permute rows so that I_A = the first n_a rows is a random subset.
    for (int64_t r = n - 1; r > 0; --r) {
      const int64_t other = static_cast<int64_t>(rng() % (r + 1));
      std::swap_ranges(rows.begin() + r * m, rows.begin() + (r + 1) * m, rows.begin() + other * m);
    }
    const double exact = testing::NaiveLogDet(rows, n, m, 1.0 / n, delta);
    const SealInput input{{rows.data(), DType::kFloat64, n_a, m}, Preprocessing::kNone,
                          static_cast<double>(n), delta, budget};
    absl::StatusOr<TrackValues> v = EvaluateSnapshot(*backend, input);
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_FALSE(v->flags.cholesky_failed);
    const double slack = 1e-9 * std::max(1.0, std::fabs(exact));
    EXPECT_LE(v->track1_lower, exact + slack) << "trial " << trial;
    EXPECT_GE(v->track1_upper, exact - slack) << "trial " << trial;
    EXPECT_FALSE(v->flags.rho_violated);
    if (trial % 10 == 0) {
      const SealInput full{{rows.data(), DType::kFloat64, n, m}, Preprocessing::kNone,
                           static_cast<double>(n), delta, budget};
      absl::StatusOr<TrackValues> f1 = EvaluateSnapshot(*backend, full);
      ASSERT_TRUE(f1.ok());
      EXPECT_PRED3(CloseRel, f1->track1_lower, exact, 1e-9);
      EXPECT_PRED3(CloseRel, f1->track1_upper, exact, 1e-9);
      EXPECT_PRED3(CloseRel, f1->track2, exact, 1e-9);
      EXPECT_EQ(f1->track2_ci_halfwidth, 0.0);
    }
  }
}

TEST(EstimatorTest, FailedCholeskyGivesAReasonAndNoValues) {
  SealMoments moments;
  moments.m = 4;
  moments.n_a = 10;
  moments.cholesky[0] = {true, 0, -3.0};
  moments.cholesky[1] = {true, 0, -1.0};
  moments.cholesky[2] = {false, 3, 0.0};
  const TrackValues v = EstimateTracks(moments, 100, 1e-6, 1.0, EnergyStats{});
  EXPECT_TRUE(v.flags.cholesky_failed);
  EXPECT_NE(v.flags.failure_reason.find("column 3"), std::string::npos) << v.flags.failure_reason;
  EXPECT_EQ(v.track1_lower, 0.0);
  EXPECT_EQ(v.track2, 0.0);
}

TEST(EstimatorTest, OverflowingDataFailsCleanlyWithoutNaN) {
  auto backend = AnyBackend();
  // Every row's ||x||^2 = 4 * 3.6e307 is within float64 (ValidateSealInput
  // accepts it), but the Gram's diagonal, a sum of 8 such squares, overflows.
  std::vector<double> rows(8 * 4, 6e153);
  for (size_t i = 0; i < rows.size(); i += 3) rows[i] = -6e153;
  const SealInput input{{rows.data(), DType::kFloat64, 8, 4}, Preprocessing::kNone, 8.0, 1e-6,
                        1e300};
  absl::StatusOr<TrackValues> v = EvaluateSnapshot(*backend, input);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->flags.cholesky_failed);
  EXPECT_FALSE(v->flags.failure_reason.empty());
  EXPECT_FALSE(std::isnan(v->track2));
  EXPECT_FALSE(std::isnan(v->track1_upper));
}

TEST(EstimatorTest, InvalidInputsAreRefused) {
  auto backend = AnyBackend();
  std::vector<double> rows(12, 0.5);
  SealInput input{{rows.data(), DType::kFloat64, 3, 4}, Preprocessing::kL2, 2.0, 1e-6, 1.0};
  EXPECT_EQ(EvaluateSnapshot(*backend, input).status().code(),
            absl::StatusCode::kInvalidArgument);  // n < n_A
  input.corpus_size = 10;
  input.delta = 0;
  EXPECT_EQ(EvaluateSnapshot(*backend, input).status().code(), absl::StatusCode::kInvalidArgument);
  input.delta = 1e-6;
  rows[5] = std::nan("");
  EXPECT_EQ(EvaluateSnapshot(*backend, input).status().code(), absl::StatusCode::kInvalidArgument);
}

// `half` is the corpus half-width, `pop` the population one (default: the same).
TrackValues Values(int64_t m, double t1, double t2, double half, double pop = -1) {
  TrackValues v;
  v.m = m;
  v.track1_upper = t1;
  v.track2 = t2;
  v.track2_ci_halfwidth = half;
  v.track2_pop_halfwidth = pop < 0 ? half : pop;
  return v;
}

TEST(EstimatorTest, PopulationHalfWidthHasNoFinitePopulationFactor) {
  // Spec §3 "Two kinds of uncertainty": half = z sd(q) sqrt((1-f)/n_A),
  // half_pop = z sd(q) / sqrt(n_A). n_A = 100, n = 400 (f = 1/4), sd(q) = 2.
  SealMoments moments;
  moments.m = 4;
  moments.n_a = 100;
  for (auto& c : moments.cholesky) c = {true, 0, -1.0};
  moments.q_sd = 2.0;
  const TrackValues v = EstimateTracks(moments, 400, 1e-6, 1.0, EnergyStats{});
  EXPECT_DOUBLE_EQ(v.track2_ci_halfwidth, 1.959963984540054 * 2.0 * std::sqrt(0.75 / 100));
  EXPECT_DOUBLE_EQ(v.track2_pop_halfwidth, 1.959963984540054 * 2.0 / 10.0);  // 0.39199...
  const TrackValues full = EstimateTracks(moments, 100, 1e-6, 1.0, EnergyStats{});  // f = 1
  EXPECT_EQ(full.track2_ci_halfwidth, 0.0);
  EXPECT_DOUBLE_EQ(full.track2_pop_halfwidth, 1.959963984540054 * 2.0 / 10.0);
}

TEST(DriftTest, DriftAndDivergenceFollowTheSpec) {
  const TrackValues base = Values(100, -10.0, -50.0, 3.0, 6.0);
  const TrackValues now = Values(100, -10.5, -80.0, 4.0, 8.0);
  const DriftValues d = ComputeDrift(now, base, Probe::kFixed);
  EXPECT_DOUBLE_EQ(d.track1_drift, -0.5);
  EXPECT_DOUBLE_EQ(d.track2_drift, -30.0);
  EXPECT_DOUBLE_EQ(d.divergence, 29.5);
  EXPECT_DOUBLE_EQ(d.drift_halfwidth, 5.0);
  EXPECT_DOUBLE_EQ(d.drift_halfwidth_pop, 10.0);
  EXPECT_DOUBLE_EQ(d.drift_halfwidth_used, 5.0);  // fixed probe: the corpus interval
  EXPECT_DOUBLE_EQ(d.drift_zscore, -30.0 / (5.0 / 1.959963984540054));
  EXPECT_DOUBLE_EQ(d.track2_drift_per_dim, -0.3);
  EXPECT_DOUBLE_EQ(d.divergence_per_dim, 0.295);
  EXPECT_TRUE(d.significant);
  const DriftValues fresh = ComputeDrift(now, base, Probe::kFresh);
  EXPECT_DOUBLE_EQ(fresh.drift_halfwidth_used, 10.0);  // fresh samples: the population interval
  EXPECT_DOUBLE_EQ(fresh.drift_zscore, -5.879891953620162);  // -30 / (10 / 1.95996...)
  EXPECT_FALSE(ComputeDrift(Values(100, -10, -52, 3), base, Probe::kFixed).significant);
  EXPECT_TRUE(ComputeDrift(Values(100, -10, -82, 4, 8), base, Probe::kFixed).significant);
  // drift -7: beyond the corpus 4.24 = hypot(3, 3), within the population 8.49 = hypot(6, 6)
  EXPECT_TRUE(ComputeDrift(Values(100, -10, -57, 3, 6), base, Probe::kFixed).significant);
  EXPECT_FALSE(ComputeDrift(Values(100, -10, -57, 3, 6), base, Probe::kFresh).significant);
}

TEST(DriftTest, ZScoreEdgeCases) {
  EXPECT_EQ(DriftZScore(0.0, 0.0), 0.0);
  EXPECT_EQ(DriftZScore(1e-9, 0.0), std::numeric_limits<double>::infinity());
  EXPECT_EQ(DriftZScore(-1e-9, 0.0), -std::numeric_limits<double>::infinity());
  EXPECT_DOUBLE_EQ(DriftZScore(1.959963984540054, 1.959963984540054), 1.959963984540054);
}

bool Has(const std::vector<Alert>& alerts, const std::string& rule, AlertSeverity s) {
  for (const Alert& a : alerts)
    if (a.rule == rule && a.severity == s) return true;
  return false;
}

TEST(AlertTest, ThresholdAlertsNeedTheInterval) {
  // Spec §3 "Alerts need the interval": m = 10, drift -1.5 (-0.15 per dim),
  // warning 0.1. Fresh: half_pop = hypot(0.4, 0.4) = 0.5657 -> 0.15 - 0.0566 = 0.093 < 0.1;
  // fixed: half = hypot(0.3, 0.3) = 0.4243 -> 0.15 - 0.0424 = 0.108 >= 0.1.
  const AlertThresholds t;
  const TrackValues base = Values(10, 0.0, 0.0, 0.3, 0.4);
  const TrackValues now = Values(10, 0.0, -1.5, 0.3, 0.4);
  EXPECT_FALSE(Has(EvaluateAlerts(now, ComputeDrift(now, base, Probe::kFresh), t), "collapse_contraction",
                   AlertSeverity::kWarning));
  EXPECT_TRUE(Has(EvaluateAlerts(now, ComputeDrift(now, base, Probe::kFixed), t), "collapse_contraction",
                  AlertSeverity::kWarning));
  const TrackValues up = Values(10, 0.0, 1.5, 0.3, 0.4);
  EXPECT_FALSE(Has(EvaluateAlerts(up, ComputeDrift(up, base, Probe::kFresh), t), "collapse_expansion",
                   AlertSeverity::kWarning));
  EXPECT_TRUE(Has(EvaluateAlerts(up, ComputeDrift(up, base, Probe::kFixed), t), "collapse_expansion",
                  AlertSeverity::kWarning));
  // Critical 0.5: drift -5.5 (-0.55 per dim) minus 0.0566 = 0.493 -> only the warning.
  const TrackValues deep = Values(10, 0.0, -5.5, 0.3, 0.4);
  const auto deep_alerts = EvaluateAlerts(deep, ComputeDrift(deep, base, Probe::kFresh), t);
  EXPECT_TRUE(Has(deep_alerts, "collapse_contraction", AlertSeverity::kWarning));
  EXPECT_FALSE(Has(deep_alerts, "collapse_contraction", AlertSeverity::kCritical));
  // Divergence: track1 flat, |divergence| 1.5 -> 0.15 - 0.0566 < 0.1 (fresh), 0.108 (fixed).
  EXPECT_FALSE(Has(EvaluateAlerts(now, ComputeDrift(now, base, Probe::kFresh), t), "early_warning_divergence",
                   AlertSeverity::kWarning));
  EXPECT_TRUE(Has(EvaluateAlerts(now, ComputeDrift(now, base, Probe::kFixed), t), "early_warning_divergence",
                  AlertSeverity::kWarning));
}

TEST(AlertTest, TwoSidedThresholdsAndEarlyWarning) {
  const AlertThresholds t;
  const TrackValues base = Values(10, 0.0, 0.0, 0.1);
  auto alerts_for = [&](double t1, double t2) {  // half-width used: hypot(0.1, 0.1) / 10 = 0.0141 per dim
    const TrackValues now = Values(10, t1, t2, 0.1);
    return EvaluateAlerts(now, ComputeDrift(now, base, Probe::kFresh), t);
  };
  EXPECT_TRUE(Has(alerts_for(0.0, -1.5), "collapse_contraction", AlertSeverity::kWarning));
  EXPECT_TRUE(Has(alerts_for(0.0, -6.0), "collapse_contraction", AlertSeverity::kCritical));
  EXPECT_FALSE(Has(alerts_for(0.0, -6.0), "collapse_contraction", AlertSeverity::kWarning));
  EXPECT_TRUE(Has(alerts_for(0.0, 1.5), "collapse_expansion", AlertSeverity::kWarning));
  EXPECT_TRUE(Has(alerts_for(0.0, 6.0), "collapse_expansion", AlertSeverity::kCritical));
  EXPECT_TRUE(alerts_for(0.0, 0.5).empty());  // 0.05 per dim: nothing
  // Early warning: |divergence|/m >= 0.1 while |track1 drift|/m < 0.01, both signs.
  EXPECT_TRUE(Has(alerts_for(0.05, -1.2), "early_warning_divergence", AlertSeverity::kWarning));
  EXPECT_TRUE(Has(alerts_for(-0.05, 1.2), "early_warning_divergence", AlertSeverity::kWarning));
  EXPECT_FALSE(Has(alerts_for(0.5, -1.2), "early_warning_divergence", AlertSeverity::kWarning));
  // Flags.
  TrackValues flagged = Values(10, 0, 0, 0);
  flagged.flags.rho_violated = true;
  flagged.flags.low_confidence = true;
  const auto alerts = EvaluateAlerts(flagged, std::nullopt, t);
  EXPECT_TRUE(Has(alerts, "track1_invalid_rho", AlertSeverity::kWarning));
  EXPECT_TRUE(Has(alerts, "low_confidence", AlertSeverity::kInfo));
  for (const Alert& a : alerts_for(0.05, -6.0)) {
    bool known = false;
    for (const Alert& k : AllAlertKinds()) known |= k.rule == a.rule && k.severity == a.severity;
    EXPECT_TRUE(known) << a.rule;
  }
}

TEST(ForecastTest, LinearTrendCrossesCritical) {
  const std::vector<double> gens = {0, 1, 2, 3};
  const std::vector<double> drift = {0.0, -0.1, -0.2, -0.3};
  std::optional<double> ahead = GenerationsToCritical(gens, drift, 0.5);
  ASSERT_TRUE(ahead.has_value());
  EXPECT_NEAR(*ahead, 2.0, 1e-12);
  // Expansion heads to +critical.
  ahead = GenerationsToCritical(gens, std::vector<double>{0.0, 0.1, 0.2, 0.3}, 0.5);
  ASSERT_TRUE(ahead.has_value());
  EXPECT_NEAR(*ahead, 2.0, 1e-12);
  // Too few points, flat trend: absent. Already past: 0.
  EXPECT_FALSE(GenerationsToCritical(std::vector<double>{0, 1}, std::vector<double>{0, -0.1}, 0.5));
  EXPECT_FALSE(GenerationsToCritical(gens, std::vector<double>{-0.1, -0.1, -0.1, -0.1}, 0.5));
  EXPECT_EQ(GenerationsToCritical(gens, std::vector<double>{0, -0.2, -0.4, -0.6}, 0.5), 0.0);
}

TEST(EstimatorTest, DefaultNA) {
  EXPECT_EQ(DefaultNA(64), 4096);
  EXPECT_EQ(DefaultNA(768), 12288);
}

}  // namespace
}  // namespace sigma
