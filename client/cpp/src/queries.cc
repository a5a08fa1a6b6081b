// The query calls of the C++ client (issue 17 "Protocol"): GetJob (a job's
// effective settings as its daemon resolves them) and GetReport (one sealed
// report). Retries as every call (client.h).
#include <optional>
#include <string>

#include "sigma/client/client.h"

namespace sigma::client {

absl::StatusOr<v1::JobInfo> Client::GetJob(std::string_view job, std::optional<int32_t> m) {
  v1::GetJobRequest request;
  request.set_job(std::string(job));
  if (m) request.set_m(*m);
  v1::JobInfo info;
  absl::Status status = Unary(TargetFor(job), [&](v1::SigmaMonitor::Stub& stub, grpc::ClientContext& context) {
    return stub.GetJob(&context, request, &info);
  });
  if (!status.ok()) return status;
  return info;
}

absl::StatusOr<v1::GenerationReport> Client::GetReport(const SnapshotId& snapshot) {
  v1::GetReportRequest request;
  request.set_job(snapshot.job);
  request.set_tap(snapshot.tap);
  request.set_generation(snapshot.generation);
  request.set_run(snapshot.run);
  v1::GenerationReport report;
  absl::Status status = Unary(TargetFor(snapshot.job), [&](v1::SigmaMonitor::Stub& stub, grpc::ClientContext& context) {
    return stub.GetReport(&context, request, &report);
  });
  if (!status.ok()) return status;
  return report;
}

}  // namespace sigma::client
