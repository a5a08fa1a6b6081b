// Flags and the YAML configuration file.
#include <fstream>

#include "gtest/gtest.h"
#include "server_test_util.h"
#include "sigma/server/config.h"
#include "sigma/server/scheduler.h"

namespace sigma::server::testing {
namespace {

absl::StatusOr<DaemonOptions> Parse(std::vector<std::string> args, bool* help) {
  std::vector<char*> argv{const_cast<char*>("sigmad")};
  for (auto& a : args) argv.push_back(a.data());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data(), help);
}

TEST(ConfigTest, DefaultsAndFlags) {
  bool help = false;
  auto o = Parse({}, &help);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->listen, "127.0.0.1:50051");
  EXPECT_EQ(o->metrics_listen, "127.0.0.1:9464");
  EXPECT_EQ(o->db, "./var/sigma.db");
  EXPECT_EQ(o->backend, "auto");
  o = Parse({"--listen", "0.0.0.0:0", "--metrics-listen=127.0.0.1:0", "--max-jobs", "3", "--backend", "cpu",
             "--port-file", "/tmp/x.json", "--seal-batch-window-ms=0", "--max-open-snapshots", "9",
             "--max-memory-bytes", "1000", "--max-message-bytes", "2000"},
            &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->listen, "0.0.0.0:0");
  EXPECT_EQ(o->max_jobs, 3);
  EXPECT_EQ(o->max_open_snapshots, 9);
  EXPECT_EQ(o->max_memory_bytes, 1000);
  EXPECT_EQ(o->max_message_bytes, 2000);
  EXPECT_EQ(o->seal_batch_window_ms, 0);
  EXPECT_EQ(o->port_file, "/tmp/x.json");
  EXPECT_FALSE(Parse({"--backend", "tpu"}, &help).ok());
  EXPECT_FALSE(Parse({"--max-jobs", "x"}, &help).ok());
  EXPECT_FALSE(Parse({"--bogus", "1"}, &help).ok());
  EXPECT_FALSE(Parse({"--listen", "nohost"}, &help).ok());
  ASSERT_TRUE(Parse({"--help"}, &help).ok());
  EXPECT_TRUE(help);
}

// --db-timeout-ms: the PostgreSQL statement_timeout (storage.h StoreOptions).
TEST(ConfigTest, DbTimeoutFlag) {
  bool help = false;
  auto o = Parse({}, &help);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->db_timeout_ms, 10000);
  o = Parse({"--db-timeout-ms", "0"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->db_timeout_ms, 0);
  const absl::Status negative = Parse({"--db-timeout-ms=-1"}, &help).status();
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.message().find("--db-timeout-ms must be >= 0"), std::string::npos) << negative;
  EXPECT_FALSE(Parse({"--db-timeout-ms", "soon"}, &help).ok());
  EXPECT_NE(UsageText().find("--db-timeout-ms"), std::string::npos);
}

TEST(ConfigTest, YamlFileThenFlagsOverride) {
  TempDir dir;
  const std::string path = dir.path() + "/sigmad.yaml";
  std::ofstream(path) << "listen: 127.0.0.1:7000\n"
                         "max-jobs: 12\n"
                         "max_open_snapshots: 5\n"
                         "defaults:\n"
                         "  delta: 1.0e-4\n"
                         "  thresholds: {drift_warning: 0.2, drift_critical: 0.8}\n"
                         "jobs:\n"
                         "  opt125m:\n"
                         "    n_a: 12288\n"
                         "    preprocessing: none\n"
                         "    rho: 4.0\n";
  bool help = false;
  auto o = Parse({"--config", path, "--max-jobs", "20"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->listen, "127.0.0.1:7000");
  EXPECT_EQ(o->max_jobs, 20);
  EXPECT_EQ(o->max_open_snapshots, 5);
  EXPECT_EQ(o->job_defaults.delta(), 1e-4);
  EXPECT_EQ(o->job_defaults.thresholds().drift_critical(), 0.8);
  ASSERT_EQ(o->job_configs.count("opt125m"), 1u);
  EXPECT_EQ(o->job_configs["opt125m"].n_a(), 12288);
  EXPECT_EQ(o->job_configs["opt125m"].preprocessing(), v1::PREPROCESSING_NONE);

  std::ofstream(path) << "defaults:\n  delta: -1\n";
  EXPECT_FALSE(Parse({"--config", path}, &help).ok());
  std::ofstream(path) << "jobs:\n  x: {unknown_key: 1}\n";
  EXPECT_FALSE(Parse({"--config", path}, &help).ok());
  EXPECT_FALSE(Parse({"--config", dir.path() + "/missing.yaml"}, &help).ok());
  // Thresholds are checked as a job gets them: a warning above the (default) critical.
  std::ofstream(path) << "defaults:\n  thresholds: {drift_warning: 0.7}\n";
  auto inverted = Parse({"--config", path}, &help);
  ASSERT_FALSE(inverted.ok());
  EXPECT_NE(inverted.status().message().find(
                "defaults: config.thresholds: drift_warning (0.7) must be <= drift_critical (0.5)"),
            std::string::npos)
      << inverted.status();
  std::ofstream(path) << "defaults:\n  thresholds: {drift_critical: 0.8}\n"
                         "jobs:\n  x: {thresholds: {drift_warning: 0.9}}\n";
  inverted = Parse({"--config", path}, &help);
  ASSERT_FALSE(inverted.ok());
  EXPECT_NE(inverted.status().message().find("jobs.x: config.thresholds"), std::string::npos) << inverted.status();
  std::ofstream(path) << "defaults:\n  thresholds: {drift_critical: 0.8}\n"
                         "jobs:\n  x: {thresholds: {drift_warning: 0.7}}\n";
  EXPECT_TRUE(Parse({"--config", path}, &help).ok());
}

TEST(ConfigTest, YamlDefaultsApplyToJobs) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.job_defaults.set_delta(1e-4);
  o.job_configs["special"].set_n_a(32);
  auto d = StartDaemon(o);
  ASSERT_NE(d, nullptr);
  v1::IngestResponse resp;
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("special", 0, 0, 1, 8, v1::DTYPE_FP32), GaussianRows(100, 8, 1), 0, 100,
                        50, v1::DTYPE_FP32, &resp)
                  .ok());
  EXPECT_EQ(resp.report().n_a(), 32);
  v1::ListJobsResponse jobs;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d->stub->ListJobs(&ctx, v1::ListJobsRequest(), &jobs).ok());
  EXPECT_EQ(jobs.jobs(0).config().delta(), 1e-4);
  EXPECT_EQ(jobs.jobs(0).config().n_a(), 32);
}

TEST(ConfigTest, PortInUseFailsToStart) {
  TempDir dir;
  auto first = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(first, nullptr);
  TempDir dir2;
  DaemonOptions o = TestOptions(dir2.path());
  o.listen = "127.0.0.1:" + std::to_string(first->ports.grpc_port);
  Daemon second;
  auto ports = second.Start(o);
  EXPECT_FALSE(ports.ok());
  EXPECT_NE(std::string(ports.status().message()).find("--listen"), std::string::npos) << ports.status();
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "127.0.0.1:" + std::to_string(first->ports.metrics_port);
  Daemon third;
  ports = third.Start(o);
  EXPECT_FALSE(ports.ok());
  EXPECT_NE(std::string(ports.status().message()).find("--metrics-listen"), std::string::npos) << ports.status();
}

TEST(ConfigTest, Names) {
  EXPECT_TRUE(ValidName("a"));
  EXPECT_TRUE(ValidName("opt-125m:layer_11.v2"));
  EXPECT_TRUE(ValidName(std::string(128, 'x')));
  EXPECT_FALSE(ValidName(std::string(129, 'x')));
  EXPECT_FALSE(ValidName(""));
  EXPECT_FALSE(ValidName("a b"));
  EXPECT_FALSE(ValidName("a/b"));
  EXPECT_FALSE(ValidName("é"));
}

}  // namespace
}  // namespace sigma::server::testing
