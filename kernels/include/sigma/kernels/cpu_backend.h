// The CPU backend: OpenBLAS + LAPACKE in float64. Built when SIGMA_HAVE_CPU_BLAS.
#ifndef SIGMA_KERNELS_CPU_BACKEND_H_
#define SIGMA_KERNELS_CPU_BACKEND_H_

#include <memory>
#include <mutex>
#include <vector>

#include "sigma/kernels/backend.h"

namespace sigma {

// How the Gram is formed. OpenBLAS dsyrk can be slower than dgemm when
// m << n_A (it does half the flops but parallelises worse); kAuto uses the
// rule measured in bench/kernels (see docs/benchmarks.md).
enum class GramMethod { kAuto, kSyrk, kGemm };

// SealBatch composes four primitives, snapshot by snapshot. They are public
// here (not on Backend) for the CPU backend's own tests and benchmarks; no
// other backend has them. Host memory, float64, column-major m x m matrices.
// Thread-compatible: the primitives share host scratch that grows and is kept
// (see ScratchBytes).
class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(GramMethod method) : method_(method) {}

  std::string name() const override { return "cpu"; }
  absl::Status SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) override;

  // gram += X^T X where X = preprocess(rows) in float64: rows [num_rows, m]
  // (any dtype, converted exactly), gram [m, m]. Adds the rows' energies
  // (after preprocessing) to `energy` when not null. NaN/Inf rows are refused
  // (INVALID_ARGUMENT) before `gram` is touched.
  absl::Status AccumulateGram(const RowBlock& rows, Preprocessing preprocessing, double rho,
                              double* gram, EnergyStats* energy);

  // Factors scale_i * gram + shift_i * I for every entry of `shifts` and
  // writes their log-determinants to `outcomes` (same length). When `factors`
  // is not null it receives the lower factors, [shifts.size(), m, m]. A matrix
  // that is not positive definite is an outcome with ok = false, not an error.
  absl::Status ShiftedCholesky(const double* gram, int64_t m, absl::Span<const ShiftedMatrix> shifts,
                               absl::Span<CholeskyOutcome> outcomes, double* factors);

  // q_j = ||L^{-1} x_j||^2 for the rows of `x` [num_rows, m] float64 (already
  // preprocessed), L [m, m] lower. Writes num_rows values.
  absl::Status MahalanobisNorms(const double* lower_factor, int64_t m, const double* x,
                                int64_t num_rows, double* q);

  // tr(A) and tr(A^2) for A = (L L^T)^{-1}.
  absl::Status InverseTraces(const double* lower_factor, int64_t m, double* trace_a,
                             double* trace_a2);

  // Scratch kept between SealBatch calls: up to this many bytes stay for the
  // next seal; above it every buffer is freed when SealBatch returns, so one
  // large seal does not hold its working set (~32 m^2 + 8 n_A m bytes) for the
  // life of the process (docs/reliability.md, "Seal memory").
  static constexpr int64_t kKeepScratchBytes = int64_t{32} << 20;
  // Bytes of host scratch held now (this object's buffers and its workers').
  int64_t scratch_bytes() const;

 private:
  bool UseSyrk(int64_t m, int64_t rows) const;
  absl::Status SealEach(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out);
  void TrimScratch();

  GramMethod method_;
  // SealBatch is thread-safe (sigmad's small and large seal lanes call it at
  // once): each call borrows a worker with its own scratch from this pool (a
  // new one when all are busy) and gives it back. The public primitives use
  // this object's own scratch and are not thread-safe.
  mutable std::mutex pool_mu_;
  std::vector<std::unique_ptr<CpuBackend>> pool_;
  // Host scratch reused across calls so that a seal does not page-fault
  // through fresh allocations (freed after a call when above kKeepScratchBytes).
  std::vector<double> staging_;  // conversion chunks, factor copies, trsm right-hand sides
  std::vector<double> x_;        // SealBatch: [n_A, m] preprocessed rows
  std::vector<double> gram_;     // [m, m]
  std::vector<double> factors_;  // [3, m, m] lower Cholesky factors
  std::vector<double> q_;        // [n_A]
};

std::unique_ptr<CpuBackend> MakeCpuBackend(GramMethod method = GramMethod::kAuto);

}  // namespace sigma

#endif  // SIGMA_KERNELS_CPU_BACKEND_H_
