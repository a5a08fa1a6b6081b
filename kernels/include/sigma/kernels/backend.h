// The numeric backend interface: the linear algebra of sealing a snapshot
// (spec §3, §4). No CUDA types appear here; every pointer argument is host
// memory. Implementations: CpuBackend (OpenBLAS + LAPACKE, float64), the CUDA
// backend (cuBLAS + cuSOLVER) and RoutedBackend (routed_backend.h: CPU for small
// m, one CUDA backend per device), created by MakeBackend() in backend_factory.h.
//
// Matrices are m x m, stored dense and column-major with leading dimension m
// (symmetric ones are full, so row- and column-major coincide).
#ifndef SIGMA_KERNELS_BACKEND_H_
#define SIGMA_KERNELS_BACKEND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/preprocess.h"

namespace sigma {

// One shifted matrix of a batched factorisation: M = scale * gram + shift * I.
struct ShiftedMatrix {
  double scale = 1.0;
  double shift = 0.0;
};

// Outcome of one Cholesky factorisation. When `ok` is false, `failed_column`
// is the 1-based column where the matrix stopped being positive definite
// (LAPACK's info) and `log_det` is meaningless and must not be reported.
struct CholeskyOutcome {
  bool ok = false;
  int64_t failed_column = 0;
  double log_det = 0.0;  // 2 * sum_i log L_ii
};

// The sub-sample of one snapshot, as handed to SealBatch.
struct SealInput {
  RowBlock rows;  // [n_A, m] in host memory, the columns of I_A
  Preprocessing preprocessing = Preprocessing::kL2;
  double corpus_size = 0;  // n >= n_A
  double delta = 1e-6;
  double rho = 1.0;
  // Which device seals this snapshot when a RoutedBackend spreads the batch
  // over several GPUs (routed_backend.h: device placement_key % device count).
  // A stable hash of the job name (PlacementKeyForJob), so one job's snapshots
  // always land on the same device; ignored by every other backend and by
  // snapshots the routed backend sends to the CPU. 0 when not set.
  uint64_t placement_key = 0;
};

// Everything the estimator needs from the linear algebra of one snapshot.
// With G_A = sum_{j in I_A} x_j x_j^T, f = n_A / n, C_A = G_A / n_A:
//   cholesky[0]: f C_A + delta I                 (track1_lower)
//   cholesky[1]: f C_A + (delta + (1-f) rho) I   (track1_upper)
//   cholesky[2]: C_A + delta I = L L^T           (track2_raw)
//   q_j = ||L^{-1} x_j||^2 for j in I_A: q_mean, q_sq_mean = mean(q^2),
//   q_sd = sample standard deviation (n_A - 1 denominator; 0 when n_A = 1);
//   trace_a = tr(A), trace_a2 = tr(A^2), A = (C_A + delta I)^{-1}.
// q and the traces are only valid when cholesky[2].ok.
struct SealMoments {
  int64_t n_a = 0;
  int64_t m = 0;
  CholeskyOutcome cholesky[3];
  double q_mean = 0.0;
  double q_sq_mean = 0.0;
  double q_sd = 0.0;
  double trace_a = 0.0;
  double trace_a2 = 0.0;
  EnergyStats energy;  // of the I_A rows, after preprocessing
};

// A memory budget shared with the caller (sigmad's --max-memory-bytes): a
// backend charges the long-lived scratch it keeps between calls (the CUDA
// backend's device workspace and pinned staging) to it, and gives it back
// when it frees that scratch. Implementations must be thread-safe (one
// backend per device charges it from its own thread).
class MemoryBudget {
 public:
  virtual ~MemoryBudget() = default;
  // Reserves `bytes` (> 0); false, with nothing reserved, when that would
  // exceed the budget.
  virtual bool TryCharge(int64_t bytes) = 0;
  // Gives back `bytes` reserved earlier.
  virtual void Release(int64_t bytes) = 0;
};

// The numeric backend: one operation, sealing a batch of snapshots. The
// linear-algebra primitives it is built from are internal to each backend
// (the CPU backend's are public on CpuBackend for its tests and benchmarks).
class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda:<ordinal> <device name>".
  virtual std::string name() const = 0;

  // Seals several snapshots at once (spec §4 "Batched"). `out` has
  // inputs.size() entries. Fails as a whole only on device/memory errors or
  // invalid arguments (bad shape or parameters, NaN/Inf rows: INVALID_ARGUMENT
  // naming the snapshot, row and column). Thread-compatible: calls on one
  // instance must not overlap unless the implementation says otherwise.
  virtual absl::Status SealBatch(absl::Span<const SealInput> inputs,
                                 absl::Span<SealMoments> out) = 0;
};

// Validates a SealInput's shape and parameters, O(1) (INVALID_ARGUMENT with a
// message). Device backends use it and check finiteness on the device.
absl::Status ValidateSealShape(const SealInput& input);

// ValidateSealShape plus host scans, O(n_A m): NaN/Inf (CheckFinite, naming row
// and column), then rows whose norm the preprocessing refuses (CheckRowNorms:
// an all-zero row under l2, a norm or squared norm beyond float64), each an
// INVALID_ARGUMENT naming the row. The CPU backend's SealBatch, sigmad's sealer
// and `sigmactl eval` call it.
absl::Status ValidateSealInput(const SealInput& input);

// The three shifts of spec §3 for a snapshot with the given parameters, in the
// order of SealMoments::cholesky.
std::vector<ShiftedMatrix> TrackShifts(int64_t n_a, double corpus_size, double delta,
                                       double rho);

// Mean, mean of squares and sample standard deviation of q (two-pass, float64).
void QStatistics(const double* q, int64_t n, double* mean, double* sq_mean, double* sd);

}  // namespace sigma

#endif  // SIGMA_KERNELS_BACKEND_H_
