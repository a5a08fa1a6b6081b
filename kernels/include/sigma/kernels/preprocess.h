// Per-job preprocessing of embedding rows and the energy statistics used for
// the rho check of Track I (spec §2, §3).
#ifndef SIGMA_KERNELS_PREPROCESS_H_
#define SIGMA_KERNELS_PREPROCESS_H_

#include <cstdint>
#include <optional>
#include <string_view>

namespace sigma {

enum class Preprocessing : int {
  kL2 = 0,    // each row scaled to unit Euclidean norm (zero rows stay zero)
  kNone = 1,  // raw rows; rho must be configured
};

std::string_view PreprocessingName(Preprocessing p);
std::optional<Preprocessing> ParsePreprocessing(std::string_view name);

// Energy ||x_j||^2 of the rows seen, after preprocessing. Mergeable across
// batches and ranks: max of maxes, sums add.
struct EnergyStats {
  int64_t count = 0;        // rows accounted for
  double max_energy = 0.0;  // max_j ||x_j||^2
  double sum_energy = 0.0;  // sum_j ||x_j||^2
  int64_t rho_violations = 0;  // rows with ||x_j||^2 > rho (needs rho; see Add)

  double mean_energy() const { return count > 0 ? sum_energy / count : 0.0; }
  void Merge(const EnergyStats& other);
};

// Applies `p` in place to rows [num_rows, m] float64 (host memory) and adds each
// row's energy after preprocessing to `stats` (may be null), counting rows with
// energy > rho as violations. A nonzero l2 row counts as energy exactly 1 (its
// recomputed sum of squares is 1 only up to ~m ulps; spec §2).
void PreprocessRows(Preprocessing p, double rho, double* rows, int64_t num_rows,
                    int64_t m, EnergyStats* stats);

}  // namespace sigma

#endif  // SIGMA_KERNELS_PREPROCESS_H_
