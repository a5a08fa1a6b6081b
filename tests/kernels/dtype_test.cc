#include "sigma/kernels/dtype.h"
#include "sigma/kernels/preprocess.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace sigma {
namespace {

TEST(DTypeTest, HalfKnownValues) {
  EXPECT_EQ(HalfToDouble(0x3c00), 1.0);
  EXPECT_EQ(HalfToDouble(0xc000), -2.0);
  EXPECT_EQ(HalfToDouble(0x7bff), 65504.0);
  EXPECT_EQ(HalfToDouble(0x0001), std::ldexp(1.0, -24));  // smallest subnormal
  EXPECT_EQ(HalfToDouble(0x0400), std::ldexp(1.0, -14));  // smallest normal
  EXPECT_EQ(HalfToDouble(0x3555), 0.333251953125);
  EXPECT_TRUE(std::isinf(HalfToDouble(0x7c00)));
  EXPECT_TRUE(std::isnan(HalfToDouble(0x7e00)));
}

TEST(DTypeTest, HalfRoundTripsEveryFiniteValue) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7c00) == 0x7c00) continue;  // Inf/NaN
    const double value = HalfToDouble(static_cast<uint16_t>(bits));
    const uint16_t back = DoubleToHalf(value);
    if (value == 0.0) {
      EXPECT_EQ(HalfToDouble(back), 0.0);
      continue;
    }
    ASSERT_EQ(back, bits) << "bits " << bits;
    // Exactness: the float32 path (exact for fp16) agrees.
    ASSERT_EQ(static_cast<double>(static_cast<float>(value)), value);
  }
}

TEST(DTypeTest, BFloat16IsTheTopHalfOfFloat32) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = std::bit_cast<float>(bits << 16);
    const double d = BFloat16ToDouble(static_cast<uint16_t>(bits));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(d));
    } else {
      ASSERT_EQ(d, static_cast<double>(f)) << bits;
      if (std::isfinite(f)) ASSERT_EQ(DoubleToBFloat16(d), bits);
    }
  }
  EXPECT_EQ(BFloat16ToDouble(0x3f80), 1.0);
}

TEST(DTypeTest, ConvertToDoubleIsExactForEveryDType) {
  const std::vector<double> values = {1.0, -0.5, 0.375, 3.0, -1024.0, 0.0078125};
  std::vector<float> f32(values.begin(), values.end());
  std::vector<uint16_t> f16, b16;
  for (double v : values) {
    f16.push_back(DoubleToHalf(v));
    b16.push_back(DoubleToBFloat16(v));
  }
  std::vector<double> out(values.size());
  const int64_t rows = 2, m = 3;
  ConvertToDouble({f32.data(), DType::kFloat32, rows, m}, out.data());
  EXPECT_EQ(out, values);
  ConvertToDouble({f16.data(), DType::kFloat16, rows, m}, out.data());
  EXPECT_EQ(out, values);
  ConvertToDouble({b16.data(), DType::kBFloat16, rows, m}, out.data());
  EXPECT_EQ(out, values);
  ConvertToDouble({values.data(), DType::kFloat64, rows, m}, out.data());
  EXPECT_EQ(out, values);
}

TEST(DTypeTest, CheckFiniteNamesTheOffendingElement) {
  std::vector<float> f32(12, 1.0f);
  EXPECT_TRUE(CheckFinite({f32.data(), DType::kFloat32, 3, 4}).ok());
  f32[6] = std::numeric_limits<float>::quiet_NaN();
  absl::Status s = CheckFinite({f32.data(), DType::kFloat32, 3, 4});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("row 1, column 2"), std::string::npos) << s;

  std::vector<double> f64(4, 0.0);
  f64[3] = -std::numeric_limits<double>::infinity();
  EXPECT_FALSE(CheckFinite({f64.data(), DType::kFloat64, 2, 2}).ok());
  std::vector<uint16_t> f16(4, 0x3c00);
  f16[0] = 0x7c00;
  EXPECT_FALSE(CheckFinite({f16.data(), DType::kFloat16, 2, 2}).ok());
  std::vector<uint16_t> b16(4, 0x3f80);
  EXPECT_TRUE(CheckFinite({b16.data(), DType::kBFloat16, 2, 2}).ok());
  b16[2] = 0x7fc0;
  EXPECT_FALSE(CheckFinite({b16.data(), DType::kBFloat16, 2, 2}).ok());
}

TEST(DTypeTest, ValidateRowBlockRefusesWrongSizes) {
  std::vector<float> data(12);
  EXPECT_TRUE(ValidateRowBlock({data.data(), DType::kFloat32, 3, 4}, 48).ok());
  absl::Status s = ValidateRowBlock({data.data(), DType::kFloat32, 3, 4}, 47);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("does not match"), std::string::npos);
  EXPECT_FALSE(ValidateRowBlock({data.data(), DType::kFloat32, 0, 4}, 0).ok());
  EXPECT_FALSE(ValidateRowBlock({data.data(), DType::kFloat16, 3, 0}, 0).ok());
  EXPECT_FALSE(ValidateRowBlock({data.data(), DType::kFloat16, 3, 4}, 48).ok());
}

TEST(DTypeTest, ParseNames) {
  EXPECT_EQ(ParseDType("bf16"), DType::kBFloat16);
  EXPECT_EQ(ParseDType("float16"), DType::kFloat16);
  EXPECT_FALSE(ParseDType("int8").has_value());
  EXPECT_EQ(DTypeName(DType::kFloat32), "fp32");
}

}  // namespace
}  // namespace sigma

namespace sigma {
namespace {

// A unit row is never a rho violation, whatever m (rounding of its recomputed
// energy grows with m).
TEST(PreprocessTest, L2RowsHaveUnitEnergyAtAnyDimension) {
  std::mt19937_64 rng(8);
  std::normal_distribution<float> normal;
  for (int64_t m : {8, 256, 4096}) {
    std::vector<double> rows(16 * m);
    for (double& v : rows) v = normal(rng);
    rows[0] = 0;  // keep one row entirely zero
    for (int64_t c = 0; c < m; ++c) rows[c] = 0;
    EnergyStats stats;
    PreprocessRows(Preprocessing::kL2, 1.0, rows.data(), 16, m, &stats);
    EXPECT_EQ(stats.rho_violations, 0) << m;
    EXPECT_EQ(stats.max_energy, 1.0);
    EXPECT_EQ(stats.sum_energy, 15.0);  // the zero row stays zero
    double energy = 0;
    for (int64_t c = 0; c < m; ++c) energy += rows[m + c] * rows[m + c];
    EXPECT_NEAR(energy, 1.0, 1e-12);
    EnergyStats strict;
    PreprocessRows(Preprocessing::kL2, 0.5, rows.data(), 16, m, &strict);
    EXPECT_EQ(strict.rho_violations, 15);
  }
}

TEST(PreprocessTest, NoneKeepsRawEnergies) {
  std::vector<double> rows = {3, 4, 0.6, 0.8};
  EnergyStats stats;
  PreprocessRows(Preprocessing::kNone, 2.0, rows.data(), 2, 2, &stats);
  EXPECT_EQ(rows[0], 3);
  EXPECT_EQ(stats.max_energy, 25);
  EXPECT_EQ(stats.rho_violations, 1);
  EXPECT_NEAR(stats.mean_energy(), 13.0, 1e-12);
}

}  // namespace
}  // namespace sigma
