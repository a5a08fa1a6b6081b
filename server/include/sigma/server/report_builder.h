// The pure step of a seal: a GenerationReport from the backend's moments, the
// energies, the job's effective configuration and the baseline (spec §3-§5).
// No state, no locks, no I/O: the sealer gathers the inputs and commits the result.
#ifndef SIGMA_SERVER_REPORT_BUILDER_H_
#define SIGMA_SERVER_REPORT_BUILDER_H_

#include <cstdint>
#include <string>

#include "sigma/kernels/backend.h"
#include "sigma/kernels/estimator.h"
#include "sigma/kernels/preprocess.h"
#include "sigma/server/report_history.h"
#include "sigma/server/snapshot.h"
#include <vector>

#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

// Points of a report's forecast line (GenerationsToCritical's window): this
// generation and the latest earlier ones with a drift.
inline constexpr int kForecastWindow = 5;

struct ReportInputs {
  SnapshotKey key;
  int32_t m = 0;
  double n = 0;  // corpus size
  std::string backend;
  sigma::SealMoments moments;
  sigma::EnergyStats energy;
  double delta = 1e-6, rho = 1;
  sigma::v1::JobConfig config;  // the job's effective configuration
  bool closed_explicitly = false;
  int32_t world_size = 1, ranks_finished = 0;
  std::vector<sigma::v1::ShareDigest> shares;  // what was sealed, by rank (share.h)
  double compute_seconds = 0;
  int64_t sealed_unix_ms = 0;
};

// The job's alert thresholds as the estimator takes them.
sigma::AlertThresholds Thresholds(const sigma::v1::JobConfig& effective);

// The estimator's tracks (vals.flags.cholesky_failed: the seal failed and
// needs no baseline).
sigma::TrackValues Estimate(const ReportInputs& in);

// The report: tracks, flags, drift against `baseline` (ignored for a failed
// seal; a baseline that failed or has another m gives no drift), alerts and
// the forecast over `baseline.drift_points` plus this generation.
sigma::v1::GenerationReport BuildReport(const ReportInputs& in, const sigma::TrackValues& vals,
                                        const BaselineInputs& baseline);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_REPORT_BUILDER_H_
