// sigmactl job lifecycle commands (issue 15 item 4): delete-job, finish-job,
// snapshots. Conventions of online_commands.h.
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "json_output.h"
#include "online_commands.h"
#include "online_flags.h"

namespace sigma::cli {
namespace {

namespace v1 = ::sigma::v1;

constexpr char kDeleteUsage[] =
    "usage: sigmactl delete-job --job J [--run R] [--json] [common flags]\n"
    "Deletes a job: its reports and configuration history from the store, its open snapshots\n"
    "(their ranks get ABORTED), its series on /metrics; the job slot is free again. Needs an\n"
    "admin token when sigmad runs with --tokens. Cannot be undone.\n"
    "  --job J               job name (required)\n"
    "  --run R               one run only: its reports and open snapshots; the job, its\n"
    "                        configuration and its other runs stay (sigmactl job lists the runs)\n"
    "  --json                print the DeleteJobResponse as one JSON object\n"
    "%s";

constexpr char kFinishUsage[] =
    "usage: sigmactl finish-job --job J [--json] [common flags]\n"
    "Marks a job finished: its history stays readable, new generations are refused\n"
    "(FAILED_PRECONDITION), the stale-job alert ignores it and its series leave /metrics\n"
    "after sigmad's --finished-series-ttl-s. Idempotent.\n"
    "  --job J               job name (required)\n"
    "  --json                print the JobInfo as one JSON object\n"
    "%s";

constexpr char kSnapshotsUsage[] =
    "usage: sigmactl snapshots [--job J] [--json] [common flags]\n"
    "Lists the open snapshots of every target (of job J only): age, idle time, rows, and\n"
    "which ranks have sent EndOfShare and which are missing.\n"
    "  --job J               only this job\n"
    "  --json                print {\"snapshots\": [SnapshotInfo, ...]}\n"
    "%s";

// Parses `args` with --job (required unless `job_optional`), --json and, when
// `with_run`, --run; nullopt on a usage error or --help (the exit code in *rc).
std::optional<Parsed> Parse(const Args& args, const std::string& usage, bool job_optional, bool with_run,
                            std::ostream& out, std::ostream& err, int* rc) {
  absl::StatusOr<Parsed> p = with_run ? ParseArgs(args, {{"job", true}, {"json", false}, {"run", true}}, false)
                                      : ParseArgs(args, {{"job", true}, {"json", false}}, false);
  *rc = 0;
  if (!p.ok()) {
    *rc = UsageError(err, usage, p.status());
    return std::nullopt;
  }
  if (p->help) {
    out << usage;
    return std::nullopt;
  }
  if (!job_optional && !p->Get("job")) {
    *rc = UsageError(err, usage, absl::InvalidArgumentError("--job is required"));
    return std::nullopt;
  }
  return *std::move(p);
}

std::string Ranks(const google::protobuf::RepeatedField<int32_t>& ranks) {
  return ranks.empty() ? "-" : absl::StrJoin(ranks, ",");
}

}  // namespace

int RunDeleteJob(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = absl::StrFormat(kDeleteUsage, kCommonFlagsHelp);
  int rc;
  std::optional<Parsed> p = Parse(args, usage, false, true, out, err, &rc);
  if (!p) return rc;
  absl::StatusOr<std::unique_ptr<client::Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  absl::StatusOr<v1::DeleteJobResponse> r = (*c)->DeleteJob(*p->Get("job"), p->Get("run").value_or(""));
  if (!r.ok()) return RpcError(err, r.status());
  if (p->Has("json")) return PrintJson(*r, out, err);
  if (!r->run().empty())
    out << absl::StrFormat("deleted run %s of job %s: %d reports, %d open snapshots discarded\n", r->run(), r->job(),
                           r->reports_deleted(), r->snapshots_discarded());
  else
    out << absl::StrFormat("deleted job %s: %d reports, %d open snapshots discarded\n", r->job(),
                           r->reports_deleted(), r->snapshots_discarded());
  return 0;
}

int RunFinishJob(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = absl::StrFormat(kFinishUsage, kCommonFlagsHelp);
  int rc;
  std::optional<Parsed> p = Parse(args, usage, false, false, out, err, &rc);
  if (!p) return rc;
  absl::StatusOr<std::unique_ptr<client::Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  absl::StatusOr<v1::JobInfo> info = (*c)->FinishJob(*p->Get("job"));
  if (!info.ok()) return RpcError(err, info.status());
  if (p->Has("json")) return PrintJson(*info, out, err);
  out << absl::StrFormat("job %s finished (unix ms %d): %d generations sealed, last %d\n", info->job(),
                         info->finished_unix_ms(), info->generations_sealed(), info->last_generation());
  return 0;
}

int RunSnapshots(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = absl::StrFormat(kSnapshotsUsage, kCommonFlagsHelp);
  int rc;
  std::optional<Parsed> p = Parse(args, usage, true, false, out, err, &rc);
  if (!p) return rc;
  absl::StatusOr<std::unique_ptr<client::Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  absl::StatusOr<std::vector<v1::SnapshotInfo>> snaps = (*c)->ListSnapshots(p->Get("job").value_or(""));
  if (!snaps.ok()) return RpcError(err, snaps.status());
  if (p->Has("json")) {
    v1::ListSnapshotsResponse response;
    for (const v1::SnapshotInfo& s : *snaps) *response.add_snapshots() = s;
    return PrintJson(response, out, err);
  }
  if (snaps->empty()) {
    out << "no open snapshots\n";
    return 0;
  }
  out << absl::StrFormat("%-24s %-8s %-16s %5s %7s %8s %8s %10s %-12s %s\n", "JOB", "RUN", "TAP", "GEN", "STATE",
                         "AGE_S", "IDLE_S", "ROWS", "FINISHED", "MISSING");
  for (const v1::SnapshotInfo& s : *snaps) {
    out << absl::StrFormat("%-24s %-8s %-16s %5d %7s %8.1f %8.1f %10d %-12s %s\n", s.job(), s.run(), s.tap(),
                           s.generation(), s.state(), s.age_seconds(), s.idle_seconds(), s.rows(),
                           Ranks(s.ranks_finished()), Ranks(s.ranks_missing()));
  }
  return 0;
}

}  // namespace sigma::cli
