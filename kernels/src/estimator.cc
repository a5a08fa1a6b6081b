// SIGMA estimator, spec §3.
#include "sigma/kernels/estimator.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"

namespace sigma {

std::string_view AlertSeverityName(AlertSeverity s) {
  switch (s) {
    case AlertSeverity::kInfo: return "info";
    case AlertSeverity::kWarning: return "warning";
    case AlertSeverity::kCritical: return "critical";
  }
  return "unknown";
}

TrackValues EstimateTracks(const SealMoments& moments, double corpus_size, double delta,
                           double rho, const EnergyStats& energy) {
  TrackValues v;
  v.m = moments.m;
  v.n_a = moments.n_a;
  v.n = corpus_size;
  v.max_energy = energy.max_energy;
  v.mean_energy = energy.mean_energy();
  v.rho_violations = energy.rho_violations;
  v.flags.rho_violated = energy.rho_violations > 0;
  v.flags.n_a_below_m = moments.n_a < moments.m;
  v.flags.low_confidence = LowConfidence(moments.n_a, moments.m);

  static constexpr const char* kMatrixNames[3] = {"f*C_A + delta*I (track1_lower)",
                                                  "f*C_A + (delta + (1-f)*rho)*I (track1_upper)",
                                                  "C_A + delta*I (track2)"};
  std::string failure;
  for (int i = 0; i < 3 && failure.empty(); ++i) {
    if (!moments.cholesky[i].ok) {
      failure = absl::StrFormat(
          "Cholesky of %s failed at column %d: not positive definite (delta = %g too small "
          "for the data's scale?)",
          kMatrixNames[i], moments.cholesky[i].failed_column, delta);
    } else if (!std::isfinite(moments.cholesky[i].log_det)) {
      failure = absl::StrFormat("log det of %s is not finite: the data overflowed float64",
                                kMatrixNames[i]);
    }
  }
  if (failure.empty() &&
      !(std::isfinite(moments.q_mean) && std::isfinite(moments.q_sq_mean) &&
        std::isfinite(moments.q_sd) && std::isfinite(moments.trace_a) &&
        std::isfinite(moments.trace_a2))) {
    failure = "the Mahalanobis norms or traces are not finite: the data overflowed float64";
  }
  if (!failure.empty()) {
    v.flags.cholesky_failed = true;
    v.flags.failure_reason = failure;
    return v;  // every track value stays 0 and must not be published
  }
  const double n_a = static_cast<double>(moments.n_a);
  const double f = n_a / corpus_size;
  v.track1_lower = moments.cholesky[0].log_det;
  v.track1_upper = moments.cholesky[1].log_det;
  v.track2_raw = moments.cholesky[2].log_det;
  // tr((A C_A)^2) = m - 2 delta tr(A) + delta^2 tr(A^2)
  const double trace_ac2 = static_cast<double>(moments.m) - 2.0 * delta * moments.trace_a +
                           delta * delta * moments.trace_a2;
  v.track2_bias = -(moments.q_sq_mean - trace_ac2) / (2.0 * n_a);
  v.track2 = v.track2_raw - (1.0 - f) * v.track2_bias;
  v.track2_ci_halfwidth = kZ95 * moments.q_sd * std::sqrt(std::max(0.0, 1.0 - f) / n_a);
  v.track2_pop_halfwidth = kZ95 * moments.q_sd / std::sqrt(n_a);
  (void)rho;
  return v;
}

double DriftZScore(double drift, double half_used) {
  const double sd = half_used / kZ95;
  if (sd > 0) return drift / sd;
  if (drift == 0) return 0;
  return drift > 0 ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
}

DriftValues ComputeDrift(const TrackValues& current, const TrackValues& baseline, Probe probe) {
  DriftValues d;
  d.track1_drift = current.track1_upper - baseline.track1_upper;
  d.track2_drift = current.track2 - baseline.track2;
  d.divergence = d.track1_drift - d.track2_drift;
  d.drift_halfwidth = std::hypot(current.track2_ci_halfwidth, baseline.track2_ci_halfwidth);
  d.drift_halfwidth_pop = std::hypot(current.track2_pop_halfwidth, baseline.track2_pop_halfwidth);
  d.drift_halfwidth_used = probe == Probe::kFixed ? d.drift_halfwidth : d.drift_halfwidth_pop;
  d.drift_zscore = DriftZScore(d.track2_drift, d.drift_halfwidth_used);
  const double m = static_cast<double>(std::max<int64_t>(1, current.m));
  d.track1_drift_per_dim = d.track1_drift / m;
  d.track2_drift_per_dim = d.track2_drift / m;
  d.divergence_per_dim = d.divergence / m;
  d.significant = std::fabs(d.track2_drift) > d.drift_halfwidth_used;
  return d;
}

std::vector<Alert> EvaluateAlerts(const TrackValues& values, const std::optional<DriftValues>& drift,
                                  const AlertThresholds& t) {
  std::vector<Alert> alerts;
  if (!values.flags.cholesky_failed && drift.has_value()) {
    // Spec §3 "Alerts need the interval": the value must lie beyond the
    // threshold by more than the half-width in use (all per dimension here).
    const double m = static_cast<double>(std::max<int64_t>(1, values.m));
    const double h = drift->drift_halfwidth_used / m;
    const double d = drift->track2_drift_per_dim;
    if (-d - h >= t.drift_critical) {
      alerts.push_back({"collapse_contraction", AlertSeverity::kCritical});
    } else if (-d - h >= t.drift_warning) {
      alerts.push_back({"collapse_contraction", AlertSeverity::kWarning});
    }
    if (d - h >= t.drift_critical) {
      alerts.push_back({"collapse_expansion", AlertSeverity::kCritical});
    } else if (d - h >= t.drift_warning) {
      alerts.push_back({"collapse_expansion", AlertSeverity::kWarning});
    }
    if (std::fabs(drift->divergence_per_dim) - h >= t.divergence_warning &&
        std::fabs(drift->track1_drift_per_dim) < t.track1_stable) {
      alerts.push_back({"early_warning_divergence", AlertSeverity::kWarning});
    }
  }
  if (values.flags.rho_violated) alerts.push_back({"track1_invalid_rho", AlertSeverity::kWarning});
  if (values.flags.low_confidence) alerts.push_back({"low_confidence", AlertSeverity::kInfo});
  return alerts;
}

std::vector<Alert> AllAlertKinds() {
  return {{"collapse_contraction", AlertSeverity::kWarning},
          {"collapse_contraction", AlertSeverity::kCritical},
          {"collapse_expansion", AlertSeverity::kWarning},
          {"collapse_expansion", AlertSeverity::kCritical},
          {"early_warning_divergence", AlertSeverity::kWarning},
          {"early_warning_trend", AlertSeverity::kWarning},
          {"track1_invalid_rho", AlertSeverity::kWarning},
          {"low_confidence", AlertSeverity::kInfo}};
}

std::optional<double> GenerationsToCritical(absl::Span<const double> generations,
                                            absl::Span<const double> drift_per_dim,
                                            double critical, int window) {
  const size_t n = std::min(generations.size(), drift_per_dim.size());
  if (n == 0) return std::nullopt;
  const double last = drift_per_dim[n - 1];
  if (std::fabs(last) >= critical) return 0.0;
  const size_t count = std::min<size_t>(n, static_cast<size_t>(std::max(window, 2)));
  if (count < 3) return std::nullopt;
  const size_t first = n - count;
  double mean_x = 0, mean_y = 0;
  for (size_t i = first; i < n; ++i) {
    mean_x += generations[i];
    mean_y += drift_per_dim[i];
  }
  mean_x /= count;
  mean_y /= count;
  double sxx = 0, sxy = 0;
  for (size_t i = first; i < n; ++i) {
    sxx += (generations[i] - mean_x) * (generations[i] - mean_x);
    sxy += (generations[i] - mean_x) * (drift_per_dim[i] - mean_y);
  }
  if (sxx <= 0) return std::nullopt;
  const double slope = sxy / sxx;
  if (std::fabs(slope) < 1e-12) return std::nullopt;
  const double intercept = mean_y - slope * mean_x;
  const double target = slope > 0 ? critical : -critical;
  const double crossing = (target - intercept) / slope;  // generation where the line crosses
  const double ahead = crossing - generations[n - 1];
  if (!std::isfinite(ahead) || ahead < 0) return std::nullopt;
  return ahead;
}

absl::StatusOr<TrackValues> EvaluateSnapshot(Backend& backend, const SealInput& input) {
  SealMoments moments;
  if (absl::Status s = backend.SealBatch({&input, 1}, {&moments, 1}); !s.ok()) return s;
  return EstimateTracks(moments, input.corpus_size, input.delta, input.rho, moments.energy);
}

}  // namespace sigma
