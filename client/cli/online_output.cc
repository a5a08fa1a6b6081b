// sigmactl's text output of reports (online_output.h): send, close and
// report --generation print a report this way.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "online_output.h"

namespace sigma::cli {

namespace v1 = ::sigma::v1;

std::string PreprocessingText(v1::Preprocessing p) {
  switch (p) {
    case v1::PREPROCESSING_L2: return "l2";
    case v1::PREPROCESSING_NONE: return "none";
    default: return "default";
  }
}

std::string AlertsText(const v1::GenerationReport& r) {
  std::vector<std::string> parts;
  for (const v1::Alert& a : r.alerts())
    parts.push_back(absl::StrCat(a.rule(), "(", a.severity(), a.direction().empty() ? "" : ", ", a.direction(), ")"));
  return parts.empty() ? "-" : absl::StrJoin(parts, ",");
}

void PrintReport(const v1::GenerationReport& r, std::ostream& out) {
  out << absl::StrFormat("job %s  run %s  tap %s  generation %d  (ranks finished %d of %d)\n", r.job(),
                         r.run().empty() ? "1" : r.run(), r.tap(), r.generation(), r.ranks_finished(),
                         r.world_size());
  const double ratio = r.m() > 0 ? static_cast<double>(r.n_a()) / r.m() : 0.0;
  out << absl::StrFormat("  m %d  n %.0f  n_A %d  (n_A/m %.1f)  backend %s  compute %.4f s\n",
                         r.m(), r.n(), r.n_a(), ratio, r.backend(), r.compute_seconds());
  const v1::ReportFlags& f = r.flags();
  if (f.cholesky_failed()) {
    out << "  FAILED: " << f.failure_reason() << "\n";
  } else {
    out << absl::StrFormat("  track1  [%.6f, %.6f]\n", r.track1_lower(), r.track1_upper());
    out << absl::StrFormat("  track2  %.6f +- %.6f (corpus) +- %.6f (population)  (raw %.6f, bias %.6f)\n",
                           r.track2(), r.track2_ci_halfwidth(), r.track2_pop_halfwidth(), r.track2_raw(),
                           r.track2_bias());
    std::string baseline = absl::StrCat("generation ", r.baseline_generation());
    if (!r.baseline_run().empty()) baseline = absl::StrCat("run ", r.baseline_run(), " ", baseline);
    if (!r.baseline_job().empty() && r.baseline_job() != r.job())
      baseline = absl::StrCat("job ", r.baseline_job(), " ", baseline);
    if (r.baseline_generation() < 0)
      out << "  drift: no baseline available (pinned generation or run not sealed, or deleted)\n";
    else
      out << absl::StrFormat("  drift vs %s: track1 %+.6f  track2 %+.6f +- %.6f  divergence %+.6f\n", baseline,
                             r.track1_drift(), r.track2_drift(), r.drift_halfwidth(), r.divergence());
    out << absl::StrFormat("  per dim:  track1 %+.6f  track2 %+.6f +- %.6f  divergence %+.6f\n",
                           r.per_dim().track1_drift(), r.per_dim().track2_drift(),
                           r.per_dim().drift_halfwidth(), r.per_dim().divergence());
    out << absl::StrFormat("  drift half-width: corpus %.6f  population %.6f  used %.6f  z_drift %+.3f%s\n",
                           r.drift_halfwidth(), r.drift_halfwidth_pop(), r.drift_halfwidth_used(),
                           r.drift_zscore(), r.trend_evaluated() ? "" : absl::StrCat("  (trend ", r.trend_note(), ")"));
  }
  std::vector<std::string> flags;
  if (f.rho_violated())
    flags.push_back(absl::StrFormat("rho_violated (%d rows, max energy %.6g)", f.rho_violations(),
                                    f.max_energy()));
  if (f.n_a_below_m()) flags.push_back("n_a_below_m");
  if (f.low_confidence()) flags.push_back("low_confidence");
  if (f.closed_explicitly()) flags.push_back("closed_explicitly");
  out << "  flags: " << (flags.empty() ? "-" : absl::StrJoin(flags, ", ")) << "\n";
  out << "  alerts: " << AlertsText(r) << "\n";
  if (r.has_generations_to_critical()) {
    out << absl::StrFormat("  forecast: %.1f generations to critical\n",
                           r.generations_to_critical());
  }
}

}  // namespace sigma::cli
