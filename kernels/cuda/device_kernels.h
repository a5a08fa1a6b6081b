// Custom CUDA kernels of the CUDA backend and their host launchers.
//
// Everything here works on DEVICE memory (pointers from the backend's
// workspace arena) and is enqueued on the caller's stream; nothing blocks the
// host. Matrices are dense column-major with leading dimension m; a row block
// X [rows, m] row-major is the column-major matrix X^T [m, rows] (spec §2: rows
// are the columns x_j). Every reduction is deterministic (fixed tree order, no
// atomics), so a result does not change from run to run.
//
// Launchers return the launch's cudaError_t (cudaGetLastError); they are
// stateless and thread-safe; ordering comes from the stream.
#ifndef SIGMA_KERNELS_CUDA_DEVICE_KERNELS_H_
#define SIGMA_KERNELS_CUDA_DEVICE_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sigma::cuda::kernels {

// Energy statistics of rows, as sigma::EnergyStats (device layout).
struct EnergyDev {
  double max_energy;
  double sum_energy;
  long long count;
  long long rho_violations;
};

// One Cholesky outcome (device layout of sigma::CholeskyOutcome plus the raw
// cuSOLVER info).
struct CholDev {
  double log_det;           // 2 sum log L_ii when ok
  long long failed_column;  // 1-based, when !ok (negative: cuSOLVER argument error)
  int ok;
  int info;                 // cuSOLVER's info for this matrix
};

// Everything one snapshot's seal produces on the device; copied back in one
// transfer at the end of SealBatch.
struct SnapshotDev {
  CholDev chol[3];
  double q_mean;     // these three are written together by LaunchQStats
  double q_sq_mean;
  double q_sd;
  double trace_a;
  double trace_a2;
  EnergyDev energy;
  unsigned long long first_nonfinite;  // ~index of the first NaN/Inf element, 0 if none
  int potri_info;  // cuSOLVER potri (inverse from the factor)
  int pad;
};

// The smallest plain float64 sum of squares ConvertRows trusts: below it (or
// when it is not finite) a row's norm is recomputed scaled by a power of two.
// Equal to sigma::kMinTrustedSumOfSquares (ingest_rules.h, which nvcc's C++17
// cannot include: <bit>); cuda_backend.cc static_asserts the two agree.
inline constexpr double kMinTrustedSquares = 0x1p-900;

// dtype codes: the values of sigma::DType (0 fp32, 1 fp16, 2 bf16, 3 fp64).
// raw [num_rows, m] of that dtype -> x [num_rows, m] float64, with l2
// normalisation when `l2` (zero rows stay zero) and row_energy[r] = the row's
// energy after preprocessing, by ingest_rules.h's rule (as PreprocessRows):
// ||x_r||^2 for raw rows, exactly 1 for normalised rows (0 for zero rows),
// norms without overflow or underflow (RowSquares: a plain sum of squares when
// trusted, else rescaled by a power of two). One warp per row, one pass over
// the input for ordinary rows, two more for rescaled ones (spec §2). Non-finite elements: *first_bad
// (initialise to 0) becomes max(*first_bad, ~i) for their linear indices
// i = (first_row + r) * m + c, so ~*first_bad is the first one when non-zero.
cudaError_t LaunchConvertRows(int dtype, const void* raw, int64_t num_rows, int64_t m, bool l2,
                              double* x, double* row_energy, int64_t first_row,
                              unsigned long long* first_bad, cudaStream_t stream);

// Folds row_energy[0..n) into *acc (which must be initialised, e.g. zeroed):
// max, sum, count += n, rho_violations += #(energy > limit). Single block.
cudaError_t LaunchEnergyReduce(const double* row_energy, int64_t n, double limit, EnergyDev* acc,
                               cudaStream_t stream);

// Up to 3 shifted copies dst_k = scale_k * g + shift_k * I of the lower
// triangle of g [m, m]; strict upper triangles of dst are zeroed. A dst may
// equal g (in place).
struct ShiftTargets {
  double* dst[3];
  double scale[3];
  double shift[3];
  int count;
};
cudaError_t LaunchShiftedCopies(const double* g, int64_t m, const ShiftTargets& targets,
                                cudaStream_t stream);

// For the `count` factors mats + b*m*m (b < count) with cuSOLVER infos info[b]:
// log_det = 2 sum log L_ii; ok = 0 with failed_column = info when info != 0, or
// the first column whose diagonal is not > 0 (NaN included, LAPACK's rule) when
// cuSOLVER reported success. Matrix b's outcome goes to
//   (CholDev*)((char*)out + (b / per_group) * group_stride_bytes) + b % per_group
// (SealBatch: per_group 3, stride sizeof(SnapshotDev)).
cudaError_t LaunchLogDiag(const double* mats, int64_t m, int64_t count, const int* info,
                          void* out, int per_group, int64_t group_stride_bytes,
                          cudaStream_t stream);

// q[j] = sum_r y[j*m + r]^2 for j < n (column norms of column-major y [m, n]).
cudaError_t LaunchColumnSquaredNorms(const double* y, int64_t m, int64_t n, double* q,
                                     cudaStream_t stream);

// out[0] = mean(q), out[1] = mean(q^2), out[2] = sample sd (n-1; 0 when n<2),
// two-pass like sigma::QStatistics. Single block.
cudaError_t LaunchQStats(const double* q, int64_t n, double* out, cudaStream_t stream);

// For A symmetric with its lower triangle in a [m, m] (upper ignored):
// *trace_a = tr(A) and *trace_a2 = tr(A^2) = ||A||_F^2 (diagonal plus twice
// the strict lower triangle). partial is [2m] scratch. Three deterministic
// kernels.
cudaError_t LaunchInverseTraces(const double* a, int64_t m, double* partial, double* trace_a,
                                double* trace_a2, cudaStream_t stream);

}  // namespace sigma::cuda::kernels

#endif  // SIGMA_KERNELS_CUDA_DEVICE_KERNELS_H_
