// The gRPC service of sigmad (sigma.v1.SigmaMonitor) on the callback API:
// reactors hand work to the Engine and never block; the seal and the SQLite
// writes complete on the Engine's worker, which Finishes the reactor.
#ifndef SIGMA_SERVER_API_H_
#define SIGMA_SERVER_API_H_

#include "sigma/server/auth.h"
#include "sigma/server/metrics.h"
#include "sigma/server/scheduler.h"
#include "sigma/v1/sigma.grpc.pb.h"

namespace sigma::server {

class MonitorService final : public sigma::v1::SigmaMonitor::CallbackService {
 public:
  // `auth` null: no authorisation (every request allowed). `metrics` may be null.
  explicit MonitorService(Engine* engine, const Authorizer* auth = nullptr, Metrics* metrics = nullptr)
      : engine_(engine), auth_(auth), metrics_(metrics) {}

  grpc::ServerReadReactor<sigma::v1::IngestRequest>* Ingest(
      grpc::CallbackServerContext* context, sigma::v1::IngestResponse* response) override;
  grpc::ServerUnaryReactor* CloseGeneration(grpc::CallbackServerContext* context,
                                            const sigma::v1::CloseGenerationRequest* request,
                                            sigma::v1::GenerationReport* response) override;
  grpc::ServerUnaryReactor* GetHistory(grpc::CallbackServerContext* context,
                                       const sigma::v1::GetHistoryRequest* request,
                                       sigma::v1::GetHistoryResponse* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const sigma::v1::ListJobsRequest* request,
                                     sigma::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* ConfigureJob(grpc::CallbackServerContext* context,
                                         const sigma::v1::ConfigureJobRequest* request,
                                         sigma::v1::JobInfo* response) override;

 private:
  // The caller's token entry (null when auth is off), or UNAUTHENTICATED.
  grpc::Status Authenticate(grpc::CallbackServerContext* context, const TokenEntry** entry);
  // Authenticate, then the role and (when `job` is set) the job's prefix and
  // that of `baseline_job` (when not empty).
  grpc::Status Check(grpc::CallbackServerContext* context, Rpc rpc, const std::string* job,
                     const std::string& baseline_job = "", const TokenEntry** entry = nullptr);

  Engine* engine_;
  const Authorizer* auth_;
  Metrics* metrics_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_API_H_
