#include "sigma/server/daemon.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/gauge.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/server/api.h"
#include "sigma/server/auth.h"
#include "sigma/server/grpc_accept_watch.h"
#include "sigma/server/http_server.h"
#include "sigma/server/metrics.h"
#include "sigma/server/metrics_endpoint.h"
#include "sigma/server/scheduler.h"
#include "sigma/server/storage.h"
#include "sigma/version.h"

namespace sigma::server {

Daemon::Daemon() = default;
Daemon::~Daemon() { Shutdown(); }

absl::StatusOr<BoundPorts> Daemon::Start(const DaemonOptions& options) {
  if (running_) return absl::FailedPreconditionError("daemon already started");
  if (auto s = ValidateOptions(options); !s.ok()) return s;
  options_ = options;
  // Every step below either succeeds or leaves nothing running: StopParts()
  // undoes whatever the earlier steps started.
  absl::Cleanup rollback = [this] { StopParts(); };
  if (auto s = LoadAuthAndWarn(); !s.ok()) return s;
  if (auto s = StartEngine(); !s.ok()) return s;
  if (auto s = StartMetricsPort(); !s.ok()) return s;
  if (auto s = LoadServerCredentials(); !s.ok()) return s;
  InstallGrpcAcceptWatch();
  if (auto s = StartGrpc(options.listen); !s.ok()) return s;
  std::move(rollback).Cancel();
  running_ = true;
  serving_ = true;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    watch_stop_ = false;
  }
  listener_watch_ = std::thread([this] { WatchGrpcListener(); });
  return ports_;
}

absl::Status Daemon::LoadAuthAndWarn() {
  int port = 0;
  if (auto s = SplitHostPort(options_.listen, &grpc_host_, &port); !s.ok()) return s;
  if (auto s = SplitHostPort(options_.metrics_listen, &metrics_host_, &port); !s.ok()) return s;
  warnings_.clear();
  if (!options_.tokens_file.empty()) {
    auto auth = Authorizer::LoadFile(options_.tokens_file, &warnings_);
    if (!auth.ok()) return auth.status();
    auth_ = std::move(*auth);
  }
  if (!options_.metrics_basic_auth_file.empty()) {
    auto basic = BasicAuth::LoadFile(options_.metrics_basic_auth_file);
    if (!basic.ok()) return basic.status();
    metrics_auth_ = std::move(*basic);
  }
  if (!IsLoopbackHost(grpc_host_) && options_.tls_cert.empty())
    warnings_.push_back(absl::StrCat("--listen ", options_.listen,
                                     " is not a loopback address and gRPC is not encrypted: pass "
                                     "--tls-cert/--tls-key", auth_ ? "" : " (and --tokens)"));
  if (!IsLoopbackHost(metrics_host_))
    warnings_.push_back(absl::StrCat("--metrics-listen ", options_.metrics_listen,
                                     " is not a loopback address and /metrics is plain HTTP",
                                     metrics_auth_ ? " (basic-auth passwords travel in clear text)"
                                                   : " without authentication (--metrics-basic-auth-file)",
                                     ": put it behind a TLS proxy or bind a private interface"));
  return absl::OkStatus();
}

absl::Status Daemon::StartEngine() {
  sigma::BackendOptions bo;
  bo.kind = *sigma::ParseBackendKind(options_.backend);
  bo.gpu_min_m = options_.gpu_min_m;
  bo.max_devices = static_cast<int>(options_.max_gpus);
  scratch_budget_ = std::make_unique<BackendScratchBudget>();
  bo.memory_budget = scratch_budget_.get();
  std::string fallback;
  auto backend = sigma::MakeBackend(bo, &fallback);
  if (!backend.ok()) return backend.status();
  backend_name_ = (*backend)->name();
  fallback_reason_ = fallback;

  auto store = Store::Open(options_.db, StoreOptions{options_.db_timeout_ms});
  if (!store.ok()) return store.status();

  metrics_ = std::make_unique<Metrics>();
  metrics_->SetBackendInfo(backend_name_, fallback_reason_);
  prometheus::BuildGauge()
      .Name("sigma_build_info")
      .Help("Always 1: the version and git revision of this sigmad")
      .Register(*metrics_->registry())
      .Add({{"version", sigma::kSigmaVersion}, {"revision", sigma::kSigmaRevision}})
      .Set(1);
  engine_ = std::make_unique<Engine>(options_, std::move(*store), std::move(*backend), metrics_.get());
  scratch_budget_->Bind(engine_->memory_budget());
  if (auto s = engine_->Restore(); !s.ok()) return s;
  engine_->StartWorker();
  return absl::OkStatus();
}

absl::Status Daemon::StartMetricsPort() {
  metrics_http_ = std::make_unique<HttpServer>(
      HttpServerOptions{}, MakeMetricsHandler(metrics_->registry(), metrics_auth_.get(), [this] { return Readiness(); }));
  if (auto s = metrics_http_->Start(options_.metrics_listen); !s.ok())
    return absl::UnavailableError(absl::StrCat("--metrics-listen ", s.message()));
  ports_.metrics_port = metrics_http_->port();
  return absl::OkStatus();
}

absl::Status Daemon::LoadServerCredentials() {
  credentials_ = grpc::InsecureServerCredentials();
  if (options_.tls_cert.empty()) return absl::OkStatus();
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
  if (auto s = read("--tls-key", options_.tls_key, &pair.private_key); !s.ok()) return s;
  if (auto s = read("--tls-cert", options_.tls_cert, &pair.cert_chain); !s.ok()) return s;
  if (!options_.tls_client_ca.empty()) {
    if (auto s = read("--tls-client-ca", options_.tls_client_ca, &ssl.pem_root_certs); !s.ok()) return s;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  ssl.pem_key_cert_pairs.push_back(pair);
  credentials_ = grpc::SslServerCredentials(ssl);
  return absl::OkStatus();
}

absl::Status Daemon::StartGrpc(const std::string& listen) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  ClientLimits client_limits;
  client_limits.max_streams = options_.max_streams_per_client;
  client_limits.bytes_per_second = options_.rate_limit_bytes_per_second;
  client_limits.burst_bytes = options_.rate_limit_burst_bytes;
  service_ = std::make_unique<MonitorService>(engine_.get(), auth_.get(), metrics_.get(), client_limits,
                                              options_.stream_idle_timeout_s, std::chrono::steady_clock::now,
                                              true, options_.limiter_clock);
  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(listen, credentials_, &selected);
  // Our own check (Engine::Batch) names the limit; this is the transport bound.
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes + (1 << 20)));
  builder.SetMaxSendMessageSize(-1);
  // A second sigmad on the same port must fail, not share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Dead peers are noticed: a ping after 60 s without traffic, dropped when
  // unanswered for 20 s; clients may ping every 10 s (docs/server.md). A TCP
  // connection that never completes the HTTP/2 handshake is closed after 20 s.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 20000);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (!server_ || selected == 0) {
    server_.reset();
    return absl::UnavailableError(absl::StrCat("--listen ", listen,
                                               ": cannot listen (address in use, or bad TLS key/certificate?)"));
  }
  ports_.grpc_port = selected;
  accept_failures_seen_ = GrpcAcceptFailures();
  return absl::OkStatus();
}

void Daemon::StopGrpc(double grace_seconds) {
  if (!server_) return;
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) health->Shutdown();
  // Reactors waiting for a seal are finished by the worker, which still runs.
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  server_->Wait();
  server_.reset();
  service_.reset();
}

void Daemon::WatchGrpcListener() {
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!watch_cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return watch_stop_; })) {
    if (GrpcAcceptFailures() == accept_failures_seen_) continue;
    // The listener is gone (grpc_accept_watch.h). Restart once a few dozen
    // descriptors are free, so the new listener does not fail at once.
    if (FreeFileDescriptors() < 64) continue;
    std::cerr << "sigmad: gRPC stopped accepting connections (out of file descriptors); restarting it on port "
              << ports_.grpc_port << "\n";
    StopGrpc(1.0);
    const std::string listen = absl::StrCat(grpc_host_.find(':') != std::string::npos ? "[" + grpc_host_ + "]"
                                                                                       : grpc_host_,
                                            ":", ports_.grpc_port);
    if (auto s = StartGrpc(listen); !s.ok()) {
      std::cerr << "sigmad: restarting gRPC failed: " << s.message() << "; retrying\n";
      continue;  // accept_failures_seen_ unchanged: try again on the next tick
    }
    ++grpc_restarts_;
    std::cerr << "sigmad: gRPC accepts connections again on port " << ports_.grpc_port << "\n";
  }
}

void Daemon::StopParts(double grace_seconds) {
  StopGrpc(grace_seconds);
  if (engine_) engine_->StopWorker();
  metrics_http_.reset();
  if (scratch_budget_) scratch_budget_->Unbind();  // before the engine's budget goes
  engine_.reset();
  metrics_.reset();
  metrics_auth_.reset();
  auth_.reset();
}

void Daemon::Shutdown(double grace_seconds) {
  if (!running_) return;
  running_ = false;
  serving_ = false;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    watch_stop_ = true;
  }
  watch_cv_.notify_all();
  if (listener_watch_.joinable()) listener_watch_.join();
  StopParts(grace_seconds);
}

absl::Status Daemon::Readiness() const {
  if (!serving_.load()) return absl::UnavailableError("sigmad is starting or shutting down");
  // The engine's view: the latest store commit and the backend's latest seals.
  if (auto s = engine_->Readiness(); !s.ok()) return s;
  if (IsPostgresUrl(options_.db)) return absl::OkStatus();  // no file: Store::Health() above says it all
  // The store must stay writable: its directory (SQLite's journal) and file.
  std::error_code ec;
  const std::filesystem::path db = std::filesystem::absolute(options_.db, ec);
  const std::filesystem::path dir = db.has_parent_path() ? db.parent_path() : std::filesystem::current_path(ec);
  if (access(dir.c_str(), W_OK) != 0 || (std::filesystem::exists(db, ec) && access(db.c_str(), W_OK) != 0))
    return absl::UnavailableError(absl::StrCat("store ", options_.db, " is not writable"));
  struct statvfs fs {};
  if (statvfs(dir.c_str(), &fs) == 0 && fs.f_bavail == 0)
    return absl::UnavailableError(absl::StrCat("no space left for the store ", options_.db));
  return absl::OkStatus();
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
