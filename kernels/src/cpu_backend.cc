// CPU backend on OpenBLAS + LAPACKE, float64 throughout (spec §4).
#include "sigma/kernels/cpu_backend.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
// The LAPACKE_*_work entry points skip LAPACKE's O(m^2) NaN scan of the input:
// inputs are checked once, at the edge (CheckFinite).
#include <cmath>
#include <vector>

#include "absl/strings/str_format.h"

namespace sigma {
namespace {

// Rows converted per chunk: bounds the float64 staging buffer to
// kChunkRows * m doubles while keeping BLAS calls large.
constexpr int64_t kChunkRows = 8192;

// Copies the lower triangle of a column-major m x m matrix to its upper one.
// Tiled so that the strided writes stay in cache (a plain loop costs ~5 % of a
// seal at m = 1024).
void SymmetrizeFromLower(double* a, int64_t m) {
  constexpr int64_t kTile = 64;
  for (int64_t col0 = 0; col0 < m; col0 += kTile) {
    for (int64_t row0 = col0; row0 < m; row0 += kTile) {
      const int64_t col_end = std::min(col0 + kTile, m), row_end = std::min(row0 + kTile, m);
      for (int64_t col = col0; col < col_end; ++col)
        for (int64_t row = std::max(row0, col + 1); row < row_end; ++row)
          a[row * m + col] = a[col * m + row];
    }
  }
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(GramMethod method) : method_(method) {}

  std::string name() const override { return "cpu"; }

  absl::Status AccumulateGram(const RowBlock& rows, Preprocessing preprocessing, double rho,
                              double* gram, EnergyStats* energy) override {
    const int64_t m = rows.m;
    if (m <= 0 || rows.num_rows < 0) return absl::InvalidArgumentError("bad row block shape");
    if (rows.num_rows == 0) return absl::OkStatus();
    // Refuse before touching `gram`: a bad batch changes nothing.
    if (absl::Status s = CheckFinite(rows); !s.ok()) return s;
    const bool need_copy = rows.dtype != DType::kFloat64 ||
                           preprocessing != Preprocessing::kNone || energy != nullptr;
    std::vector<double>& staging = staging_;
    for (int64_t start = 0; start < rows.num_rows; start += kChunkRows) {
      const int64_t count = std::min(kChunkRows, rows.num_rows - start);
      const RowBlock chunk{static_cast<const char*>(rows.data) +
                               static_cast<size_t>(start * m) * DTypeWidth(rows.dtype),
                           rows.dtype, count, m};
      const double* x;
      if (need_copy) {
        staging.resize(static_cast<size_t>(count * m));
        ConvertToDouble(chunk, staging.data());
        PreprocessRows(preprocessing, rho, staging.data(), count, m, energy);
        x = staging.data();
      } else {
        x = static_cast<const double*>(chunk.data);
      }
      // Row-major X [count, m] is column-major X^T [m, count]; G += X^T X.
      if (UseSyrk(m, count)) {
        cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, m, count, 1.0, x, m, 1.0, gram, m);
      } else {
        // dgemm writes the full matrix; keep it in the lower half convention by
        // symmetrizing below (both halves are equal up to rounding order).
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, m, m, count, 1.0, x, m, x, m, 1.0,
                    gram, m);
      }
    }
    SymmetrizeFromLower(gram, m);
    return absl::OkStatus();
  }

  absl::Status ShiftedCholesky(const double* gram, int64_t m,
                               absl::Span<const ShiftedMatrix> shifts,
                               absl::Span<CholeskyOutcome> outcomes, double* factors) override {
    if (outcomes.size() != shifts.size())
      return absl::InvalidArgumentError("ShiftedCholesky: outcomes size differs from shifts");
    std::vector<double>& scratch = staging_;
    for (size_t i = 0; i < shifts.size(); ++i) {
      double* a;
      if (factors != nullptr) {
        a = factors + i * static_cast<size_t>(m * m);
      } else {
        scratch.resize(static_cast<size_t>(m * m));
        a = scratch.data();
      }
      const ShiftedMatrix& s = shifts[i];
      for (int64_t col = 0; col < m; ++col) {
        for (int64_t row = 0; row < col; ++row) a[col * m + row] = 0.0;  // upper: unused, zero
        for (int64_t row = col; row < m; ++row) a[col * m + row] = s.scale * gram[col * m + row];
        a[col * m + col] += s.shift;
      }
      const lapack_int info = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', m, a, m);
      CholeskyOutcome& outcome = outcomes[i];
      outcome = CholeskyOutcome{};
      if (info < 0) return absl::InternalError(absl::StrFormat("dpotrf argument %d invalid", -info));
      if (info > 0) {
        outcome.ok = false;
        outcome.failed_column = info;
        continue;
      }
      double log_det = 0.0;
      for (int64_t d = 0; d < m; ++d) log_det += std::log(a[d * m + d]);
      outcome.ok = true;
      outcome.log_det = 2.0 * log_det;
    }
    return absl::OkStatus();
  }

  absl::Status MahalanobisNorms(const double* lower_factor, int64_t m, const double* x,
                                int64_t num_rows, double* q) override {
    std::vector<double>& y = staging_;
    // Chunks small enough that the solved block is still in cache when its
    // column norms are summed, large enough for an efficient trsm.
    const int64_t chunk_rows = std::max<int64_t>(256, (int64_t{1} << 20) / std::max<int64_t>(m, 1));
    for (int64_t start = 0; start < num_rows; start += chunk_rows) {
      const int64_t count = std::min(chunk_rows, num_rows - start);
      y.assign(x + start * m, x + (start + count) * m);  // column-major [m, count]
      cblas_dtrsm(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, m, count, 1.0,
                  lower_factor, m, y.data(), m);
      for (int64_t j = 0; j < count; ++j) {
        const double* col = y.data() + j * m;
        double sum = 0.0;
        for (int64_t r = 0; r < m; ++r) sum += col[r] * col[r];
        q[start + j] = sum;
      }
    }
    return absl::OkStatus();
  }

  absl::Status InverseTraces(const double* lower_factor, int64_t m, double* trace_a,
                             double* trace_a2) override {
    std::vector<double>& inv = staging_;
    inv.assign(lower_factor, lower_factor + m * m);
    lapack_int info = LAPACKE_dtrtri_work(LAPACK_COL_MAJOR, 'L', 'N', m, inv.data(), m);
    if (info != 0)
      return absl::FailedPreconditionError(
          absl::StrFormat("dtrtri failed (info %d): singular factor", info));
    // tr(A) = ||L^{-1}||_F^2 over the lower triangle.
    double tr = 0.0;
    for (int64_t col = 0; col < m; ++col)
      for (int64_t row = col; row < m; ++row) tr += inv[col * m + row] * inv[col * m + row];
    // A = L^{-T} L^{-1}: dlauum with 'L' forms L^T L in the lower triangle.
    info = LAPACKE_dlauum_work(LAPACK_COL_MAJOR, 'L', m, inv.data(), m);
    if (info != 0) return absl::InternalError(absl::StrFormat("dlauum failed (info %d)", info));
    double tr2 = 0.0;
    for (int64_t col = 0; col < m; ++col) {
      tr2 += inv[col * m + col] * inv[col * m + col];
      for (int64_t row = col + 1; row < m; ++row) tr2 += 2.0 * inv[col * m + row] * inv[col * m + row];
    }
    *trace_a = tr;
    *trace_a2 = tr2;
    return absl::OkStatus();
  }

 private:
  bool UseSyrk(int64_t m, int64_t rows) const {
    switch (method_) {
      case GramMethod::kSyrk: return true;
      case GramMethod::kGemm: return false;
      case GramMethod::kAuto: break;
    }
    // Measured (bench/kernels GramSyrk vs GramGemm, docs/benchmarks.md): with
    // Debian's OpenBLAS 0.3.21 on this kind of machine dsyrk is never slower
    // than dgemm, from n_A = m to n_A = 16 m and m = 128 to 1024 (1.0-1.8x
    // faster), so auto always takes dsyrk. `rows` and `m` stay in the signature
    // for BLAS builds where the known OpenBLAS dsyrk slowdown shows.
    (void)m;
    (void)rows;
    return true;
  }

  GramMethod method_;
  // Host scratch reused across calls (conversion chunks, factor copies, trsm
  // right-hand sides); see Backend::SealScratch on thread-compatibility.
  std::vector<double> staging_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(GramMethod method) {
  return std::make_unique<CpuBackend>(method);
}

}  // namespace sigma
