// Alerts that tell the truth (issue 15 items 5 and 6, spec §3), through a real
// in-process sigmad (gRPC over loopback, SQLite, /metrics):
// - the threshold gauges follow ConfigureJob at once; series use job_name;
// - a null control (fresh samples of one distribution, several seeds, m and
//   n_A) raises no warning;
// - a contracting sequence raises early_warning_trend before the drift warning;
// - sigma_drift_zscore is the report's z_drift, NaN where not evaluated.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server_test_util.h"
#include "sigma/kernels/estimator.h"
#include "sigma/server/config.h"

namespace sigma::server::testing {
namespace {

class AlertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    d_ = StartDaemon(TestOptions(dir_.path()));
    ASSERT_NE(d_, nullptr);
  }

  // Seals generation g of (job, tap "default") from `rows` as one rank.
  v1::GenerationReport Seal(const std::string& job, int64_t g, const Rows& rows, const v1::JobConfig& cfg) {
    v1::IngestResponse resp;
    const grpc::Status s = SendShare(d_->stub.get(), MakeOpen(job, g, 0, 1, static_cast<int32_t>(rows.m),
                                                              v1::DTYPE_FP64, std::nullopt, &cfg),
                                     rows, 0, rows.n(), 512, v1::DTYPE_FP64, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(resp.sealed());
    return resp.report();
  }

  std::vector<std::string> Warnings(const v1::GenerationReport& r) {
    std::vector<std::string> out;
    for (const auto& a : r.alerts())
      if (a.severity() != "info") out.push_back(a.rule() + ":" + a.severity());
    return out;
  }

  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
};

// Rows whose covariance has eigenvalue exp(-alpha * i / m) for dimension i:
// alpha = 0 is isotropic; larger alpha contracts the spectrum's tail.
Rows Spectrum(int64_t n, int64_t m, uint64_t seed, double alpha) {
  Rows r = GaussianRows(n, m, seed);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) r.values[static_cast<size_t>(i * m + j)] *= std::exp(-0.5 * alpha * j / m);
  return r;
}

// The null control's spectrum: eigenvalues exp(-8 i / m), a condition number
// of ~3000 like real embeddings' (an isotropic null makes q nearly constant).
constexpr double kNullAlpha = 8.0;

TEST_F(AlertsTest, ThresholdGaugesFollowConfigureJobAtOnce) {
  v1::JobConfig cfg;
  cfg.set_n_a(64);
  Seal("th", 0, GaussianRows(256, 4, 1), cfg);
  const std::map<std::string, std::string> warn{{"job_name", "th"}, {"threshold", "drift_warning"}};
  std::string scrape = Scrape(d_->ports.metrics_port);
  EXPECT_EQ(MetricValue(scrape, "sigma_alert_threshold", warn), 0.1);
  EXPECT_EQ(MetricValue(scrape, "sigma_job_finished", {{"job_name", "th"}}), 0.0);  // FinishJob sets 1
  EXPECT_FALSE(MetricValue(scrape, "sigma_generation", {{"job", "th"}, {"tap", "default"}}).has_value());
  EXPECT_EQ(MetricValue(scrape, "sigma_generation", {{"job_name", "th"}, {"tap", "default"}}), 0.0);

  grpc::ClientContext ctx;
  v1::ConfigureJobRequest req;
  req.set_create(true);
  req.set_job("th");
  req.mutable_config()->mutable_thresholds()->set_drift_warning(0.4);
  v1::JobInfo info;
  ASSERT_TRUE(d_->stub->ConfigureJob(&ctx, req, &info).ok());
  scrape = Scrape(d_->ports.metrics_port);  // no seal, no restart in between
  EXPECT_EQ(MetricValue(scrape, "sigma_alert_threshold", warn), 0.4);
  EXPECT_EQ(MetricValue(scrape, "sigma_alert_threshold", {{"job_name", "th"}, {"threshold", "drift_critical"}}), 0.5);
}

// Spec §3: fresh samples of one distribution must raise no warning (the
// population interval), over seeds, m = 32..128 and n_A = 4 m (low confidence:
// threshold alerts only) and 16 m (the trend warning evaluated too), f = 1/2 and 1.
// The same rows sent to a twin job with probe = fixed (the corpus interval, the
// wrong setting for fresh samples) and trend_floor 0.01 do raise the trend warning:
// the control has teeth. (These null drifts stay below the default floor 0.05, so the
// twin sets the spec's original floor: the point here is the interval.)
TEST_F(AlertsTest, NullControlRaisesNoWarning) {
  int evaluated = 0, fixed_trend = 0;
  for (int64_t m : {32, 64, 128}) {
    for (int64_t na_per_m : {4, 16}) {
      for (int64_t n_over_na : {1, 2}) {
        if (m == 128 && na_per_m == 16 && n_over_na == 2) continue;  // 4096 x 128 rows: slow, adds nothing
        const uint64_t seed = static_cast<uint64_t>(1000 * m + 10 * na_per_m + n_over_na);
        const std::string job = "null_" + std::to_string(seed);
        v1::JobConfig cfg;
        cfg.set_n_a(na_per_m * m);
        v1::JobConfig fixed = cfg;
        fixed.set_probe(v1::PROBE_FIXED);
        fixed.set_trend_floor(0.01);
        const int64_t n = n_over_na * na_per_m * m;
        for (int64_t g = 0; g < 6; ++g) {
          const Rows rows = Spectrum(n, m, seed * 7919 + g, kNullAlpha);
          const v1::GenerationReport r = Seal(job, g, rows, cfg);
          EXPECT_TRUE(Warnings(r).empty()) << job << " generation " << g << ": " << Warnings(r)[0]
                                           << " drift/m " << r.per_dim().track2_drift() << " half_used/m "
                                           << r.per_dim().drift_halfwidth_used();
          EXPECT_EQ(r.trend_evaluated(), g > 0 && na_per_m >= 16) << job << " " << r.trend_note();
          evaluated += r.trend_evaluated();
          const v1::GenerationReport twin = Seal(job + "_fixed", g, rows, fixed);
          for (const auto& a : twin.alerts()) fixed_trend += a.rule() == "early_warning_trend";
        }
      }
    }
  }
  EXPECT_GT(evaluated, 0);
  EXPECT_GT(fixed_trend, 0);
  std::printf("null control: %d generations with the trend evaluated, no warning; probe = fixed: %d trend warnings\n",
              evaluated, fixed_trend);
}

// n_A = 16 m and a two-generation streak (trend_k 2, trend_z 3, trend_floor
// 0.01 set explicitly: these tests are about the streak, not the defaults).
v1::JobConfig StreakConfig(int64_t m) {
  v1::JobConfig cfg;
  cfg.set_n_a(16 * m);
  cfg.set_trend_k(2);
  cfg.set_trend_z(3);
  cfg.set_trend_floor(0.01);
  return cfg;
}

// A slowly contracting spectrum: the trend warning (2 generations with
// |z_drift| >= 3, one sign) fires before the drift warning, and the gauge
// sigma_drift_zscore shows the report's z_drift.
TEST_F(AlertsTest, TrendWarningLeadsTheDriftWarningOnAContractingSequence) {
  const int64_t m = 32, n = 4096;
  const v1::JobConfig cfg = StreakConfig(m);
  int64_t first_trend = -1, first_drift = -1;
  v1::GenerationReport last;
  for (int64_t g = 0; g < 12 && first_drift < 0; ++g) {
    last = Seal("contract", g, Spectrum(n, m, 77 + g, 0.3 * g), cfg);
    for (const auto& a : last.alerts()) {
      if (a.rule() == "early_warning_trend" && first_trend < 0) {
        first_trend = g;
        EXPECT_EQ(a.direction(), "contraction");
      }
      if (a.rule() == "collapse_contraction" && first_drift < 0) first_drift = g;
    }
    std::printf("generation %ld: drift/m %.4f half_used/m %.4f z %.2f alerts %d\n", static_cast<long>(g),
                last.per_dim().track2_drift(), last.per_dim().drift_halfwidth_used(), last.drift_zscore(),
                last.alerts_size());
  }
  ASSERT_GE(first_trend, 0);
  ASSERT_GE(first_drift, 0);
  EXPECT_LT(first_trend, first_drift);
  std::printf("lead of early_warning_trend over collapse_contraction: %ld generations\n",
              static_cast<long>(first_drift - first_trend));
  const std::string scrape = Scrape(d_->ports.metrics_port);
  ExpectMetricNear(MetricValue(scrape, "sigma_drift_zscore", {{"job_name", "contract"}, {"tap", "default"}}),
                   last.drift_zscore());
}

// The streak survives a restart: the z_drift of generations sealed before it
// is read back from the store (the same sequence as above: the trend fires at 3).
TEST_F(AlertsTest, TrendStreakSurvivesARestart) {
  const int64_t m = 32, n = 4096;
  const v1::JobConfig cfg = StreakConfig(m);
  for (int64_t g = 0; g < 3; ++g) Seal("restart", g, Spectrum(n, m, 77 + g, 0.3 * g), cfg);
  d_.reset();
  d_ = StartDaemon(TestOptions(dir_.path()));
  ASSERT_NE(d_, nullptr);
  const v1::GenerationReport r = Seal("restart", 3, Spectrum(n, m, 80, 0.9), cfg);
  bool trend = false;
  for (const auto& a : r.alerts()) trend |= a.rule() == "early_warning_trend";
  EXPECT_TRUE(trend) << r.DebugString();
}

TEST_F(AlertsTest, ZScoreGaugeIsNaNWhereNotEvaluated) {
  v1::JobConfig cfg;
  cfg.set_n_a(64);  // m = 8: 64 < 16 m, low confidence
  Seal("lowconf", 0, GaussianRows(256, 8, 5), cfg);
  const v1::GenerationReport r = Seal("lowconf", 1, GaussianRows(256, 8, 6), cfg);
  EXPECT_FALSE(r.trend_evaluated());
  EXPECT_NE(r.trend_note().find("low confidence"), std::string::npos) << r.trend_note();
  const std::optional<double> z =
      MetricValue(Scrape(d_->ports.metrics_port), "sigma_drift_zscore", {{"job_name", "lowconf"}, {"tap", "default"}});
  ASSERT_TRUE(z.has_value());
  EXPECT_TRUE(std::isnan(*z));
}

// probe, trend_k, trend_z, trend_floor: per-job settings like the thresholds
// (config file, ConfigureJob); bad values are refused and change nothing.
TEST_F(AlertsTest, SignificanceSettingsInTheConfigFileAndConfigureJob) {
  const std::string path = dir_.path() + "/sigmad.yaml";
  std::ofstream(path) << "defaults: {trend_z: 4}\n"
                         "jobs:\n  probe_set: {probe: fixed, trend-k: 3, trend_floor: 0.02}\n";
  std::vector<std::string> args{"sigmad", "--config", path};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  bool help = false;
  absl::StatusOr<DaemonOptions> o = ParseCommandLine(static_cast<int>(argv.size()), argv.data(), &help);
  ASSERT_TRUE(o.ok()) << o.status();
  const v1::JobConfig eff = EffectiveJobConfig(MergeJobConfig(o->job_defaults, o->job_configs["probe_set"]), 8);
  EXPECT_EQ(eff.probe(), v1::PROBE_FIXED);
  EXPECT_EQ(eff.trend_k(), 3);
  EXPECT_EQ(eff.trend_z(), 4);
  EXPECT_EQ(eff.trend_floor(), 0.02);
  const v1::JobConfig plain = EffectiveJobConfig(v1::JobConfig(), 8);  // the spec's defaults
  EXPECT_EQ(plain.probe(), v1::PROBE_FRESH);
  EXPECT_EQ(plain.trend_k(), 1);
  EXPECT_EQ(plain.trend_z(), 3);
  EXPECT_EQ(plain.trend_floor(), 0.05);
  for (const char* bad : {"defaults: {probe: sometimes}\n", "defaults: {trend_k: 0}\n", "defaults: {trend_z: 0}\n",
                          "defaults: {trend_floor: -1}\n"}) {
    std::ofstream(path) << bad;
    EXPECT_FALSE(ParseCommandLine(static_cast<int>(argv.size()), argv.data(), &help).ok()) << bad;
  }

  auto configure = [&](const v1::JobConfig& c, v1::JobInfo* info) {
    grpc::ClientContext ctx;
    v1::ConfigureJobRequest req;
    req.set_create(true);
    req.set_job("cfg");
    *req.mutable_config() = c;
    return d_->stub->ConfigureJob(&ctx, req, info);
  };
  v1::JobConfig c;
  c.set_probe(v1::PROBE_FIXED);
  c.set_trend_k(4);
  c.set_trend_z(2.5);
  c.set_trend_floor(0.05);
  v1::JobInfo info;
  ASSERT_TRUE(configure(c, &info).ok());
  EXPECT_EQ(info.config().probe(), v1::PROBE_FIXED);
  EXPECT_EQ(info.config().trend_k(), 4);
  EXPECT_EQ(info.config().trend_z(), 2.5);
  EXPECT_EQ(info.config().trend_floor(), 0.05);
  v1::JobConfig bad;
  bad.set_trend_z(-1);
  bad.set_trend_k(5);
  const grpc::Status refused = configure(bad, &info);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("trend_z"), std::string::npos) << refused.error_message();
  ASSERT_TRUE(configure(v1::JobConfig(), &info).ok());  // unchanged by the refusal
  EXPECT_EQ(info.config().trend_k(), 4);
  EXPECT_EQ(info.config().trend_z(), 2.5);
}

}  // namespace
}  // namespace sigma::server::testing
