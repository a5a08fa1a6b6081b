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
  if (absl::Status s = CheckFinite(input.rows); !s.ok()) return s;
  return CheckRowNorms(input.rows, input.preprocessing);
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

}  // namespace sigma
