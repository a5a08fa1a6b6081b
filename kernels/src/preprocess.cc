#include "sigma/kernels/preprocess.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace sigma {
namespace {

// The plain float64 sum of squares of a row (the order of the former loop:
// the results of ordinary rows are bitwise unchanged).
double PlainSquares(const double* row, int64_t m) {
  double s = 0.0;
  for (int64_t c = 0; c < m; ++c) s += row[c] * row[c];
  return s;
}

ScaledSquares SquaresOf(const double* row, int64_t m) {
  return RowSquares(m, PlainSquares(row, m), [row](int64_t c) { return row[c]; });
}

}  // namespace

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

void AddRowEnergy(double energy, double rho, EnergyStats* stats) {
  ++stats->count;
  stats->max_energy = std::max(stats->max_energy, energy);
  stats->sum_energy += energy;
  if (ExceedsBudget(energy, rho)) ++stats->rho_violations;
}

void PreprocessRows(Preprocessing p, double rho, double* rows, int64_t num_rows, int64_t m,
                    EnergyStats* stats) {
  for (int64_t r = 0; r < num_rows; ++r) {
    double* row = rows + r * m;
    const ScaledSquares sq = SquaresOf(row, m);
    const RowEnergy e = EnergyOfRow(p, sq);
    double energy = e.energy;
    // Rows the ingest refuses (see the header), passed anyway: an l2 row whose
    // norm exceeds float64 still normalises (scaled); a zero row stays zero
    // with energy 0; under none an overflowing energy counts as +Inf.
    if (p == Preprocessing::kL2 && sq.ssq > 0) {
      NormaliseRow(row, m, sq);
      energy = 1.0;
    }
    if (e.check == RowCheck::kEnergyOverflow) energy = std::numeric_limits<double>::infinity();
    if (stats != nullptr) AddRowEnergy(energy, rho, stats);
  }
}

absl::Status ValidateReportedEnergy(const ReportedEnergy& reported) {
  auto bad = [](const std::optional<double>& v) { return v && !(*v >= 0 && std::isfinite(*v)); };
  if (bad(reported.max_energy) || bad(reported.mean_energy) ||
      (reported.rho_violations && *reported.rho_violations < 0))
    return absl::InvalidArgumentError(
        "EndOfShare: max_energy and mean_energy must be finite and >= 0, rho_violations >= 0");
  return absl::OkStatus();
}

EnergyStats MergeReportedEnergy(const EnergyStats& sent, int64_t count,
                                const ReportedEnergy& reported, double rho) {
  if (reported.empty()) return sent;
  EnergyStats merged;
  merged.count = count;
  merged.max_energy = std::max(reported.max_energy.value_or(0.0), sent.max_energy);
  merged.sum_energy = reported.mean_energy ? *reported.mean_energy * static_cast<double>(count)
                                           : sent.sum_energy;
  merged.rho_violations = std::max(reported.rho_violations.value_or(0), sent.rho_violations);
  if (ExceedsBudget(merged.max_energy, rho) && merged.rho_violations == 0) merged.rho_violations = 1;
  return merged;
}

absl::Status CheckRowNorms(const RowBlock& block, Preprocessing p) {
  std::vector<double> row(static_cast<size_t>(block.m));
  const size_t row_bytes = static_cast<size_t>(block.m) * DTypeWidth(block.dtype);
  for (int64_t r = 0; r < block.num_rows; ++r) {
    const RowBlock one{static_cast<const char*>(block.data) + static_cast<size_t>(r) * row_bytes,
                       block.dtype, 1, block.m};
    ConvertToDouble(one, row.data());
    const RowCheck check = EnergyOfRow(p, SquaresOf(row.data(), block.m)).check;
    if (check != RowCheck::kOk) return absl::InvalidArgumentError(RowRefusal(check, r));
  }
  return absl::OkStatus();
}

}  // namespace sigma
