// The job lifecycle calls of the C++ client (issue 15 item 4): DeleteJob,
// FinishJob, ListSnapshots. Retries as every call (client.h).
#include <string>
#include <vector>

#include "sigma/client/client.h"

namespace sigma::client {

absl::StatusOr<v1::DeleteJobResponse> Client::DeleteJob(std::string_view job, std::string_view run) {
  v1::DeleteJobRequest request;
  request.set_job(std::string(job));
  request.set_run(std::string(run));
  v1::DeleteJobResponse response;
  absl::Status status = Unary(TargetFor(job), [&](v1::SigmaMonitor::Stub& stub, grpc::ClientContext& context) {
    return stub.DeleteJob(&context, request, &response);
  });
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::JobInfo> Client::FinishJob(std::string_view job) {
  v1::FinishJobRequest request;
  request.set_job(std::string(job));
  v1::JobInfo info;
  absl::Status status = Unary(TargetFor(job), [&](v1::SigmaMonitor::Stub& stub, grpc::ClientContext& context) {
    return stub.FinishJob(&context, request, &info);
  });
  if (!status.ok()) return status;
  return info;
}

absl::StatusOr<std::vector<v1::SnapshotInfo>> Client::ListSnapshots(std::string_view job) {
  v1::ListSnapshotsRequest request;
  request.set_job(std::string(job));
  std::vector<v1::SnapshotInfo> out;
  const std::vector<std::string> on = job.empty() ? targets() : std::vector<std::string>{TargetFor(job)};
  for (const std::string& target : on) {
    v1::ListSnapshotsResponse response;
    absl::Status status = Unary(target, [&](v1::SigmaMonitor::Stub& stub, grpc::ClientContext& context) {
      return stub.ListSnapshots(&context, request, &response);
    });
    if (!status.ok()) return status;
    out.insert(out.end(), response.snapshots().begin(), response.snapshots().end());
  }
  return out;
}

}  // namespace sigma::client
