// Entry points of the CUDA backend for backend_factory.cc, the GPU tests and the
// GPU benchmark. No CUDA types here (this header is included by plain C++).
#ifndef SIGMA_KERNELS_CUDA_CUDA_BACKEND_H_
#define SIGMA_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "sigma/kernels/backend.h"

namespace sigma::cuda {

// How the Gram G = X^T X (spec §4: "SYRK m^2 n_A") is formed on the device.
// kSyrk: cublasDsyrk (m^2 n_A flops, lower triangle). kGemm: cublasDgemm
// (2 m^2 n_A flops, full matrix; on Hopper DGEMM runs on the FP64 tensor cores
// and may beat SYRK in wall time despite doing twice the work). kBlocked:
// SYRK on the diagonal blocks of gram_block columns and DGEMM on the blocks
// below them (about m^2 n_A (1 + gram_block / m) flops, mostly DGEMM: the
// tensor-core rate on the useful flops). kAuto applies the rule in
// GramPathFor() (cuda_backend.cc), the ONE place that decides; it must be set
// from bench/gpu measurements on the target device (issue 18 part B).
enum class GramAlgo { kAuto, kSyrk, kGemm, kBlocked };

// Largest m factored with the batched cuSOLVER Cholesky (cusolverDnDpotrfBatched,
// all 3 x #snapshots matrices of one m in one call); larger m use one blocked
// cusolverDnXpotrf per matrix (a batched routine is the wrong tool for a few
// large matrices). NOT MEASURED YET: bench/gpu/sigma_gpu_bench prints the
// crossover ("potrf switch" table); set this constant from it. It must be at
// least kDefaultGpuMinM (routed_backend.h; static_assert in cuda_backend.cc):
// under --backend auto only m >= kDefaultGpuMinM reach the device, so a
// smaller value would leave the batched path unused (both were 256, which ran
// it at m = 256 only).
inline constexpr int64_t kDefaultBatchedPotrfMaxM = 512;

struct CudaBackendOptions {
  GramAlgo gram = GramAlgo::kAuto;
  // m <= this: batched potrf; m > this: per-matrix potrf. 0 forces the
  // per-matrix path, INT64_MAX forces the batched one (tests cover both).
  int64_t batched_potrf_max_m = kDefaultBatchedPotrfMaxM;
  // kBlocked: columns per diagonal block (> 0).
  int64_t gram_block = 1024;
  // Pinned host staging: two slots of this many bytes (double-buffered upload).
  size_t staging_slot_bytes = size_t{64} << 20;
  // The device workspace and the pinned staging grow to what a call needs;
  // after the call, a buffer larger than this is freed (so one large batch
  // does not keep its peak for the life of the process). Smaller ones are
  // kept for the next call.
  size_t keep_bytes = size_t{1} << 30;
  // When set, the device workspace and pinned staging are charged to it
  // (sigmad passes its --max-memory-bytes budget); a call whose workspace the
  // budget refuses fails with RESOURCE_EXHAUSTED (a batch is split first).
  // Not owned; must outlive the backend.
  MemoryBudget* memory_budget = nullptr;
  // Record cudaEvent phase timings of SealBatch (LastPhaseTimes). Costs a few
  // events per call.
  bool record_phase_times = false;
};

// The oldest CUDA runtime the backend accepts: cuBLAS TRSM fails for more than
// 524,280 right-hand sides (q for n_A > 524,280) before CUDA 12.1.
inline constexpr int kMinCudaRuntimeVersion = 12010;

// Number of CUDA devices the runtime sees (0 when none or no driver).
int DeviceCount();

// A backend bound to device `ordinal`, with its context (streams, cuBLAS and
// cuSOLVER handles, events, small pinned buffer) created here once; the device
// workspace and the pinned upload slots belong to the context too and grow on
// first use (never per request; trimmed to keep_bytes after each call).
// UNAVAILABLE without a device or with a CUDA runtime older than
// kMinCudaRuntimeVersion; RESOURCE_EXHAUSTED when the context cannot be
// allocated.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal);
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal,
                                                         const CudaBackendOptions& options);

// Device-side phase timings (milliseconds, cudaEvent) of the last SealBatch
// call on a backend made with record_phase_times. A phase that
// did not run is 0. total_ms is wall-clock (host) for the whole call.
struct PhaseTimes {
  double upload_convert_ms = 0;  // H2D staging + dtype conversion + l2 + energy
  double gram_ms = 0;            // SYRK/GEMM
  double cholesky_ms = 0;        // shifted copies + potrf + log-diagonal
  double q_ms = 0;               // TRSM + column norms + q statistics
  double traces_ms = 0;          // POTRI + trace sums
  double total_ms = 0;           // host wall clock of the call
  bool batched_potrf = false;    // which Cholesky path ran (last group)
  bool gram_gemm = false;        // the Gram path of the last group: GEMM,
  bool gram_blocked = false;     // blocked (SYRK + GEMM), or neither: SYRK
};

// Timings of `backend`'s last timed call; nullopt when it is not a CUDA
// backend or timing is off or nothing ran yet.
std::optional<PhaseTimes> LastPhaseTimes(const Backend& backend);

}  // namespace sigma::cuda

#endif  // SIGMA_KERNELS_CUDA_CUDA_BACKEND_H_
