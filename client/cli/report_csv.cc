#include "report_csv.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace sigma::cli {
namespace {

constexpr const char* kColumns =
    "job,tap,generation,m,n,n_a,world_size,backend,track1_lower,track1_upper,track2,"
    "track2_ci_halfwidth,track1_drift,track2_drift,divergence,drift_halfwidth,"
    "track1_drift_per_dim,track2_drift_per_dim,divergence_per_dim,drift_halfwidth_per_dim,"
    "generations_to_critical,baseline_generation,baseline_job,rho_violated,low_confidence,"
    "cholesky_failed,closed_explicitly,alerts,sealed_unix_ms";

std::string D(double x) { return absl::StrFormat("%.17g", x); }

// RFC 4180 quoting for the text columns (job and tap names may hold commas).
std::string Q(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

void WriteReportsCsv(const std::vector<v1::GenerationReport>& reports, std::ostream& out) {
  out << kColumns << "\n";
  for (const v1::GenerationReport& r : reports) {
    std::vector<std::string> alerts;
    for (const v1::Alert& a : r.alerts()) alerts.push_back(absl::StrCat(a.rule(), ":", a.severity()));
    const auto& pd = r.per_dim();
    const auto& f = r.flags();
    std::vector<std::string> row = {
        Q(r.job()), Q(r.tap()), absl::StrCat(r.generation()), absl::StrCat(r.m()), D(r.n()),
        absl::StrCat(r.n_a()), absl::StrCat(r.world_size()), Q(r.backend()),
        D(r.track1_lower()), D(r.track1_upper()), D(r.track2()), D(r.track2_ci_halfwidth()),
        D(r.track1_drift()), D(r.track2_drift()), D(r.divergence()), D(r.drift_halfwidth()),
        D(pd.track1_drift()), D(pd.track2_drift()), D(pd.divergence()), D(pd.drift_halfwidth()),
        r.has_generations_to_critical() ? D(r.generations_to_critical()) : "",
        absl::StrCat(r.baseline_generation()), Q(r.baseline_job()),
        absl::StrCat(int{f.rho_violated()}), absl::StrCat(int{f.low_confidence()}),
        absl::StrCat(int{f.cholesky_failed()}), absl::StrCat(int{f.closed_explicitly()}),
        Q(absl::StrJoin(alerts, ";")), absl::StrCat(r.sealed_unix_ms())};
    out << absl::StrJoin(row, ",") << "\n";
  }
}

}  // namespace sigma::cli
