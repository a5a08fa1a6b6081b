// Tests of the CUDA backend (kernels/cuda). References, all float64:
//  - the CPU backend (OpenBLAS + LAPACKE) when this build has it;
//  - the shared test vectors (shared/testvectors, NumPy; SIGMA_TESTVECTORS_DIR
//    overrides the compiled-in path);
//  - numpy/torch references written by tests/gpu/make_reference.py into the
//    folder named by SIGMA_GPU_REF_DIR (the device check does this; the H200
//    machine has no OpenBLAS).
// Tolerance 1e-9 relative (spec §4 / test vectors README), with a 1e-12
// absolute floor for values that are 0 in exact arithmetic.
// Without a CUDA device every test that needs one skips ("no CUDA device").
// The same file is also built as sigma_gpu_emulated_test (SIGMA_CUDA_EMULATED),
// against the host CUDA emulator in tests/gpu/emulator, where every test runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cuda_backend.h"
#include <nlohmann/json.hpp>
#include "sigma/kernels/backend.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/estimator.h"
#include "sigma/kernels/ingest_rules.h"  // SplitMix64
#if SIGMA_HAVE_CPU_BLAS
#include "sigma/kernels/cpu_backend.h"
#endif

namespace sigma {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr double kRel = 1e-9;
constexpr double kAbsFloor = 1e-12;

#if SIGMA_CUDA_EMULATED
// sigma_gpu_emulated_test: the backend runs on the host CUDA emulator
// (tests/gpu/emulator), which reports one device.
bool HaveDevice() { return cuda::DeviceCount() > 0; }
#else
bool HaveDevice() { return CudaDeviceCount() > 0; }
#endif

#define SIGMA_REQUIRE_CUDA()                                                       \
  do {                                                                             \
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device: the CUDA backend needs a GPU"; \
  } while (0)

cuda::CudaBackendOptions Batched() {
  cuda::CudaBackendOptions o;
  o.batched_potrf_max_m = std::numeric_limits<int64_t>::max();
  return o;
}
cuda::CudaBackendOptions PerMatrix() {
  cuda::CudaBackendOptions o;
  o.batched_potrf_max_m = 0;
  return o;
}

std::unique_ptr<Backend> MakeCuda(const cuda::CudaBackendOptions& o = {}) {
  absl::StatusOr<std::unique_ptr<Backend>> b = cuda::MakeCudaBackend(0, o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

// The option variants every numeric test runs: default, and both sides of the
// batched-Cholesky switch forced, plus both Gram algorithms.
struct Variant {
  const char* name;
  cuda::CudaBackendOptions options;
};
std::vector<Variant> Variants() {
  cuda::CudaBackendOptions gemm;
  gemm.gram = cuda::GramAlgo::kGemm;
  cuda::CudaBackendOptions syrk;
  syrk.gram = cuda::GramAlgo::kSyrk;
  // Blocked Gram with blocks smaller than most m here (several diagonal
  // blocks, a ragged last one).
  cuda::CudaBackendOptions blocked;
  blocked.gram = cuda::GramAlgo::kBlocked;
  blocked.gram_block = 7;
  // Tiny staging slots: many pipelined uploads (pinned slot reuse, events,
  // the copy stream waiting on the compute stream) even on small data.
  cuda::CudaBackendOptions tiny = PerMatrix();
  tiny.staging_slot_bytes = 1000;
  return {{"default", {}}, {"batched", Batched()}, {"per_matrix", PerMatrix()}, {"gemm", gemm},
          {"syrk", syrk},  {"blocked", blocked},   {"tiny_slots", tiny}};
}

void ExpectClose(double got, double want, const std::string& what, double rel = kRel) {
  ASSERT_FALSE(std::isnan(got)) << what << " is NaN";
  const double tol = rel * std::max(std::fabs(got), std::fabs(want)) + kAbsFloor;
  EXPECT_LE(std::fabs(got - want), tol) << what << ": got " << got << ", want " << want;
}

// Element-wise, relative to the largest magnitude in `want` (entries with
// cancellation are only as accurate as the matrix's scale).
void ExpectMatrixClose(const std::vector<double>& got, const std::vector<double>& want, const std::string& what,
                       double rel = kRel) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= rel * scale + kAbsFloor) && ++bad <= 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i] << " (scale " << scale << ")";
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " entries differ";
}

void ExpectMomentsClose(const SealMoments& got, const SealMoments& want, double rel = kRel) {
  EXPECT_EQ(got.n_a, want.n_a);
  EXPECT_EQ(got.m, want.m);
  for (int k = 0; k < 3; ++k) {
    SCOPED_TRACE("cholesky[" + std::to_string(k) + "]");
    EXPECT_EQ(got.cholesky[k].ok, want.cholesky[k].ok);
    if (want.cholesky[k].ok) {
      ExpectClose(got.cholesky[k].log_det, want.cholesky[k].log_det, "log_det", rel);
    } else {
      EXPECT_EQ(got.cholesky[k].failed_column, want.cholesky[k].failed_column);
    }
  }
  if (want.cholesky[2].ok) {
    ExpectClose(got.q_mean, want.q_mean, "q_mean", rel);
    ExpectClose(got.q_sq_mean, want.q_sq_mean, "q_sq_mean", rel);
    ExpectClose(got.q_sd, want.q_sd, "q_sd", rel);
    ExpectClose(got.trace_a, want.trace_a, "trace_a", rel);
    ExpectClose(got.trace_a2, want.trace_a2, "trace_a2", rel);
  }
  EXPECT_EQ(got.energy.count, want.energy.count);
  ExpectClose(got.energy.max_energy, want.energy.max_energy, "max_energy", rel);
  ExpectClose(got.energy.sum_energy, want.energy.sum_energy, "sum_energy", rel);
  EXPECT_EQ(got.energy.rho_violations, want.energy.rho_violations);
}

void ExpectNoNaN(const SealMoments& mo) {
  for (int k = 0; k < 3; ++k) EXPECT_FALSE(std::isnan(mo.cholesky[k].log_det));
  for (double v : {mo.q_mean, mo.q_sq_mean, mo.q_sd, mo.trace_a, mo.trace_a2, mo.energy.max_energy,
                   mo.energy.sum_energy})
    EXPECT_FALSE(std::isnan(v));
}

// ---- deterministic data ------------------------------------------------------

// Owns the bytes of a RowBlock.
struct HostRows {
  std::vector<unsigned char> bytes;
  RowBlock block;
};

HostRows Encode(const std::vector<double>& values, DType dtype, int64_t n, int64_t m) {
  HostRows h;
  h.bytes.resize(static_cast<size_t>(n * m) * DTypeWidth(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::kFloat64: std::memcpy(h.bytes.data() + 8 * i, &values[i], 8); break;
      case DType::kFloat32: {
        const float f = static_cast<float>(values[i]);
        std::memcpy(h.bytes.data() + 4 * i, &f, 4);
        break;
      }
      case DType::kFloat16: {
        const uint16_t b = DoubleToHalf(values[i]);
        std::memcpy(h.bytes.data() + 2 * i, &b, 2);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t b = DoubleToBFloat16(values[i]);
        std::memcpy(h.bytes.data() + 2 * i, &b, 2);
        break;
      }
    }
  }
  h.block = RowBlock{h.bytes.data(), dtype, n, m};
  return h;
}

// Correlated, anisotropic rows: x = z * diag(scales) + 0.3 * z_0 (a common
// factor), z ~ approximately N(0, 1) (sum of uniforms).
HostRows MakeRows(DType dtype, int64_t n, int64_t m, uint64_t seed, double scale = 1.0) {
  std::vector<double> v(static_cast<size_t>(n * m));
  uint64_t state = SplitMix64(seed);
  auto uniform = [&]() {
    state = SplitMix64(state);
    return static_cast<double>(state >> 11) * 0x1.0p-53 - 0.5;
  };
  for (int64_t r = 0; r < n; ++r) {
    double common = 0;
    for (int k = 0; k < 4; ++k) common += uniform();
    for (int64_t c = 0; c < m; ++c) {
      double z = 0;
      for (int k = 0; k < 4; ++k) z += uniform();
      v[static_cast<size_t>(r * m + c)] = scale * (z * (1.0 + 0.25 * static_cast<double>(c % 7)) + 0.3 * common);
    }
  }
  return Encode(v, dtype, n, m);
}

SealInput MakeInput(const HostRows& rows, Preprocessing p, double corpus_factor = 4.0, double delta = 1e-6,
                    double rho = 1.0) {
  SealInput in;
  in.rows = rows.block;
  in.preprocessing = p;
  in.corpus_size = std::ceil(static_cast<double>(rows.block.num_rows) * corpus_factor);
  in.delta = delta;
  in.rho = rho;
  return in;
}

absl::StatusOr<SealMoments> Seal(Backend& b, const SealInput& in) {
  SealMoments mo;
  absl::Status s = b.SealBatch({&in, 1}, {&mo, 1});
  if (!s.ok()) return s;
  return mo;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

fs::path TestVectorsDir() {
  if (const char* env = std::getenv("SIGMA_TESTVECTORS_DIR"); env != nullptr && *env != '\0') return env;
  return SIGMA_TESTVECTORS_DIR;
}

// ---- factory -------------------------------------------------------------------

TEST(CudaFactory, UnavailableWithoutDeviceElseNamed) {
#if SIGMA_CUDA_EMULATED
  // The factory must load the emulated module too (ctest sets this).
  if (std::getenv("SIGMA_CUDA_MODULE") == nullptr)
    GTEST_SKIP() << "SIGMA_CUDA_MODULE is not set to libsigma_cuda_backend_emulated.so: the factory would load "
                    "the real CUDA module";
#endif
  absl::StatusOr<std::unique_ptr<Backend>> b = cuda::MakeCudaBackend(0);
  if (!HaveDevice()) {
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable) << b.status();
    BackendOptions opts;
    opts.kind = BackendKind::kCuda;
    EXPECT_EQ(MakeBackend(opts).status().code(), absl::StatusCode::kUnavailable);
#if SIGMA_HAVE_CPU_BLAS
    opts.kind = BackendKind::kAuto;
    std::string reason;
    absl::StatusOr<std::unique_ptr<Backend>> fallback = MakeBackend(opts, &reason);
    ASSERT_TRUE(fallback.ok()) << fallback.status();
    EXPECT_EQ((*fallback)->name(), "cpu");
    EXPECT_FALSE(reason.empty());
#endif
    return;
  }
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->name().rfind("cuda:0 ", 0), 0u) << (*b)->name();
  EXPECT_EQ(cuda::MakeCudaBackend(CudaDeviceCount()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(cuda::MakeCudaBackend(-1).status().code(), absl::StatusCode::kUnavailable);
}

TEST(CudaFactory, LastPhaseTimesOnlyForCudaBackends) {
#if SIGMA_HAVE_CPU_BLAS
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  EXPECT_FALSE(cuda::LastPhaseTimes(*cpu).has_value());
#endif
  SIGMA_REQUIRE_CUDA();
  cuda::CudaBackendOptions o;
  o.record_phase_times = true;
  std::unique_ptr<Backend> b = MakeCuda(o);
  ASSERT_NE(b, nullptr);
  EXPECT_FALSE(cuda::LastPhaseTimes(*b).has_value());
  HostRows rows = MakeRows(DType::kFloat32, 200, 32, 1);
  ASSERT_TRUE(Seal(*b, MakeInput(rows, Preprocessing::kL2)).ok());
  std::optional<cuda::PhaseTimes> t = cuda::LastPhaseTimes(*b);
  ASSERT_TRUE(t.has_value());
  EXPECT_GT(t->total_ms, 0);
  EXPECT_GE(t->gram_ms, 0);
  EXPECT_TRUE(t->batched_potrf);  // m = 32 <= the default switch
}

// ---- shared test vectors --------------------------------------------------------

TEST(CudaTestVectors, MatchExpectedTracks) {
  SIGMA_REQUIRE_CUDA();
  const fs::path dir = TestVectorsDir();
  if (!fs::is_directory(dir)) GTEST_SKIP() << "test vectors not found at " << dir << " (set SIGMA_TESTVECTORS_DIR)";
  int checked = 0;
  for (const Variant& variant : Variants()) {
    std::unique_ptr<Backend> b = MakeCuda(variant.options);
    ASSERT_NE(b, nullptr);
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() != ".json" || entry.path().filename() == "sketch.json") continue;
      SCOPED_TRACE(std::string(variant.name) + " " + entry.path().filename().string());
      const Json v = Json::parse(ReadFile(entry.path()));
      const int64_t m = static_cast<int64_t>(v["m"].get<double>()), n_a = static_cast<int64_t>(v["n_A"].get<double>());
      std::vector<double> values;
      values.reserve(static_cast<size_t>(m * n_a));
      for (const Json& row : v["rows"])
        for (const Json& x : row) values.push_back(x.get<double>());
      ASSERT_EQ(values.size(), static_cast<size_t>(m * n_a));
      HostRows rows = Encode(values, DType::kFloat64, n_a, m);
      SealInput in;
      in.rows = rows.block;
      in.preprocessing = v["preprocessing"].get<std::string>() == "l2" ? Preprocessing::kL2 : Preprocessing::kNone;
      in.corpus_size = v["n"].get<double>();
      in.delta = v["delta"].get<double>();
      in.rho = v["rho"].get<double>();
      absl::StatusOr<SealMoments> mo = Seal(*b, in);
      ASSERT_TRUE(mo.ok()) << mo.status();
      ExpectNoNaN(*mo);
      const TrackValues t = EstimateTracks(*mo, in.corpus_size, in.delta, in.rho, mo->energy);
      const Json& e = v["expected"];
      ASSERT_FALSE(t.flags.cholesky_failed) << t.flags.failure_reason;
      ExpectClose(t.track1_lower, e["track1_lower"].get<double>(), "track1_lower");
      ExpectClose(t.track1_upper, e["track1_upper"].get<double>(), "track1_upper");
      ExpectClose(t.track2, e["track2"].get<double>(), "track2");
      ExpectClose(t.track2_raw, e["track2_raw"].get<double>(), "track2_raw");
      ExpectClose(t.track2_bias, e["track2_bias"].get<double>(), "track2_bias");
      ExpectClose(t.track2_ci_halfwidth, e["track2_ci_halfwidth"].get<double>(), "track2_ci_halfwidth");
      ExpectClose(t.max_energy, v["max_energy"].get<double>(), "max_energy");
      const Json& f = v["expected_flags"];
      EXPECT_EQ(t.flags.rho_violated, f["rho_violated"].get<bool>());
      EXPECT_EQ(t.flags.n_a_below_m, f["n_a_below_m"].get<bool>());
      EXPECT_EQ(t.flags.low_confidence, f["low_confidence"].get<bool>());
#if SIGMA_HAVE_CPU_BLAS
      std::unique_ptr<Backend> cpu = MakeCpuBackend();
      absl::StatusOr<SealMoments> ref = Seal(*cpu, in);
      ASSERT_TRUE(ref.ok()) << ref.status();
      ExpectMomentsClose(*mo, *ref);
#endif
      ++checked;
    }
  }
  EXPECT_GT(checked, 0) << "no test vector in " << dir;
}

// ---- numpy/torch references (device check) ------------------------------------

std::vector<fs::path> NumpyReferenceCases() {
  std::vector<fs::path> cases;
  const char* env = std::getenv("SIGMA_GPU_REF_DIR");
  if (env == nullptr || *env == '\0' || !fs::is_directory(env)) return cases;
  for (const auto& entry : fs::directory_iterator(env))
    if (entry.path().extension() == ".json") cases.push_back(entry.path());
  std::sort(cases.begin(), cases.end());
  return cases;
}

constexpr const char* kNoReference =
    "SIGMA_GPU_REF_DIR not set or empty (tests/gpu/make_reference.py writes it; the device check sets it)";

// One case written by make_reference.py, sealed by `b`, against its expected
// moments and track values.
void CheckNumpyCase(Backend& b, const fs::path& path) {
  const Json v = Json::parse(ReadFile(path));
  const int64_t m = static_cast<int64_t>(v["m"].get<double>()), n_a = static_cast<int64_t>(v["n_A"].get<double>());
  const std::optional<DType> dtype = ParseDType(v["dtype"].get<std::string>());
  ASSERT_TRUE(dtype.has_value()) << v["dtype"].get<std::string>();
  const std::string bytes = ReadFile(path.parent_path() / v["rows_file"].get<std::string>());
  ASSERT_EQ(bytes.size(), static_cast<size_t>(m * n_a) * DTypeWidth(*dtype));
  SealInput in;
  in.rows = RowBlock{bytes.data(), *dtype, n_a, m};
  in.preprocessing = v["preprocessing"].get<std::string>() == "l2" ? Preprocessing::kL2 : Preprocessing::kNone;
  in.corpus_size = v["n"].get<double>();
  in.delta = v["delta"].get<double>();
  in.rho = v["rho"].get<double>();
  absl::StatusOr<SealMoments> mo = Seal(b, in);
  ASSERT_TRUE(mo.ok()) << mo.status();
  ExpectNoNaN(*mo);
  const Json& e = v["expected_moments"];
  SealMoments want;
  want.n_a = n_a;
  want.m = m;
  for (int k = 0; k < 3; ++k) {
    want.cholesky[k].ok = e["ok"][k].get<bool>();
    want.cholesky[k].log_det = e["log_det"][k].get<double>();
  }
  want.q_mean = e["q_mean"].get<double>();
  want.q_sq_mean = e["q_sq_mean"].get<double>();
  want.q_sd = e["q_sd"].get<double>();
  want.trace_a = e["trace_a"].get<double>();
  want.trace_a2 = e["trace_a2"].get<double>();
  want.energy.count = static_cast<int64_t>(e["energy_count"].get<double>());
  want.energy.max_energy = e["energy_max"].get<double>();
  want.energy.sum_energy = e["energy_sum"].get<double>();
  want.energy.rho_violations = static_cast<int64_t>(e["rho_violations"].get<double>());
  ExpectMomentsClose(*mo, want);
  if (v.contains("expected_tracks")) {
    const Json& et = v["expected_tracks"];
    const TrackValues t = EstimateTracks(*mo, in.corpus_size, in.delta, in.rho, mo->energy);
    ExpectClose(t.track1_lower, et["track1_lower"].get<double>(), "track1_lower");
    ExpectClose(t.track1_upper, et["track1_upper"].get<double>(), "track1_upper");
    ExpectClose(t.track2_raw, et["track2_raw"].get<double>(), "track2_raw");
    ExpectClose(t.track2_bias, et["track2_bias"].get<double>(), "track2_bias");
    ExpectClose(t.track2, et["track2"].get<double>(), "track2");
    ExpectClose(t.track2_ci_halfwidth, et["track2_ci_halfwidth"].get<double>(), "track2_ci_halfwidth");
  }
}

TEST(CudaNumpyReference, MatchMoments) {
  SIGMA_REQUIRE_CUDA();
  const std::vector<fs::path> cases = NumpyReferenceCases();
  if (cases.empty()) GTEST_SKIP() << kNoReference;
  for (const Variant& variant : Variants()) {
    std::unique_ptr<Backend> b = MakeCuda(variant.options);
    ASSERT_NE(b, nullptr);
    for (const fs::path& path : cases) {
      SCOPED_TRACE(std::string(variant.name) + " " + path.filename().string());
      CheckNumpyCase(*b, path);
    }
  }
}

#if SIGMA_HAVE_CPU_BLAS
// Validates the references themselves (and this file's tolerances) on a
// machine without a GPU: the CPU backend must match them too.
TEST(CpuNumpyReference, ReferencesMatchTheCpuBackend) {
  const std::vector<fs::path> cases = NumpyReferenceCases();
  if (cases.empty()) GTEST_SKIP() << kNoReference;
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  for (const fs::path& path : cases) {
    SCOPED_TRACE(path.filename().string());
    CheckNumpyCase(*cpu, path);
  }
}
#endif

// ---- against the CPU backend --------------------------------------------------

#if SIGMA_HAVE_CPU_BLAS
TEST(CudaVsCpu, SealBatchAllDtypesBothCholeskyPaths) {
  SIGMA_REQUIRE_CUDA();
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  struct Case {
    DType dtype;
    Preprocessing p;
    int64_t n_a, m;
    double rho;
  };
  const std::vector<Case> cases = {
      {DType::kFloat64, Preprocessing::kL2, 300, 8, 1.0},  {DType::kFloat32, Preprocessing::kL2, 500, 33, 1.0},
      {DType::kFloat16, Preprocessing::kL2, 700, 64, 1.0}, {DType::kBFloat16, Preprocessing::kL2, 900, 96, 1.0},
      {DType::kFloat32, Preprocessing::kNone, 400, 20, 50.0},  // raw; some rows above rho
      {DType::kBFloat16, Preprocessing::kL2, 40, 64, 1.0},     // n_A < m
      {DType::kFloat32, Preprocessing::kL2, 800, 300, 1.0},    // above the default switch
  };
  for (const Variant& variant : Variants()) {
    std::unique_ptr<Backend> gpu = MakeCuda(variant.options);
    ASSERT_NE(gpu, nullptr);
    uint64_t seed = 100;
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(variant.name) + " dtype " + std::string(DTypeName(c.dtype)) + " m " +
                   std::to_string(c.m) + " n_A " + std::to_string(c.n_a));
      HostRows rows = MakeRows(c.dtype, c.n_a, c.m, ++seed);
      const SealInput in = MakeInput(rows, c.p, 4.0, 1e-6, c.rho);
      absl::StatusOr<SealMoments> want = Seal(*cpu, in);
      absl::StatusOr<SealMoments> got = Seal(*gpu, in);
      ASSERT_TRUE(want.ok()) << want.status();
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectMomentsClose(*got, *want);
    }
  }
}

#endif  // SIGMA_HAVE_CPU_BLAS

// ---- device-only properties -----------------------------------------------------

TEST(CudaCholesky, BatchedAndPerMatrixPathsAgree) {
  SIGMA_REQUIRE_CUDA();
  std::unique_ptr<Backend> batched = MakeCuda(Batched());
  std::unique_ptr<Backend> per_matrix = MakeCuda(PerMatrix());
  ASSERT_NE(batched, nullptr);
  ASSERT_NE(per_matrix, nullptr);
  for (int64_t m : {5, 40, 257, 600}) {
    SCOPED_TRACE("m " + std::to_string(m));
    HostRows rows = MakeRows(DType::kFloat32, 2 * m, m, static_cast<uint64_t>(m));
    const SealInput in = MakeInput(rows, Preprocessing::kL2);
    absl::StatusOr<SealMoments> a = Seal(*batched, in);
    absl::StatusOr<SealMoments> b = Seal(*per_matrix, in);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ExpectMomentsClose(*a, *b);
    EXPECT_TRUE(a->cholesky[2].ok);
  }
}

TEST(CudaSeal, OverflowingDataFailsTheSnapshotWithoutNaN) {
  SIGMA_REQUIRE_CUDA();
  for (const Variant& variant : {Variant{"batched", Batched()}, Variant{"per_matrix", PerMatrix()}}) {
    SCOPED_TRACE(variant.name);
    std::unique_ptr<Backend> b = MakeCuda(variant.options);
    ASSERT_NE(b, nullptr);
    HostRows rows = MakeRows(DType::kFloat64, 40, 16, 3, 1e160);  // squares overflow to Inf
    SealInput in = MakeInput(rows, Preprocessing::kNone, 2.0, 1e-6, 1.0);
    absl::StatusOr<SealMoments> mo = Seal(*b, in);
    ASSERT_TRUE(mo.ok()) << mo.status();
    // The Gram is Inf. Like the CPU backend (LAPACK), the factorisation may
    // "succeed" on Inf with an infinite log det, or fail (NaN on the
    // diagonal); never a NaN log det. The estimator flags both.
    EXPECT_TRUE(!mo->cholesky[2].ok || std::isinf(mo->cholesky[2].log_det))
        << "ok " << mo->cholesky[2].ok << " log_det " << mo->cholesky[2].log_det;
    if (!mo->cholesky[2].ok) {
      EXPECT_GT(mo->cholesky[2].failed_column, 0);
      EXPECT_EQ(mo->q_mean, 0.0);
      EXPECT_EQ(mo->trace_a, 0.0);
    }
    for (int k = 0; k < 3; ++k) EXPECT_FALSE(std::isnan(mo->cholesky[k].log_det));
    const TrackValues t = EstimateTracks(*mo, in.corpus_size, in.delta, in.rho, mo->energy);
    EXPECT_TRUE(t.flags.cholesky_failed);
    EXPECT_FALSE(t.flags.failure_reason.empty());
    // The backend is still usable afterwards.
    HostRows ok_rows = MakeRows(DType::kFloat32, 64, 16, 4);
    absl::StatusOr<SealMoments> again = Seal(*b, MakeInput(ok_rows, Preprocessing::kL2));
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(again->cholesky[2].ok);
  }
}

// Rows scaled by 1e155 (squares overflow) or 1e-170 (squares underflow) are
// l2-normalised like the unscaled rows (ConvertRowsKernel rescales their
// norms by a power of two, as ingest_rules.h RowSquares), in every dtype
// path's float64 case and both Cholesky paths; without the rescaling they
// normalise to zero or NaN rows and track2 is far off (issue 14 item 6).
TEST(CudaSeal, ScaledRowsNormaliseLikeUnscaledRows) {
  SIGMA_REQUIRE_CUDA();
  for (const Variant& variant : {Variant{"batched", Batched()}, Variant{"per_matrix", PerMatrix()}}) {
    SCOPED_TRACE(variant.name);
    std::unique_ptr<Backend> b = MakeCuda(variant.options);
    ASSERT_NE(b, nullptr);
    const HostRows plain = MakeRows(DType::kFloat64, 500, 16, 14);
    absl::StatusOr<SealMoments> want = Seal(*b, MakeInput(plain, Preprocessing::kL2));
    ASSERT_TRUE(want.ok()) << want.status();
    for (double scale : {1e155, 1e-170}) {
      SCOPED_TRACE(scale);
      const HostRows scaled = MakeRows(DType::kFloat64, 500, 16, 14, scale);
      absl::StatusOr<SealMoments> got = Seal(*b, MakeInput(scaled, Preprocessing::kL2));
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectMomentsClose(*got, *want, 1e-10);
      // Under none the scaled path reports the honest squared norm.
      absl::StatusOr<SealMoments> raw = Seal(*b, MakeInput(scaled, Preprocessing::kNone, 4.0, 1e-6, 1e300));
      ASSERT_TRUE(raw.ok()) << raw.status();
      if (scale > 1) EXPECT_TRUE(std::isinf(raw->energy.max_energy)) << raw->energy.max_energy;
      if (scale < 1) EXPECT_EQ(raw->energy.max_energy, 0.0);  // ~1e-338: below the subnormals
    }
  }
}

TEST(CudaSeal, SeveralSnapshotsOfDifferentMInOneBatch) {
  SIGMA_REQUIRE_CUDA();
  std::vector<HostRows> rows;
  rows.push_back(MakeRows(DType::kFloat32, 100, 8, 11));
  rows.push_back(MakeRows(DType::kBFloat16, 50, 24, 12));
  rows.push_back(MakeRows(DType::kFloat16, 70, 8, 13));
  rows.push_back(MakeRows(DType::kBFloat16, 20, 24, 14));  // n_A < m
  rows.push_back(MakeRows(DType::kFloat32, 500, 300, 15)); // above the default switch
  rows.push_back(MakeRows(DType::kFloat64, 90, 8, 16));
  std::vector<SealInput> inputs;
  for (size_t i = 0; i < rows.size(); ++i)
    inputs.push_back(MakeInput(rows[i], i == 5 ? Preprocessing::kNone : Preprocessing::kL2, 3.0 + i, 1e-5, 30.0));
  for (const Variant& variant : Variants()) {
    SCOPED_TRACE(variant.name);
    std::unique_ptr<Backend> b = MakeCuda(variant.options);
    ASSERT_NE(b, nullptr);
    std::vector<SealMoments> together(inputs.size());
    absl::Status s = b->SealBatch(inputs, absl::MakeSpan(together));
    ASSERT_TRUE(s.ok()) << s;
    for (size_t i = 0; i < inputs.size(); ++i) {
      SCOPED_TRACE("snapshot " + std::to_string(i));
      absl::StatusOr<SealMoments> alone = Seal(*b, inputs[i]);
      ASSERT_TRUE(alone.ok()) << alone.status();
      ExpectMomentsClose(together[i], *alone, 1e-12);
      EXPECT_TRUE(together[i].cholesky[2].ok);
#if SIGMA_HAVE_CPU_BLAS
      std::unique_ptr<Backend> cpu = MakeCpuBackend();
      absl::StatusOr<SealMoments> ref = Seal(*cpu, inputs[i]);
      ASSERT_TRUE(ref.ok()) << ref.status();
      ExpectMomentsClose(together[i], *ref);
#endif
    }
  }
}

TEST(CudaSeal, DefaultBackendTakesBothSidesOfTheSwitch) {
  SIGMA_REQUIRE_CUDA();
  cuda::CudaBackendOptions o;
  o.record_phase_times = true;
  std::unique_ptr<Backend> b = MakeCuda(o);
  ASSERT_NE(b, nullptr);
  for (int64_t m : {cuda::kDefaultBatchedPotrfMaxM, cuda::kDefaultBatchedPotrfMaxM + 1}) {
    SCOPED_TRACE("m " + std::to_string(m));
    HostRows rows = MakeRows(DType::kFloat32, 2 * m, m, 21);
    absl::StatusOr<SealMoments> mo = Seal(*b, MakeInput(rows, Preprocessing::kL2));
    ASSERT_TRUE(mo.ok()) << mo.status();
    EXPECT_TRUE(mo->cholesky[2].ok);
    ASSERT_TRUE(cuda::LastPhaseTimes(*b).has_value());
    EXPECT_EQ(cuda::LastPhaseTimes(*b)->batched_potrf, m <= cuda::kDefaultBatchedPotrfMaxM);
  }
}

TEST(CudaErrors, InvalidArgumentsAndOutOfMemory) {
  SIGMA_REQUIRE_CUDA();
  std::unique_ptr<Backend> b = MakeCuda();
  ASSERT_NE(b, nullptr);
  HostRows rows = MakeRows(DType::kFloat32, 10, 4, 5);
  SealInput in = MakeInput(rows, Preprocessing::kL2);
  std::vector<SealMoments> two(2);
  EXPECT_EQ(b->SealBatch({&in, 1}, absl::MakeSpan(two)).code(), absl::StatusCode::kInvalidArgument);
  SealInput empty = in;
  empty.rows.num_rows = 0;
  EXPECT_EQ(Seal(*b, empty).status().code(), absl::StatusCode::kInvalidArgument);
  // NaN/Inf: refused as a whole (checked on the device), naming snapshot, row, column.
  std::vector<float> bad(4 * 3, 0.5f);
  bad[7] = std::numeric_limits<float>::quiet_NaN();
  SealInput with_nan = in;
  with_nan.rows = RowBlock{bad.data(), DType::kFloat32, 4, 3};
  std::vector<SealInput> pair = {in, with_nan};
  absl::Status nan_status = b->SealBatch(pair, absl::MakeSpan(two));
  EXPECT_EQ(nan_status.code(), absl::StatusCode::kInvalidArgument) << nan_status;
  EXPECT_NE(nan_status.message().find("snapshot 1: non-finite value (NaN or Inf) at row 2, column 1"),
            std::string::npos)
      << nan_status;
  // Rows are counted from the snapshot's first, whatever the upload chunking.
  std::vector<float> late_bad(40 * 3, 0.5f);
  late_bad[37 * 3 + 2] = std::numeric_limits<float>::infinity();
  SealInput with_inf = in;
  with_inf.rows = RowBlock{late_bad.data(), DType::kFloat32, 40, 3};
  cuda::CudaBackendOptions tiny;
  tiny.staging_slot_bytes = 5 * 3 * sizeof(float);  // 5 rows per upload chunk
  std::unique_ptr<Backend> chunked = MakeCuda(tiny);
  ASSERT_NE(chunked, nullptr);
  absl::Status inf_status = Seal(*chunked, with_inf).status();
  EXPECT_EQ(inf_status.code(), absl::StatusCode::kInvalidArgument) << inf_status;
  EXPECT_NE(inf_status.message().find("at row 37, column 2"), std::string::npos) << inf_status;
  // m = 400000: the three shifted matrices alone need 3.8 TB of device memory.
  const int64_t huge_m = 400000;
  std::vector<uint16_t> one_row(huge_m, DoubleToHalf(0.5));
  SealInput huge;
  huge.rows = RowBlock{one_row.data(), DType::kFloat16, 1, huge_m};
  huge.corpus_size = 10;
  absl::StatusOr<SealMoments> oom = Seal(*b, huge);
  EXPECT_EQ(oom.status().code(), absl::StatusCode::kResourceExhausted) << oom.status();
  // Still usable.
  absl::StatusOr<SealMoments> mo = Seal(*b, in);
  ASSERT_TRUE(mo.ok()) << mo.status();
  EXPECT_TRUE(mo->cholesky[2].ok);
}

TEST(CudaConcurrency, ThreadsShareOneBackend) {
  SIGMA_REQUIRE_CUDA();
  std::unique_ptr<Backend> b = MakeCuda();
  ASSERT_NE(b, nullptr);
  HostRows rows = MakeRows(DType::kBFloat16, 600, 48, 9);
  const SealInput in = MakeInput(rows, Preprocessing::kL2);
  absl::StatusOr<SealMoments> want = Seal(*b, in);
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<SealMoments> got(8);
  std::vector<absl::Status> status(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      absl::StatusOr<SealMoments> r = Seal(*b, in);
      status[t] = r.status();
      if (r.ok()) got[t] = *r;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < 8; ++t) {
    ASSERT_TRUE(status[t].ok()) << status[t];
    ExpectMomentsClose(got[t], *want, 0.0);  // deterministic reductions: bitwise equal
  }
}

}  // namespace
}  // namespace sigma
