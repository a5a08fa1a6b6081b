#include "sigma/server/config.h"

#include "sigma/server/log.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "sigma/kernels/estimator.h"
#include "yaml-cpp/yaml.h"

namespace sigma::server {
namespace {

std::string NormKey(std::string key) { return absl::StrReplaceAll(key, {{"-", "_"}}); }

absl::Status ParseJobConfigYaml(const YAML::Node& node, const std::string& where,
                                sigma::v1::JobConfig* out) {
  if (!node.IsMap()) return absl::InvalidArgumentError(where + ": expected a mapping");
  for (const auto& kv : node) {
    const std::string key = NormKey(kv.first.as<std::string>());
    const YAML::Node& v = kv.second;
    if (key == "n_a") out->set_n_a(v.as<int64_t>());
    else if (key == "delta") out->set_delta(v.as<double>());
    else if (key == "rho") out->set_rho(v.as<double>());
    else if (key == "seed") out->set_seed(v.as<uint64_t>());
    else if (key == "baseline_generation") out->set_baseline_generation(v.as<int64_t>());
    else if (key == "baseline_job") out->set_baseline_job(v.as<std::string>());
    else if (key == "baseline_run") out->set_baseline_run(v.as<std::string>());
    else if (key == "trend_k") out->set_trend_k(v.as<int32_t>());
    else if (key == "trend_z") out->set_trend_z(v.as<double>());
    else if (key == "trend_floor") out->set_trend_floor(v.as<double>());
    else if (key == "probe") {
      const std::string p = v.as<std::string>();
      if (p == "fresh") out->set_probe(sigma::v1::PROBE_FRESH);
      else if (p == "fixed") out->set_probe(sigma::v1::PROBE_FIXED);
      else return absl::InvalidArgumentError(absl::StrCat(where, ".probe: '", p, "' is not fresh or fixed"));
    }
    else if (key == "preprocessing") {
      const std::string p = v.as<std::string>();
      if (p == "l2") out->set_preprocessing(sigma::v1::PREPROCESSING_L2);
      else if (p == "none") out->set_preprocessing(sigma::v1::PREPROCESSING_NONE);
      else return absl::InvalidArgumentError(absl::StrCat(where, ".preprocessing: '", p,
                                                          "' is not l2 or none"));
    } else if (key == "thresholds") {
      if (!v.IsMap()) return absl::InvalidArgumentError(where + ".thresholds: expected a mapping");
      auto* t = out->mutable_thresholds();
      for (const auto& tk : v) {
        const std::string k2 = NormKey(tk.first.as<std::string>());
        const double d = tk.second.as<double>();
        if (k2 == "drift_warning") t->set_drift_warning(d);
        else if (k2 == "drift_critical") t->set_drift_critical(d);
        else if (k2 == "divergence_warning") t->set_divergence_warning(d);
        else if (k2 == "track1_stable") t->set_track1_stable(d);
        else return absl::InvalidArgumentError(absl::StrCat(where, ".thresholds: unknown key '", k2, "'"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown key '", key, "'"));
    }
  }
  return ValidateJobConfig(*out);
}

// Applies one scalar option by name; shared by the YAML reader and the flags.
absl::Status ApplyOption(const std::string& key_in, const std::string& value, DaemonOptions* o) {
  const std::string key = NormKey(key_in);
  auto as_int = [&](int64_t* dst) -> absl::Status {
    if (!absl::SimpleAtoi(value, dst))
      return absl::InvalidArgumentError(absl::StrCat("--", key_in, ": '", value, "' is not an integer"));
    return absl::OkStatus();
  };
  if (key == "listen") o->listen = value;
  else if (key == "metrics_listen") o->metrics_listen = value;
  else if (key == "db") o->db = value;
  else if (key == "db_timeout_ms") return as_int(&o->db_timeout_ms);
  else if (key == "backend") o->backend = value;
  else if (key == "port_file") o->port_file = value;
  else if (key == "tls_cert") o->tls_cert = value;
  else if (key == "tls_key") o->tls_key = value;
  else if (key == "tls_client_ca") o->tls_client_ca = value;
  else if (key == "tokens") o->tokens_file = value;
  else if (key == "metrics_basic_auth_file") o->metrics_basic_auth_file = value;
  else if (key == "max_jobs") return as_int(&o->max_jobs);
  else if (key == "max_taps_per_job") return as_int(&o->max_taps_per_job);
  else if (key == "max_open_snapshots") return as_int(&o->max_open_snapshots);
  else if (key == "max_memory_bytes") return as_int(&o->max_memory_bytes);
  else if (key == "max_message_bytes") return as_int(&o->max_message_bytes);
  else if (key == "max_rows_per_batch") return as_int(&o->max_rows_per_batch);
  else if (key == "max_m") return as_int(&o->max_m);
  else if (key == "max_streams_per_client") return as_int(&o->max_streams_per_client);
  else if (key == "rate_limit_bytes_per_second") return as_int(&o->rate_limit_bytes_per_second);
  else if (key == "rate_limit_burst_bytes") return as_int(&o->rate_limit_burst_bytes);
  else if (key == "seal_batch_window_ms") return as_int(&o->seal_batch_window_ms);
  else if (key == "max_seal_batch") return as_int(&o->max_seal_batch);
  else if (key == "gpu_min_m") return as_int(&o->gpu_min_m);
  else if (key == "max_gpus") return as_int(&o->max_gpus);
  else if (key == "compute_queue_capacity") return as_int(&o->compute_queue_capacity);
  else if (key == "history_cache_per_tap") return as_int(&o->history_cache_per_tap);
  else if (key == "small_seal_max_m") return as_int(&o->small_seal_max_m);
  else if (key == "snapshot_idle_timeout_s") return as_int(&o->snapshot_idle_timeout_s);
  else if (key == "stream_idle_timeout_s") return as_int(&o->stream_idle_timeout_s);
  else if (key == "finished_series_ttl_s") return as_int(&o->finished_series_ttl_s);
  else if (key == "retention_days") return as_int(&o->retention_days);
  else if (key == "log_format") o->log_format = value;
  else if (key == "log_level") o->log_level = value;
  else return absl::InvalidArgumentError(absl::StrCat("unknown option '", key_in, "'"));
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadConfigFile(const std::string& path, DaemonOptions* options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": cannot read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return LoadConfigText(ss.str(), path, options);
}

absl::Status LoadConfigText(const std::string& text, const std::string& path, DaemonOptions* options) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": expected a mapping"));
  try {
    for (const auto& kv : root) {
      const std::string key = NormKey(kv.first.as<std::string>());
      if (key == "defaults") {
        sigma::v1::JobConfig c;
        if (auto s = ParseJobConfigYaml(kv.second, "defaults", &c); !s.ok()) return s;
        options->job_defaults = MergeJobConfig(options->job_defaults, c);
      } else if (key == "jobs") {
        if (!kv.second.IsMap()) return absl::InvalidArgumentError("jobs: expected a mapping of job name to config");
        for (const auto& job : kv.second) {
          const std::string name = job.first.as<std::string>();
          sigma::v1::JobConfig c;
          if (auto s = ParseJobConfigYaml(job.second, "jobs." + name, &c); !s.ok()) return s;
          options->job_configs[name] = c;
        }
      } else if (key == "config") {
        return absl::InvalidArgumentError("--config: a config file cannot name another config file");
      } else {
        if (!kv.second.IsScalar())
          return absl::InvalidArgumentError(absl::StrCat(key, ": expected a scalar"));
        if (auto s = ApplyOption(key, kv.second.as<std::string>(), options); !s.ok()) return s;
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": ", e.what()));
  }
  return absl::OkStatus();
}

std::string UsageText() {
  return R"(usage: sigmad [flags]    (sigmad --version prints the version and exits)
  --listen HOST:PORT            gRPC address (default 127.0.0.1:50051; port 0 = any free port)
  --metrics-listen HOST:PORT    HTTP address of /metrics, /healthz, /readyz and / (default
                                127.0.0.1:9464)
  --db FILE|URL                 history store: an SQLite file (default ./var/sigma.db; parent dir
                                created) or postgresql://user@host:port/dbname?... (shared by replicas)
  --db-timeout-ms N             PostgreSQL: statement_timeout of every statement (default 10000;
                                0 = none); a seal whose commit runs longer is refused, not sealed
  --backend auto|cpu|cuda       numeric backend (default auto: CUDA when available)
  --gpu-min-m N                 backend auto: snapshots with m < N are sealed on the CPU, the
                                rest on the GPUs; default 256 (not yet measured on a GPU),
                                0 = all on the GPUs
  --max-gpus N                  CUDA devices to use at most (one context each, jobs placed by
                                a hash of the name), default 0 = all
  --config FILE                 YAML file: the keys of these flags (e.g. max_jobs: 10) plus
                                `defaults:` and `jobs: {NAME: ...}` job configs
  --port-file FILE              write {"grpc_port","metrics_port","pid"} once listening
  --tls-cert FILE --tls-key FILE  serve gRPC over TLS (PEM); default plaintext
  --tls-client-ca FILE          with TLS: require client certificates signed by this CA
  --tokens FILE                 YAML list of bearer tokens {token_sha256, role: write|read|admin,
                                job_prefixes: [...]}; requests need 'authorization: Bearer T'
                                (default: no authorisation)
  --metrics-basic-auth-file FILE  /metrics requires HTTP basic auth; lines USER:SHA256HEX
                                (hex SHA-256 of the password)
  --max-jobs N                  cap on jobs (metric cardinality), default 256
  --max-taps-per-job N          cap on taps per job, default 64
  --max-open-snapshots N        default 256
  --max-memory-bytes N          bytes held by open snapshots (rows, sketch, seqs) and running seals
                                (32 m^2 + 8 n_a m each), default 8 GiB
  --max-message-bytes N         largest Batch payload, default 64 MiB
  --max-rows-per-batch N        rows in one Batch, default 65536
  --max-m N                     largest embedding dimension, default 6144 (its seal with the
                                default n_a = 16 m takes 6 GB of the default 8 GiB budget)
  --max-streams-per-client N    concurrent Ingest streams of one client (a token; the peer
                                IP without --tokens), default 64
  --rate-limit-bytes-per-second N  Batch payload rate of one client, default 0 (off);
                                over it: RESOURCE_EXHAUSTED with sigma-retry-after-ms
  --rate-limit-burst-bytes N    the rate limit's bucket, default 0 (one second's worth)
  (tokens may override the last three: max_streams, rate_limit_bytes_per_second,
   rate_limit_burst_bytes)
  --seal-batch-window-ms N      seals arriving within N ms share one backend call, default 5
  --max-seal-batch N            snapshots per backend call at most, default 64
  --compute-queue-capacity N    queued configuration tasks at most, default 1024
  --history-cache-per-tap N     latest reports per tap kept in memory (older ones are read
                                from the database when asked for), default 64
  --small-seal-max-m N          seals with m <= N run on the small-seal lane, larger ones on
                                the large-seal lane, so small seals never wait behind large
                                ones; default 1024
  --snapshot-idle-timeout-s N   open snapshots that received nothing for N s are discarded
                                (memory returned; a rank coming back gets FAILED_PRECONDITION
                                naming the expiry), default 3600
  --stream-idle-timeout-s N     Ingest streams with no message for N s are cancelled with
                                DEADLINE_EXCEEDED (0: never), default 600
  --finished-series-ttl-s N     a finished job's series (FinishJob) leave /metrics N s after it
                                finished, default 86400 (0: at once)
  --retention-days N            a job finished N days ago is deleted with its reports
                                (as DeleteJob), default 0 (kept for ever)
  --log-format text|json        one line per event (seal, refusal, store failure, expiry),
                                default text
  --log-level LEVEL             debug, info, warning or error, default info
)";
}

absl::StatusOr<DaemonOptions> ParseCommandLine(int argc, char** argv, bool* help) {
  DaemonOptions options;
  *help = false;
  std::vector<std::pair<std::string, std::string>> flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return options;
    }
    if (arg.rfind("--", 0) != 0)
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    arg = arg.substr(2);
    std::string value;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", arg, " needs a value"));
      value = argv[++i];
    }
    flags.emplace_back(arg, value);
  }
  for (const auto& [k, v] : flags) {
    if (NormKey(k) == "config") {
      if (auto s = LoadConfigFile(v, &options); !s.ok()) return s;
    }
  }
  for (const auto& [k, v] : flags) {
    if (NormKey(k) == "config") continue;
    if (auto s = ApplyOption(k, v, &options); !s.ok()) return s;
  }
  if (auto s = ValidateOptions(options); !s.ok()) return s;
  return options;
}

absl::Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' is not HOST:PORT"));
  *host = address.substr(0, colon);
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535)
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' has no valid port"));
  *port = p;
  return absl::OkStatus();
}

absl::Status ValidateOptions(const DaemonOptions& o) {
  std::string host;
  int port;
  if (auto s = SplitHostPort(o.listen, &host, &port); !s.ok()) return absl::InvalidArgumentError("--listen: " + std::string(s.message()));
  if (auto s = SplitHostPort(o.metrics_listen, &host, &port); !s.ok()) return absl::InvalidArgumentError("--metrics-listen: " + std::string(s.message()));
  if (o.backend != "auto" && o.backend != "cpu" && o.backend != "cuda")
    return absl::InvalidArgumentError(absl::StrCat("--backend: '", o.backend, "' is not auto, cpu or cuda"));
  if (o.db.empty()) return absl::InvalidArgumentError("--db must not be empty");
  if (o.db_timeout_ms < 0) return absl::InvalidArgumentError("--db-timeout-ms must be >= 0 (0: no timeout)");
  if (o.tls_cert.empty() != o.tls_key.empty())
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  if (!o.tls_client_ca.empty() && o.tls_cert.empty())
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v < 1) return absl::InvalidArgumentError(absl::StrFormat("--%s must be >= 1, got %d", name, v));
    return absl::OkStatus();
  };
  for (auto s : {positive("max-jobs", o.max_jobs), positive("max-taps-per-job", o.max_taps_per_job),
                 positive("max-open-snapshots", o.max_open_snapshots),
                 positive("max-memory-bytes", o.max_memory_bytes),
                 positive("max-message-bytes", o.max_message_bytes),
                 positive("max-rows-per-batch", o.max_rows_per_batch),
                 positive("max-m", o.max_m),
                 positive("max-streams-per-client", o.max_streams_per_client),
                 positive("max-seal-batch", o.max_seal_batch),
                 positive("compute-queue-capacity", o.compute_queue_capacity),
                 positive("history-cache-per-tap", o.history_cache_per_tap),
                 positive("small-seal-max-m", o.small_seal_max_m),
                 positive("snapshot-idle-timeout-s", o.snapshot_idle_timeout_s)}) {
    if (!s.ok()) return s;
  }
  if (o.finished_series_ttl_s < 0)
    return absl::InvalidArgumentError(
        absl::StrFormat("--finished-series-ttl-s must be >= 0, got %d", o.finished_series_ttl_s));
  if (o.retention_days < 0 || o.retention_days > 365000)
    return absl::InvalidArgumentError(
        absl::StrFormat("--retention-days must be in [0, 365000], got %d", o.retention_days));
  if (o.max_message_bytes > (int64_t{1} << 31) - (int64_t{1} << 20))
    return absl::InvalidArgumentError("--max-message-bytes must be < 2 GiB - 1 MiB");
  if (o.gpu_min_m < 0 || o.gpu_min_m > (1 << 20))
    return absl::InvalidArgumentError("--gpu-min-m must be in [0, 2^20] (0: every m on the GPUs)");
  if (o.max_gpus < 0 || o.max_gpus > 1024) return absl::InvalidArgumentError("--max-gpus must be in [0, 1024] (0: all)");
  if (o.max_m > (1 << 20)) return absl::InvalidArgumentError("--max-m must be <= 2^20");
  if (o.rate_limit_bytes_per_second < 0)
    return absl::InvalidArgumentError("--rate-limit-bytes-per-second must be >= 0 (0: off)");
  if (o.rate_limit_burst_bytes < 0)
    return absl::InvalidArgumentError("--rate-limit-burst-bytes must be >= 0 (0: one second's worth)");
  if (o.seal_batch_window_ms < 0 || o.seal_batch_window_ms > 60000)
    return absl::InvalidArgumentError("--seal-batch-window-ms must be in [0, 60000]");
  if (o.stream_idle_timeout_s < 0) return absl::InvalidArgumentError("--stream-idle-timeout-s must be >= 0 (0: never)");
  if (auto s = ParseLogFormat(o.log_format); !s.ok()) return s.status();
  if (auto s = ParseLogLevel(o.log_level); !s.ok()) return s.status();
  if (auto s = ValidateJobConfig(o.job_defaults); !s.ok()) return s;
  // Thresholds as a job would get them: built-in defaults, `defaults:`, its `jobs:` entry.
  if (auto s = ValidateThresholdOrder(EffectiveJobConfig(o.job_defaults, 0).thresholds()); !s.ok())
    return absl::InvalidArgumentError(absl::StrCat("defaults: ", s.message()));
  for (const auto& [name, config] : o.job_configs) {
    const sigma::v1::JobConfig effective = EffectiveJobConfig(MergeJobConfig(o.job_defaults, config), 0);
    if (auto s = ValidateThresholdOrder(effective.thresholds()); !s.ok())
      return absl::InvalidArgumentError(absl::StrCat("jobs.", name, ": ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status ValidateJobConfig(const sigma::v1::JobConfig& c) {
  if (c.has_n_a() && c.n_a() < 1)
    return absl::InvalidArgumentError(absl::StrFormat("config.n_a must be >= 1, got %d", c.n_a()));
  if (c.has_n_a() && c.n_a() > (int64_t{1} << 26))
    return absl::InvalidArgumentError(absl::StrFormat("config.n_a = %d is too large (max 2^26)", c.n_a()));
  if (c.has_delta() && !(c.delta() > 0 && std::isfinite(c.delta())))
    return absl::InvalidArgumentError(absl::StrFormat("config.delta must be > 0 and finite, got %g", c.delta()));
  if (c.has_rho() && !(c.rho() > 0 && std::isfinite(c.rho())))
    return absl::InvalidArgumentError(absl::StrFormat("config.rho must be > 0 and finite, got %g", c.rho()));
  if (c.preprocessing() != sigma::v1::PREPROCESSING_UNSPECIFIED &&
      c.preprocessing() != sigma::v1::PREPROCESSING_L2 &&
      c.preprocessing() != sigma::v1::PREPROCESSING_NONE)
    return absl::InvalidArgumentError(absl::StrFormat("config.preprocessing: unknown value %d",
                                                      static_cast<int>(c.preprocessing())));
  if (c.has_baseline_generation() && c.baseline_generation() < 0)
    return absl::InvalidArgumentError("config.baseline_generation must be >= 0");
  if (c.probe() != sigma::v1::PROBE_UNSPECIFIED && c.probe() != sigma::v1::PROBE_FRESH &&
      c.probe() != sigma::v1::PROBE_FIXED)
    return absl::InvalidArgumentError(absl::StrFormat("config.probe: unknown value %d", static_cast<int>(c.probe())));
  if (c.has_trend_k() && !(c.trend_k() >= 1 && c.trend_k() <= 64))
    return absl::InvalidArgumentError(absl::StrFormat("config.trend_k must be in 1..64, got %d", c.trend_k()));
  if (c.has_trend_z() && !(c.trend_z() > 0 && std::isfinite(c.trend_z())))
    return absl::InvalidArgumentError(absl::StrFormat("config.trend_z must be > 0 and finite, got %g", c.trend_z()));
  if (c.has_trend_floor() && !(c.trend_floor() >= 0 && std::isfinite(c.trend_floor())))
    return absl::InvalidArgumentError(
        absl::StrFormat("config.trend_floor must be >= 0 and finite, got %g", c.trend_floor()));
  const auto& t = c.thresholds();
  auto check = [](const char* name, bool has, double v) -> absl::Status {
    if (has && !(v >= 0 && std::isfinite(v)))
      return absl::InvalidArgumentError(absl::StrFormat("config.thresholds.%s must be >= 0 and finite, got %g", name, v));
    return absl::OkStatus();
  };
  for (auto s : {check("drift_warning", t.has_drift_warning(), t.drift_warning()),
                 check("drift_critical", t.has_drift_critical(), t.drift_critical()),
                 check("divergence_warning", t.has_divergence_warning(), t.divergence_warning()),
                 check("track1_stable", t.has_track1_stable(), t.track1_stable())}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ValidateThresholdOrder(const sigma::v1::Thresholds& t) {
  if (t.drift_warning() > t.drift_critical())
    return absl::InvalidArgumentError(absl::StrFormat(
        "config.thresholds: drift_warning (%g) must be <= drift_critical (%g), or the warning never fires",
        t.drift_warning(), t.drift_critical()));
  return absl::OkStatus();
}

sigma::v1::JobConfig MergeJobConfig(const sigma::v1::JobConfig& base,
                                    const sigma::v1::JobConfig& overlay) {
  sigma::v1::JobConfig out = base;
  if (overlay.has_n_a()) out.set_n_a(overlay.n_a());
  if (overlay.has_delta()) out.set_delta(overlay.delta());
  if (overlay.has_rho()) out.set_rho(overlay.rho());
  if (overlay.preprocessing() != sigma::v1::PREPROCESSING_UNSPECIFIED)
    out.set_preprocessing(overlay.preprocessing());
  if (overlay.has_seed()) out.set_seed(overlay.seed());
  if (overlay.has_baseline_generation()) out.set_baseline_generation(overlay.baseline_generation());
  if (!overlay.baseline_job().empty()) out.set_baseline_job(overlay.baseline_job());
  if (!overlay.baseline_run().empty()) out.set_baseline_run(overlay.baseline_run());
  if (overlay.probe() != sigma::v1::PROBE_UNSPECIFIED) out.set_probe(overlay.probe());
  if (overlay.has_trend_k()) out.set_trend_k(overlay.trend_k());
  if (overlay.has_trend_z()) out.set_trend_z(overlay.trend_z());
  if (overlay.has_trend_floor()) out.set_trend_floor(overlay.trend_floor());
  const auto& t = overlay.thresholds();
  auto* ot = out.mutable_thresholds();
  if (t.has_drift_warning()) ot->set_drift_warning(t.drift_warning());
  if (t.has_drift_critical()) ot->set_drift_critical(t.drift_critical());
  if (t.has_divergence_warning()) ot->set_divergence_warning(t.divergence_warning());
  if (t.has_track1_stable()) ot->set_track1_stable(t.track1_stable());
  return out;
}

sigma::v1::JobConfig EffectiveJobConfig(const sigma::v1::JobConfig& config, int64_t m) {
  sigma::v1::JobConfig out = config;
  if (!out.has_n_a() && m > 0) out.set_n_a(sigma::DefaultNA(m));
  if (!out.has_delta()) out.set_delta(1e-6);
  if (!out.has_rho()) out.set_rho(1.0);
  if (out.preprocessing() == sigma::v1::PREPROCESSING_UNSPECIFIED)
    out.set_preprocessing(sigma::v1::PREPROCESSING_L2);
  if (!out.has_seed()) out.set_seed(0);
  if (out.probe() == sigma::v1::PROBE_UNSPECIFIED) out.set_probe(sigma::v1::PROBE_FRESH);
  const sigma::TrendSettings trend;
  if (!out.has_trend_k()) out.set_trend_k(trend.trend_k);
  if (!out.has_trend_z()) out.set_trend_z(trend.trend_z);
  if (!out.has_trend_floor()) out.set_trend_floor(trend.trend_floor);
  const sigma::AlertThresholds d;
  auto* t = out.mutable_thresholds();
  if (!t->has_drift_warning()) t->set_drift_warning(d.drift_warning);
  if (!t->has_drift_critical()) t->set_drift_critical(d.drift_critical);
  if (!t->has_divergence_warning()) t->set_divergence_warning(d.divergence_warning);
  if (!t->has_track1_stable()) t->set_track1_stable(d.track1_stable);
  return out;
}

}  // namespace sigma::server
