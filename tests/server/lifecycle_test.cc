// Nothing is held forever (issue 14 item 2) and the event log (item 5):
// snapshot idle expiry on an Engine driven by an injected clock, the idle
// stream watchdog on a real gRPC server with an injected clock, a refused
// stream's empty snapshot, and the Logger's format and rate limit.
#include <atomic>
#include <future>
#include <mutex>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server_test_util.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/server/api.h"
#include "sigma/server/log.h"
#include "sigma/server/scheduler.h"

namespace sigma::server::testing {
namespace {

// A monotonic clock the test moves by hand.
struct FakeClock {
  std::atomic<int64_t> seconds{1000};
  SteadyTime now() const { return SteadyTime(std::chrono::seconds(seconds.load())); }
};

// An Engine on an in-memory store and the CPU backend, no reaper thread.
struct EngineFixture {
  FakeClock clock;
  Metrics metrics;
  std::mutex log_mu;
  std::vector<std::string> log;
  std::unique_ptr<Engine> engine;

  explicit EngineFixture(DaemonOptions o) {
    o.db = ":memory:";
    o.seal_batch_window_ms = 0;
    auto store = Store::Open(o.db);
    sigma::BackendOptions bo;
    bo.kind = sigma::BackendKind::kCpu;
    auto backend = sigma::MakeBackend(bo);
    EngineHooks hooks;
    hooks.clock = [this] { return clock.now(); };
    hooks.log_sink = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(log_mu);
      log.push_back(line);
    };
    hooks.reaper = false;
    engine = std::make_unique<Engine>(o, std::move(*store), std::move(*backend), &metrics, hooks);
    EXPECT_TRUE(engine->Restore().ok());
    engine->StartWorker();
  }
  double Metric(const std::string& name) {
    const std::string text = prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
    return MetricValue(text, name, {}).value_or(-1);
  }
  std::string Log() {
    std::lock_guard<std::mutex> lock(log_mu);
    std::string all;
    for (const auto& l : log) all += l + "\n";
    return all;
  }
};

TEST(SnapshotExpiryTest, IdleSnapshotsAreDiscardedCountedLoggedAndRefusedLater) {
  DaemonOptions o;
  o.snapshot_idle_timeout_s = 60;
  EngineFixture f(o);
  const Rows rows = GaussianRows(50, 8, 3);
  IngestSession rank0, rank1, late;
  ASSERT_TRUE(f.engine->Open(MakeOpen("exp", 0, 0, 2, 8, v1::DTYPE_FP32).open(), &rank0).ok());
  ASSERT_TRUE(f.engine->Open(MakeOpen("exp", 0, 1, 2, 8, v1::DTYPE_FP32).open(), &rank1).ok());
  ASSERT_TRUE(f.engine->Batch(&rank0, MakeBatch(rows, 0, 50, 0, v1::DTYPE_FP32).batch()).ok());
  EXPECT_GT(f.Metric("sigma_open_snapshot_bytes"), 0);
  f.clock.seconds += 59;  // not yet idle long enough
  EXPECT_EQ(f.engine->ExpireIdle(), 0);
  f.clock.seconds += 2;
  EXPECT_EQ(f.engine->ExpireIdle(), 1);
  EXPECT_EQ(f.Metric("sigma_expired_snapshots_total"), 1);
  EXPECT_EQ(f.Metric("sigma_open_snapshot_bytes"), 0);  // memory returned
  EXPECT_EQ(f.Metric("sigma_open_snapshots"), 0);
  EXPECT_NE(f.Log().find("expiry"), std::string::npos) << f.Log();
  // The rank still streaming and a rank opening again are told why.
  const absl::Status batch = f.engine->Batch(&rank1, MakeBatch(rows, 0, 10, 0, v1::DTYPE_FP32).batch());
  EXPECT_EQ(batch.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(batch.message().find("expired"), absl::string_view::npos) << batch;
  const absl::Status open = f.engine->Open(MakeOpen("exp", 0, 0, 2, 8, v1::DTYPE_FP32).open(), &late);
  EXPECT_EQ(open.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(open.message().find("--snapshot-idle-timeout-s"), absl::string_view::npos) << open;
}

TEST(SnapshotExpiryTest, DataKeepsASnapshotAlive) {
  DaemonOptions o;
  o.snapshot_idle_timeout_s = 60;
  EngineFixture f(o);
  const Rows rows = GaussianRows(40, 8, 4);
  IngestSession s;
  ASSERT_TRUE(f.engine->Open(MakeOpen("alive", 0, 0, 1, 8, v1::DTYPE_FP32).open(), &s).ok());
  for (int i = 0; i < 4; ++i) {
    f.clock.seconds += 50;
    ASSERT_TRUE(f.engine->Batch(&s, MakeBatch(rows, i * 10, i * 10 + 10, i, v1::DTYPE_FP32).batch()).ok());
    EXPECT_EQ(f.engine->ExpireIdle(), 0);
  }
  std::promise<absl::Status> done;
  v1::EndOfShare end;
  f.engine->EndShare(&s, &end, [&](const absl::Status& st, const v1::IngestResponse&) { done.set_value(st); });
  EXPECT_TRUE(done.get_future().get().ok());
  EXPECT_NE(f.Log().find("seal job=alive tap=default generation=0 m=8"), std::string::npos) << f.Log();
}

TEST(RefusedStreamTest, LeavesNoEmptyOpenSnapshot) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  const Rows rows = GaussianRows(10, 8, 5);
  v1::IngestRequest bad = MakeBatch(rows, 0, 10, 0, v1::DTYPE_FP32);
  bad.mutable_batch()->set_rows(3);  // size mismatch
  v1::IngestResponse resp;
  const grpc::Status s = SendStream(d->stub.get(), {MakeOpen("refused", 0, 0, 1, 8, v1::DTYPE_FP32), bad}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(MetricValue(Scrape(d->ports.metrics_port), "sigma_open_snapshots", {}).value_or(-1), 0);
}

TEST(StreamIdleTest, SilentStreamIsCancelledWithDeadlineExceeded) {
  DaemonOptions o;
  EngineFixture f(o);
  MonitorService service(f.engine.get(), nullptr, &f.metrics, {}, /*stream_idle_timeout_s=*/30,
                         [&f] { return f.clock.now(); }, /*watchdog_thread=*/false);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_GT(port, 0);
  auto stub = MakeStub(port);
  grpc::ClientContext ctx;
  v1::IngestResponse resp;
  auto writer = stub->Ingest(&ctx, &resp);
  ASSERT_TRUE(writer->Write(MakeOpen("idle", 0, 0, 1, 8, v1::DTYPE_FP32)));
  for (int i = 0; i < 1000 && f.Metric("sigma_open_snapshots") != 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(f.Metric("sigma_open_snapshots"), 1);
  EXPECT_EQ(service.watchdog()->Check(), 0);  // not idle yet
  f.clock.seconds += 31;
  EXPECT_EQ(service.watchdog()->Check(), 1);
  const grpc::Status s = writer->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_NE(s.error_message().find("--stream-idle-timeout-s"), std::string::npos);
  EXPECT_EQ(f.Metric("sigma_open_snapshots"), 0);  // the empty snapshot it opened is gone
  server->Shutdown();
}

// docs/server.md: a Batch after EndOfShare, or a second EndOfShare, on one
// stream is FAILED_PRECONDITION (they were answered OK).
TEST(EndOfShareTest, MessagesAfterEndOfShareAreRefused) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  const Rows rows = GaussianRows(40, 8, 6);
  v1::IngestResponse resp;
  grpc::Status s = SendStream(d->stub.get(),
                              {MakeOpen("after", 0, 0, 1, 8, v1::DTYPE_FP32), MakeBatch(rows, 0, 20, 0, v1::DTYPE_FP32),
                               MakeEnd(), MakeBatch(rows, 20, 40, 1, v1::DTYPE_FP32)},
                              &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("Batch after EndOfShare"), std::string::npos) << s.error_message();
  s = SendStream(d->stub.get(),
                 {MakeOpen("twice", 0, 0, 1, 8, v1::DTYPE_FP32), MakeBatch(rows, 0, 20, 0, v1::DTYPE_FP32), MakeEnd(),
                  MakeEnd()},
                 &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("EndOfShare sent twice"), std::string::npos) << s.error_message();
  // A well-formed stream still seals and answers with its report.
  s = SendStream(d->stub.get(),
                 {MakeOpen("fine", 0, 0, 1, 8, v1::DTYPE_FP32), MakeBatch(rows, 0, 40, 0, v1::DTYPE_FP32), MakeEnd()},
                 &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(resp.sealed());
}

// docs/server.md: failed seals publish no track values; a tap whose only seal
// failed exported its track gauges as 0.
TEST(FailedSealGaugesTest, TapWithOnlyAFailedSealExportsNoTrackGauges) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  v1::JobConfig cfg;
  cfg.set_preprocessing(v1::PREPROCESSING_NONE);
  cfg.set_rho(1e6);
  Rows rows = GaussianRows(400, 8, 301);
  for (double& v : rows.values) v *= 1e153;  // each squared norm finite, but the Gram matrix overflows
  v1::IngestResponse resp;
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("onlyfail", 0, 0, 1, 8, v1::DTYPE_FP64, std::nullopt, &cfg), rows, 0,
                        400, 100, v1::DTYPE_FP64, &resp)
                  .ok());
  ASSERT_TRUE(resp.report().flags().cholesky_failed());
  const std::string scrape = Scrape(d->ports.metrics_port);
  const std::map<std::string, std::string> l{{"job_name", "onlyfail"}, {"tap", "default"}};
  EXPECT_TRUE(MetricValue(scrape, "sigma_generation", l).has_value());
  for (const char* gauge : {"sigma_track1_upper", "sigma_track2", "sigma_track2_drift", "sigma_divergence"})
    EXPECT_FALSE(MetricValue(scrape, gauge, l).has_value()) << gauge;
}

TEST(LoggerTest, TextAndJsonLines) {
  std::vector<std::string> lines;
  const absl::Time t = absl::FromUnixMillis(1767323045678);  // 2026-01-02T03:04:05.678Z
  Logger text(Logger::Options{}, [&](const std::string& l) { lines.push_back(l); }, [t] { return t; });
  text.Log(LogLevel::kInfo, "seal", {{"job", "a b"}, {"m", "8"}});
  text.Log(LogLevel::kDebug, "hidden", {});  // below --log-level info
  Logger::Options jo;
  jo.format = LogFormat::kJson;
  Logger json(jo, [&](const std::string& l) { lines.push_back(l); }, [t] { return t; });
  json.Log(LogLevel::kError, "store_failure", {{"error", "disk \"full\"\n"}});
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "2026-01-02T03:04:05.678Z info seal job=\"a b\" m=8");
  EXPECT_EQ(lines[1],
            "{\"ts\":\"2026-01-02T03:04:05.678Z\",\"level\":\"error\",\"event\":\"store_failure\","
            "\"error\":\"disk \\\"full\\\"\\u000a\"}");
  EXPECT_FALSE(ParseLogFormat("xml").ok());
  EXPECT_FALSE(ParseLogLevel("loud").ok());
}

TEST(LoggerTest, RefusalsAreRateLimited) {
  std::vector<std::string> lines;
  absl::Time now = absl::FromUnixSeconds(1000);
  Logger::Options o;
  o.refusal_burst = 3;
  o.refusal_period = absl::Seconds(10);
  Logger log(o, [&](const std::string& l) { lines.push_back(l); }, [&now] { return now; });
  for (int i = 0; i < 1000; ++i) log.Refusal("Ingest", "INVALID_ARGUMENT", "size_mismatch", "bad batch");
  EXPECT_EQ(lines.size(), 3u);  // a flood writes the burst only
  now += absl::Seconds(11);
  log.Refusal("Ingest", "INVALID_ARGUMENT", "size_mismatch", "bad batch");
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines[3].find("suppressed=997"), std::string::npos) << lines[3];
}

}  // namespace
}  // namespace sigma::server::testing
