// sigmad in-process: the gRPC server (SigmaMonitor + health + reflection),
// the Prometheus exposer, the store and the compute worker.
#ifndef SIGMA_SERVER_DAEMON_H_
#define SIGMA_SERVER_DAEMON_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sigma/server/config.h"

namespace grpc {
class Server;
}
namespace prometheus {
class Exposer;
}

namespace sigma::server {

class Authorizer;
class BasicAuth;
class Engine;
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

 private:
  DaemonOptions options_;
  BoundPorts ports_;
  std::string grpc_host_, metrics_host_;
  std::string backend_name_, fallback_reason_;
  std::vector<std::string> warnings_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<BasicAuth> metrics_auth_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<MonitorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  bool running_ = false;
};

// Writes {"grpc_port": P, "metrics_port": Q, "pid": PID} to `path` atomically
// (temporary file in the same directory, then rename).
absl::Status WritePortFile(const std::string& path, const BoundPorts& ports);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_DAEMON_H_
