// The routes of sigmad's metrics port (docs/server.md, "The metrics port"):
//   GET|HEAD /         a short HTML page naming the daemon, its version and /metrics
//   GET|HEAD /metrics  the Prometheus text format (0.0.4) of `registry`
//   GET|HEAD /healthz  liveness: 200 "ok" while the process serves
//   GET|HEAD /readyz   readiness: 200 when `readiness()` is OK, else 503 with its message
// Another method on these paths is 405 (Allow: GET, HEAD); another path 404.
// With `basic_auth`, every request, whatever its path, needs valid credentials
// (401 with WWW-Authenticate otherwise).
#ifndef SIGMA_SERVER_METRICS_ENDPOINT_H_
#define SIGMA_SERVER_METRICS_ENDPOINT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "prometheus/registry.h"
#include "sigma/server/http_server.h"

namespace sigma::server {

class BasicAuth;

// Every pointer must outlive the handler; `readiness` is called on the HTTP
// loop thread and must be quick and thread-safe.
HttpServer::Handler MakeMetricsHandler(std::shared_ptr<prometheus::Registry> registry, const BasicAuth* basic_auth,
                                       std::function<absl::Status()> readiness);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_METRICS_ENDPOINT_H_
