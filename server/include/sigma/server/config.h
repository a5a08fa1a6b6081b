// sigmad configuration: command-line flags and the YAML file (--config).
// Flags override the file; the file overrides the built-in defaults.
#ifndef SIGMA_SERVER_CONFIG_H_
#define SIGMA_SERVER_CONFIG_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "sigma/kernels/routed_backend.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

struct DaemonOptions {
  std::string listen = "127.0.0.1:50051";          // gRPC; port 0 picks a free port
  std::string metrics_listen = "127.0.0.1:9464";   // Prometheus /metrics; port 0 picks one
  std::string db = "./var/sigma.db";               // SQLite file; parent dir is created
  int64_t db_timeout_ms = 10000;                   // PostgreSQL statement_timeout; 0 = none (storage.h)
  std::string backend = "auto";                    // auto | cpu | cuda
  int64_t gpu_min_m = sigma::kDefaultGpuMinM;      // auto: m below this sealed on the CPU (not yet measured on a GPU)
  int64_t max_gpus = 0;                            // CUDA devices used at most (one context each); 0 = all
  std::string port_file;                           // JSON {"grpc_port","metrics_port","pid"}
  std::string tls_cert;                            // PEM certificate chain: gRPC over TLS
  std::string tls_key;                             // PEM private key (with tls_cert)
  std::string tls_client_ca;                       // PEM CA: require and verify client certs
  std::string tokens_file;                         // YAML bearer tokens (auth.h); empty: no auth
  std::string metrics_basic_auth_file;             // "user:sha256hex" lines; empty: open /metrics
  int64_t max_jobs = 256;                          // cardinality cap on jobs
  int64_t max_taps_per_job = 64;                   // cardinality cap on taps per job
  int64_t max_open_snapshots = 256;
  int64_t max_memory_bytes = int64_t{8} << 30;     // rows held by open snapshots
  int64_t max_message_bytes = int64_t{64} << 20;   // one Batch's payload
  int64_t max_rows_per_batch = 65536;              // rows in one Batch
  // Embedding dimension of a snapshot: the largest whose seal with the default
  // n_a (16 m) fits the default budget (SealWorkingSetBytes: 160 m^2 = 6 GB).
  int64_t max_m = 6144;
  // Per client (a token, or the peer IP without --tokens; limits.h); the
  // tokens file may override them per token. 0 disables the rate limit.
  int64_t max_streams_per_client = 64;             // concurrent Ingest streams
  int64_t rate_limit_bytes_per_second = 0;         // Batch payload bytes per second
  int64_t rate_limit_burst_bytes = 0;              // 0: one second at the rate
  int64_t seal_batch_window_ms = 5;                // gather seals for one SealBatch call
  int64_t max_seal_batch = 64;                     // snapshots per SealBatch call at most
  int64_t compute_queue_capacity = 1024;           // queued non-seal tasks (ConfigureJob)
  int64_t history_cache_per_tap = 64;              // latest reports per tap held in memory
  int64_t small_seal_max_m = 1024;                 // seals with m up to this use the small lane (seal_queue.h)
  int64_t snapshot_idle_timeout_s = 3600;          // open snapshots without data this long are discarded
  int64_t stream_idle_timeout_s = 600;             // Ingest streams without a message this long are cancelled; 0: never
  // Job lifecycle (issue 15 item 4): a finished job's series leave /metrics
  // this long after FinishJob (0: at the next sweep); reports of jobs finished
  // this many days ago are deleted with the job (0: kept for ever).
  int64_t finished_series_ttl_s = 86400;
  int64_t retention_days = 0;
  std::string log_format = "text";                 // text | json (log.h)
  std::string log_level = "info";                  // debug | info | warning | error
  // Test hook, no flag: the clock of the per-client rate limiter (limits.h).
  std::function<absl::Time()> limiter_clock = absl::Now;
  // Defaults for every job's unset JobConfig fields (YAML `defaults:`).
  sigma::v1::JobConfig job_defaults;
  // Per-job configuration applied when the job is created (YAML `jobs:`).
  std::map<std::string, sigma::v1::JobConfig> job_configs;
};

// Reads a YAML file into `options` (only the keys present change).
absl::Status LoadConfigFile(const std::string& path, DaemonOptions* options);
// The same from YAML text; `path` names it in errors (the config fuzzer's entry).
absl::Status LoadConfigText(const std::string& text, const std::string& path, DaemonOptions* options);

// Parses sigmad's command line (argv[0] skipped). --config is read first, then
// every other flag overrides it. Returns NOT_FOUND-free errors as
// INVALID_ARGUMENT; `*help` is set when --help was given.
absl::StatusOr<DaemonOptions> ParseCommandLine(int argc, char** argv, bool* help);

std::string UsageText();

// Validates the ranges of the options.
absl::Status ValidateOptions(const DaemonOptions& options);

// Validates a JobConfig's values (INVALID_ARGUMENT naming the field).
absl::Status ValidateJobConfig(const sigma::v1::JobConfig& config);

// drift_warning <= drift_critical (INVALID_ARGUMENT otherwise: the warning
// could never fire). Checked on effective thresholds (defaults and partial
// updates merged): ConfigureJob, a new job's OpenSnapshot, the config file.
absl::Status ValidateThresholdOrder(const sigma::v1::Thresholds& thresholds);

// `overlay`'s set fields replace `base`'s.
sigma::v1::JobConfig MergeJobConfig(const sigma::v1::JobConfig& base,
                                    const sigma::v1::JobConfig& overlay);

// Fills every unset field with the built-in default (n_a only when m > 0).
sigma::v1::JobConfig EffectiveJobConfig(const sigma::v1::JobConfig& config, int64_t m);

// Splits "host:port" (host may be [v6]); port must be 0..65535.
absl::Status SplitHostPort(const std::string& address, std::string* host, int* port);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_CONFIG_H_
