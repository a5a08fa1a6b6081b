// Prometheus metrics of sigmad. Families are built once in the constructor;
// per (job, tap) series are created on first use and their references cached.
// Thread-safe.
#ifndef SIGMA_SERVER_METRICS_H_
#define SIGMA_SERVER_METRICS_H_

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "sigma/kernels/estimator.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

// Reasons of sigma_rejected_batches_total (every one exported from the start):
// every refusal of any RPC (refusal.h), counted once in api.cc.
inline constexpr const char* kRejectReasons[] = {
    "invalid_name", "invalid_rank", "invalid_dtype", "dimension_mismatch", "size_mismatch",
    "empty_batch", "non_finite", "sample_ids_mismatch", "too_large", "too_many_jobs",
    "too_many_taps", "too_many_open_snapshots", "memory_exhausted", "not_open",
    "invalid_request", "finished_rank", "corpus_exceeded", "too_many_rows", "m_too_large",
    "too_many_streams", "rate_limited", "not_found", "queue_full", "sketch_fixed", "expired",
    "quota_jobs", "quota_open_snapshots", "quota_memory", "invalid_norm", "job_finished",
    "share_conflict"};

class Metrics {
 public:
  Metrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void SetBackendInfo(const std::string& backend, const std::string& fallback_reason);

  // Publishes a sealed report as the current state of (job, tap): track
  // values, drifts, alerts, forecast. Failed reports only bump the failure
  // counter and the generation. Called with the latest generation only.
  // `thresholds` are the job's effective alert thresholds used for this
  // report; they are exported as sigma_alert_threshold{job_name, threshold}
  // (for dashboards: the shipped rules fire on sigma_alert itself).
  // Per-job series carry the label job_name (Prometheus' `job` is the scrape job).
  void PublishReport(const sigma::v1::GenerationReport& report,
                     const sigma::AlertThresholds& thresholds);
  // The job's current thresholds, at once (ConfigureJob).
  void SetThresholds(const std::string& job, const sigma::AlertThresholds& thresholds);
  // sigma_job_finished{job_name}: 0 from the job's first series, 1 once
  // finished (FinishJob sets it; the SigmaStaleJob rule ignores finished jobs).
  void SetJobFinished(const std::string& job, bool finished);
  // Removes every per-job series of `job` (every tap's, its thresholds and
  // sigma_job_finished) from /metrics: DeleteJob, and a finished job after
  // --finished-series-ttl-s. A later report of the job creates them again.
  void RemoveJob(const std::string& job);
  // Counts a sealed report (every one, also older generations and, on restart,
  // the stored ones): rho violations and Cholesky failures.
  void CountSeal(const sigma::v1::GenerationReport& report);

  void Ingested(int64_t bytes, int64_t rows);
  void Rejected(const std::string& reason);
  // A request refused by --tokens: UNAUTHENTICATED or PERMISSION_DENIED.
  void AuthFailure(bool unauthenticated) { (unauthenticated ? auth_unauthenticated_ : auth_denied_)->Increment(); }
  void SealDuration(double seconds);
  void SealBatchSize(size_t snapshots);
  void SetOpenSnapshots(int64_t n) { open_snapshots_->Set(static_cast<double>(n)); }
  void SetQueueDepth(int64_t n) { queue_depth_->Set(static_cast<double>(n)); }
  void SetJobs(int64_t n) { jobs_->Set(static_cast<double>(n)); }
  void SetMemoryBytes(int64_t n) { memory_bytes_->Set(static_cast<double>(n)); }
  // A store commit (seal or ConfigureJob) that failed, or a seal refused because reading its
  // history from a shared store failed (sigma_store_commit_failures_total).
  void StoreCommitFailed() { store_commit_failures_->Increment(); }
  // An open snapshot discarded after --snapshot-idle-timeout-s (sigma_expired_snapshots_total).
  void SnapshotExpired() { expired_snapshots_->Increment(); }

 private:
  struct TapSeries {
    // Track gauges: null until the tap's first successful report.
    prometheus::Gauge* track1_upper;
    prometheus::Gauge* track1_lower;
    prometheus::Gauge* track2;
    prometheus::Gauge* track2_ci_halfwidth;
    prometheus::Gauge* track1_drift;
    prometheus::Gauge* track2_drift;
    prometheus::Gauge* divergence;
    prometheus::Gauge* drift_halfwidth;
    prometheus::Gauge* track2_pop_halfwidth;
    prometheus::Gauge* drift_halfwidth_used;
    prometheus::Gauge* drift_zscore;  // NaN when the report's trend was not evaluated
    prometheus::Gauge* track1_drift_per_dim;
    prometheus::Gauge* track2_drift_per_dim;
    prometheus::Gauge* divergence_per_dim;
    prometheus::Gauge* generation;
    prometheus::Gauge* corpus_size;
    prometheus::Gauge* sample_size;
    prometheus::Gauge* dimension;
    prometheus::Counter* rho_violations;
    prometheus::Counter* seal_failures;
    prometheus::Gauge* last_seal_timestamp;
    prometheus::Gauge* forecast = nullptr;  // present only while a forecast exists
    std::vector<std::pair<std::string, prometheus::Gauge*>> alerts;  // key rule/severity
  };
  TapSeries& Series(const std::string& job, const std::string& tap);  // mu_ held
  void AddTrackSeries(const std::string& job, const std::string& tap, TapSeries& s);  // mu_ held
  struct JobSeries {
    // drift_warning, drift_critical, divergence_warning, track1_stable.
    std::array<prometheus::Gauge*, 4> thresholds{};
    prometheus::Gauge* finished = nullptr;
  };
  JobSeries& JobGauges(const std::string& job);  // mu_ held
  void SetThresholdsLocked(const std::string& job, const sigma::AlertThresholds& t);  // mu_ held

  std::shared_ptr<prometheus::Registry> registry_;
  std::mutex mu_;
  std::map<std::pair<std::string, std::string>, TapSeries> series_;
  std::map<std::string, JobSeries> jobs_series_;

  prometheus::Family<prometheus::Gauge>* f_track1_upper_;
  prometheus::Family<prometheus::Gauge>* f_track1_lower_;
  prometheus::Family<prometheus::Gauge>* f_track2_;
  prometheus::Family<prometheus::Gauge>* f_track2_half_;
  prometheus::Family<prometheus::Gauge>* f_track1_drift_;
  prometheus::Family<prometheus::Gauge>* f_track2_drift_;
  prometheus::Family<prometheus::Gauge>* f_divergence_;
  prometheus::Family<prometheus::Gauge>* f_drift_half_;
  prometheus::Family<prometheus::Gauge>* f_track1_drift_pd_;
  prometheus::Family<prometheus::Gauge>* f_track2_drift_pd_;
  prometheus::Family<prometheus::Gauge>* f_divergence_pd_;
  prometheus::Family<prometheus::Gauge>* f_generation_;
  prometheus::Family<prometheus::Gauge>* f_corpus_size_;
  prometheus::Family<prometheus::Gauge>* f_sample_size_;
  prometheus::Family<prometheus::Gauge>* f_dimension_;
  prometheus::Family<prometheus::Counter>* f_rho_violations_;
  prometheus::Family<prometheus::Counter>* f_seal_failures_;
  prometheus::Family<prometheus::Gauge>* f_alert_;
  prometheus::Family<prometheus::Gauge>* f_forecast_;
  prometheus::Family<prometheus::Gauge>* f_backend_info_;
  prometheus::Family<prometheus::Gauge>* f_last_seal_;
  prometheus::Family<prometheus::Gauge>* f_threshold_;
  prometheus::Family<prometheus::Gauge>* f_track2_pop_half_;
  prometheus::Family<prometheus::Gauge>* f_drift_half_used_;
  prometheus::Family<prometheus::Gauge>* f_drift_zscore_;
  prometheus::Family<prometheus::Gauge>* f_job_finished_;

  prometheus::Counter* ingested_bytes_;
  prometheus::Counter* ingested_rows_;
  prometheus::Counter* ingested_batches_;
  std::map<std::string, prometheus::Counter*> rejected_;
  prometheus::Counter* auth_unauthenticated_;
  prometheus::Counter* auth_denied_;
  prometheus::Histogram* seal_duration_;
  prometheus::Histogram* seal_batch_size_;
  prometheus::Gauge* open_snapshots_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* jobs_;
  prometheus::Gauge* memory_bytes_;
  prometheus::Counter* store_commit_failures_;
  prometheus::Counter* expired_snapshots_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_METRICS_H_
