// The error model below the gRPC edge: absl::Status, with a machine-readable
// refusal reason (one of kRejectReasons, metrics.h) attached as a payload.
// Only api.cc converts to grpc::Status; it counts every status that carries a
// reason in sigma_rejected_batches_total{reason}. Failures that are not a
// refusal of the request (a failed seal, a store error) carry no reason.
#ifndef SIGMA_SERVER_REFUSAL_H_
#define SIGMA_SERVER_REFUSAL_H_

#include <cstdint>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace sigma::server {

// A refusal: `code` with `message`, tagged with `reason`.
absl::Status Refusal(absl::StatusCode code, absl::string_view reason, absl::string_view message);

// The reason attached by Refusal, or "" when `status` carries none.
std::string RefusalReason(const absl::Status& status);

// NOT_FOUND (reason not_found) "unknown job 'J'".
absl::Status UnknownJob(const std::string& job);

// The row within the rank's share that a refusal is about (issue 15 item 2):
// attached below the gRPC edge, sent by api.cc as trailing metadata
// "sigma-share-row" so clients can name their own row (sigmactl: the file row).
absl::Status WithShareRow(absl::Status status, int64_t row);
std::optional<int64_t> ShareRow(const absl::Status& status);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_REFUSAL_H_
