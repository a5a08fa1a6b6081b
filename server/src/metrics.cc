#include "sigma/server/metrics.h"

#include <limits>

#include "sigma/kernels/estimator.h"

namespace sigma::server {
namespace {

prometheus::Family<prometheus::Gauge>* G(prometheus::Registry& r, const char* name, const char* help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(r);
}
prometheus::Family<prometheus::Counter>* C(prometheus::Registry& r, const char* name, const char* help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(r);
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  f_track1_upper_ = G(r, "sigma_track1_upper", "Track I upper envelope log det(f C_A + (delta + (1-f) rho) I) of the latest sealed generation, nats");
  f_track1_lower_ = G(r, "sigma_track1_lower", "Track I lower envelope log det(f C_A + delta I) of the latest sealed generation, nats");
  f_track2_ = G(r, "sigma_track2", "Track II bias-corrected estimate of log det(G/n + delta I) of the latest sealed generation, nats");
  f_track2_half_ = G(r, "sigma_track2_ci_halfwidth", "Half-width of the 95% interval of Track II, nats");
  f_track1_drift_ = G(r, "sigma_track1_drift", "track1_upper(k) - track1_upper(baseline), nats");
  f_track2_drift_ = G(r, "sigma_track2_drift", "track2(k) - track2(baseline), nats");
  f_divergence_ = G(r, "sigma_divergence", "track1_drift - track2_drift, nats");
  f_drift_half_ = G(r, "sigma_drift_halfwidth", "sqrt(half(k)^2 + half(baseline)^2), nats");
  f_track1_drift_pd_ = G(r, "sigma_track1_drift_per_dim", "track1_drift / m, nats per dimension");
  f_track2_drift_pd_ = G(r, "sigma_track2_drift_per_dim", "track2_drift / m, nats per dimension");
  f_divergence_pd_ = G(r, "sigma_divergence_per_dim", "divergence / m, nats per dimension");
  f_generation_ = G(r, "sigma_generation", "Latest sealed generation");
  f_corpus_size_ = G(r, "sigma_corpus_size", "Corpus size n of the latest sealed generation");
  f_sample_size_ = G(r, "sigma_sample_size", "Sub-sample size n_A of the latest sealed generation");
  f_dimension_ = G(r, "sigma_dimension", "Embedding dimension m");
  f_rho_violations_ = C(r, "sigma_rho_violations_total", "Streamed columns with energy above rho (Track I invalid for their snapshot)");
  f_seal_failures_ = C(r, "sigma_seal_failures_total", "Sealed snapshots whose Cholesky failed (no track values)");
  f_alert_ = G(r, "sigma_alert", "1 when the alert rule fired at this severity on the latest sealed generation, else 0");
  f_forecast_ = G(r, "sigma_generations_to_critical", "Forecast generations until track2 drift per dim crosses the critical threshold; absent when it cannot be fitted");
  f_backend_info_ = G(r, "sigma_backend_info", "The numeric backend in use (value 1)");
  f_last_seal_ = G(r, "sigma_last_seal_timestamp_seconds",
                   "Unix time at which the latest generation of the job and tap sealed");
  f_threshold_ = G(r, "sigma_alert_threshold",
                   "The job's current alert thresholds in nats per dimension (spec section 3), by threshold; follow ConfigureJob at once");
  f_track2_pop_half_ = G(r, "sigma_track2_pop_halfwidth", "Population half-width z sd(q) / sqrt(n_A) of Track II (spec section 3, two kinds of uncertainty), nats");
  f_drift_half_used_ = G(r, "sigma_drift_halfwidth_used", "The drift half-width the job's probe setting uses (population for fresh, corpus for fixed), nats");
  f_drift_zscore_ = G(r, "sigma_drift_zscore", "z_drift = track2_drift / (drift_halfwidth_used / 1.96) of the latest sealed generation; NaN when not evaluated (low confidence, baseline, failed seal)");
  f_job_finished_ = G(r, "sigma_job_finished", "1 once the job is finished (FinishJob), else 0; the stale-job alert ignores finished jobs");

  ingested_bytes_ = &C(r, "sigma_ingested_bytes_total", "Embedding data bytes of accepted batches (rows x m x width, sample ids not counted)")->Add({});
  ingested_rows_ = &C(r, "sigma_ingested_rows_total", "Rows of accepted batches")->Add({});
  ingested_batches_ = &C(r, "sigma_ingested_batches_total", "Accepted batches (duplicates excluded)")->Add({});
  auto& rejected = prometheus::BuildCounter()
                       .Name("sigma_rejected_batches_total")
                       .Help("Ingest messages refused, by reason")
                       .Register(r);
  for (const char* reason : kRejectReasons) rejected_[reason] = &rejected.Add({{"reason", reason}});
  auto& auth = prometheus::BuildCounter()
                   .Name("sigma_auth_failures_total")
                   .Help("Requests refused by --tokens, by gRPC code (the token is never exported)")
                   .Register(r);
  auth_unauthenticated_ = &auth.Add({{"code", "unauthenticated"}});
  auth_denied_ = &auth.Add({{"code", "permission_denied"}});
  seal_duration_ = &prometheus::BuildHistogram()
                        .Name("sigma_seal_duration_seconds")
                        .Help("Time from a snapshot's seal request to its durable report")
                        .Register(r)
                        .Add({}, prometheus::Histogram::BucketBoundaries{
                                     0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                     2.5, 5, 10, 30, 60});
  seal_batch_size_ = &prometheus::BuildHistogram()
                          .Name("sigma_seal_batch_snapshots")
                          .Help("Snapshots sealed by one batched backend call")
                          .Register(r)
                          .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64});
  open_snapshots_ = &G(r, "sigma_open_snapshots", "Snapshots receiving data")->Add({});
  queue_depth_ = &G(r, "sigma_compute_queue_depth", "Tasks waiting for the compute worker")->Add({});
  jobs_ = &G(r, "sigma_jobs", "Jobs known (capped by --max-jobs)")->Add({});
  memory_bytes_ = &G(r, "sigma_open_snapshot_bytes", "Bytes held by open snapshots (sub-sample rows, sketch bookkeeping, batch seq runs), bounded by --max-memory-bytes")->Add({});
  store_commit_failures_ = &C(r, "sigma_store_commit_failures_total", "SQLite commits (seals, ConfigureJob) that failed, e.g. on a full disk")->Add({});
  expired_snapshots_ = &C(r, "sigma_expired_snapshots_total", "Open snapshots discarded after --snapshot-idle-timeout-s without data")->Add({});
}

void Metrics::SetBackendInfo(const std::string& backend, const std::string& fallback_reason) {
  f_backend_info_->Add({{"backend", backend}, {"fallback_reason", fallback_reason}}).Set(1);
}

Metrics::TapSeries& Metrics::Series(const std::string& job, const std::string& tap) {
  auto key = std::make_pair(job, tap);
  auto it = series_.find(key);
  if (it != series_.end()) return it->second;
  const prometheus::Labels l{{"job_name", job}, {"tap", tap}};
  TapSeries s{};
  s.generation = &f_generation_->Add(l);
  s.corpus_size = &f_corpus_size_->Add(l);
  s.sample_size = &f_sample_size_->Add(l);
  s.dimension = &f_dimension_->Add(l);
  s.rho_violations = &f_rho_violations_->Add(l);
  s.seal_failures = &f_seal_failures_->Add(l);
  s.last_seal_timestamp = &f_last_seal_->Add(l);
  for (const sigma::Alert& a : sigma::AllAlertKinds()) {
    const std::string sev(sigma::AlertSeverityName(a.severity));
    s.alerts.emplace_back(a.rule + "/" + sev,
                          &f_alert_->Add({{"job_name", job}, {"tap", tap}, {"rule", a.rule}, {"severity", sev}}));
  }
  JobGauges(job);
  return series_.emplace(key, s).first->second;
}

// The track gauges of (job, tap), created by its first successful report: a
// tap whose seals all failed exports no track values (not even 0).
void Metrics::AddTrackSeries(const std::string& job, const std::string& tap, TapSeries& s) {
  const prometheus::Labels l{{"job_name", job}, {"tap", tap}};
  s.track1_upper = &f_track1_upper_->Add(l);
  s.track1_lower = &f_track1_lower_->Add(l);
  s.track2 = &f_track2_->Add(l);
  s.track2_ci_halfwidth = &f_track2_half_->Add(l);
  s.track1_drift = &f_track1_drift_->Add(l);
  s.track2_drift = &f_track2_drift_->Add(l);
  s.divergence = &f_divergence_->Add(l);
  s.drift_halfwidth = &f_drift_half_->Add(l);
  s.track2_pop_halfwidth = &f_track2_pop_half_->Add(l);
  s.drift_halfwidth_used = &f_drift_half_used_->Add(l);
  s.drift_zscore = &f_drift_zscore_->Add(l);
  s.drift_zscore->Set(std::numeric_limits<double>::quiet_NaN());
  s.track1_drift_per_dim = &f_track1_drift_pd_->Add(l);
  s.track2_drift_per_dim = &f_track2_drift_pd_->Add(l);
  s.divergence_per_dim = &f_divergence_pd_->Add(l);
}

Metrics::JobSeries& Metrics::JobGauges(const std::string& job) {
  auto [it, inserted] = jobs_series_.try_emplace(job);
  if (inserted) {
    const char* names[4] = {"drift_warning", "drift_critical", "divergence_warning", "track1_stable"};
    for (int i = 0; i < 4; ++i)
      it->second.thresholds[i] = &f_threshold_->Add({{"job_name", job}, {"threshold", names[i]}});
    it->second.finished = &f_job_finished_->Add({{"job_name", job}});  // 0 until FinishJob
  }
  return it->second;
}

void Metrics::SetThresholdsLocked(const std::string& job, const sigma::AlertThresholds& t) {
  JobSeries& j = JobGauges(job);
  j.thresholds[0]->Set(t.drift_warning);
  j.thresholds[1]->Set(t.drift_critical);
  j.thresholds[2]->Set(t.divergence_warning);
  j.thresholds[3]->Set(t.track1_stable);
}

void Metrics::SetThresholds(const std::string& job, const sigma::AlertThresholds& t) {
  std::lock_guard<std::mutex> lock(mu_);
  SetThresholdsLocked(job, t);
}

void Metrics::SetJobFinished(const std::string& job, bool finished) {
  std::lock_guard<std::mutex> lock(mu_);
  JobGauges(job).finished->Set(finished ? 1 : 0);
}

void Metrics::RemoveJob(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = series_.lower_bound({job, ""}); it != series_.end() && it->first.first == job;) {
    TapSeries& s = it->second;
    for (auto [family, gauge] : {std::pair{f_track1_upper_, s.track1_upper}, {f_track1_lower_, s.track1_lower},
                                 {f_track2_, s.track2}, {f_track2_half_, s.track2_ci_halfwidth},
                                 {f_track1_drift_, s.track1_drift}, {f_track2_drift_, s.track2_drift},
                                 {f_divergence_, s.divergence}, {f_drift_half_, s.drift_halfwidth},
                                 {f_track2_pop_half_, s.track2_pop_halfwidth},
                                 {f_drift_half_used_, s.drift_halfwidth_used}, {f_drift_zscore_, s.drift_zscore},
                                 {f_track1_drift_pd_, s.track1_drift_per_dim},
                                 {f_track2_drift_pd_, s.track2_drift_per_dim},
                                 {f_divergence_pd_, s.divergence_per_dim}, {f_generation_, s.generation},
                                 {f_corpus_size_, s.corpus_size}, {f_sample_size_, s.sample_size},
                                 {f_dimension_, s.dimension}, {f_last_seal_, s.last_seal_timestamp},
                                 {f_forecast_, s.forecast}}) {
      if (gauge != nullptr) family->Remove(gauge);
    }
    f_rho_violations_->Remove(s.rho_violations);
    f_seal_failures_->Remove(s.seal_failures);
    for (auto& [key, gauge] : s.alerts) f_alert_->Remove(gauge);
    it = series_.erase(it);
  }
  if (auto j = jobs_series_.find(job); j != jobs_series_.end()) {
    for (prometheus::Gauge* g : j->second.thresholds) f_threshold_->Remove(g);
    f_job_finished_->Remove(j->second.finished);
    jobs_series_.erase(j);
  }
}

void Metrics::PublishReport(const sigma::v1::GenerationReport& r,
                            const sigma::AlertThresholds& t) {
  std::lock_guard<std::mutex> lock(mu_);
  TapSeries& s = Series(r.job(), r.tap());
  SetThresholdsLocked(r.job(), t);
  s.last_seal_timestamp->Set(static_cast<double>(r.sealed_unix_ms()) / 1000.0);
  s.generation->Set(static_cast<double>(r.generation()));
  s.corpus_size->Set(r.n());
  s.sample_size->Set(static_cast<double>(r.n_a()));
  s.dimension->Set(r.m());
  // The alerts and the forecast are those of this generation even when its
  // Cholesky failed (then no drift alerts and no forecast): a failed seal must
  // neither keep the previous generation's alerts firing nor hide its own.
  for (auto& [key, gauge] : s.alerts) {
    bool on = false;
    for (const auto& a : r.alerts()) on = on || (a.rule() + "/" + a.severity()) == key;
    gauge->Set(on ? 1 : 0);
  }
  if (r.has_generations_to_critical()) {
    if (s.forecast == nullptr) s.forecast = &f_forecast_->Add({{"job_name", r.job()}, {"tap", r.tap()}});
    s.forecast->Set(r.generations_to_critical());
  } else if (s.forecast != nullptr) {
    f_forecast_->Remove(s.forecast);
    s.forecast = nullptr;
  }
  if (r.flags().cholesky_failed()) {  // never publish made-up track values
    if (s.drift_zscore != nullptr) s.drift_zscore->Set(std::numeric_limits<double>::quiet_NaN());
    return;
  }
  if (s.track1_upper == nullptr) AddTrackSeries(r.job(), r.tap(), s);
  // z_drift only where the trend warning was evaluated (spec §3: not at low confidence).
  s.drift_zscore->Set(r.trend_evaluated() ? r.drift_zscore() : std::numeric_limits<double>::quiet_NaN());
  s.track1_upper->Set(r.track1_upper());
  s.track1_lower->Set(r.track1_lower());
  s.track2->Set(r.track2());
  s.track2_ci_halfwidth->Set(r.track2_ci_halfwidth());
  s.track1_drift->Set(r.track1_drift());
  s.track2_drift->Set(r.track2_drift());
  s.divergence->Set(r.divergence());
  s.drift_halfwidth->Set(r.drift_halfwidth());
  s.track2_pop_halfwidth->Set(r.track2_pop_halfwidth());
  s.drift_halfwidth_used->Set(r.drift_halfwidth_used());
  s.track1_drift_per_dim->Set(r.per_dim().track1_drift());
  s.track2_drift_per_dim->Set(r.per_dim().track2_drift());
  s.divergence_per_dim->Set(r.per_dim().divergence());
}

void Metrics::CountSeal(const sigma::v1::GenerationReport& r) {
  std::lock_guard<std::mutex> lock(mu_);
  TapSeries& s = Series(r.job(), r.tap());
  if (r.flags().rho_violations() > 0)
    s.rho_violations->Increment(static_cast<double>(r.flags().rho_violations()));
  if (r.flags().cholesky_failed()) s.seal_failures->Increment();
}

void Metrics::Ingested(int64_t bytes, int64_t rows) {
  ingested_bytes_->Increment(static_cast<double>(bytes));
  ingested_rows_->Increment(static_cast<double>(rows));
  ingested_batches_->Increment();
}

void Metrics::Rejected(const std::string& reason) {
  auto it = rejected_.find(reason);
  if (it != rejected_.end()) it->second->Increment();
}

void Metrics::SealDuration(double seconds) { seal_duration_->Observe(seconds); }

void Metrics::SealBatchSize(size_t snapshots) { seal_batch_size_->Observe(static_cast<double>(snapshots)); }

}  // namespace sigma::server
