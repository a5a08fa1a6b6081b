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

}  // namespace

absl::Status CpuBackend::AccumulateGram(const RowBlock& rows, Preprocessing preprocessing,
                                        double rho, double* gram, EnergyStats* energy) {
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

absl::Status CpuBackend::ShiftedCholesky(const double* gram, int64_t m,
                                         absl::Span<const ShiftedMatrix> shifts,
                                         absl::Span<CholeskyOutcome> outcomes, double* factors) {
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

absl::Status CpuBackend::MahalanobisNorms(const double* lower_factor, int64_t m,
                                          const double* x, int64_t num_rows, double* q) {
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

absl::Status CpuBackend::InverseTraces(const double* lower_factor, int64_t m, double* trace_a,
                                       double* trace_a2) {
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

bool CpuBackend::UseSyrk(int64_t m, int64_t rows) const {
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

int64_t CpuBackend::scratch_bytes() const {
  int64_t doubles = 0;
  for (const std::vector<double>* v : {&staging_, &x_, &gram_, &factors_, &q_})
    doubles += static_cast<int64_t>(v->capacity());
  int64_t bytes = doubles * static_cast<int64_t>(sizeof(double));
  std::lock_guard<std::mutex> lock(pool_mu_);
  for (const auto& worker : pool_) bytes += worker->scratch_bytes();
  return bytes;
}

void CpuBackend::TrimScratch() {
  if (scratch_bytes() <= kKeepScratchBytes) return;
  for (std::vector<double>* v : {&staging_, &x_, &gram_, &factors_, &q_}) std::vector<double>().swap(*v);
}

absl::Status CpuBackend::SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) {
  std::unique_ptr<CpuBackend> worker;
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!pool_.empty()) {
      worker = std::move(pool_.back());
      pool_.pop_back();
    }
  }
  if (!worker) worker = std::make_unique<CpuBackend>(method_);
  absl::Status s = worker->SealEach(inputs, out);
  worker->TrimScratch();
  std::lock_guard<std::mutex> lock(pool_mu_);
  pool_.push_back(std::move(worker));
  return s;
}

// Composes the primitives snapshot by snapshot (spec §4).
absl::Status CpuBackend::SealEach(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) {
  if (out.size() != inputs.size())
    return absl::InvalidArgumentError("SealBatch: output size differs from input size");
  for (const SealInput& input : inputs) {
    if (absl::Status s = ValidateSealInput(input); !s.ok()) return s;
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const SealInput& input = inputs[i];
    const int64_t m = input.rows.m, n_a = input.rows.num_rows;
    SealMoments& moments = out[i];
    moments = SealMoments{};
    moments.n_a = n_a;
    moments.m = m;

    // X = preprocess(rows), [n_A, m] float64.
    x_.resize(static_cast<size_t>(n_a * m));
    ConvertToDouble(input.rows, x_.data());
    PreprocessRows(input.preprocessing, input.rho, x_.data(), n_a, m, &moments.energy);
    const RowBlock converted{x_.data(), DType::kFloat64, n_a, m};
    gram_.assign(static_cast<size_t>(m * m), 0.0);
    if (absl::Status s = AccumulateGram(converted, Preprocessing::kNone, input.rho, gram_.data(),
                                        nullptr);
        !s.ok())
      return s;

    const std::vector<ShiftedMatrix> shifts = TrackShifts(n_a, input.corpus_size, input.delta,
                                                          input.rho);
    factors_.resize(3 * static_cast<size_t>(m * m));
    if (absl::Status s = ShiftedCholesky(gram_.data(), m, shifts, moments.cholesky, factors_.data());
        !s.ok())
      return s;
    if (!moments.cholesky[2].ok) continue;
    const double* lower = factors_.data() + 2 * static_cast<size_t>(m * m);
    q_.resize(static_cast<size_t>(n_a));
    if (absl::Status s = MahalanobisNorms(lower, m, x_.data(), n_a, q_.data()); !s.ok()) return s;
    QStatistics(q_.data(), n_a, &moments.q_mean, &moments.q_sq_mean, &moments.q_sd);
    if (absl::Status s = InverseTraces(lower, m, &moments.trace_a, &moments.trace_a2); !s.ok())
      return s;
  }
  return absl::OkStatus();
}

std::unique_ptr<CpuBackend> MakeCpuBackend(GramMethod method) {
  return std::make_unique<CpuBackend>(method);
}

}  // namespace sigma
