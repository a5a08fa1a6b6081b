// sigmad in-process: the gRPC server (SigmaMonitor + health + reflection),
// the metrics port (/metrics, /, /healthz, /readyz), the store and the
// compute worker.
#ifndef SIGMA_SERVER_DAEMON_H_
#define SIGMA_SERVER_DAEMON_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sigma/server/config.h"

namespace grpc {
class Server;
class ServerCredentials;
}
namespace sigma::server {

class Authorizer;
class BasicAuth;
class BackendScratchBudget;
class Engine;
class HttpServer;
class Metrics;
class MonitorService;

struct BoundPorts {
  int grpc_port = 0;
  int metrics_port = 0;
};

class Daemon {
 public:
  Daemon();
  ~Daemon();  // Shutdown()
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Opens the store, restores history, starts the worker and both servers.
  // Ports 0 in the options are replaced by the ones bound.
  absl::StatusOr<BoundPorts> Start(const DaemonOptions& options);
  // Graceful: stops accepting, lets in-flight calls finish (up to
  // `grace_seconds`), completes queued seals, closes the store. Idempotent.
  void Shutdown(double grace_seconds = 5.0);

  const std::string& backend_name() const { return backend_name_; }
  const std::string& fallback_reason() const { return fallback_reason_; }
  // "sigmad: gRPC on HOST:PORT, metrics on http://HOST:PORT/metrics, backend NAME"
  std::string Banner() const;
  BoundPorts ports() const { return ports_; }
  // Non-fatal remarks from Start (plain-text tokens, a non-loopback address
  // without TLS), for the log. They never contain a token.
  const std::vector<std::string>& warnings() const { return warnings_; }
  // How often the gRPC server was restarted after its listener stopped
  // accepting (out of file descriptors; grpc_accept_watch.h).
  int64_t grpc_restarts() const { return grpc_restarts_.load(); }
  // What /readyz answers: OK while serving, with a writable store whose latest
  // commit succeeded and a backend whose latest seals did; UNAVAILABLE naming
  // the reason otherwise. Thread-safe.
  absl::Status Readiness() const;

 private:
  // The steps of Start, in order; each returns an error naming the flag.
  absl::Status LoadAuthAndWarn();
  absl::Status StartEngine();
  absl::Status StartMetricsPort();
  absl::Status LoadServerCredentials();
  absl::Status StartGrpc(const std::string& listen);
  void StopGrpc(double grace_seconds);
  // Undoes every step that ran (Start's rollback and Shutdown's tail).
  void StopParts(double grace_seconds = 5.0);
  // The watchdog thread: restarts gRPC when its listener died (EMFILE).
  void WatchGrpcListener();

  DaemonOptions options_;
  BoundPorts ports_;
  std::string grpc_host_, metrics_host_;
  std::string backend_name_, fallback_reason_;
  std::vector<std::string> warnings_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<BasicAuth> metrics_auth_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<BackendScratchBudget> scratch_budget_;  // outlives engine_ (and its backend)
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<MonitorService> service_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::unique_ptr<grpc::Server> server_;  // replaced by the watchdog thread only while running
  std::unique_ptr<HttpServer> metrics_http_;
  bool running_ = false;
  std::atomic<bool> serving_{false};  // read by the metrics port's thread
  int64_t accept_failures_seen_ = 0;  // GrpcAcceptFailures() when server_ was built
  std::atomic<int64_t> grpc_restarts_{0};
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;  // guarded by watch_mu_
  std::thread listener_watch_;
};

// Writes {"grpc_port": P, "metrics_port": Q, "pid": PID} to `path` atomically
// (temporary file in the same directory, then rename).
absl::Status WritePortFile(const std::string& path, const BoundPorts& ports);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_DAEMON_H_
