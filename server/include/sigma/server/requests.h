// Validation of requests against the daemon's limits, before any state is
// touched. Pure functions; refusals carry a reason (refusal.h).
#ifndef SIGMA_SERVER_REQUESTS_H_
#define SIGMA_SERVER_REQUESTS_H_

#include <string>

#include "absl/status/statusor.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/preprocess.h"
#include "sigma/server/config.h"
#include "sigma/server/snapshot.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

// The tap of a request ("" means "default").
inline std::string TapName(const std::string& tap) { return tap.empty() ? "default" : tap; }

// An OpenSnapshot's fields (names, ranks, m, dtype, corpus size, config);
// returns the row dtype.
absl::StatusOr<sigma::DType> ValidateOpen(const sigma::v1::OpenSnapshot& open, const DaemonOptions& options);

// A Batch's shape against the snapshot (seq, rows, payload, data size, sample
// ids); `where` names the batch in messages.
absl::Status ValidateBatch(const sigma::v1::Batch& batch, const Snapshot::Params& snap, const DaemonOptions& options,
                           const std::string& where);

// A job (and optional tap) name of a unary request, and its run ("": none).
absl::Status ValidateNames(const std::string& job, const std::string* tap, const std::string& run = "");

// The snapshot a unary request names (CloseGeneration, GetReport): the names,
// the tap ("" = "default"), generation >= 0 and the run (empty: "1" here; the
// caller resolves it to the job's latest run).
absl::StatusOr<SnapshotKey> ValidateKey(const std::string& job, const std::string& tap, int64_t generation,
                                        const std::string& run = "");

// A ConfigureJob request's own fields.
absl::Status ValidateConfigure(const sigma::v1::ConfigureJobRequest& request);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_REQUESTS_H_
