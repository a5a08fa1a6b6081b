// Per-job preprocessing of embedding rows and the energy statistics used for
// the rho check of Track I (spec §2, §3).
#ifndef SIGMA_KERNELS_PREPROCESS_H_
#define SIGMA_KERNELS_PREPROCESS_H_

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/ingest_rules.h"  // Preprocessing, the energy rule

namespace sigma {

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

// Adds one row's energy (EnergyOfRow, ingest_rules.h) to `stats`.
void AddRowEnergy(double energy, double rho, EnergyStats* stats);

// Applies `p` in place to rows [num_rows, m] float64 (host memory) and adds each
// row's energy after preprocessing to `stats` (may be null), counting rows with
// energy > rho as violations (ingest_rules.h: EnergyOfRow, ExceedsBudget). Norms
// are computed without overflow or underflow (RowSquares), so a row scaled by
// 1e155 or 1e-170 normalises like the unscaled one. Precondition: the rows are
// finite and pass CheckRowNorms (the daemon refuses others at ingest); a refused
// row, passed anyway: an l2 row whose norm exceeds float64 is still normalised,
// a zero l2 row stays zero with energy 0, a none row whose ||x||^2 overflows
// counts energy +Inf.
void PreprocessRows(Preprocessing p, double rho, double* rows, int64_t num_rows,
                    int64_t m, EnergyStats* stats);

// The energy statistics a rank's EndOfShare reports about every row it saw,
// when it pre-sketched rows away (spec §2); each field optional.
struct ReportedEnergy {
  std::optional<double> max_energy;
  std::optional<double> mean_energy;
  std::optional<int64_t> rho_violations;

  bool empty() const { return !max_energy && !mean_energy && !rho_violations; }
};

// INVALID_ARGUMENT unless the reported energies are finite and >= 0 and the
// violations >= 0.
absl::Status ValidateReportedEnergy(const ReportedEnergy& reported);

// The energy statistics of a rank that saw `count` rows: `sent` (computed by
// the daemon from the rows the rank sent) when nothing was reported; else the
// reported values, never below what the sent rows show (max of maxes, max of
// violation counts; the reported mean times `count` as the sum), and a reported
// max above rho (ExceedsBudget) counts at least one violation.
EnergyStats MergeReportedEnergy(const EnergyStats& sent, int64_t count,
                                const ReportedEnergy& reported, double rho);

// INVALID_ARGUMENT naming the first row of finite `block` that `p` refuses
// (RowCheck: norm 0 under l2, norm or squared norm beyond float64), OK otherwise.
absl::Status CheckRowNorms(const RowBlock& block, Preprocessing p);

}  // namespace sigma

#endif  // SIGMA_KERNELS_PREPROCESS_H_
