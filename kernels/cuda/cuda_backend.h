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
// and may beat SYRK in wall time despite doing twice the work). kAuto applies
// the rule in GramUsesGemm() (cuda_backend.cc), the ONE place that decides;
// it must be set from bench/gpu measurements on the target device.
enum class GramAlgo { kAuto, kSyrk, kGemm };

// Largest m factored with the batched cuSOLVER Cholesky (cusolverDnDpotrfBatched,
// all 3 x #snapshots matrices of one m in one call); larger m use one blocked
// cusolverDnXpotrf per matrix (a batched routine is the wrong tool for a few
// large matrices). NOT MEASURED YET: bench/gpu/sigma_gpu_bench prints the
// crossover ("potrf switch" table); set this constant from it.
inline constexpr int64_t kDefaultBatchedPotrfMaxM = 256;

struct CudaBackendOptions {
  GramAlgo gram = GramAlgo::kAuto;
  // m <= this: batched potrf; m > this: per-matrix potrf. 0 forces the
  // per-matrix path, INT64_MAX forces the batched one (tests cover both).
  int64_t batched_potrf_max_m = kDefaultBatchedPotrfMaxM;
  // Pinned host staging: two slots of this many bytes (double-buffered upload).
  size_t staging_slot_bytes = size_t{64} << 20;
  // Rows per AccumulateGram / MahalanobisNorms device chunk are bounded so the
  // float64 chunk stays under this many bytes.
  size_t chunk_bytes = size_t{512} << 20;
  // Record cudaEvent phase timings of SealBatch and ShiftedCholesky
  // (LastPhaseTimes). Costs a few events per call.
  bool record_phase_times = false;
};

// Number of CUDA devices the runtime sees (0 when none or no driver).
int DeviceCount();

// A backend bound to device `ordinal`, with its context (stream, cuBLAS and
// cuSOLVER handles, events, small pinned buffer) created here once; the device
// workspace and the pinned upload slots belong to the context too and grow on
// first use to the largest call seen (never per request, never shrunk).
// UNAVAILABLE without a device; RESOURCE_EXHAUSTED when the context cannot be
// allocated.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal);
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal,
                                                         const CudaBackendOptions& options);

// Device-side phase timings (milliseconds, cudaEvent) of the last SealBatch or
// ShiftedCholesky call on a backend made with record_phase_times. A phase that
// did not run is 0. total_ms is wall-clock (host) for the whole call.
struct PhaseTimes {
  double upload_convert_ms = 0;  // H2D staging + dtype conversion + l2 + energy
  double gram_ms = 0;            // SYRK/GEMM
  double cholesky_ms = 0;        // shifted copies + potrf + log-diagonal
  double q_ms = 0;               // TRSM + column norms + q statistics
  double traces_ms = 0;          // TRTRI + SYRK + Frobenius sums
  double total_ms = 0;           // host wall clock of the call
  bool batched_potrf = false;    // which Cholesky path ran (last group)
  bool gram_gemm = false;        // which Gram path ran (last group)
};

// Timings of `backend`'s last timed call; nullopt when it is not a CUDA
// backend or timing is off or nothing ran yet.
std::optional<PhaseTimes> LastPhaseTimes(const Backend& backend);

}  // namespace sigma::cuda

#endif  // SIGMA_KERNELS_CUDA_CUDA_BACKEND_H_
