// GPU benchmark of the CUDA backend (issue 5): seal latency for
// m in {1024, 4096, 8192} x n_A in {8192, 65536}, the Gram's TFLOP/s against a
// raw cublasDgemm measured in the same run and against the 67 TFLOP/s FP64
// tensor-core datasheet figure of the H100/H200, both Gram algorithms (SYRK /
// GEMM: the choice in GramUsesGemm() must come from these numbers), and the
// batched-vs-per-matrix Cholesky crossover (kDefaultBatchedPotrfMaxM), and
// the CPU-vs-GPU seal crossover (kDefaultGpuMinM in routed_backend.h, sigmad
// --gpu-min-m): seal latency of one snapshot on the CUDA backend and on the CPU
// backend (when this build has it; the device check's has not, it compares
// with torch.linalg on the CPU instead) for m in {64 .. 1024} at n_A = 4096.
//
// Data: seeded bf16 rows made on the device (bench_data.cu), the same values
// as bench/gpu/torch_seal.py makes, l2 preprocessing, n = 10 n_A, delta 1e-6,
// rho 1. A seal is timed end to end from host memory (SealBatch wall clock,
// upload included) with cudaEvent phase times inside.
//
// usage: sigma_gpu_bench [--quick] [--reps N] [--json FILE] [--configs m:n,...]
//                        [--no-sweep] [--no-crossover] [--crossover-n-a N]
//                        [--sweep-ms m,...] [--crossover-ms m,...]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cuda_backend.h"
#include "sigma/kernels/backend.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/ingest_rules.h"  // SplitMix64

namespace sigma::bench {
// seed_mix = SplitMix64(seed) (bench_data.cu).
cudaError_t FillBenchBf16(uint16_t* device_out, uint64_t count, uint64_t seed_mix, cudaStream_t stream);
cudaError_t FillBenchF64(double* device_out, uint64_t count, uint64_t seed_mix, cudaStream_t stream);
}  // namespace sigma::bench

namespace {

using sigma::Backend;
using sigma::SealInput;
using sigma::SealMoments;
namespace cuda = sigma::cuda;

constexpr double kDatasheetFp64TensorTflops = 67.0;  // H100/H200 SXM FP64 tensor core

#define CHECK_CUDA(call)                                                                      \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define CHECK_CUBLAS(call)                                                                          \
  do {                                                                                              \
    cublasStatus_t s_ = (call);                                                                     \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cublasGetStatusString(s_)); \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

uint64_t SeedFor(int64_t m, int64_t n_a) { return static_cast<uint64_t>(m) * 1000003ull + static_cast<uint64_t>(n_a); }
// The generator's seed_mix (bench_data.cu): splitmix64 of the seed.
uint64_t SeedMixFor(int64_t m, int64_t n_a) { return sigma::SplitMix64(SeedFor(m, n_a)); }

// Host bf16 rows [n_a, m] made on the device.
std::vector<uint16_t> MakeHostRows(int64_t m, int64_t n_a, cudaStream_t stream) {
  const uint64_t count = static_cast<uint64_t>(m) * static_cast<uint64_t>(n_a);
  std::vector<uint16_t> host(count);
  uint16_t* dev = nullptr;
  CHECK_CUDA(cudaMalloc(&dev, count * sizeof(uint16_t)));
  CHECK_CUDA(sigma::bench::FillBenchBf16(dev, count, SeedMixFor(m, n_a), stream));
  CHECK_CUDA(cudaMemcpyAsync(host.data(), dev, count * sizeof(uint16_t), cudaMemcpyDeviceToHost, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaFree(dev));
  return host;
}

// One snapshot of `rows` ([n_a, m] bf16 on the host) as the daemon would seal
// it: l2 preprocessing, n = 10 n_A, delta 1e-6, rho 1.
SealInput BenchInput(const std::vector<uint16_t>& rows, int64_t m, int64_t n_a) {
  SealInput in;
  in.rows = sigma::RowBlock{rows.data(), sigma::DType::kBFloat16, n_a, m};
  in.preprocessing = sigma::Preprocessing::kL2;
  in.corpus_size = 10.0 * static_cast<double>(n_a);
  in.delta = 1e-6;
  in.rho = 1.0;
  return in;
}

// Raw cublasDgemm(N, T) m x m x n_a on the same values (float64), ms (median).
double RawDgemmMs(cublasHandle_t h, cudaStream_t stream, int64_t m, int64_t n_a, int reps) {
  const uint64_t count = static_cast<uint64_t>(m) * static_cast<uint64_t>(n_a);
  double *x = nullptr, *g = nullptr;
  CHECK_CUDA(cudaMalloc(&x, count * sizeof(double)));
  CHECK_CUDA(cudaMalloc(&g, static_cast<size_t>(m) * m * sizeof(double)));
  CHECK_CUDA(sigma::bench::FillBenchF64(x, count, SeedMixFor(m, n_a), stream));
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  const double one = 1.0, zero = 0.0;
  std::vector<double> ms;
  for (int r = 0; r < reps + 1; ++r) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    CHECK_CUBLAS(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(m), static_cast<int>(m),
                             static_cast<int>(n_a), &one, x, static_cast<int>(m), x, static_cast<int>(m), &zero, g,
                             static_cast<int>(m)));
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    if (r > 0) ms.push_back(t);  // first is warm-up
  }
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(g));
  return Median(ms);
}

struct SealRun {
  double total_ms = 0;
  cuda::PhaseTimes phases;
  SealMoments moments;
  bool ok = false;
};

SealRun TimeSeal(Backend& backend, const std::vector<SealInput>& inputs, int reps) {
  SealRun best;
  std::vector<double> totals;
  std::vector<cuda::PhaseTimes> phases;
  std::vector<SealMoments> out(inputs.size());
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status s = backend.SealBatch(inputs, absl::MakeSpan(out));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!s.ok()) {
      std::fprintf(stderr, "SealBatch failed: %s\n", s.ToString().c_str());
      return best;
    }
    if (r == 0) continue;  // warm-up (workspace growth, library init)
    totals.push_back(ms);
    phases.push_back(cuda::LastPhaseTimes(backend).value_or(cuda::PhaseTimes{}));
  }
  // The repetition with the median total.
  std::vector<size_t> order(totals.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return totals[a] < totals[b]; });
  const size_t mid = order[order.size() / 2];
  best.total_ms = totals[mid];
  best.phases = phases[mid];
  best.moments = out[0];
  best.ok = true;
  return best;
}

std::unique_ptr<Backend> MakeBackendOrDie(const cuda::CudaBackendOptions& o) {
  absl::StatusOr<std::unique_ptr<Backend>> b = cuda::MakeCudaBackend(0, o);
  if (!b.ok()) {
    std::fprintf(stderr, "MakeCudaBackend: %s\n", b.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*b);
}

std::string PhaseJson(const cuda::PhaseTimes& p) {
  return absl::StrFormat(
      "{\"upload_convert_ms\": %.4f, \"gram_ms\": %.4f, \"cholesky_ms\": %.4f, \"q_ms\": %.4f, "
      "\"traces_ms\": %.4f, \"total_ms\": %.4f}",
      p.upload_convert_ms, p.gram_ms, p.cholesky_ms, p.q_ms, p.traces_ms, p.total_ms);
}

// "a,b,c" -> {"a", "b", "c"} (empty items dropped).
std::vector<std::string> SplitCommas(const std::string& list) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < list.size()) {
    size_t end = list.find(',', pos);
    if (end == std::string::npos) end = list.size();
    if (end > pos) out.push_back(list.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, sweep = true, crossover = true;
  int64_t crossover_n_a = 4096;
  int reps = 3;
  std::string json_path;
  std::vector<std::pair<int64_t, int64_t>> configs;
  std::vector<int64_t> sweep_ms, crossover_ms;  // empty: the defaults below
  auto parse_ms = [](const std::string& list) {
    std::vector<int64_t> out;
    for (const std::string& item : SplitCommas(list))
      if (const int64_t m = std::atoll(item.c_str()); m > 0) out.push_back(m);
    return out;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--no-sweep") {
      sweep = false;
    } else if (a == "--no-crossover") {
      crossover = false;
    } else if (a == "--crossover-n-a" && i + 1 < argc) {
      crossover_n_a = std::max<int64_t>(1, std::atoll(argv[++i]));
    } else if (a == "--sweep-ms" && i + 1 < argc) {
      sweep_ms = parse_ms(argv[++i]);
    } else if (a == "--crossover-ms" && i + 1 < argc) {
      crossover_ms = parse_ms(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--configs" && i + 1 < argc) {
      for (const std::string& item : SplitCommas(argv[++i])) {
        const size_t colon = item.find(':');
        if (colon != std::string::npos)
          configs.push_back({std::atoll(item.substr(0, colon).c_str()), std::atoll(item.substr(colon + 1).c_str())});
      }
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--reps N] [--json FILE] [--configs m:n,...] [--no-sweep] "
                   "[--no-crossover] [--crossover-n-a N] [--sweep-ms m,...] [--crossover-ms m,...]\n", argv[0]);
      return 2;
    }
  }
  if (configs.empty()) {
    if (quick) {
      configs = {{1024, 8192}};
    } else {
      for (int64_t m : {1024, 4096, 8192})
        for (int64_t n_a : {8192, 65536}) configs.push_back({m, n_a});
    }
  }
  if (cuda::DeviceCount() == 0) {
    std::fprintf(stderr, "no CUDA device: nothing to benchmark\n");
    return 2;
  }
  std::FILE* json = json_path.empty() ? nullptr : std::fopen(json_path.c_str(), "w");

  cudaDeviceProp props;
  CHECK_CUDA(cudaGetDeviceProperties(&props, 0));
  std::printf("device: %s, %d SMs, %.1f GiB\n", props.name, props.multiProcessorCount,
              static_cast<double>(props.totalGlobalMem) / (1ull << 30));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t h;
  CHECK_CUBLAS(cublasCreate(&h));
  CHECK_CUBLAS(cublasSetStream(h, stream));

  // The three Gram methods (GramAlgo): SYRK, DGEMM (twice the flops, full
  // matrix) and blocked (SYRK on diagonal blocks, DGEMM below). "useful" rates
  // count m^2 n_A flops whatever the method executes.
  cuda::CudaBackendOptions syrk_opts, gemm_opts, blocked_opts;
  syrk_opts.gram = cuda::GramAlgo::kSyrk;
  gemm_opts.gram = cuda::GramAlgo::kGemm;
  blocked_opts.gram = cuda::GramAlgo::kBlocked;
  syrk_opts.record_phase_times = gemm_opts.record_phase_times = blocked_opts.record_phase_times = true;

  std::printf("\n%6s %6s | %8s | %9s %8s | %9s %8s %8s | %9s %8s | %6s | %9s %9s %9s | %s\n", "m", "n_A", "DGEMM",
              "syrk ms", "useful", "gemm ms", "useful", "exec", "blk ms", "useful", "%67", "seal syrk", "seal gemm",
              "seal blk", "phases of the fastest seal (ms)");
  std::printf("%6s %6s | %8s | %9s %8s | %9s %8s %8s | %9s %8s | %6s | %9s %9s %9s |\n", "", "", "TFLOP/s", "",
              "TFLOP/s", "", "TFLOP/s", "TFLOP/s", "", "TFLOP/s", "", "ms", "ms", "ms");
  for (const auto& [m, n_a] : configs) {
    const double useful_flops = static_cast<double>(m) * static_cast<double>(m) * static_cast<double>(n_a);
    const double dgemm_ms = RawDgemmMs(h, stream, m, n_a, reps);
    const double dgemm_tflops = 2 * useful_flops / (dgemm_ms * 1e-3) / 1e12;

    std::vector<uint16_t> rows = MakeHostRows(m, n_a, stream);
    const SealInput in = BenchInput(rows, m, n_a);
    const std::vector<SealInput> inputs = {in};
    SealRun syrk, gemm, blocked;
    for (auto [run, opts] : {std::pair{&syrk, &syrk_opts}, {&gemm, &gemm_opts}, {&blocked, &blocked_opts}}) {
      std::unique_ptr<Backend> b = MakeBackendOrDie(*opts);
      *run = TimeSeal(*b, inputs, reps);
    }
    auto useful = [&](const SealRun& r) {
      return r.phases.gram_ms > 0 ? useful_flops / (r.phases.gram_ms * 1e-3) / 1e12 : 0.0;
    };
    const double syrk_tflops = useful(syrk), gemm_useful = useful(gemm), blocked_useful = useful(blocked);
    const SealRun* fastest = &syrk;
    for (const SealRun* r : {&gemm, &blocked})
      if (r->total_ms < fastest->total_ms) fastest = r;
    const SealRun& fast = *fastest;
    const double best_gram_useful = std::max({syrk_tflops, gemm_useful, blocked_useful});
    std::printf("%6lld %6lld | %8.1f | %9.2f %8.1f | %9.2f %8.1f %8.1f | %9.2f %8.1f | %5.0f%% | %9.1f %9.1f %9.1f | "
                "up %.1f gram %.1f chol %.1f q %.1f tr %.1f\n",
                static_cast<long long>(m), static_cast<long long>(n_a), dgemm_tflops, syrk.phases.gram_ms, syrk_tflops,
                gemm.phases.gram_ms, gemm_useful, 2 * gemm_useful, blocked.phases.gram_ms, blocked_useful,
                100 * best_gram_useful / kDatasheetFp64TensorTflops, syrk.total_ms, gemm.total_ms, blocked.total_ms,
                fast.phases.upload_convert_ms, fast.phases.gram_ms, fast.phases.cholesky_ms, fast.phases.q_ms,
                fast.phases.traces_ms);
    std::fflush(stdout);
    if (json != nullptr) {
      const SealMoments& mo = fast.moments;
      std::fprintf(json,
                   "{\"impl\": \"cuda\", \"m\": %lld, \"n_a\": %lld, \"ok\": %s, \"dgemm_ms\": %.4f, "
                   "\"dgemm_tflops\": %.3f, \"gram_syrk_ms\": %.4f, \"gram_syrk_useful_tflops\": %.3f, "
                   "\"gram_gemm_ms\": %.4f, \"gram_gemm_useful_tflops\": %.3f, \"gram_blocked_ms\": %.4f, "
                   "\"gram_blocked_useful_tflops\": %.3f, \"seal_syrk_ms\": %.4f, "
                   "\"seal_gemm_ms\": %.4f, \"seal_blocked_ms\": %.4f, \"seal_ms\": %.4f, \"phases\": %s, "
                   "\"track1_upper\": %.17g, \"track2_raw\": %.17g, \"q_mean\": %.17g, \"trace_a\": %.17g}\n",
                   static_cast<long long>(m), static_cast<long long>(n_a),
                   (syrk.ok && gemm.ok && blocked.ok) ? "true" : "false", dgemm_ms, dgemm_tflops, syrk.phases.gram_ms,
                   syrk_tflops, gemm.phases.gram_ms, gemm_useful, blocked.phases.gram_ms, blocked_useful,
                   syrk.total_ms, gemm.total_ms, blocked.total_ms, fast.total_ms, PhaseJson(fast.phases).c_str(),
                   mo.cholesky[1].log_det, mo.cholesky[2].log_det, mo.q_mean, mo.trace_a);
      std::fflush(json);
    }
  }

  if (sweep) {
    // Batched vs per-matrix Cholesky: cholesky phase (shifted copies + potrf +
    // log-diagonal) of a seal of S snapshots of the same m, n_A = 2 m.
    std::printf("\npotrf switch: cholesky phase ms (3 x S matrices), batched vs per-matrix\n");
    std::printf("%6s %3s | %9s %11s | %s\n", "m", "S", "batched", "per-matrix", "faster");
    cuda::CudaBackendOptions bo, po;
    bo.batched_potrf_max_m = INT64_MAX;
    po.batched_potrf_max_m = 0;
    bo.record_phase_times = po.record_phase_times = true;
    bo.gram = po.gram = cuda::GramAlgo::kGemm;
    std::unique_ptr<Backend> batched = MakeBackendOrDie(bo), per_matrix = MakeBackendOrDie(po);
    int64_t largest_batched_win = 0;  // largest m up to which batched always won
    bool still_winning = true;
    const std::vector<int64_t> ms = !sweep_ms.empty() ? sweep_ms
                                    : quick             ? std::vector<int64_t>{64, 256, 1024}
                                                        : std::vector<int64_t>{32, 64, 128, 256, 512, 1024, 2048};
    for (int64_t m : ms) {
      bool batched_wins_all = true;
      for (int s_count : {1, 8}) {
        std::vector<uint16_t> rows = MakeHostRows(m, 2 * m, stream);
        SealInput in;
        in.rows = sigma::RowBlock{rows.data(), sigma::DType::kBFloat16, 2 * m, m};
        in.corpus_size = 20.0 * m;
        const std::vector<SealInput> inputs(s_count, in);
        const SealRun a = TimeSeal(*batched, inputs, reps);
        const SealRun b = TimeSeal(*per_matrix, inputs, reps);
        const bool win = a.phases.cholesky_ms <= b.phases.cholesky_ms;
        batched_wins_all = batched_wins_all && win;
        std::printf("%6lld %3d | %9.3f %11.3f | %s\n", static_cast<long long>(m), s_count, a.phases.cholesky_ms,
                    b.phases.cholesky_ms, win ? "batched" : "per-matrix");
        if (json != nullptr)
          std::fprintf(json,
                       "{\"impl\": \"cuda_potrf\", \"m\": %lld, \"snapshots\": %d, \"batched_ms\": %.4f, "
                       "\"per_matrix_ms\": %.4f}\n",
                       static_cast<long long>(m), s_count, a.phases.cholesky_ms, b.phases.cholesky_ms);
      }
      still_winning = still_winning && batched_wins_all;
      if (still_winning) largest_batched_win = m;
    }
    std::printf("suggested kDefaultBatchedPotrfMaxM: %lld (compiled in: %lld)\n",
                static_cast<long long>(largest_batched_win), static_cast<long long>(cuda::kDefaultBatchedPotrfMaxM));
    if (json != nullptr)
      std::fprintf(json, "{\"impl\": \"cuda_potrf_suggestion\", \"batched_max_m\": %lld}\n",
                   static_cast<long long>(largest_batched_win));
  }
  if (crossover) {
    // CPU vs GPU seal: where RoutedBackend should stop sending small m to the
    // CPU. One snapshot per SealBatch (the latency a lone seal sees), and the
    // per-snapshot time of a batch of 8 on the device (seals arriving together).
    // Both backends as the daemon makes them (default options).
    std::printf("\nCPU vs GPU seal crossover (n_A = %lld, one snapshot per call; ms)\n",
                static_cast<long long>(crossover_n_a));
    std::unique_ptr<Backend> gpu = MakeBackendOrDie(cuda::CudaBackendOptions{});
    absl::StatusOr<std::unique_ptr<Backend>> cpu = sigma::MakeBackend({.kind = sigma::BackendKind::kCpu});
    if (!cpu.ok()) std::printf("(no CPU backend in this build: %s; compare with torch_seal.py --device cpu)\n",
                               std::string(cpu.status().message()).c_str());
    std::printf("%6s %6s | %9s %12s | %9s | %s\n", "m", "n_A", "cuda", "cuda/snap x8", "cpu", "faster");
    int64_t suggested = -1;  // smallest m from which CUDA wins at every larger m tested
    bool cuda_wins_above = true;
    const std::vector<int64_t> ms = !crossover_ms.empty() ? crossover_ms : std::vector<int64_t>{64, 128, 256, 512, 1024};
    std::vector<std::pair<int64_t, bool>> wins;
    for (int64_t m : ms) {
      const int64_t n_a = crossover_n_a;
      std::vector<uint16_t> rows = MakeHostRows(m, n_a, stream);
      const SealInput in = BenchInput(rows, m, n_a);
      const int xreps = std::max(reps, 5);
      const SealRun g1 = TimeSeal(*gpu, {in}, xreps);
      const SealRun g8 = TimeSeal(*gpu, std::vector<SealInput>(8, in), xreps);
      SealRun c1;
      if (cpu.ok()) c1 = TimeSeal(**cpu, {in}, xreps);
      const bool have_cpu = cpu.ok() && c1.ok;
      const bool gpu_faster = have_cpu && g1.ok && g1.total_ms < c1.total_ms;
      if (have_cpu) wins.push_back({m, gpu_faster});
      std::printf("%6lld %6lld | %9.3f %12.3f | %9s | %s\n", static_cast<long long>(m), static_cast<long long>(n_a),
                  g1.total_ms, g8.total_ms / 8,
                  have_cpu ? absl::StrFormat("%.3f", c1.total_ms).c_str() : "n/a",
                  have_cpu ? (gpu_faster ? "cuda" : "cpu") : "-");
      std::fflush(stdout);
      if (json != nullptr)
        std::fprintf(json,
                     "{\"impl\": \"cuda_crossover\", \"m\": %lld, \"n_a\": %lld, \"ok\": %s, \"cuda_ms\": %.4f, "
                     "\"cuda_batch8_per_snapshot_ms\": %.4f, \"cpu_ms\": %s}\n",
                     static_cast<long long>(m), static_cast<long long>(n_a), (g1.ok && g8.ok) ? "true" : "false",
                     g1.total_ms, g8.total_ms / 8,
                     have_cpu ? absl::StrFormat("%.4f", c1.total_ms).c_str() : "null");
    }
    for (auto it = wins.rbegin(); it != wins.rend(); ++it) {
      cuda_wins_above = cuda_wins_above && it->second;
      if (cuda_wins_above) suggested = it->first;
    }
    if (!wins.empty())
      std::printf("suggested gpu_min_m: %s (compiled in: %lld)\n",
                  suggested < 0 ? absl::StrFormat("> %d (the CPU won at m = %d)", ms.back(), ms.back()).c_str()
                                : absl::StrFormat("%lld", static_cast<long long>(suggested)).c_str(),
                  static_cast<long long>(sigma::kDefaultGpuMinM));
  }
  if (json != nullptr) std::fclose(json);
  CHECK_CUBLAS(cublasDestroy(h));
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
