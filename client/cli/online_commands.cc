// sigmactl online commands: send, report, jobs, configure, health, close.
#include "online_commands.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "npy.h"
#include "online_flags.h"
#include "online_output.h"
#include "json_output.h"
#include "report_csv.h"
#include "sigma/client/client.h"
#include "sigma/client/json.h"
#include "sigma/kernels/dtype.h"
#include "sigma/v1/wire.h"

namespace sigma::cli {
namespace {

namespace v1 = ::sigma::v1;
using ::sigma::client::Client;
using ::sigma::client::ClientOptions;


constexpr char kConfigFlagsHelp[] =
    "  --n-a K               sub-sample size n_A (default max(4096, 16 m))\n"
    "  --delta D             regulariser, > 0 (default 1e-6)\n"
    "  --rho R               energy budget per embedding, > 0 (default 1)\n"
    "  --preprocessing P     l2 (default: rows scaled to unit norm) or none\n"
    "  --seed S              bottom-k sketch seed, unsigned 64-bit (default 0)\n";

constexpr char kSendUsage[] =
    "usage: sigmactl send FILE.npy [FILE2.npy ...] --job J --generation K [--tap T] [--run R --resume M]\n"
    "                     [--rank R --world-size W] [--corpus-size N]\n"
    "                     [--n-a K --delta D --rho R --preprocessing l2|none --seed S]\n"
    "                     [--batch-rows N] [--presketch] [--close] [--json] [common flags]\n"
    "Streams the rows of the .npy files (2-D [rows, m], float16/float32/float64, all with\n"
    "the same m; concatenated in order) as this rank's share of snapshot (job, tap,\n"
    "generation). Files of different dtypes are sent as float64 (exact). Prints the\n"
    "report when this rank completed the snapshot, else the ingest counts. A refused share\n"
    "leaves nothing in the snapshot (the error names the file row): fix it and send again.\n"
    "  --job J               job name, [A-Za-z0-9_.:-]{1,128} (required)\n"
    "  --tap T               tap (layer) name (default \"default\")\n"
    "  --generation K        generation number, >= 0 (required)\n"
    "  --run R               the job's run (default: its latest; a new job: \"1\"; docs/server.md \"Runs\")\n"
    "  --resume M            allow (default: continue or create the run), must (the run must\n"
    "                        exist) or never (a new run; without --run the next number)\n"
    "  --rank R              this sender's rank, 0 <= R < W (default 0)\n"
    "  --world-size W        number of ranks that send shares of this snapshot (default 1)\n"
    "  --corpus-size N       corpus size n of the snapshot (default: rows streamed)\n"
    "job configuration, applied by sigmad only when the job is new (see configure):\n"
    "%s"
    "  --batch-rows N        rows per Batch message (default: about 1 MiB, at most 65536;\n"
    "                        capped below sigmad's default --max-message-bytes, 64 MiB)\n"
    "  --presketch           keep only the local bottom-n_A rows of the job's sketch (spec §2)\n"
    "                        and send those with their ids and the energy statistics of all\n"
    "                        rows: same report, at most n_A rows on the wire\n"
    "  --close               after sending, seal the snapshot now (CloseGeneration) even if\n"
    "                        other ranks have not finished, and print its report\n"
    "  --json                print the GenerationReport as one JSON object, keys = proto\n"
    "                        field names (or the IngestResponse when not sealed)\n"
    "%s";

constexpr char kReportUsage[] =
    "usage: sigmactl report --job J [--tap T] [--generation K] [--json | --csv] [common flags]\n"
    "Prints the history of a job: one row per sealed snapshot (tap, generation); with\n"
    "--generation, that one report in full (GetReport; exit 1 with NOT_FOUND while it has\n"
    "not sealed).\n"
    "  --job J               job name (required)\n"
    "  --tap T               only this tap (default: every tap; with --generation \"default\")\n"
    "  --generation K        only this generation's report\n"
    "  --run R               this run of the job (default: its latest run)\n"
    "  --json                print the GetHistoryResponse as one JSON object\n"
    "                        {\"reports\": [GenerationReport, ...]}\n"
    "  --csv                 print one CSV row per report (the columns of\n"
    "                        python -m sigma_client report --csv)\n"
    "%s";

constexpr char kJobsUsage[] =
    "usage: sigmactl jobs [--json] [common flags]\n"
    "Lists the jobs of every target with their effective configuration.\n"
    "  --json                print the ListJobsResponse as one JSON object {\"jobs\": [...]}\n"
    "%s";

constexpr char kConfigureUsage[] =
    "usage: sigmactl configure --job J [--create] [config flags] [--json] [common flags]\n"
    "Updates a job's configuration and prints the effective one. Unset flags leave the\n"
    "setting as it is. Sketch parameters are fixed once a generation sealed.\n"
    "  --job J               job name (required)\n"
    "  --create              create the job when sigmad does not know it (without it, an\n"
    "                        unknown job is refused: NOT_FOUND, so a typo makes no ghost job)\n"
    "%s"
    "  --baseline-generation B   pin the baseline generation (default: first sealed)\n"
    "  --baseline-job J2     compare against job J2's baseline generation\n"
    "  --baseline-run R      ... of run R (default: this run; with --baseline-job, run \"1\")\n"
    "thresholds, per dimension (spec §3):\n"
    "  --drift-warning X     |track2 drift| / m for warning (default 0.1)\n"
    "  --drift-critical X    |track2 drift| / m for critical (default 0.5)\n"
    "  --divergence-warning X  |divergence| / m for the early warning (default 0.1)\n"
    "  --track1-stable X     |track1 drift| / m below which Track I counts as stable\n"
    "                        for the early warning (default 0.01)\n"
    "significance (spec §3 \"Two kinds of uncertainty\", \"Early warning by significance\"):\n"
    "  --probe fresh|fixed   fresh (default): each generation is a new sample (population\n"
    "                        interval); fixed: the same inputs every generation (corpus interval)\n"
    "  --trend-k K           early_warning_trend over the last K generations (default 2)\n"
    "  --trend-z Z           |z_drift| >= Z in each of them, one sign (default 3)\n"
    "  --trend-floor X       and |track2 drift| / m >= X (default 0.01)\n"
    "  --json                print the JobInfo as one JSON object\n"
    "%s";

constexpr char kHealthUsage[] =
    "usage: sigmactl health [--service S] [--json] [common flags]\n"
    "Checks every target with grpc.health.v1.Health/Check; exit 0 when all are SERVING.\n"
    "  --service S           service name to check (default \"\": the whole server)\n"
    "  --json                print {\"targets\": [{\"target\": T, \"status\": S}, ...]}\n"
    "%s";

constexpr char kCloseUsage[] =
    "usage: sigmactl close --job J [--tap T] --generation K [--json] [common flags]\n"
    "Seals snapshot (job, tap, generation) now with whatever the ranks sent, and prints its\n"
    "report (idempotent: an already sealed snapshot prints its stored report).\n"
    "  --job J               job name (required)\n"
    "  --tap T               tap (default \"default\")\n"
    "  --generation K        generation (required)\n"
    "  --run R               the run (default: the job's latest run)\n"
    "  --json                print the GenerationReport as one JSON object\n"
    "%s";

}  // namespace

// ---- output (online_output.h) ----------------------------------------------

const char* CommonFlagsHelp() { return kCommonFlagsHelp; }

namespace {

// ---- .npy loading ---------------------------------------------------------

// Reads the files; converts every array to float64 when their dtypes differ.
absl::StatusOr<std::vector<NpyArray>> LoadArrays(const std::vector<std::string>& paths) {
  std::vector<NpyArray> arrays;
  for (const std::string& path : paths) {
    absl::StatusOr<NpyArray> a = ReadNpy(path);
    if (!a.ok()) return a.status();
    if (!arrays.empty() && a->cols != arrays.front().cols) {
      return absl::InvalidArgumentError(
          absl::StrFormat("'%s' has m = %d, '%s' has m = %d: every file must have the same m",
                          path, a->cols, paths.front(), arrays.front().cols));
    }
    if (a->cols > std::numeric_limits<int32_t>::max())
      return absl::InvalidArgumentError(absl::StrCat("'", path, "': m is too large"));
    arrays.push_back(*std::move(a));
  }
  bool mixed = false;
  for (const NpyArray& a : arrays) mixed |= a.dtype != arrays.front().dtype;
  if (mixed) {
    for (NpyArray& a : arrays) {
      if (a.dtype == DType::kFloat64) continue;
      std::vector<unsigned char> data(static_cast<size_t>(a.rows * a.cols) * sizeof(double));
      ConvertToDouble(a.block(), reinterpret_cast<double*>(data.data()));
      a.data = std::move(data);
      a.dtype = DType::kFloat64;
    }
  }
  return arrays;
}

std::string WithCommon(const char* usage) { return absl::StrFormat(usage, kCommonFlagsHelp); }

// What `sigmactl send` was asked to do, from its flags.
struct SendRequest {
  client::SnapshotId snapshot;
  client::ShareOptions share;
  v1::JobConfig config;
  std::optional<int64_t> batch_rows;
};

// The flags of `send` (every error, the first one returned).
absl::StatusOr<SendRequest> ParseSend(const Parsed* p) {
  SendRequest request;
  client::SnapshotId& snapshot = request.snapshot;
  client::ShareOptions& share = request.share;
  v1::JobConfig& config = request.config;
  absl::Status status;
  auto check = [&](const absl::Status& s) {
    if (status.ok() && !s.ok()) status = s;
  };
  if (std::optional<std::string> job = p->Get("job")) snapshot.job = *job;
  else check(absl::InvalidArgumentError("--job is required"));
  if (std::optional<std::string> tap = p->Get("tap")) snapshot.tap = *tap;
  snapshot.run = p->Get("run").value_or("");
  absl::StatusOr<v1::Resume> resume = ParseResume(p->Get("resume").value_or("allow"));
  check(resume.status());
  if (resume.ok()) snapshot.resume = *resume;
  absl::StatusOr<std::optional<int64_t>> generation = GetInt(*p, "generation", 0);
  check(generation.status());
  if (generation.ok()) {
    if (*generation) snapshot.generation = **generation;
    else check(absl::InvalidArgumentError("--generation is required"));
  }
  absl::StatusOr<std::optional<int64_t>> world_size = GetInt(*p, "world-size", 1);
  check(world_size.status());
  if (world_size.ok() && *world_size) share.world_size = static_cast<int32_t>(**world_size);
  absl::StatusOr<std::optional<int64_t>> rank = GetInt(*p, "rank", 0);
  check(rank.status());
  if (rank.ok() && *rank) share.rank = static_cast<int32_t>(**rank);
  if (status.ok() && share.rank >= share.world_size)
    check(absl::InvalidArgumentError(absl::StrFormat("--rank %d must be < --world-size %d",
                                                     share.rank, share.world_size)));
  absl::StatusOr<std::optional<int64_t>> corpus = GetInt(*p, "corpus-size", 1);
  check(corpus.status());
  if (corpus.ok() && *corpus) share.corpus_size = **corpus;
  absl::StatusOr<bool> any_config = ParseJobConfig(*p, &config);
  check(any_config.status());
  if (any_config.ok() && *any_config) share.config = config;
  absl::StatusOr<std::optional<int64_t>> batch_rows = GetInt(*p, "batch-rows", 1);
  check(batch_rows.status());
  if (!status.ok()) return status;
  request.batch_rows = *batch_rows;
  return request;
}

// The client `send` uses: `made` rebuilt with Batches of --batch-rows rows
// (capped below sigmad's default message size, with a note on `err`).
absl::Status ApplyBatchRows(std::optional<int64_t> batch_rows, int32_t m, v1::DType dtype,
                            absl::StatusOr<std::unique_ptr<Client>>* made, std::ostream& err) {
  if (batch_rows) {
    // One Batch carries data + 8-byte ids; sigmad refuses more than its --max-message-bytes
    // (default 64 MiB) with gRPC's "Received message larger than max": cap, and say so.
    const int64_t row_bytes = int64_t{m} * client::DTypeBytes(dtype) + 8;
    const int64_t cap = std::max<int64_t>(1, kDaemonMaxMessageBytes / row_bytes);
    if (*batch_rows > cap) {
      err << absl::StrFormat(
          "sigmactl: --batch-rows %d with m = %d (%d bytes a row) would exceed sigmad's default "
          "--max-message-bytes (64 MiB); sending %d rows per Batch\n",
          *batch_rows, m, row_bytes, cap);
      *batch_rows = cap;
    }
    // Rebuild the client with the requested chunk size.
    ClientOptions options = (**made)->options();
    options.chunk_bytes = static_cast<size_t>(*batch_rows) * m * client::DTypeBytes(dtype);
    options.max_chunk_rows = *batch_rows;  // as asked (a daemon with a larger --max-rows-per-batch)
    *made = Client::Create((**made)->targets(), options);
  }
  return made->status();
}

}  // namespace

int RunSend(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = absl::StrFormat(kSendUsage, kConfigFlagsHelp, kCommonFlagsHelp);
  absl::StatusOr<Parsed> p =
      ParseArgs(args,
                {{"job", true}, {"tap", true}, {"generation", true}, {"rank", true},
                 {"world-size", true}, {"corpus-size", true}, {"n-a", true}, {"delta", true},
                 {"rho", true}, {"preprocessing", true}, {"seed", true}, {"batch-rows", true},
                 {"presketch", false}, {"close", false}, {"json", false}, {"run", true}, {"resume", true}},
                /*allow_positional=*/true);
  if (!p.ok()) return UsageError(err, usage, p.status());
  if (p->help) {
    out << usage;
    return 0;
  }
  if (p->positional.empty())
    return UsageError(err, usage, absl::InvalidArgumentError("no .npy file given"));
  absl::StatusOr<SendRequest> request = ParseSend(&*p);
  if (!request.ok()) return UsageError(err, usage, request.status());
  client::SnapshotId& snapshot = request->snapshot;
  client::ShareOptions& share = request->share;
  absl::StatusOr<std::unique_ptr<Client>> made = MakeClient(*p);
  if (!made.ok()) return ClientError(err, usage, made.status());
  absl::StatusOr<std::vector<NpyArray>> arrays = LoadArrays(p->positional);
  if (!arrays.ok()) {
    err << "sigmactl: " << arrays.status().message() << "\n";
    return 1;
  }
  const int32_t m = static_cast<int32_t>(arrays->front().cols);
  const v1::DType dtype = sigma::ToWireDType(arrays->front().dtype);
  if (absl::Status s = ApplyBatchRows(request->batch_rows, m, dtype, &made, err); !s.ok())
    return ClientError(err, usage, s);
  Client& c = **made;
  if (p->Has("presketch")) {
    absl::StatusOr<client::SketchParams> params = c.EffectiveSketchParams(snapshot.job, m, request->config);
    if (!params.ok()) return RpcError(err, params.status());
    share.presketch = *params;
  }
  std::vector<client::Embeddings> blocks;
  for (const NpyArray& a : *arrays) {
    blocks.push_back(client::Embeddings{a.data.data(), dtype, a.rows, m, {}});
  }
  absl::StatusOr<v1::IngestResponse> response = c.SendGeneration(snapshot, blocks, share);
  if (!response.ok()) {
    RpcError(err, response.status());
    const std::optional<int64_t> row = client::RefusedShareRow(response.status());
    if (row && !share.presketch) err << FileRowNote(*arrays, p->positional, *row);
    return 1;
  }
  const bool json = p->Has("json");
  if (!response->run().empty()) snapshot.run = response->run();  // the run the share went to
  if (!response->sealed() && p->Has("close")) {
    absl::StatusOr<v1::GenerationReport> report = c.CloseGeneration(snapshot);
    if (!report.ok()) return RpcError(err, report.status());
    *response->mutable_report() = *report;
    response->set_sealed(true);
  }
  if (response->sealed()) {
    if (json) return PrintJson(response->report(), out, err);
    PrintReport(response->report(), out);
    return 0;
  }
  if (json) return PrintJson(*response, out, err);
  out << absl::StrFormat(
      "rank %d of %d: %d batches accepted (%d duplicate), %d rows; snapshot %s/%s/%d (run %s) waits for "
      "the other ranks (or `sigmactl close --run %s`)\n",
      share.rank, share.world_size, response->batches_accepted(), response->batches_duplicate(),
      response->rows_accepted(), snapshot.job, snapshot.tap, snapshot.generation,
      snapshot.run.empty() ? "1" : snapshot.run, snapshot.run.empty() ? "1" : snapshot.run);
  return 0;
}

int RunReport(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = WithCommon(kReportUsage);
  absl::StatusOr<Parsed> p =
      ParseArgs(args, {{"job", true}, {"tap", true}, {"generation", true}, {"json", false}, {"csv", false},
                       {"run", true}},
                false);
  if (!p.ok()) return UsageError(err, usage, p.status());
  if (p->help) {
    out << usage;
    return 0;
  }
  std::optional<std::string> job = p->Get("job");
  if (!job) return UsageError(err, usage, absl::InvalidArgumentError("--job is required"));
  if (p->Has("json") && p->Has("csv"))
    return UsageError(err, usage, absl::InvalidArgumentError("--json and --csv exclude each other"));
  if (p->Has("generation")) return RunReportOne(*p, usage, out, err);
  absl::StatusOr<std::unique_ptr<Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  absl::StatusOr<std::vector<v1::GenerationReport>> history =
      (*c)->GetHistory(*job, p->Get("tap").value_or(""), p->Get("run").value_or(""));
  if (!history.ok()) return RpcError(err, history.status());
  if (p->Has("json")) {
    v1::GetHistoryResponse response;
    for (const auto& r : *history) *response.add_reports() = r;
    return PrintJson(response, out, err);
  }
  if (p->Has("csv")) {
    WriteReportsCsv(*history, out);
    return 0;
  }
  if (history->empty()) {
    out << "job " << *job << ": no sealed generation\n";
    return 0;
  }
  out << absl::StrFormat("%-16s %5s %6s %10s %7s %14s %14s %10s %11s %11s  %s\n", "TAP", "GEN", "M",
                         "N", "N_A", "TRACK1_UPPER", "TRACK2", "CI_HALF", "DRIFT2/DIM",
                         "DIVERG/DIM", "ALERTS");
  for (const v1::GenerationReport& r : *history) {
    if (r.flags().cholesky_failed()) {
      out << absl::StrFormat("%-16s %5d %6d %10.0f %7d  FAILED: %s\n", r.tap(), r.generation(),
                             r.m(), r.n(), r.n_a(), r.flags().failure_reason());
      continue;
    }
    out << absl::StrFormat("%-16s %5d %6d %10.0f %7d %14.6f %14.6f %10.6f %+11.6f %+11.6f  %s\n",
                           r.tap(), r.generation(), r.m(), r.n(), r.n_a(), r.track1_upper(),
                           r.track2(), r.track2_ci_halfwidth(), r.per_dim().track2_drift(),
                           r.per_dim().divergence(), AlertsText(r));
  }
  return 0;
}

int RunJobs(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = WithCommon(kJobsUsage);
  absl::StatusOr<Parsed> p = ParseArgs(args, {{"json", false}}, false);
  if (!p.ok()) return UsageError(err, usage, p.status());
  if (p->help) {
    out << usage;
    return 0;
  }
  absl::StatusOr<std::unique_ptr<Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  absl::StatusOr<std::vector<v1::JobInfo>> jobs = (*c)->ListJobs();
  if (!jobs.ok()) return RpcError(err, jobs.status());
  if (p->Has("json")) {
    v1::ListJobsResponse response;
    for (const auto& j : *jobs) *response.add_jobs() = j;
    return PrintJson(response, out, err);
  }
  if (jobs->empty()) {
    out << "no jobs\n";
    return 0;
  }
  out << absl::StrFormat("%-24s %-8s %6s %5s %5s %7s %10s %8s %7s %-9s %s\n", "JOB", "RUN", "M", "GENS", "LAST",
                         "N_A", "DELTA", "RHO", "PREPROC", "BASELINE", "TAPS");
  for (const v1::JobInfo& j : *jobs) {
    const v1::JobConfig& cfg = j.config();
    std::string baseline = cfg.has_baseline_generation()
                               ? absl::StrCat(cfg.baseline_generation())
                               : std::string("first");
    if (!cfg.baseline_job().empty()) baseline = absl::StrCat(cfg.baseline_job(), ":", baseline);
    out << absl::StrFormat("%-24s %-8s %6d %5d %5d %7d %10.3g %8.3g %7s %-9s %s\n", j.job(),
                           j.run().empty() ? "-" : j.run(), j.m(), j.generations_sealed(), j.last_generation(), cfg.n_a(), cfg.delta(),
                           cfg.rho(), PreprocessingText(cfg.preprocessing()), baseline,
                           j.taps().empty() ? "-" : absl::StrJoin(j.taps(), ","));
  }
  return 0;
}

int RunConfigure(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = absl::StrFormat(kConfigureUsage, kConfigFlagsHelp, kCommonFlagsHelp);
  absl::StatusOr<Parsed> p = ParseArgs(
      args,
      {{"job", true}, {"n-a", true}, {"delta", true}, {"rho", true}, {"preprocessing", true},
       {"seed", true}, {"baseline-generation", true}, {"baseline-job", true}, {"baseline-run", true},
       {"drift-warning", true}, {"drift-critical", true}, {"divergence-warning", true},
       {"track1-stable", true}, {"probe", true}, {"trend-k", true}, {"trend-z", true},
       {"trend-floor", true}, {"create", false}, {"json", false}},
      false);
  if (!p.ok()) return UsageError(err, usage, p.status());
  if (p->help) {
    out << usage;
    return 0;
  }
  std::optional<std::string> job = p->Get("job");
  if (!job) return UsageError(err, usage, absl::InvalidArgumentError("--job is required"));
  v1::JobConfig config;
  absl::StatusOr<bool> any = ParseJobConfig(*p, &config);
  if (!any.ok()) return UsageError(err, usage, any.status());
  absl::StatusOr<std::optional<int64_t>> baseline = GetInt(*p, "baseline-generation", 0);
  if (!baseline.ok()) return UsageError(err, usage, baseline.status());
  if (*baseline) config.set_baseline_generation(**baseline);
  if (std::optional<std::string> bj = p->Get("baseline-job")) config.set_baseline_job(*bj);
  if (std::optional<std::string> br = p->Get("baseline-run")) config.set_baseline_run(*br);
  struct ThresholdFlag {
    const char* name;
    void (v1::Thresholds::*set)(double);
  };
  const ThresholdFlag thresholds[] = {
      {"drift-warning", &v1::Thresholds::set_drift_warning},
      {"drift-critical", &v1::Thresholds::set_drift_critical},
      {"divergence-warning", &v1::Thresholds::set_divergence_warning},
      {"track1-stable", &v1::Thresholds::set_track1_stable},
  };
  for (const ThresholdFlag& t : thresholds) {
    absl::StatusOr<std::optional<double>> v = GetDouble(*p, t.name, true);
    if (!v.ok()) return UsageError(err, usage, v.status());
    if (*v) (config.mutable_thresholds()->*t.set)(**v);
  }
  if (absl::Status s = ParseSignificanceFlags(*p, &config); !s.ok()) return UsageError(err, usage, s);
  absl::StatusOr<std::unique_ptr<Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  absl::StatusOr<v1::JobInfo> info = (*c)->ConfigureJob(*job, config, p->Has("create"));
  if (!info.ok()) return RpcError(err, info.status());
  if (p->Has("json")) return PrintJson(*info, out, err);
  const v1::JobConfig& cfg = info->config();
  out << absl::StrFormat("job %s  m %d  generations sealed %d  last %d  taps %s\n", info->job(),
                         info->m(), info->generations_sealed(), info->last_generation(),
                         info->taps().empty() ? "-" : absl::StrJoin(info->taps(), ","));
  out << absl::StrFormat("  n_A %d  delta %g  rho %g  preprocessing %s  seed %d\n", cfg.n_a(),
                         cfg.delta(), cfg.rho(), PreprocessingText(cfg.preprocessing()),
                         cfg.seed());
  out << "  baseline: "
      << (cfg.baseline_job().empty() ? std::string() : absl::StrCat("job ", cfg.baseline_job(), " "))
      << (cfg.has_baseline_generation() ? absl::StrCat("generation ", cfg.baseline_generation())
                                        : std::string("first sealed generation"))
      << "\n";
  const v1::Thresholds& th = cfg.thresholds();
  out << absl::StrFormat(
      "  thresholds per dim: drift warning %g  critical %g  divergence warning %g  track1 stable "
      "%g\n",
      th.drift_warning(), th.drift_critical(), th.divergence_warning(), th.track1_stable());
  out << absl::StrFormat("  probe %s  trend: k %d  z %g  floor %g per dim\n",
                         cfg.probe() == v1::PROBE_FIXED ? "fixed" : "fresh", cfg.trend_k(), cfg.trend_z(),
                         cfg.trend_floor());
  return 0;
}

int RunHealth(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = WithCommon(kHealthUsage);
  absl::StatusOr<Parsed> p = ParseArgs(args, {{"service", true}, {"json", false}}, false);
  if (!p.ok()) return UsageError(err, usage, p.status());
  if (p->help) {
    out << usage;
    return 0;
  }
  absl::StatusOr<std::unique_ptr<Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  const std::string service = p->Get("service").value_or("");
  int rc = 0;
  nlohmann::json targets = nlohmann::json::array();
  for (const std::string& target : (*c)->targets()) {
    absl::StatusOr<client::ServingStatus> s = (*c)->Health(target, service);
    std::string text;
    if (s.ok()) {
      text = std::string(client::ServingStatusName(*s));
      if (*s != client::ServingStatus::kServing) rc = 1;
    } else {
      text = std::string(absl::StatusCodeToString(s.status().code()));
      err << "sigmactl: " << target << ": " << text << ": " << s.status().message() << "\n";
      rc = 1;
    }
    if (p->Has("json")) {
      targets.push_back({{"target", target}, {"status", text}});
    } else {
      out << target << " " << text << "\n";
    }
  }
  if (p->Has("json")) out << nlohmann::json{{"targets", targets}}.dump() << "\n";
  return rc;
}

int RunClose(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = WithCommon(kCloseUsage);
  absl::StatusOr<Parsed> p =
      ParseArgs(args, {{"job", true}, {"tap", true}, {"generation", true}, {"json", false}, {"run", true}}, false);
  if (!p.ok()) return UsageError(err, usage, p.status());
  if (p->help) {
    out << usage;
    return 0;
  }
  client::SnapshotId snapshot;
  snapshot.run = p->Get("run").value_or("");
  std::optional<std::string> job = p->Get("job");
  if (!job) return UsageError(err, usage, absl::InvalidArgumentError("--job is required"));
  snapshot.job = *job;
  if (std::optional<std::string> tap = p->Get("tap")) snapshot.tap = *tap;
  absl::StatusOr<std::optional<int64_t>> generation = GetInt(*p, "generation", 0);
  if (!generation.ok()) return UsageError(err, usage, generation.status());
  if (!*generation)
    return UsageError(err, usage, absl::InvalidArgumentError("--generation is required"));
  snapshot.generation = **generation;
  absl::StatusOr<std::unique_ptr<Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  absl::StatusOr<v1::GenerationReport> report = (*c)->CloseGeneration(snapshot);
  if (!report.ok()) return RpcError(err, report.status());
  if (p->Has("json")) return PrintJson(*report, out, err);
  PrintReport(*report, out);
  return 0;
}

}  // namespace sigma::cli
