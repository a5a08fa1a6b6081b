#include "sigma/kernels/preprocess.h"

#include <algorithm>
#include <cmath>

namespace sigma {

std::string_view PreprocessingName(Preprocessing p) {
  return p == Preprocessing::kL2 ? "l2" : "none";
}

std::optional<Preprocessing> ParsePreprocessing(std::string_view name) {
  if (name == "l2") return Preprocessing::kL2;
  if (name == "none") return Preprocessing::kNone;
  return std::nullopt;
}

void EnergyStats::Merge(const EnergyStats& other) {
  count += other.count;
  max_energy = std::max(max_energy, other.max_energy);
  sum_energy += other.sum_energy;
  rho_violations += other.rho_violations;
}

void PreprocessRows(Preprocessing p, double rho, double* rows, int64_t num_rows, int64_t m,
                    EnergyStats* stats) {
  for (int64_t r = 0; r < num_rows; ++r) {
    double* row = rows + r * m;
    double energy = 0.0;
    for (int64_t c = 0; c < m; ++c) energy += row[c] * row[c];
    if (p == Preprocessing::kL2 && energy > 0.0) {
      const double inv = 1.0 / std::sqrt(energy);
      for (int64_t c = 0; c < m; ++c) row[c] *= inv;
      // A normalised row has unit energy by definition (spec §2: "rho = 1 holds
      // exactly"); its recomputed sum of squares would differ from 1 by up to
      // ~m ulps, which must not count as a rho violation.
      energy = 1.0;
    }
    if (stats != nullptr) {
      ++stats->count;
      stats->max_energy = std::max(stats->max_energy, energy);
      stats->sum_energy += energy;
      if (energy > rho) ++stats->rho_violations;
    }
  }
}

}  // namespace sigma
