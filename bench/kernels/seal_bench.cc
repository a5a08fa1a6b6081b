// Cost of sealing one snapshot on the CPU backend (Gram + 3 Cholesky +
// triangular solve + traces, spec §4) against the same raw OpenBLAS/LAPACKE
// calls made directly, on the same data in the same process; and dsyrk vs dgemm
// for the Gram (OpenBLAS's dsyrk can lose to dgemm when m << n_A).
//
//   build/bench/kernels/sigma_seal_bench --benchmark_filter=Seal
//   build/bench/kernels/sigma_seal_bench --benchmark_filter=Gram
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <lapacke.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "sigma/kernels/cpu_backend.h"
#include "sigma/kernels/estimator.h"

namespace sigma {
namespace {

// Seeded unit rows [n_a, m] float64 (l2 preprocessing already applied, so both
// sides do the same work).
const std::vector<double>& Rows(int64_t n_a, int64_t m) {
  static std::map<std::pair<int64_t, int64_t>, std::vector<double>> cache;
  auto& rows = cache[{n_a, m}];
  if (rows.empty()) {
    std::mt19937_64 rng(n_a * 131 + m);
    std::normal_distribution<double> normal;
    rows.resize(static_cast<size_t>(n_a * m));
    for (int64_t r = 0; r < n_a; ++r) {
      double energy = 0;
      for (int64_t c = 0; c < m; ++c) {
        rows[r * m + c] = normal(rng) * (1.0 + c % 7);
        energy += rows[r * m + c] * rows[r * m + c];
      }
      for (int64_t c = 0; c < m; ++c) rows[r * m + c] /= std::sqrt(energy);
    }
  }
  return rows;
}

void SealBackend(benchmark::State& state) {
  const int64_t m = state.range(0), n_a = state.range(1);
  const std::vector<double>& rows = Rows(n_a, m);
  auto backend = MakeCpuBackend();
  const SealInput input{{rows.data(), DType::kFloat64, n_a, m}, Preprocessing::kL2,
                        10.0 * n_a, 1e-6, 1.0};
  for (auto _ : state) {
    SealMoments moments;
    if (!backend->SealBatch({&input, 1}, {&moments, 1}).ok()) state.SkipWithError("seal failed");
    benchmark::DoNotOptimize(moments);
  }
}

// The same pipeline as plain BLAS/LAPACK calls, no conversions or checks.
void SealRawCalls(benchmark::State& state) {
  const int64_t m = state.range(0), n_a = state.range(1);
  const std::vector<double>& rows = Rows(n_a, m);
  std::vector<double> gram(m * m), factor(m * m), y(rows.size());
  const double n = 10.0 * n_a, delta = 1e-6, f = n_a / n;
  const double scales[3] = {1 / n, 1 / n, 1.0 / n_a};
  const double shifts[3] = {delta, delta + (1 - f), delta};
  for (auto _ : state) {
    cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, m, n_a, 1.0, rows.data(), m, 0.0,
                gram.data(), m);
    double log_det = 0;
    for (int k = 0; k < 3; ++k) {
      for (int64_t i = 0; i < m * m; ++i) factor[i] = scales[k] * gram[i];
      for (int64_t d = 0; d < m; ++d) factor[d * m + d] += shifts[k];
      LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', m, factor.data(), m);
      for (int64_t d = 0; d < m; ++d) log_det += std::log(factor[d * m + d]);
    }
    std::copy(rows.begin(), rows.end(), y.begin());
    cblas_dtrsm(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, m, n_a, 1.0,
                factor.data(), m, y.data(), m);
    LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'L', 'N', m, factor.data(), m);
    LAPACKE_dlauum(LAPACK_COL_MAJOR, 'L', m, factor.data(), m);
    benchmark::DoNotOptimize(log_det);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(factor.data());
  }
}

void GramWith(benchmark::State& state, GramMethod method) {
  const int64_t m = state.range(0), n_a = state.range(1);
  const std::vector<double>& rows = Rows(n_a, m);
  auto backend = MakeCpuBackend(method);
  std::vector<double> gram(m * m);
  for (auto _ : state) {
    std::fill(gram.begin(), gram.end(), 0.0);
    if (!backend->AccumulateGram({rows.data(), DType::kFloat64, n_a, m}, Preprocessing::kNone,
                                 1.0, gram.data(), nullptr).ok())
      state.SkipWithError("gram failed");
    benchmark::DoNotOptimize(gram.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * m * n_a * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
void GramSyrk(benchmark::State& state) { GramWith(state, GramMethod::kSyrk); }
void GramGemm(benchmark::State& state) { GramWith(state, GramMethod::kGemm); }

// Registered pairwise (backend, raw; syrk, gemm) for each size so that both
// sides of a ratio run next to each other and see the same machine load.
void RegisterAll() {
  for (int64_t m : {384, 768, 1024, 2048}) {
    for (int64_t n_a : {4096, 16384}) {
      for (auto [name, fn] : {std::pair<const char*, void (*)(benchmark::State&)>{"SealBackend", SealBackend}, {"SealRawCalls", SealRawCalls}})
        benchmark::RegisterBenchmark(name, fn)
            ->Args({m, n_a})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
    }
  }
  for (int64_t m : {128, 384, 1024}) {
    for (int64_t ratio : {1, 2, 4, 8, 16}) {
      for (auto [name, fn] : {std::pair<const char*, void (*)(benchmark::State&)>{"GramSyrk", GramSyrk}, {"GramGemm", GramGemm}})
        benchmark::RegisterBenchmark(name, fn)
            ->Args({m, m * ratio})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3);
    }
  }
}

}  // namespace
}  // namespace sigma

int main(int argc, char** argv) {
  sigma::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
