// The SIGMA estimator (spec §3): Track I envelope, bias-corrected Track II with
// its 95 % interval, drift against a baseline, divergence, and the forecast.
// Pure functions of the backend's SealMoments; no I/O. Thread-safe.
#ifndef SIGMA_KERNELS_ESTIMATOR_H_
#define SIGMA_KERNELS_ESTIMATOR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "sigma/kernels/backend.h"
#include "sigma/kernels/ingest_rules.h"  // DefaultNA, LowConfidence

namespace sigma {

inline constexpr double kZ95 = 1.959963984540054;

struct TrackFlags {
  bool rho_violated = false;    // some streamed column had energy > rho: Track I invalid
  bool n_a_below_m = false;     // n_A < m: C_A singular, delta keeps it PD
  bool low_confidence = false;  // n_A < 16 m: the interval is not calibrated
  bool cholesky_failed = false; // see failure_reason; no track values then
  std::string failure_reason;
};

// The values of one sealed snapshot. When flags.cholesky_failed, every value
// below is 0 and must not be published.
struct TrackValues {
  int64_t m = 0;
  int64_t n_a = 0;
  double n = 0;             // corpus size
  double track1_lower = 0;  // log det(f C_A + delta I)             <= S
  double track1_upper = 0;  // log det(f C_A + (delta+(1-f)rho) I)  >= S
  double track2 = 0;        // raw - (1 - f) bias
  double track2_raw = 0;    // log det(C_A + delta I)
  double track2_bias = 0;   // -(mean(q^2) - tr((A C_A)^2)) / (2 n_A)
  double track2_ci_halfwidth = 0;  // corpus interval: z sd(q) sqrt((1-f)/n_A)
  double track2_pop_halfwidth = 0; // population interval: z sd(q) / sqrt(n_A) (spec §3 "Two kinds of uncertainty")
  double max_energy = 0;
  double mean_energy = 0;
  int64_t rho_violations = 0;
  TrackFlags flags;
};

// Turns moments into track values. `energy` is over every streamed column of
// the snapshot (not just I_A) when the caller has it; rho_violated follows it.
TrackValues EstimateTracks(const SealMoments& moments, double corpus_size, double delta,
                           double rho, const EnergyStats& energy);

// Which interval a job's drift is judged by (spec §3 "Two kinds of uncertainty"):
// kFresh (default) each generation's rows are new samples -> drift_half_pop;
// kFixed the same inputs every generation -> the corpus drift_half.
enum class Probe { kFresh, kFixed };

// Drift of generation k against baseline b (spec §3), totals and per dimension.
struct DriftValues {
  double track1_drift = 0;
  double track2_drift = 0;
  double divergence = 0;       // track1_drift - track2_drift
  double drift_halfwidth = 0;  // corpus: sqrt(half_k^2 + half_b^2)
  double drift_halfwidth_pop = 0;   // population: sqrt(half_pop_k^2 + half_pop_b^2)
  double drift_halfwidth_used = 0;  // the probe's one of the two (drift_half_used)
  double drift_zscore = 0;          // track2_drift / (drift_half_used / z), see DriftZScore
  double track1_drift_per_dim = 0;
  double track2_drift_per_dim = 0;
  double divergence_per_dim = 0;
  bool significant = false;  // |track2_drift| > drift_halfwidth_used
};

DriftValues ComputeDrift(const TrackValues& current, const TrackValues& baseline, Probe probe);

// z_drift = drift / sd_drift with sd_drift = half_used / z95 (spec §3 "Early
// warning by significance"): +-inf when sd_drift = 0 and drift != 0, 0 when both are 0.
double DriftZScore(double drift, double half_used);

// Thresholds in per-dimension units (spec §3: two-sided, same magnitudes).
struct AlertThresholds {
  double drift_warning = 0.1;        // |track2 drift| / m >= this
  double drift_critical = 0.5;
  double divergence_warning = 0.1;   // |divergence| / m >= this ...
  double track1_stable = 0.01;       // ... while |track1 drift| / m < this
};

// early_warning_trend settings (spec §3 "Early warning by significance"). The
// defaults were chosen on validation 2's control run (docs/validation.md): no
// trend warning in any control generation, the earliest alarms on the recursive
// runs; the spec's first guess was trend_k 2, trend_floor 0.01.
struct TrendSettings {
  int trend_k = 1;           // last k sealed generations, including this one
  double trend_z = 3;        // |z_drift| >= this, one sign
  double trend_floor = 0.05; // |track2_drift| / m >= this
};

enum class AlertSeverity { kInfo, kWarning, kCritical };
std::string_view AlertSeverityName(AlertSeverity s);

struct Alert {
  std::string rule;  // collapse_contraction, collapse_expansion, early_warning_divergence,
                     // early_warning_trend, track1_invalid_rho, low_confidence
  AlertSeverity severity;
  std::string direction = {};  // contraction / expansion for early_warning_trend, else empty
};

// The alert rules, names as above (early_warning_trend needs the history: the
// server's report builder evaluates it). `drift` is absent for the baseline
// itself. A threshold alert fires only beyond its threshold by more than
// drift->drift_halfwidth_used (spec §3 "Alerts need the interval"):
// |track2_drift| - half_used >= t m, |divergence| - half_used >= t m.
std::vector<Alert> EvaluateAlerts(const TrackValues& values,
                                  const std::optional<DriftValues>& drift,
                                  const AlertThresholds& thresholds);

// Every (rule, severity) pair EvaluateAlerts can return, for pre-building gauges.
std::vector<Alert> AllAlertKinds();

// Forecast (spec §3, beyond the paper): least-squares line through the last
// `window` points (generation, track2_drift_per_dim) and the number of
// generations after the last one until it crosses -critical or +critical in the
// direction it is heading. Absent with fewer than 3 points, a flat or receding
// trend, or when already past the threshold (then 0).
std::optional<double> GenerationsToCritical(absl::Span<const double> generations,
                                            absl::Span<const double> drift_per_dim,
                                            double critical, int window = 5);

// Convenience for offline use and tests: runs `backend`'s SealBatch on one
// snapshot and estimates. Energy is taken from the I_A rows.
absl::StatusOr<TrackValues> EvaluateSnapshot(Backend& backend, const SealInput& input);

}  // namespace sigma

#endif  // SIGMA_KERNELS_ESTIMATOR_H_
