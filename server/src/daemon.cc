#include "sigma/server/daemon.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/exposer.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/server/api.h"
#include "sigma/server/auth.h"
#include "sigma/server/metrics.h"
#include "sigma/server/scheduler.h"
#include "sigma/server/storage.h"

namespace sigma::server {

Daemon::Daemon() = default;
Daemon::~Daemon() { Shutdown(); }

absl::StatusOr<BoundPorts> Daemon::Start(const DaemonOptions& options) {
  if (running_) return absl::FailedPreconditionError("daemon already started");
  if (auto s = ValidateOptions(options); !s.ok()) return s;
  options_ = options;
  int port = 0;
  if (auto s = SplitHostPort(options.listen, &grpc_host_, &port); !s.ok()) return s;
  if (auto s = SplitHostPort(options.metrics_listen, &metrics_host_, &port); !s.ok()) return s;
  warnings_.clear();
  auth_.reset();
  metrics_auth_.reset();
  if (!options.tokens_file.empty()) {
    auto auth = Authorizer::LoadFile(options.tokens_file, &warnings_);
    if (!auth.ok()) return auth.status();
    auth_ = std::move(*auth);
  }
  if (!options.metrics_basic_auth_file.empty()) {
    auto basic = BasicAuth::LoadFile(options.metrics_basic_auth_file);
    if (!basic.ok()) return basic.status();
    metrics_auth_ = std::move(*basic);
  }
  if (!IsLoopbackHost(grpc_host_) && options.tls_cert.empty())
    warnings_.push_back(absl::StrCat("--listen ", options.listen,
                                     " is not a loopback address and gRPC is not encrypted: pass "
                                     "--tls-cert/--tls-key", auth_ ? "" : " (and --tokens)"));
  if (!IsLoopbackHost(metrics_host_))
    warnings_.push_back(absl::StrCat("--metrics-listen ", options.metrics_listen,
                                     " is not a loopback address and /metrics is plain HTTP",
                                     metrics_auth_ ? " (basic-auth passwords travel in clear text)"
                                                   : " without authentication (--metrics-basic-auth-file)",
                                     ": put it behind a TLS proxy or bind a private interface"));

  sigma::BackendOptions bo;
  bo.kind = *sigma::ParseBackendKind(options.backend);
  bo.gpu_min_m = options.gpu_min_m;
  bo.max_devices = static_cast<int>(options.max_gpus);
  std::string fallback;
  auto backend = sigma::MakeBackend(bo, &fallback);
  if (!backend.ok()) return backend.status();
  backend_name_ = (*backend)->name();
  fallback_reason_ = fallback;

  auto store = Store::Open(options.db);
  if (!store.ok()) return store.status();

  metrics_ = std::make_unique<Metrics>();
  metrics_->SetBackendInfo(backend_name_, fallback_reason_);
  engine_ = std::make_unique<Engine>(options_, std::move(*store), std::move(*backend), metrics_.get());
  if (auto s = engine_->Restore(); !s.ok()) {
    engine_.reset();
    return s;
  }
  engine_->StartWorker();

  try {
    exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen, 2);
  } catch (const std::exception& e) {
    engine_->StopWorker();
    engine_.reset();
    return absl::UnavailableError(
        absl::StrCat("--metrics-listen ", options.metrics_listen, ": cannot listen: ", e.what()));
  }
  if (metrics_auth_) {
    const BasicAuth* basic = metrics_auth_.get();
    exposer_->RegisterAuth(
        [basic](const std::string& user, const std::string& password) { return basic->Check(user, password); },
        "sigmad");
  }
  exposer_->RegisterCollectable(metrics_->registry());
  const std::vector<int> mports = exposer_->GetListeningPorts();
  ports_.metrics_port = mports.empty() ? 0 : mports.front();

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  ClientLimits client_limits;
  client_limits.max_streams = options.max_streams_per_client;
  client_limits.bytes_per_second = options.rate_limit_bytes_per_second;
  client_limits.burst_bytes = options.rate_limit_burst_bytes;
  service_ = std::make_unique<MonitorService>(engine_.get(), auth_.get(), metrics_.get(), client_limits,
                                              options.stream_idle_timeout_s, std::chrono::steady_clock::now,
                                              true, options.limiter_clock);
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty()) {
    auto read = [](const std::string& flag, const std::string& path, std::string* out) -> absl::Status {
      std::ifstream in(path, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      if (!in.good() && !in.eof()) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
      *out = ss.str();
      if (out->empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path, " (missing or empty)"));
      return absl::OkStatus();
    };
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    absl::Status s = read("--tls-key", options.tls_key, &pair.private_key);
    if (s.ok()) s = read("--tls-cert", options.tls_cert, &pair.cert_chain);
    if (s.ok() && !options.tls_client_ca.empty()) {
      s = read("--tls-client-ca", options.tls_client_ca, &ssl.pem_root_certs);
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    if (!s.ok()) {
      exposer_.reset();
      engine_->StopWorker();
      engine_.reset();
      return s;
    }
    ssl.pem_key_cert_pairs.push_back(pair);
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(options.listen, credentials, &selected);
  // Our own check (Engine::Batch) names the limit; this is the transport bound.
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes + (1 << 20)));
  builder.SetMaxSendMessageSize(-1);
  // A second sigmad on the same port must fail, not share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (!server_ || selected == 0) {
    server_.reset();
    exposer_.reset();
    engine_->StopWorker();
    engine_.reset();
    return absl::UnavailableError(absl::StrCat("--listen ", options.listen,
                                               ": cannot listen (address in use, or bad TLS key/certificate?)"));
  }
  ports_.grpc_port = selected;
  running_ = true;
  return ports_;
}

void Daemon::Shutdown(double grace_seconds) {
  if (!running_) return;
  running_ = false;
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) health->Shutdown();
  // Reactors waiting for a seal are finished by the worker, which still runs.
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  server_->Wait();
  engine_->StopWorker();
  exposer_.reset();
  server_.reset();
  service_.reset();
  engine_.reset();
  metrics_.reset();
  metrics_auth_.reset();
  auth_.reset();
}

std::string Daemon::Banner() const {
  return absl::StrCat("sigmad: gRPC on ", grpc_host_, ":", ports_.grpc_port, ", metrics on http://",
                      metrics_host_, ":", ports_.metrics_port, "/metrics, backend ", backend_name_);
}

absl::Status WritePortFile(const std::string& path, const BoundPorts& ports) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return absl::UnavailableError(absl::StrCat("--port-file: cannot write ", tmp));
    out << "{\"grpc_port\": " << ports.grpc_port << ", \"metrics_port\": " << ports.metrics_port
        << ", \"pid\": " << getpid() << "}\n";
    out.flush();
    if (!out) return absl::UnavailableError(absl::StrCat("--port-file: cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::UnavailableError(absl::StrCat("--port-file: cannot rename to ", path));
  }
  return absl::OkStatus();
}

}  // namespace sigma::server
