#include "sigma/kernels/backend.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_format.h"

namespace sigma {

absl::Status ValidateSealShape(const SealInput& input) {
  const RowBlock& rows = input.rows;
  if (rows.m <= 0) return absl::InvalidArgumentError(absl::StrFormat("m must be > 0, got %d", rows.m));
  if (rows.num_rows <= 0)
    return absl::InvalidArgumentError("the sub-sample is empty (n_A = 0)");
  if (rows.data == nullptr) return absl::InvalidArgumentError("rows are null");
  if (!(input.corpus_size >= static_cast<double>(rows.num_rows)))
    return absl::InvalidArgumentError(absl::StrFormat(
        "corpus size n = %g is smaller than n_A = %d", input.corpus_size, rows.num_rows));
  if (!(input.delta > 0) || !std::isfinite(input.delta))
    return absl::InvalidArgumentError(absl::StrFormat("delta must be > 0, got %g", input.delta));
  if (!(input.rho > 0) || !std::isfinite(input.rho))
    return absl::InvalidArgumentError(absl::StrFormat("rho must be > 0, got %g", input.rho));
  return absl::OkStatus();
}

absl::Status ValidateSealInput(const SealInput& input) {
  if (absl::Status s = ValidateSealShape(input); !s.ok()) return s;
  return CheckFinite(input.rows);
}

std::vector<ShiftedMatrix> TrackShifts(int64_t n_a, double corpus_size, double delta, double rho) {
  // f C_A = G_A / n; C_A = G_A / n_A (spec §3).
  const double f = static_cast<double>(n_a) / corpus_size;
  return {
      {1.0 / corpus_size, delta},
      {1.0 / corpus_size, delta + (1.0 - f) * rho},
      {1.0 / static_cast<double>(n_a), delta},
  };
}

void QStatistics(const double* q, int64_t n, double* mean, double* sq_mean, double* sd) {
  double sum = 0.0, sum_sq = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    sum += q[j];
    sum_sq += q[j] * q[j];
  }
  *mean = n > 0 ? sum / static_cast<double>(n) : 0.0;
  *sq_mean = n > 0 ? sum_sq / static_cast<double>(n) : 0.0;
  double centered = 0.0;
  for (int64_t j = 0; j < n; ++j) centered += (q[j] - *mean) * (q[j] - *mean);
  *sd = n > 1 ? std::sqrt(centered / static_cast<double>(n - 1)) : 0.0;
}

absl::Status Backend::SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) {
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
    std::vector<double>& x = seal_scratch_.x;
    x.resize(static_cast<size_t>(n_a * m));
    ConvertToDouble(input.rows, x.data());
    PreprocessRows(input.preprocessing, input.rho, x.data(), n_a, m, &moments.energy);
    const RowBlock converted{x.data(), DType::kFloat64, n_a, m};

    std::vector<double>& gram = seal_scratch_.gram;
    gram.assign(static_cast<size_t>(m * m), 0.0);
    if (absl::Status s = AccumulateGram(converted, Preprocessing::kNone, input.rho, gram.data(),
                                        nullptr);
        !s.ok())
      return s;

    const std::vector<ShiftedMatrix> shifts = TrackShifts(n_a, input.corpus_size, input.delta,
                                                          input.rho);
    std::vector<double>& factors = seal_scratch_.factors;
    factors.resize(3 * static_cast<size_t>(m * m));
    if (absl::Status s = ShiftedCholesky(gram.data(), m, shifts, moments.cholesky, factors.data());
        !s.ok())
      return s;
    if (!moments.cholesky[2].ok) continue;
    const double* lower = factors.data() + 2 * static_cast<size_t>(m * m);
    std::vector<double>& q = seal_scratch_.q;
    q.resize(static_cast<size_t>(n_a));
    if (absl::Status s = MahalanobisNorms(lower, m, x.data(), n_a, q.data()); !s.ok()) return s;
    QStatistics(q.data(), n_a, &moments.q_mean, &moments.q_sq_mean, &moments.q_sd);
    if (absl::Status s = InverseTraces(lower, m, &moments.trace_a, &moments.trace_a2); !s.ok())
      return s;
  }
  return absl::OkStatus();
}

}  // namespace sigma
