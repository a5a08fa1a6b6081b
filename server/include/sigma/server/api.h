// The gRPC service of sigmad (sigma.v1.SigmaMonitor) on the callback API:
// reactors hand work to the Engine and never block; the seal and the SQLite
// writes complete on the Engine's worker, which Finishes the reactor.
#ifndef SIGMA_SERVER_API_H_
#define SIGMA_SERVER_API_H_

#include <string>

#include "sigma/server/auth.h"
#include "sigma/server/limits.h"
#include "sigma/server/metrics.h"
#include "sigma/server/scheduler.h"
#include "sigma/server/stream_watchdog.h"
#include "sigma/v1/sigma.grpc.pb.h"

namespace sigma::server {

class MonitorService final : public sigma::v1::SigmaMonitor::CallbackService {
 public:
  // `auth` null: no authorisation (every request allowed). `metrics` may be null.
  // `client_limits`: the per-client limits (limits.h) of clients whose token
  // does not override them.
  // `stream_idle_timeout_s` (0: never), `clock` and `watchdog_thread`: the
  // idle-stream watchdog (tests pass their clock and call watchdog()->Check()).
  // `limiter_clock`: the rate limiter's clock (tests).
  explicit MonitorService(Engine* engine, const Authorizer* auth = nullptr, Metrics* metrics = nullptr,
                          ClientLimits client_limits = {}, int64_t stream_idle_timeout_s = 0,
                          std::function<SteadyTime()> clock = std::chrono::steady_clock::now,
                          bool watchdog_thread = true, std::function<absl::Time()> limiter_clock = absl::Now)
      : engine_(engine),
        auth_(auth),
        metrics_(metrics),
        client_limits_(client_limits),
        limiter_(std::move(limiter_clock)),
        watchdog_(std::chrono::seconds(stream_idle_timeout_s), std::move(clock), watchdog_thread) {}
  StreamWatchdog* watchdog() { return &watchdog_; }

  // Who a request comes from, for the per-client limits.
  struct Client {
    std::string key;    // limiter key: the token entry, or "peer:IP"
    std::string label;  // for messages: "token 'NAME'" or "peer IP" (never a secret)
    ClientLimits limits;
    Tenant tenant;      // the token's quotas (quota.h); no quota without a token
  };
  Client Identify(const grpc::CallbackServerContext* context, const TokenEntry* token) const;
  ClientLimiter* limiter() { return &limiter_; }

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
  // GetJob / GetReport block: read-only roles (as GetHistory); refusals counted.
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const sigma::v1::GetJobRequest* request,
                                   sigma::v1::JobInfo* response) override;
  grpc::ServerUnaryReactor* GetReport(grpc::CallbackServerContext* context,
                                      const sigma::v1::GetReportRequest* request,
                                      sigma::v1::GenerationReport* response) override;
  // Job lifecycle (issue 15 item 4).
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* context,
                                      const sigma::v1::DeleteJobRequest* request,
                                      sigma::v1::DeleteJobResponse* response) override;
  grpc::ServerUnaryReactor* FinishJob(grpc::CallbackServerContext* context,
                                      const sigma::v1::FinishJobRequest* request,
                                      sigma::v1::JobInfo* response) override;
  grpc::ServerUnaryReactor* ListSnapshots(grpc::CallbackServerContext* context,
                                          const sigma::v1::ListSnapshotsRequest* request,
                                          sigma::v1::ListSnapshotsResponse* response) override;

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
  const ClientLimits client_limits_;
  ClientLimiter limiter_;
  StreamWatchdog watchdog_;  // last: its thread stops before the rest goes
};

// The host part of a gRPC peer string ("ipv4:127.0.0.1:5000" -> "127.0.0.1",
// "ipv6:[::1]:5000" -> "::1"); other forms are returned whole.
std::string PeerHost(const std::string& peer);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_API_H_
