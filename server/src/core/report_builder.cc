#include "sigma/server/report_builder.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "sigma/server/share.h"

namespace sigma::server {

namespace v1 = sigma::v1;

namespace {

sigma::Probe ProbeOf(const v1::JobConfig& effective) {
  return effective.probe() == v1::PROBE_FIXED ? sigma::Probe::kFixed : sigma::Probe::kFresh;
}

void SetTracks(const sigma::TrackValues& vals, v1::GenerationReport* r) {
  r->set_n_a(vals.n_a);
  r->set_track1_lower(vals.track1_lower);
  r->set_track1_upper(vals.track1_upper);
  r->set_track2(vals.track2);
  r->set_track2_raw(vals.track2_raw);
  r->set_track2_bias(vals.track2_bias);
  r->set_track2_ci_halfwidth(vals.track2_ci_halfwidth);
  r->set_track2_pop_halfwidth(vals.track2_pop_halfwidth);
  auto* f = r->mutable_flags();
  f->set_rho_violated(vals.flags.rho_violated);
  f->set_n_a_below_m(vals.flags.n_a_below_m);
  f->set_low_confidence(vals.flags.low_confidence);
  f->set_cholesky_failed(vals.flags.cholesky_failed);
  f->set_failure_reason(vals.flags.failure_reason);
  f->set_rho_violations(vals.rho_violations);
  f->set_max_energy(vals.max_energy);
  f->set_mean_energy(vals.mean_energy);
}

// Drift against the baseline (spec §3), setting baseline_generation/job.
std::optional<sigma::DriftValues> Drift(const ReportInputs& in, const sigma::TrackValues& vals,
                                        const BaselineInputs& b, v1::GenerationReport* r) {
  r->set_baseline_generation(-1);
  if (vals.flags.cholesky_failed || b.generation < 0) return std::nullopt;
  std::optional<sigma::DriftValues> drift;
  if (b.self) {
    r->set_baseline_generation(b.generation);  // the baseline itself: zero drift, no drift alerts
  } else if (b.entry && !b.entry->failed && b.entry->m == in.m) {
    sigma::TrackValues bv;
    bv.m = b.entry->m;
    bv.track1_upper = b.entry->track1_upper;
    bv.track2 = b.entry->track2;
    bv.track2_ci_halfwidth = b.entry->track2_ci_halfwidth;
    bv.track2_pop_halfwidth = b.entry->track2_pop_halfwidth;
    drift = sigma::ComputeDrift(vals, bv, ProbeOf(in.config));
    r->set_baseline_generation(b.generation);
  }
  if (b.job != in.key.job && r->baseline_generation() >= 0) r->set_baseline_job(b.job);
  if ((b.job != in.key.job || b.run != in.key.run) && r->baseline_generation() >= 0) r->set_baseline_run(b.run);
  return drift;
}

void SetDrift(const ReportInputs& in, const sigma::TrackValues& vals, const std::optional<sigma::DriftValues>& drift,
              v1::GenerationReport* r) {
  const int m = std::max(1, in.m);
  double half = 0, half_pop = 0, half_used = 0;
  if (drift) {
    r->set_track1_drift(drift->track1_drift);
    r->set_track2_drift(drift->track2_drift);
    r->set_divergence(drift->divergence);
    r->mutable_per_dim()->set_track1_drift(drift->track1_drift_per_dim);
    r->mutable_per_dim()->set_track2_drift(drift->track2_drift_per_dim);
    r->mutable_per_dim()->set_divergence(drift->divergence_per_dim);
    r->set_drift_zscore(drift->drift_zscore);
    half = drift->drift_halfwidth;
    half_pop = drift->drift_halfwidth_pop;
    half_used = drift->drift_halfwidth_used;
  } else if (!vals.flags.cholesky_failed && r->baseline_generation() >= 0) {
    // The baseline itself: its drift's half-widths against itself.
    half = std::hypot(vals.track2_ci_halfwidth, vals.track2_ci_halfwidth);
    half_pop = std::hypot(vals.track2_pop_halfwidth, vals.track2_pop_halfwidth);
    half_used = ProbeOf(in.config) == sigma::Probe::kFixed ? half : half_pop;
  }
  r->set_drift_halfwidth(half);
  r->set_drift_halfwidth_pop(half_pop);
  r->set_drift_halfwidth_used(half_used);
  r->mutable_per_dim()->set_drift_halfwidth(half / m);
  r->mutable_per_dim()->set_drift_halfwidth_pop(half_pop / m);
  r->mutable_per_dim()->set_drift_halfwidth_used(half_used / m);
}

// Why early_warning_trend cannot be evaluated for this report; empty when it can
// (spec §3 "Early warning by significance": not at low confidence).
std::string TrendBlocker(const sigma::TrackValues& vals, const std::optional<sigma::DriftValues>& drift,
                         const BaselineInputs& b, const v1::GenerationReport& r) {
  if (vals.flags.cholesky_failed) return "not evaluated: the seal failed";
  if (r.baseline_generation() < 0) return "not evaluated: no usable baseline";
  if (!drift) return "not evaluated: this generation is the baseline";
  if (vals.flags.low_confidence)
    return absl::StrFormat("not evaluated: low confidence (n_A = %d < 16 m = %d)", vals.n_a, 16 * vals.m);
  if (b.entry && b.entry->low_confidence)
    return absl::StrFormat("not evaluated: baseline generation %d is low-confidence (n_A < 16 m)", b.generation);
  return "";
}

// early_warning_trend (spec §3): each of the last trend_k sealed generations
// (this one included) has |z_drift| >= trend_z with one sign and
// |track2_drift| / m >= trend_floor, while no drift alert fires. Sets
// trend_evaluated/trend_note and returns the alert when it fires.
std::optional<sigma::Alert> EvaluateTrend(const ReportInputs& in, const sigma::TrackValues& vals,
                                          const std::optional<sigma::DriftValues>& drift, const BaselineInputs& b,
                                          bool drift_alert_fires, v1::GenerationReport* r) {
  const std::string blocker = TrendBlocker(vals, drift, b, *r);
  r->set_trend_evaluated(blocker.empty());
  r->set_trend_note(blocker);
  if (!blocker.empty()) return std::nullopt;
  const int k = std::max(1, in.config.trend_k());
  const double z0 = drift->drift_zscore;
  auto qualifies = [&](bool evaluated, double z, double per_dim) {
    return evaluated && std::fabs(z) >= in.config.trend_z() && std::signbit(z) == std::signbit(z0) &&
           std::fabs(per_dim) >= in.config.trend_floor();
  };
  if (!qualifies(true, z0, drift->track2_drift_per_dim)) return std::nullopt;
  int streak = 1;
  for (auto it = b.trend_points.rbegin(); it != b.trend_points.rend() && streak < k; ++it, ++streak)
    if (!qualifies(it->second.evaluated, it->second.z, it->second.per_dim_drift)) return std::nullopt;
  if (streak < k || drift_alert_fires) return std::nullopt;
  return sigma::Alert{"early_warning_trend", sigma::AlertSeverity::kWarning, z0 < 0 ? "contraction" : "expansion"};
}

// Forecast over the generations up to this one that have a drift.
void SetForecast(const ReportInputs& in, const BaselineInputs& b, v1::GenerationReport* r) {
  if (r->flags().cholesky_failed() || r->baseline_generation() < 0) return;
  std::map<int64_t, double> points = b.drift_points;
  points[in.key.generation] = r->per_dim().track2_drift();
  std::vector<double> gens, values;
  for (const auto& [g, v] : points) {
    gens.push_back(static_cast<double>(g));
    values.push_back(v);
  }
  if (auto fc = sigma::GenerationsToCritical(gens, values, in.config.thresholds().drift_critical(), kForecastWindow))
    r->set_generations_to_critical(*fc);
}

}  // namespace

sigma::AlertThresholds Thresholds(const v1::JobConfig& effective) {
  sigma::AlertThresholds t;
  t.drift_warning = effective.thresholds().drift_warning();
  t.drift_critical = effective.thresholds().drift_critical();
  t.divergence_warning = effective.thresholds().divergence_warning();
  t.track1_stable = effective.thresholds().track1_stable();
  return t;
}

sigma::TrackValues Estimate(const ReportInputs& in) {
  return sigma::EstimateTracks(in.moments, in.n, in.delta, in.rho, in.energy);
}

v1::GenerationReport BuildReport(const ReportInputs& in, const sigma::TrackValues& vals,
                                 const BaselineInputs& baseline) {
  v1::GenerationReport r;
  r.set_job(in.key.job);
  r.set_run(in.key.run);
  r.set_tap(in.key.tap);
  r.set_generation(in.key.generation);
  r.set_m(in.m);
  r.set_n(in.n);
  r.set_backend(in.backend);
  SetTracks(vals, &r);
  r.mutable_flags()->set_closed_explicitly(in.closed_explicitly);
  r.set_compute_seconds(in.compute_seconds);
  r.set_sealed_unix_ms(in.sealed_unix_ms);
  r.set_world_size(in.world_size);
  r.set_ranks_finished(in.ranks_finished);
  for (const v1::ShareDigest& d : in.shares) *r.add_shares() = d;
  r.set_data_digest(GenerationDigest(in.world_size, in.shares));
  *r.mutable_thresholds_at_seal() = in.config.thresholds();
  const std::optional<sigma::DriftValues> drift = Drift(in, vals, baseline, &r);
  SetDrift(in, vals, drift, &r);
  std::vector<sigma::Alert> alerts = sigma::EvaluateAlerts(vals, drift, Thresholds(in.config));
  const bool drift_alert_fires = std::any_of(alerts.begin(), alerts.end(), [](const sigma::Alert& a) {
    return a.rule == "collapse_contraction" || a.rule == "collapse_expansion";
  });
  if (auto trend = EvaluateTrend(in, vals, drift, baseline, drift_alert_fires, &r)) alerts.push_back(*trend);
  for (const sigma::Alert& a : alerts) {
    auto* out = r.add_alerts();
    out->set_rule(a.rule);
    out->set_severity(std::string(sigma::AlertSeverityName(a.severity)));
    out->set_direction(a.direction);
  }
  SetForecast(in, baseline, &r);
  return r;
}

}  // namespace sigma::server
