// sigmactl's GetJob / GetReport commands (issue 17 "Protocol"): `job` prints a
// job's effective settings as the daemon resolves them, `report --generation`
// one report. Nothing is re-derived here: every value is the daemon's.
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "online_commands.h"
#include "online_output.h"
#include "report_csv.h"
#include "sigma/client/client.h"

namespace sigma::cli {
namespace {

namespace v1 = ::sigma::v1;
using ::sigma::client::Client;

constexpr char kJobUsage[] =
    "usage: sigmactl job --job J [--m M] [--json] [common flags]\n"
    "Prints a job's effective settings as sigmad resolves them (GetJob): the configuration\n"
    "with every default filled in, its taps with their m and dtype, and its open snapshots.\n"
    "  --job J               job name (required)\n"
    "  --m M                 resolve n_A for dimension M (default: the job's m)\n"
    "  --json                print the JobInfo as one JSON object\n";

std::string DTypeText(v1::DType d) {
  switch (d) {
    case v1::DTYPE_FP32: return "fp32";
    case v1::DTYPE_FP16: return "fp16";
    case v1::DTYPE_BF16: return "bf16";
    case v1::DTYPE_FP64: return "fp64";
    default: return "-";
  }
}

void PrintJob(const v1::JobInfo& j, std::optional<int64_t> m, std::ostream& out) {
  const v1::JobConfig& c = j.config();
  out << absl::StrFormat("job %s  m %d  generations sealed %d  last %d  (run %s)\n", j.job(), j.m(),
                         j.generations_sealed(), j.last_generation(), j.run().empty() ? "-" : j.run());
  out << "  runs: " << (j.runs().empty() ? std::string("-") : absl::StrJoin(j.runs(), ", "))
      << (j.runs().empty() ? "" : "  (in creation order; the last is the latest)") << "\n";
  const std::string n_a = c.has_n_a() ? absl::StrCat(c.n_a()) : std::string("- (no m known)");
  out << absl::StrFormat("  n_A %s%s  delta %g  rho %g  preprocessing %s  seed %d\n", n_a,
                         m ? absl::StrCat(" (for m = ", *m, ")") : std::string(), c.delta(), c.rho(),
                         PreprocessingText(c.preprocessing()), c.seed());
  std::string baseline = c.has_baseline_generation() ? absl::StrCat("generation ", c.baseline_generation())
                                                     : std::string("the first sealed generation");
  if (!c.baseline_run().empty()) baseline = absl::StrCat(baseline, " of run ", c.baseline_run());
  if (!c.baseline_job().empty()) baseline = absl::StrCat(baseline, " of job ", c.baseline_job());
  out << "  baseline: " << baseline << "\n";
  const v1::Thresholds& t = c.thresholds();
  out << absl::StrFormat("  thresholds: drift warning %g  critical %g  divergence warning %g  track1 stable %g\n",
                         t.drift_warning(), t.drift_critical(), t.divergence_warning(), t.track1_stable());
  out << absl::StrFormat("  significance: probe %s  trend_k %d  trend_z %g  trend_floor %g\n",
                         c.probe() == v1::PROBE_FIXED ? "fixed" : "fresh", c.trend_k(), c.trend_z(), c.trend_floor());
  if (j.tap_info().empty()) out << "  taps: -\n";
  for (const v1::TapInfo& tap : j.tap_info()) {
    std::vector<std::string> open;
    for (const v1::OpenGeneration& o : tap.open())
      open.push_back(absl::StrFormat("%d (%s, world %d)", o.generation(), DTypeText(o.dtype()), o.world_size()));
    out << absl::StrFormat("  tap %s  m %d  dtype %s  open: %s\n", tap.tap(), tap.m(), DTypeText(tap.dtype()),
                           open.empty() ? "-" : absl::StrJoin(open, ", "));
  }
}

}  // namespace

int RunJob(const Args& args, std::ostream& out, std::ostream& err) {
  const std::string usage = absl::StrCat(kJobUsage, CommonFlagsHelp());
  absl::StatusOr<Parsed> p = ParseArgs(args, {{"job", true}, {"m", true}, {"json", false}}, false);
  if (!p.ok()) return UsageError(err, usage, p.status());
  if (p->help) {
    out << usage;
    return 0;
  }
  std::optional<std::string> job = p->Get("job");
  if (!job) return UsageError(err, usage, absl::InvalidArgumentError("--job is required"));
  absl::StatusOr<std::optional<int64_t>> m = GetInt(*p, "m", 1);
  if (!m.ok()) return UsageError(err, usage, m.status());
  absl::StatusOr<std::unique_ptr<Client>> c = MakeClient(*p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  std::optional<int32_t> m32;
  if (*m) m32 = static_cast<int32_t>(std::min<int64_t>(**m, int64_t{1} << 30));  // sigmad checks the range
  absl::StatusOr<v1::JobInfo> info = (*c)->GetJob(*job, m32);
  if (!info.ok()) return RpcError(err, info.status());
  if (p->Has("json")) return PrintJson(*info, out, err);
  PrintJob(*info, *m, out);
  return 0;
}

int RunReportOne(const Parsed& p, const std::string& usage, std::ostream& out, std::ostream& err) {
  absl::StatusOr<std::optional<int64_t>> generation = GetInt(p, "generation", 0);
  if (!generation.ok()) return UsageError(err, usage, generation.status());
  absl::StatusOr<std::unique_ptr<Client>> c = MakeClient(p);
  if (!c.ok()) return ClientError(err, usage, c.status());
  client::SnapshotId id{*p.Get("job"), p.Get("tap").value_or("default"), **generation, p.Get("run").value_or("")};
  absl::StatusOr<v1::GenerationReport> report = (*c)->GetReport(id);
  if (!report.ok()) return RpcError(err, report.status());
  if (p.Has("json")) return PrintJson(*report, out, err);
  if (p.Has("csv")) {
    WriteReportsCsv({*report}, out);
    return 0;
  }
  PrintReport(*report, out);
  return 0;
}

}  // namespace sigma::cli
