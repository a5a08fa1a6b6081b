// Stop and restart the daemon on the same database: history, baseline,
// configuration and gauges are back, and drift continues against the same
// baseline.
#include "gtest/gtest.h"
#include "server_test_util.h"

namespace sigma::server::testing {
namespace {

TEST(PersistenceTest, RestartKeepsHistoryBaselineAndGauges) {
  TempDir dir;
  const DaemonOptions options = TestOptions(dir.path());
  const int64_t m = 16, n = 1200;
  v1::JobConfig cfg;
  cfg.set_n_a(300);
  cfg.mutable_thresholds()->set_drift_critical(0.7);
  std::vector<v1::GenerationReport> before;
  {
    auto d = StartDaemon(options);
    ASSERT_NE(d, nullptr);
    for (int g = 0; g < 2; ++g) {
      const Rows rows = GaussianRows(n, m, 900 + g, g == 0 ? 1.0 : 0.3, 8);
      v1::IngestResponse resp;
      ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("persist", g, 0, 1, m, v1::DTYPE_FP32, std::nullopt, &cfg), rows,
                            0, n, 300, v1::DTYPE_FP32, &resp)
                      .ok());
      ASSERT_TRUE(resp.sealed());
      before.push_back(resp.report());
    }
    d->daemon->Shutdown();
  }
  auto d = StartDaemon(options);
  ASSERT_NE(d, nullptr);
  // Gauges are re-published from the stored reports before any new data.
  const std::string scrape = Scrape(d->ports.metrics_port);
  const std::map<std::string, std::string> l{{"job_name", "persist"}, {"tap", "default"}};
  EXPECT_EQ(MetricValue(scrape, "sigma_generation", l), 1.0);
  ExpectMetricNear(MetricValue(scrape, "sigma_track2", l), before[1].track2());
  ExpectMetricNear(MetricValue(scrape, "sigma_track2_drift", l), before[1].track2_drift());
  ExpectMetricNear(MetricValue(scrape, "sigma_divergence", l), before[1].divergence());
  // History and configuration.
  v1::GetHistoryRequest hreq;
  hreq.set_job("persist");
  v1::GetHistoryResponse hist;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d->stub->GetHistory(&ctx, hreq, &hist).ok());
  ASSERT_EQ(hist.reports_size(), 2);
  for (int g = 0; g < 2; ++g) EXPECT_EQ(hist.reports(g).SerializeAsString(), before[g].SerializeAsString());
  v1::ListJobsResponse jobs;
  grpc::ClientContext c2;
  ASSERT_TRUE(d->stub->ListJobs(&c2, v1::ListJobsRequest(), &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).config().n_a(), 300);
  EXPECT_EQ(jobs.jobs(0).config().thresholds().drift_critical(), 0.7);
  EXPECT_EQ(jobs.jobs(0).last_generation(), 1);
  EXPECT_EQ(jobs.jobs(0).m(), m);
  // A sealed generation is still sealed: a retry gets the stored report.
  {
    const Rows rows = GaussianRows(n, m, 901, 0.3, 8);
    v1::IngestResponse resp;
    ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("persist", 1, 0, 1, m, v1::DTYPE_FP32), rows, 0, n, 300,
                          v1::DTYPE_FP32, &resp)
                    .ok());
    ASSERT_TRUE(resp.sealed());
    EXPECT_EQ(resp.report().SerializeAsString(), before[1].SerializeAsString());
  }
  // Generation 2 drifts against the same baseline (generation 0).
  const Rows rows = GaussianRows(n, m, 902, 0.1, 8);
  v1::IngestResponse resp;
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("persist", 2, 0, 1, m, v1::DTYPE_FP32), rows, 0, n, 300,
                        v1::DTYPE_FP32, &resp)
                  .ok());
  ASSERT_TRUE(resp.sealed());
  const auto& r = resp.report();
  EXPECT_EQ(r.baseline_generation(), 0);
  EXPECT_EQ(r.n_a(), 300);  // the stored sketch configuration
  EXPECT_DOUBLE_EQ(r.track2_drift(), r.track2() - before[0].track2());
  EXPECT_DOUBLE_EQ(r.track1_drift(), r.track1_upper() - before[0].track1_upper());
  // The forecast uses the stored generations too (3 points).
  EXPECT_TRUE(r.has_generations_to_critical() || r.per_dim().track2_drift() > -0.7);
  EXPECT_EQ(MetricValue(Scrape(d->ports.metrics_port), "sigma_generation", l), 2.0);
}

// A tap whose latest generation failed its Cholesky: a running daemon keeps
// the previous successful generation's track gauges (the failed one has no
// values) and shows the failed generation's alerts; a restarted daemon shows
// exactly the same, not made-up zeros.
TEST(PersistenceTest, RestartAfterAFailedSealRepublishesTheSameGauges) {
  TempDir dir;
  const DaemonOptions options = TestOptions(dir.path());
  const int64_t n = 400, m = 8;
  v1::JobConfig cfg;
  cfg.set_preprocessing(v1::PREPROCESSING_NONE);
  cfg.set_rho(1e6);
  const std::map<std::string, std::string> l{{"job_name", "failed_last"}, {"tap", "default"}};
  const char* kGauges[] = {"sigma_generation",   "sigma_track1_upper",         "sigma_track1_lower",
                           "sigma_track2",       "sigma_track2_ci_halfwidth",  "sigma_track1_drift",
                           "sigma_track2_drift", "sigma_track2_drift_per_dim", "sigma_divergence",
                           "sigma_drift_halfwidth", "sigma_seal_failures_total"};
  std::map<std::string, std::optional<double>> before;
  std::vector<v1::GenerationReport> reports;
  {
    auto d = StartDaemon(options);
    ASSERT_NE(d, nullptr);
    for (int g = 0; g < 3; ++g) {
      Rows rows = GaussianRows(n, m, 300 + g, g == 0 ? 1.0 : 0.05, 4);
      if (g == 2) {
        // Each row's ||x||^2 (~1e307) is a float64 (ingest refuses larger), but the
        // Gram matrix of 400 rows overflows: the seal fails.
        for (double& v : rows.values) v *= 1e153;
      }
      v1::IngestResponse resp;
      ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("failed_last", g, 0, 1, m, v1::DTYPE_FP64, std::nullopt, &cfg),
                            rows, 0, n, 100, v1::DTYPE_FP64, &resp)
                      .ok());
      ASSERT_TRUE(resp.sealed());
      reports.push_back(resp.report());
    }
    ASSERT_TRUE(reports[2].flags().cholesky_failed()) << reports[2].DebugString();
    const std::string scrape = Scrape(d->ports.metrics_port);
    for (const char* name : kGauges) before[name] = MetricValue(scrape, name, l);
    ExpectMetricNear(before["sigma_track2"], reports[1].track2());
    d->daemon->Shutdown();
  }
  auto d = StartDaemon(options);
  ASSERT_NE(d, nullptr);
  const std::string scrape = Scrape(d->ports.metrics_port);
  for (const char* name : kGauges) {
    ASSERT_TRUE(before[name].has_value()) << name;
    const std::optional<double> after = MetricValue(scrape, name, l);
    ASSERT_TRUE(after.has_value()) << name;
    EXPECT_DOUBLE_EQ(*after, *before[name]) << name;
  }
  ExpectMetricNear(MetricValue(scrape, "sigma_track2", l), reports[1].track2());  // not a made-up 0
  EXPECT_EQ(MetricValue(scrape, "sigma_alert",
                        {{"job_name", "failed_last"}, {"tap", "default"}, {"rule", "track1_invalid_rho"},
                         {"severity", "warning"}}),
            1.0);
  EXPECT_FALSE(MetricValue(scrape, "sigma_generations_to_critical", l).has_value());
}

TEST(PersistenceTest, PinnedAndCrossJobBaselines) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  const int64_t m = 8, n = 500;
  std::vector<v1::GenerationReport> ref;
  for (int g = 0; g < 2; ++g) {
    v1::IngestResponse resp;
    ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("reference", g, 0, 1, m, v1::DTYPE_FP64), GaussianRows(n, m, 40 + g),
                          0, n, 100, v1::DTYPE_FP64, &resp)
                    .ok());
    ref.push_back(resp.report());
  }
  // Pin generation 1 as the baseline of the reference job itself.
  v1::ConfigureJobRequest cj;
  cj.set_create(true);
  cj.set_job("reference");
  cj.mutable_config()->set_baseline_generation(1);
  v1::JobInfo info;
  grpc::ClientContext c1;
  ASSERT_TRUE(d->stub->ConfigureJob(&c1, cj, &info).ok());
  v1::IngestResponse r2;
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("reference", 2, 0, 1, m, v1::DTYPE_FP64), GaussianRows(n, m, 42), 0, n,
                        100, v1::DTYPE_FP64, &r2)
                  .ok());
  EXPECT_EQ(r2.report().baseline_generation(), 1);
  EXPECT_DOUBLE_EQ(r2.report().track2_drift(), r2.report().track2() - ref[1].track2());
  // Another job compared against the reference's generation 0.
  v1::JobConfig other;
  other.set_baseline_job("reference");
  other.set_baseline_generation(0);
  v1::IngestResponse o;
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("candidate", 0, 0, 1, m, v1::DTYPE_FP64, std::nullopt, &other),
                        GaussianRows(n, m, 77), 0, n, 100, v1::DTYPE_FP64, &o)
                  .ok());
  EXPECT_EQ(o.report().baseline_job(), "reference");
  EXPECT_EQ(o.report().baseline_generation(), 0);
  EXPECT_DOUBLE_EQ(o.report().track2_drift(), o.report().track2() - ref[0].track2());
}

}  // namespace
}  // namespace sigma::server::testing
