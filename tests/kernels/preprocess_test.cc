// The ingest rules (sigma/kernels/ingest_rules.h) and their use in
// PreprocessRows / CheckRowNorms: overflow- and underflow-safe norms (issue 14
// item 6), refusals naming the row, and ordinary rows bitwise as before.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "reference.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/estimator.h"
#include "sigma/kernels/ingest_rules.h"
#include "sigma/kernels/preprocess.h"

namespace sigma {
namespace {

// The rules are compile-time constants where they can be.
static_assert(SplitMix64(0) == 0xE220A8397B1DCDAFull);
static_assert(DefaultSampleId(3, 7) == 7 + (uint64_t{3} << 40));
static_assert(DefaultNA(64) == 4096 && DefaultNA(768) == 12288);
static_assert(LowConfidence(4095, 256) && !LowConfidence(4096, 256));
static_assert(BFloat16ToDouble(0x3f80) == 1.0);

std::vector<double> Scaled(std::vector<double> rows, double scale) {
  for (double& v : rows) v *= scale;
  return rows;
}

// The extreme scales of the issue, and the ends of the float64 range.
constexpr double kScales[] = {1e155, 1e-170, 1e300, 1e-300};

TEST(IngestRulesTest, OrdinaryRowsUseThePlainSumBitwise) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  const int64_t m = 33;
  std::vector<double> row(m);
  for (double& v : row) v = normal(rng);
  double plain = 0;
  for (double v : row) plain += v * v;
  const ScaledSquares sq = RowSquares(m, plain, [&](int64_t c) { return row[c]; });
  EXPECT_EQ(sq.exp, 0);
  EXPECT_EQ(sq.ssq, plain);
  std::vector<double> expected = row, got = row;
  const double inv = 1.0 / std::sqrt(plain);  // the former PreprocessRows
  for (double& v : expected) v *= inv;
  PreprocessRows(Preprocessing::kL2, 1.0, got.data(), 1, m, nullptr);
  EXPECT_EQ(got, expected);
}

TEST(IngestRulesTest, ScaledSquaresAreExactPowerOfTwoRescalings) {
  const std::vector<double> row = {3, 4};
  for (int k : {-1070, -600, 0, 600, 1019}) {
    const std::vector<double> big = Scaled(row, std::ldexp(1.0, k));
    double plain = 0;
    for (double v : big) plain += v * v;
    const ScaledSquares sq = RowSquares(2, plain, [&](int64_t c) { return big[c]; });
    // ||x||^2 = ssq 4^exp = 25 4^k, whatever k.
    EXPECT_EQ(std::ldexp(std::sqrt(sq.ssq), sq.exp), std::ldexp(5.0, k)) << k;
    EXPECT_EQ(EnergyOfRow(Preprocessing::kL2, sq).energy, 1.0);
  }
}

TEST(PreprocessTest, ScaledRowsNormaliseLikeUnscaledOnes) {
  std::mt19937_64 rng(12);
  const int64_t n = 40, m = 24;
  const std::vector<double> base = testing::AnisotropicRows(rng, n, m, 0.8, false);
  std::vector<double> ref = base;
  EnergyStats ref_stats;
  PreprocessRows(Preprocessing::kL2, 1.0, ref.data(), n, m, &ref_stats);
  for (double scale : kScales) {
    std::vector<double> x = Scaled(base, scale);
    ASSERT_TRUE(CheckRowNorms({x.data(), DType::kFloat64, n, m}, Preprocessing::kL2).ok()) << scale;
    EnergyStats stats;
    PreprocessRows(Preprocessing::kL2, 1.0, x.data(), n, m, &stats);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], ref[i], 1e-14) << scale << " element " << i;
    EXPECT_EQ(stats.count, n);
    EXPECT_EQ(stats.max_energy, 1.0) << scale;
    EXPECT_EQ(stats.sum_energy, ref_stats.sum_energy) << scale;
    EXPECT_EQ(stats.rho_violations, 0) << scale;
  }
}

// Issue 14 item 6: track values of rows scaled by 1e155 or 1e-170 were
// -110.5 instead of -16.7. Every track of the CPU backend agrees to 1e-12.
TEST(PreprocessTest, ScaledRowsGiveTheSameTracks) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend({.kind = BackendKind::kCpu});
  if (!backend.ok()) GTEST_SKIP() << backend.status();
  std::mt19937_64 rng(13);
  const int64_t n_a = 200, m = 16;
  const std::vector<double> base = testing::AnisotropicRows(rng, n_a, m, 0.7, false);
  auto tracks = [&](const std::vector<double>& rows) {
    const SealInput input{{rows.data(), DType::kFloat64, n_a, m}, Preprocessing::kL2, 5000.0, 1e-6, 1.0};
    absl::StatusOr<TrackValues> v = EvaluateSnapshot(**backend, input);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : TrackValues{};
  };
  const TrackValues ref = tracks(base);
  ASSERT_FALSE(ref.flags.cholesky_failed);
  for (double scale : kScales) {
    const TrackValues got = tracks(Scaled(base, scale));
    EXPECT_PRED3(testing::CloseRel, got.track1_lower, ref.track1_lower, 1e-12) << scale;
    EXPECT_PRED3(testing::CloseRel, got.track1_upper, ref.track1_upper, 1e-12) << scale;
    EXPECT_PRED3(testing::CloseRel, got.track2, ref.track2, 1e-12) << scale;
    EXPECT_PRED3(testing::CloseRel, got.track2_raw, ref.track2_raw, 1e-12) << scale;
    EXPECT_PRED3(testing::CloseRel, got.track2_ci_halfwidth, ref.track2_ci_halfwidth, 1e-12) << scale;
    EXPECT_EQ(got.max_energy, 1.0) << scale;
    EXPECT_FALSE(got.flags.rho_violated) << scale;
  }
}

// Rows the ingest refuses, passed to PreprocessRows anyway (sigmactl eval,
// direct backend use): never NaN, documented outcomes.
TEST(PreprocessTest, RefusedRowsHaveDefinedOutcomes) {
  std::vector<double> rows = {1.5e308, 1.5e308, 0, 0};
  EnergyStats stats;
  PreprocessRows(Preprocessing::kL2, 1.0, rows.data(), 2, 2, &stats);
  EXPECT_NEAR(rows[0], std::sqrt(0.5), 1e-15);  // norm beyond float64: still normalised
  EXPECT_NEAR(rows[1], std::sqrt(0.5), 1e-15);
  EXPECT_EQ(rows[2], 0.0);  // zero row stays zero
  EXPECT_EQ(stats.sum_energy, 1.0);
  std::vector<double> raw = {1e160, 0};
  EnergyStats none;
  PreprocessRows(Preprocessing::kNone, 1.0, raw.data(), 1, 2, &none);
  EXPECT_TRUE(std::isinf(none.max_energy));
  EXPECT_EQ(none.rho_violations, 1);
}

TEST(PreprocessTest, NoneKeepsTinyEnergiesAccurate) {
  // Squares of 3e-150 are normal, but the plain sum 2.5e-299 is below the
  // trusted 2^-900: the scaled path must give the same energy.
  std::vector<double> rows = {3e-150, 4e-150, 3e-170, 4e-170};
  EnergyStats stats;
  PreprocessRows(Preprocessing::kNone, 1.0, rows.data(), 2, 2, &stats);
  EXPECT_PRED3(testing::CloseRel, stats.max_energy, 25e-300, 1e-15);
  EXPECT_EQ(stats.rho_violations, 0);
  EXPECT_EQ(rows[2], 3e-170);  // raw rows are left as they are
}

TEST(PreprocessTest, CheckRowNormsRefusesNamingTheRow) {
  const double big = 1.5e308;  // ||(big, big)|| = 2.1e308
  struct Case {
    std::vector<double> rows;  // 3 rows of m = 2
    Preprocessing p;
    std::string expected;  // "" = OK
  };
  const std::vector<Case> cases = {
      {{1, 2, 0, 0, 3, 4}, Preprocessing::kL2, "row 1 has norm 0"},
      {{1, 2, 0, 0, 3, 4}, Preprocessing::kNone, ""},  // a zero row is fine raw
      {{1, 2, 3, 4, big, big}, Preprocessing::kL2, "row 2 has a norm above the float64 range"},
      {{1, 2, 1e200, 1e200, 1e-320, 0}, Preprocessing::kL2, ""},  // scaled norms
      {{1, 2, 1e160, 0, 3, 4}, Preprocessing::kNone, "row 1 has a squared norm above the float64 range"},
      {{1, 2, 1e150, 0, 3, 4}, Preprocessing::kNone, ""},
  };
  for (const Case& c : cases) {
    for (DType dtype : {DType::kFloat64}) {
      const absl::Status s = CheckRowNorms({c.rows.data(), dtype, 3, 2}, c.p);
      if (c.expected.empty()) {
        EXPECT_TRUE(s.ok()) << s;
      } else {
        EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.expected;
        EXPECT_NE(std::string(s.message()).find(c.expected), std::string::npos) << s.message();
      }
    }
  }
  // Narrow formats: only a zero row can be refused.
  const std::vector<float> f32 = {0, 0, 1e-45f, 0};
  const absl::Status s = CheckRowNorms({f32.data(), DType::kFloat32, 2, 2}, Preprocessing::kL2);
  EXPECT_NE(std::string(s.message()).find("row 0 has norm 0"), std::string::npos) << s;
  EXPECT_TRUE(CheckRowNorms({f32.data() + 2, DType::kFloat32, 1, 2}, Preprocessing::kL2).ok());
}

TEST(PreprocessTest, ReportedEnergyMergesWithTheSentRows) {
  EnergyStats sent;
  sent.count = 4;
  sent.max_energy = 0.5;
  sent.sum_energy = 1.5;
  sent.rho_violations = 0;
  // Nothing reported: the sent rows' statistics as they are.
  EnergyStats e = MergeReportedEnergy(sent, 10, {}, 1.0);
  EXPECT_EQ(e.count, 4);
  EXPECT_EQ(e.sum_energy, 1.5);
  // Reported: count rows, the mean times count, never below the sent rows.
  e = MergeReportedEnergy(sent, 10, {.max_energy = 0.25, .mean_energy = 0.2}, 1.0);
  EXPECT_EQ(e.count, 10);
  EXPECT_EQ(e.max_energy, 0.5);
  EXPECT_EQ(e.sum_energy, 2.0);
  EXPECT_EQ(e.rho_violations, 0);
  // A reported max above rho is at least one violation.
  e = MergeReportedEnergy(sent, 10, {.max_energy = 3.0, .rho_violations = 0}, 1.0);
  EXPECT_EQ(e.rho_violations, 1);
  e = MergeReportedEnergy(sent, 10, {.rho_violations = 7}, 1.0);
  EXPECT_EQ(e.rho_violations, 7);
  EXPECT_EQ(e.sum_energy, 1.5);

  EXPECT_TRUE(ValidateReportedEnergy({.max_energy = 0.0, .mean_energy = 2.0, .rho_violations = 0}).ok());
  for (const ReportedEnergy& bad : {ReportedEnergy{.max_energy = -1.0},
                                    ReportedEnergy{.mean_energy = std::numeric_limits<double>::infinity()},
                                    ReportedEnergy{.mean_energy = std::nan("")},
                                    ReportedEnergy{.rho_violations = -2}})
    EXPECT_EQ(ValidateReportedEnergy(bad).code(), absl::StatusCode::kInvalidArgument);
}

// The shared test vectors scaled by 1e155 and 1e-170 keep their expected
// values (l2 vectors: normalising is scale-free).
TEST(PreprocessTest, ScaledSharedTestVectorsKeepTheirValues) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend({.kind = BackendKind::kCpu});
  if (!backend.ok()) GTEST_SKIP() << backend.status();
  int checked = 0;
  for (const std::string& path : testing::TestVectorFiles()) {
    const testing::TestVector tv = testing::LoadTestVector(path);
    if (tv.preprocessing != Preprocessing::kL2) continue;
    for (double scale : {1e155, 1e-170}) {
      const std::vector<double> rows = Scaled(tv.rows, scale);
      const SealInput input{{rows.data(), DType::kFloat64, tv.n_a, tv.m}, tv.preprocessing, tv.n,
                            tv.delta, tv.rho};
      absl::StatusOr<TrackValues> v = EvaluateSnapshot(**backend, input);
      ASSERT_TRUE(v.ok()) << tv.name << ": " << v.status();
      EXPECT_PRED3(testing::CloseRel, v->track1_lower, tv.track1_lower, 1e-9) << tv.name << " " << scale;
      EXPECT_PRED3(testing::CloseRel, v->track2, tv.track2, 1e-9) << tv.name << " " << scale;
      EXPECT_PRED3(testing::CloseRel, v->track2_ci_halfwidth, tv.track2_ci_halfwidth, 1e-9) << tv.name;
      ++checked;
    }
  }
  EXPECT_GE(checked, 2);
}

}  // namespace
}  // namespace sigma
