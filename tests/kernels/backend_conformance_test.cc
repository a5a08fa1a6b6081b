// Backend conformance: every backend the factory can make (cpu, cuda, and the
// routed backend over CPU children or over CUDA device 0) against
// the naive float64 reference and the shared test vectors, through SealBatch
// (the one operation of Backend); the CPU backend's primitives on their own. Tolerance: 1e-9
// relative (1e-7 absolute near zero) in fp64. Backends not available in this
// build or on this machine are skipped with the factory's reason.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <thread>
#include <string>

#include "reference.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/estimator.h"
#if SIGMA_HAVE_CPU_BLAS
#include "sigma/kernels/cpu_backend.h"
#endif

namespace sigma {
namespace {

using testing::CloseRel;

// One backend under test: a name (the test suffix; "cuda*" cases carry the
// gpu label) and how to make it.
struct BackendCase {
  std::string name;
  std::function<absl::StatusOr<std::unique_ptr<Backend>>()> make;
};

void PrintTo(const BackendCase& c, std::ostream* os) { *os << c.name; }

// RoutedBackend over CPU children: a CPU backend for m < 10 and two CPU
// backends standing in for devices (placement key 0: device 0).
absl::StatusOr<std::unique_ptr<Backend>> MakeRoutedCpu() {
  absl::StatusOr<std::unique_ptr<Backend>> cpu = MakeBackend({.kind = BackendKind::kCpu});
  if (!cpu.ok()) return cpu.status();
  std::vector<std::unique_ptr<Backend>> devices;
  for (int d = 0; d < 2; ++d) {
    absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend({.kind = BackendKind::kCpu});
    if (!b.ok()) return b.status();
    devices.push_back(std::move(*b));
  }
  absl::StatusOr<std::unique_ptr<RoutedBackend>> r = RoutedBackend::Create(std::move(*cpu), std::move(devices), 10);
  if (!r.ok()) return r.status();
  return std::unique_ptr<Backend>(std::move(*r));
}

// RoutedBackend over the real CUDA device 0 (two contexts on it) plus the CPU
// backend for m < 10 when the build has one (the device check's has none).
absl::StatusOr<std::unique_ptr<Backend>> MakeRoutedCuda() {
  std::vector<std::unique_ptr<Backend>> devices;
  for (int d = 0; d < 2; ++d) {
    absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend({.kind = BackendKind::kCuda, .max_devices = 1});
    if (!b.ok()) return b.status();
    devices.push_back(std::move(*b));
  }
  absl::StatusOr<std::unique_ptr<Backend>> cpu = MakeBackend({.kind = BackendKind::kCpu});
  absl::StatusOr<std::unique_ptr<RoutedBackend>> r =
      RoutedBackend::Create(cpu.ok() ? std::move(*cpu) : nullptr, std::move(devices), 10);
  if (!r.ok()) return r.status();
  return std::unique_ptr<Backend>(std::move(*r));
}

class ConformanceTest : public ::testing::TestWithParam<BackendCase> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Backend>> backend = GetParam().make();
    if (!backend.ok()) GTEST_SKIP() << "backend unavailable: " << backend.status().message();
    backend_ = std::move(*backend);
  }
  std::unique_ptr<Backend> backend_;
};

// NaN/Inf in any snapshot refuses the whole batch, naming the row and column.
TEST_P(ConformanceTest, SealRefusesNonFinite) {
  std::vector<float> good(40 * 3, 0.25f), bad(4 * 3, 0.5f);
  bad[7] = std::numeric_limits<float>::infinity();  // row 2, column 1
  const std::vector<SealInput> inputs = {{{good.data(), DType::kFloat32, 40, 3}, Preprocessing::kL2, 100.0},
                                         {{bad.data(), DType::kFloat32, 4, 3}, Preprocessing::kL2, 100.0}};
  std::vector<SealMoments> out(2);
  absl::Status s = backend_->SealBatch(inputs, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("row 2, column 1"), std::string::npos) << s;
}

TEST_P(ConformanceTest, SharedTestVectors) {
  const auto files = testing::TestVectorFiles();
  ASSERT_FALSE(files.empty());
  for (const std::string& path : files) {
    const testing::TestVector tv = testing::LoadTestVector(path);
    const SealInput input{{tv.rows.data(), DType::kFloat64, tv.n_a, tv.m}, tv.preprocessing,
                          tv.n, tv.delta, tv.rho};
    absl::StatusOr<TrackValues> v = EvaluateSnapshot(*backend_, input);
    ASSERT_TRUE(v.ok()) << tv.name << ": " << v.status();
    EXPECT_PRED3(CloseRel, v->track1_lower, tv.track1_lower, 1e-9) << tv.name;
    EXPECT_PRED3(CloseRel, v->track1_upper, tv.track1_upper, 1e-9) << tv.name;
    EXPECT_PRED3(CloseRel, v->track2, tv.track2, 1e-9) << tv.name;
    EXPECT_PRED3(CloseRel, v->track2_raw, tv.track2_raw, 1e-9) << tv.name;
    EXPECT_PRED3(CloseRel, v->track2_bias, tv.track2_bias, 1e-9) << tv.name;
    EXPECT_PRED3(CloseRel, v->track2_ci_halfwidth, tv.track2_ci_halfwidth, 1e-9) << tv.name;
  }
}

// fp16 / bf16 / fp32 rows whose values are exact in every format give the same
// moments as the same rows in fp64.
TEST_P(ConformanceTest, ReducedPrecisionInputsMatchFp64) {
  std::mt19937_64 rng(3);
  const int64_t m = 16, n_a = 200;
  std::vector<double> values(n_a * m);
  std::uniform_int_distribution<int> small(-64, 64);
  for (double& v : values) v = small(rng) / 64.0;  // 7 significant bits: exact everywhere
  std::vector<float> f32(values.begin(), values.end());
  std::vector<uint16_t> f16, b16;
  for (double v : values) {
    f16.push_back(DoubleToHalf(v));
    b16.push_back(DoubleToBFloat16(v));
  }
  auto seal = [&](const void* data, DType dtype) {
    const SealInput input{{data, dtype, n_a, m}, Preprocessing::kL2, 1000.0, 1e-4, 1.0};
    SealMoments moments;
    EXPECT_TRUE(backend_->SealBatch({&input, 1}, {&moments, 1}).ok());
    return moments;
  };
  const SealMoments ref = seal(values.data(), DType::kFloat64);
  ASSERT_TRUE(ref.cholesky[2].ok);
  for (auto [data, dtype] : {std::pair<const void*, DType>{f32.data(), DType::kFloat32},
                             {f16.data(), DType::kFloat16}, {b16.data(), DType::kBFloat16}}) {
    const SealMoments got = seal(data, dtype);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(got.cholesky[i].log_det, ref.cholesky[i].log_det);
    EXPECT_EQ(got.q_mean, ref.q_mean);
    EXPECT_EQ(got.q_sd, ref.q_sd);
    EXPECT_EQ(got.trace_a2, ref.trace_a2);
  }
}

TEST_P(ConformanceTest, BatchOfSnapshotsEqualsOneByOne) {
  std::mt19937_64 rng(4);
  std::vector<std::vector<double>> data;
  std::vector<SealInput> inputs;
  for (int64_t m : {4, 12, 7}) {
    data.push_back(testing::AnisotropicRows(rng, 40 * m, m, 0.7, false));
  }
  int64_t i = 0;
  for (int64_t m : {4, 12, 7}) {
    inputs.push_back({{data[i].data(), DType::kFloat64, 40 * m, m},
                      i % 2 ? Preprocessing::kNone : Preprocessing::kL2, 400.0 * m, 1e-5, 50.0});
    ++i;
  }
  std::vector<SealMoments> batched(inputs.size());
  ASSERT_TRUE(backend_->SealBatch(inputs, absl::MakeSpan(batched)).ok());
  for (size_t k = 0; k < inputs.size(); ++k) {
    SealMoments single;
    ASSERT_TRUE(backend_->SealBatch({&inputs[k], 1}, {&single, 1}).ok());
    for (int c = 0; c < 3; ++c)
      EXPECT_PRED3(CloseRel, batched[k].cholesky[c].log_det, single.cholesky[c].log_det, 1e-12);
    EXPECT_PRED3(CloseRel, batched[k].q_sd, single.q_sd, 1e-12);
    EXPECT_EQ(batched[k].energy.count, 40 * inputs[k].rows.m);
  }
}

// Finite float64 rows scaled by 1e155 (their squares overflow) or 1e-170
// (their squares underflow) give the unscaled rows' tracks under l2: every
// backend computes norms scaled (ingest_rules.h RowSquares; issue 14 item 6).
TEST_P(ConformanceTest, ScaledRowsGiveTheUnscaledTracks) {
  std::mt19937_64 rng(14);
  const int64_t m = 16, n_a = 500;  // m >= 10: the routed cases use a device child
  const std::vector<double> rows = testing::AnisotropicRows(rng, n_a, m, 0.7, false);
  auto tracks = [&](double scale) {
    std::vector<double> scaled(rows);
    for (double& v : scaled) v *= scale;
    const SealInput input{{scaled.data(), DType::kFloat64, n_a, m}, Preprocessing::kL2, 5000.0, 1e-6, 1.0};
    return EvaluateSnapshot(*backend_, input);
  };
  const absl::StatusOr<TrackValues> want = tracks(1.0);
  ASSERT_TRUE(want.ok()) << want.status();
  for (double scale : {1e155, 1e-170}) {
    const absl::StatusOr<TrackValues> got = tracks(scale);
    ASSERT_TRUE(got.ok()) << scale << ": " << got.status();
    EXPECT_FALSE(got->flags.cholesky_failed) << scale;
    EXPECT_PRED3(CloseRel, got->track1_lower, want->track1_lower, 1e-10) << scale;
    EXPECT_PRED3(CloseRel, got->track1_upper, want->track1_upper, 1e-10) << scale;
    EXPECT_PRED3(CloseRel, got->track2, want->track2, 1e-10) << scale;
    EXPECT_PRED3(CloseRel, got->track2_raw, want->track2_raw, 1e-10) << scale;
    EXPECT_PRED3(CloseRel, got->track2_bias, want->track2_bias, 1e-10) << scale;
    EXPECT_PRED3(CloseRel, got->track2_ci_halfwidth, want->track2_ci_halfwidth, 1e-10) << scale;
    EXPECT_EQ(got->max_energy, 1.0) << scale;
  }
}

// ValidateSealInput (the CPU backend's SealBatch, sigmad's sealer, `sigmactl
// eval`) refuses rows whose norm the preprocessing cannot use, naming the row.
TEST(ValidateSealInput, RefusesZeroAndUnrepresentableNorms) {
  const int64_t m = 16, n_a = 8;
  auto check = [&](Preprocessing p, int64_t bad_row, double value) {
    std::vector<double> rows(n_a * m, 0.5);
    for (int64_t c = 0; c < m; ++c) rows[bad_row * m + c] = value;
    return ValidateSealInput({{rows.data(), DType::kFloat64, n_a, m}, p, 100.0, 1e-6, 1.0});
  };
  struct Case {
    Preprocessing p;
    int64_t row;
    double value;
    std::string want;  // "" = accepted
  };
  for (const Case& c : {Case{Preprocessing::kL2, 3, 0.0, "row 3 has norm 0"},
                        Case{Preprocessing::kL2, 5, 1e308, "row 5 has a norm above the float64 range"},
                        Case{Preprocessing::kNone, 2, 1e160, "row 2 has a squared norm above"},
                        Case{Preprocessing::kNone, 3, 0.0, ""}, Case{Preprocessing::kL2, 1, 1e155, ""},
                        Case{Preprocessing::kL2, 1, 1e-170, ""}, Case{Preprocessing::kL2, 1, 1e300, ""}}) {
    const absl::Status s = check(c.p, c.row, c.value);
    SCOPED_TRACE(::testing::Message() << PreprocessingName(c.p) << " row " << c.row << " = " << c.value);
    if (c.want.empty()) {
      EXPECT_TRUE(s.ok()) << s;
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_NE(s.message().find(c.want), std::string::npos) << s;
    }
  }
}

#if SIGMA_HAVE_CPU_BLAS
// The CPU backend's primitives (public on CpuBackend only).
class CpuPrimitives : public ::testing::Test {
 protected:
  std::unique_ptr<CpuBackend> cpu_ = MakeCpuBackend();
};

// A large seal's scratch (here [n_A, m] = 8192 x 512 rows alone are 32 MiB)
// is returned when SealBatch ends; a small seal's stays for the next call.
TEST_F(CpuPrimitives, LargeSealScratchIsFreedSmallSealScratchKept) {
  std::mt19937_64 rng(7);
  auto seal = [&](int64_t n_a, int64_t m) {
    const std::vector<double> x = testing::AnisotropicRows(rng, n_a, m, 0.8, false);
    const SealInput input{{x.data(), DType::kFloat64, n_a, m}, Preprocessing::kL2, 4.0 * n_a, 1e-4, 1.0};
    std::vector<SealMoments> out(1);
    ASSERT_TRUE(cpu_->SealBatch({&input, 1}, absl::MakeSpan(out)).ok());
    EXPECT_TRUE(out[0].cholesky[2].ok);
  };
  seal(256, 16);
  EXPECT_GT(cpu_->scratch_bytes(), 0);
  EXPECT_LE(cpu_->scratch_bytes(), CpuBackend::kKeepScratchBytes);
  seal(8192, 512);
  EXPECT_EQ(cpu_->scratch_bytes(), 0);
}

// sigmad's small and large seal lanes call SealBatch at once: concurrent calls
// on one CpuBackend give the serial results (they shared scratch before).
TEST_F(CpuPrimitives, ConcurrentSealBatchCallsGiveTheSerialResults) {
  std::mt19937_64 rng(11);
  struct Case {
    int64_t n_a, m;
    std::vector<double> x;
    SealMoments serial, concurrent;
  };
  std::vector<Case> cases;
  for (auto [n_a, m] : {std::pair<int64_t, int64_t>{6000, 384}, {200, 8}, {300, 16}, {250, 12}})
    cases.push_back({n_a, m, testing::AnisotropicRows(rng, n_a, m, 0.8, false), {}, {}});
  auto seal = [&](Case& c, SealMoments* out) {
    const SealInput input{{c.x.data(), DType::kFloat64, c.n_a, c.m}, Preprocessing::kL2, 4.0 * c.n_a, 1e-4, 1.0};
    ASSERT_TRUE(cpu_->SealBatch({&input, 1}, {out, 1}).ok());
  };
  for (Case& c : cases) seal(c, &c.serial);
  std::thread large([&] { seal(cases[0], &cases[0].concurrent); });
  for (int round = 0; round < 20; ++round)
    for (size_t i = 1; i < cases.size(); ++i) seal(cases[i], &cases[i].concurrent);
  large.join();
  for (const Case& c : cases) {
    EXPECT_EQ(c.serial.q_mean, c.concurrent.q_mean) << c.m;
    EXPECT_EQ(c.serial.trace_a, c.concurrent.trace_a) << c.m;
    EXPECT_EQ(c.serial.cholesky[2].log_det, c.concurrent.cholesky[2].log_det) << c.m;
  }
}

TEST_F(CpuPrimitives, GramMatchesNaive) {
  std::mt19937_64 rng(1);
  const int64_t m = 13, rows = 300;
  const std::vector<double> x = testing::AnisotropicRows(rng, rows, m, 0.8, false);
  std::vector<double> gram(m * m, 0.0);
  // Two calls accumulate.
  ASSERT_TRUE(cpu_->AccumulateGram({x.data(), DType::kFloat64, 100, m}, Preprocessing::kNone,
                                       1.0, gram.data(), nullptr).ok());
  ASSERT_TRUE(cpu_->AccumulateGram({x.data() + 100 * m, DType::kFloat64, 200, m},
                                       Preprocessing::kNone, 1.0, gram.data(), nullptr).ok());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double expected = 0;
      for (int64_t r = 0; r < rows; ++r) expected += x[r * m + i] * x[r * m + j];
      EXPECT_PRED3(CloseRel, gram[i * m + j], expected, 1e-12) << i << "," << j;
    }
}

TEST_F(CpuPrimitives, GramRefusesNonFiniteAndChangesNothing) {
  std::vector<float> x(4 * 3, 0.5f);
  std::vector<double> gram(9, 2.0);
  x[7] = std::numeric_limits<float>::infinity();
  absl::Status s = cpu_->AccumulateGram({x.data(), DType::kFloat32, 4, 3}, Preprocessing::kL2,
                                            1.0, gram.data(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gram, std::vector<double>(9, 2.0));
}

TEST_F(CpuPrimitives, ShiftedCholeskyMatchesNaiveAndReportsFailure) {
  std::mt19937_64 rng(2);
  const int64_t m = 9, rows = 50;
  const std::vector<double> x = testing::AnisotropicRows(rng, rows, m, 0.6, true);
  std::vector<double> gram(m * m, 0.0);
  ASSERT_TRUE(cpu_->AccumulateGram({x.data(), DType::kFloat64, rows, m}, Preprocessing::kNone,
                                       1.0, gram.data(), nullptr).ok());
  const std::vector<ShiftedMatrix> shifts = {{1.0 / 500, 1e-6}, {1.0 / 500, 0.9}, {1.0 / 50, 1e-3},
                                             {1.0, -100.0}};
  std::vector<CholeskyOutcome> out(shifts.size());
  std::vector<double> factors(shifts.size() * m * m);
  ASSERT_TRUE(cpu_->ShiftedCholesky(gram.data(), m, shifts, absl::MakeSpan(out),
                                        factors.data()).ok());
  for (size_t i = 0; i + 1 < shifts.size(); ++i) {
    ASSERT_TRUE(out[i].ok) << i;
    EXPECT_PRED3(CloseRel, out[i].log_det,
                 testing::NaiveLogDet(x, rows, m, shifts[i].scale, shifts[i].shift), 1e-9);
  }
  EXPECT_FALSE(out.back().ok);  // G - 100 I is indefinite
  EXPECT_GE(out.back().failed_column, 1);
}

TEST_F(CpuPrimitives, MahalanobisAndTracesMatchDefinitions) {
  // L = chol(M) for a small SPD M built by hand; check q and the traces
  // against explicit inverses.
  const int64_t m = 3;
  const double lower[9] = {2.0, 0.5, -1.0, 0.0, 1.5, 0.25, 0.0, 0.0, 0.75};  // column-major
  // L^{-1} by forward substitution on the identity.
  double inv[9] = {0};
  for (int64_t c = 0; c < m; ++c) {
    for (int64_t r = 0; r < m; ++r) {
      double s = r == c ? 1.0 : 0.0;
      for (int64_t k = 0; k < r; ++k) s -= lower[k * m + r] * inv[c * m + k];
      inv[c * m + r] = s / lower[r * m + r];
    }
  }
  const std::vector<double> x = {1.0, 2.0, 3.0, -0.5, 0.25, 4.0};
  std::vector<double> q(2);
  ASSERT_TRUE(cpu_->MahalanobisNorms(lower, m, x.data(), 2, q.data()).ok());
  for (int j = 0; j < 2; ++j) {
    double expected = 0;
    for (int64_t r = 0; r < m; ++r) {
      double y = 0;
      for (int64_t k = 0; k < m; ++k) y += inv[k * m + r] * x[j * m + k];
      expected += y * y;
    }
    EXPECT_PRED3(CloseRel, q[j], expected, 1e-12);
  }
  double trace_a = 0, trace_a2 = 0;
  ASSERT_TRUE(cpu_->InverseTraces(lower, m, &trace_a, &trace_a2).ok());
  // A = L^{-T} L^{-1}
  double a[9] = {0}, expected_tr = 0, expected_tr2 = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j)
      for (int64_t k = 0; k < m; ++k) a[i * m + j] += inv[i * m + k] * inv[j * m + k];
  for (int64_t i = 0; i < m; ++i) expected_tr += a[i * m + i];
  for (int64_t i = 0; i < 9; ++i) expected_tr2 += a[i] * a[i];
  EXPECT_PRED3(CloseRel, trace_a, expected_tr, 1e-12);
  EXPECT_PRED3(CloseRel, trace_a2, expected_tr2, 1e-12);
}

#endif  // SIGMA_HAVE_CPU_BLAS

std::string CaseName(const ::testing::TestParamInfo<BackendCase>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(
    Backends, ConformanceTest,
    ::testing::Values(BackendCase{"cpu", [] { return MakeBackend({.kind = BackendKind::kCpu}); }},
                      BackendCase{"cuda", [] { return MakeBackend({.kind = BackendKind::kCuda, .max_devices = 1}); }},
                      BackendCase{"routed_cpu", MakeRoutedCpu}, BackendCase{"cuda_routed", MakeRoutedCuda}),
    CaseName);

}  // namespace
}  // namespace sigma
