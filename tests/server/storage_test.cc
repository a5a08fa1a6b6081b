// The SQLite store's schema versions: a database written by an older sigmad
// (version 1, created here with the exact DDL version 1 used) is migrated in
// place at Open with its reports intact and the new columns back-filled; a
// database from a newer sigmad is refused; a fresh one starts at the latest.
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server_test_util.h"
#include "sigma/server/storage.h"

namespace sigma::server::testing {
namespace {

void ExecOrDie(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "") << "\n" << sql;
}

// The schema as sigmad wrote it at version 1.
constexpr char kVersion1Ddl[] =
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "CREATE TABLE jobs (name TEXT PRIMARY KEY, config BLOB NOT NULL, m INTEGER NOT NULL DEFAULT 0,"
    "  created_unix_ms INTEGER NOT NULL, updated_unix_ms INTEGER NOT NULL);"
    "CREATE TABLE configs (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL REFERENCES jobs(name),"
    "  config BLOB NOT NULL, set_unix_ms INTEGER NOT NULL);"
    "CREATE TABLE reports (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL REFERENCES jobs(name),"
    "  tap TEXT NOT NULL, generation INTEGER NOT NULL, m INTEGER NOT NULL, n REAL NOT NULL,"
    "  n_a INTEGER NOT NULL, backend TEXT NOT NULL,"
    "  track1_lower REAL, track1_upper REAL, track2 REAL, track2_ci_halfwidth REAL,"
    "  track1_drift REAL, track2_drift REAL, divergence REAL, drift_halfwidth REAL,"
    "  baseline_job TEXT, baseline_generation INTEGER, failed INTEGER NOT NULL,"
    "  sealed_unix_ms INTEGER NOT NULL, report BLOB NOT NULL, UNIQUE (job, tap, generation));"
    "CREATE INDEX reports_by_job ON reports (job, tap, generation);"
    "INSERT INTO schema_version (version) VALUES (1);";

v1::GenerationReport MakeReport(int64_t generation, const char* severity, double compute_seconds) {
  v1::GenerationReport r;
  r.set_job("old");
  r.set_tap("default");
  r.set_generation(generation);
  r.set_m(8);
  r.set_n(100);
  r.set_n_a(64);
  r.set_backend("cpu");
  r.set_track2(-1.5 - generation);
  r.set_compute_seconds(compute_seconds);
  r.set_sealed_unix_ms(1700000000000 + generation);
  if (severity) {
    v1::Alert* info = r.add_alerts();
    info->set_rule("low_confidence");
    info->set_severity("info");
    v1::Alert* a = r.add_alerts();
    a->set_rule("collapse_contraction");
    a->set_severity(severity);
  }
  return r;
}

void InsertVersion1Report(sqlite3* db, const v1::GenerationReport& r) {
  std::string blob;
  r.SerializeToString(&blob);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "INSERT INTO reports (job, tap, generation, m, n, n_a, backend, track2, failed,"
                               " sealed_unix_ms, report) VALUES ('old', 'default', ?1, 8, 100, 64, 'cpu', ?2, 0,"
                               " ?3, ?4);",
                               -1, &st, nullptr),
            SQLITE_OK);
  sqlite3_bind_int64(st, 1, r.generation());
  sqlite3_bind_double(st, 2, r.track2());
  sqlite3_bind_int64(st, 3, r.sealed_unix_ms());
  sqlite3_bind_blob(st, 4, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
}

std::vector<std::string> Column(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  std::vector<std::string> out;
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  while (st && sqlite3_step(st) == SQLITE_ROW) out.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

TEST(StorageSchemaTest, VersionOneIsMigratedWithReportsIntact) {
  TempDir dir;
  const std::string path = dir.path() + "/v1.db";
  const std::vector<v1::GenerationReport> written = {MakeReport(0, nullptr, 0.25), MakeReport(1, "warning", 0.5),
                                                     MakeReport(2, "critical", 0.75)};
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ExecOrDie(db, kVersion1Ddl);
    v1::JobConfig config;
    config.set_n_a(64);
    std::string blob;
    config.SerializeToString(&blob);
    ExecOrDie(db, "INSERT INTO jobs VALUES ('old', X'" +
                      [&] {
                        std::string hex;
                        for (unsigned char c : blob) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
                        return hex;
                      }() + "', 8, 1, 1);");
    for (const auto& r : written) InsertVersion1Report(db, r);
    sqlite3_close(db);
  }
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->schema_version(), kSchemaVersion);
    std::vector<StoredJob> jobs;
    std::vector<v1::GenerationReport> reports;
    ASSERT_TRUE((*store)->LoadAll(&jobs, &reports).ok());
    ASSERT_EQ(jobs.size(), 1u);
    EXPECT_EQ(jobs[0].config.n_a(), 64);
    ASSERT_EQ(reports.size(), written.size());
    for (size_t i = 0; i < written.size(); ++i)
      EXPECT_EQ(reports[i].SerializeAsString(), written[i].SerializeAsString()) << i;
    // A report sealed after the migration gets the columns filled on insert.
    v1::GenerationReport later = MakeReport(3, "critical", 1.0);
    ASSERT_TRUE((*store)->Commit({}, {later}).ok());
  }
  EXPECT_EQ(Column(path, "SELECT severity FROM reports ORDER BY generation;"),
            (std::vector<std::string>{"ok", "warning", "critical", "critical"}));
  EXPECT_EQ(Column(path, "SELECT compute_seconds FROM reports ORDER BY generation;"),
            (std::vector<std::string>{"0.25", "0.5", "0.75", "1.0"}));
  EXPECT_EQ(Column(path, "SELECT version FROM schema_version;"),
            std::vector<std::string>{std::to_string(kSchemaVersion)});
  EXPECT_EQ(Column(path, "SELECT finished_unix_ms FROM jobs;"), std::vector<std::string>{"0"});  // version 3
  // Version 4 (runs): every stored report is run "1", ids (the seal order) kept.
  EXPECT_EQ(Column(path, "SELECT run || ' ' || id FROM reports ORDER BY generation;"),
            (std::vector<std::string>{"1 1", "1 2", "1 3", "1 4"}));
  // Version 5: the runs table, back-filled (first_report: the run's first id).
  EXPECT_EQ(Column(path, "SELECT job || ' ' || run || ' ' || first_report FROM runs;"),
            std::vector<std::string>{"old 1 1"});
  EXPECT_EQ(Column(path, "SELECT count(*) FROM sqlite_master WHERE name IN ('reports_by_job', 'reports_by_severity');"),
            std::vector<std::string>{"2"});
  EXPECT_EQ(Column(path, "PRAGMA integrity_check;"), std::vector<std::string>{"ok"});
  // Opening again is a no-op.
  auto again = Store::Open(path);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->schema_version(), kSchemaVersion);
}

TEST(StorageSchemaTest, FreshDatabaseStartsAtTheLatestVersion) {
  TempDir dir;
  auto store = Store::Open(dir.path() + "/new.db");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->schema_version(), kSchemaVersion);
  ASSERT_TRUE((*store)->Commit({}, {}).ok());
}

TEST(StorageSchemaTest, NewerVersionIsRefusedAndLeftAlone) {
  TempDir dir;
  const std::string path = dir.path() + "/future.db";
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ExecOrDie(db, kVersion1Ddl);
    ExecOrDie(db, "UPDATE schema_version SET version = 99;");
    sqlite3_close(db);
  }
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("schema version 99 is newer"), std::string::npos) << store.status();
  EXPECT_EQ(Column(path, "SELECT version FROM schema_version;"), std::vector<std::string>{"99"});
}

// Two daemons on one database would each seal from their own stale view (a
// second first-sealed baseline, UNIQUE violations at commit): the second Store
// (and so the second sigmad) is refused while the first holds the file.
TEST(StorageLockTest, SecondStoreOnTheSameDatabaseIsRefused) {
  TempDir dir;
  const std::string path = dir.path() + "/shared.db";
  {
    auto first = Store::Open(path);
    ASSERT_TRUE(first.ok()) << first.status();
    auto second = Store::Open(path);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(second.status().message().find("in use by another sigmad"), std::string::npos) << second.status();
    // Also through a symbolic link to the same file.
    ASSERT_EQ(symlink(path.c_str(), (dir.path() + "/link.db").c_str()), 0);
    auto linked = Store::Open(dir.path() + "/link.db");
    ASSERT_FALSE(linked.ok());
    EXPECT_EQ(linked.status().code(), absl::StatusCode::kFailedPrecondition) << linked.status();
    // The first one is unaffected.
    ASSERT_TRUE((*first)->Commit({StoredJob{"old", {}, 8}}, {MakeReport(0, nullptr, 0)}).ok());

    // The same through the daemon: the second Start fails, naming the file.
    TempDir other;
    DaemonOptions options = TestOptions(other.path());
    options.db = path;
    Daemon daemon;
    auto ports = daemon.Start(options);
    ASSERT_FALSE(ports.ok());
    EXPECT_NE(ports.status().message().find(path), std::string::npos) << ports.status();
  }
  // Released with the first Store.
  auto again = Store::Open(path);
  ASSERT_TRUE(again.ok()) << again.status();
}

// A database file sigmad may not write is refused at Open (SQLite would open it
// read-only, the daemon would start and then fail every seal). As root, the
// check runs with the effective uid of nobody, for whom the mode applies.
TEST(StorageLockTest, ReadOnlyDatabaseIsRefused) {
  TempDir dir;
  const std::string path = dir.path() + "/ro.db";
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
  }
  ASSERT_EQ(chmod(dir.path().c_str(), 0777), 0);
  ASSERT_EQ(chmod(path.c_str(), 0444), 0);
  const bool root = geteuid() == 0;
  if (root) ASSERT_EQ(seteuid(65534), 0);
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  if (root) ASSERT_EQ(seteuid(0), 0);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(store.status().message().find("read-only"), std::string::npos) << store.status();
}

TEST(StorageSchemaTest, SeverityIsTheHighestAlert) {
  EXPECT_EQ(ReportSeverity(MakeReport(0, nullptr, 0)), "ok");
  EXPECT_EQ(ReportSeverity(MakeReport(0, "warning", 0)), "warning");
  EXPECT_EQ(ReportSeverity(MakeReport(0, "critical", 0)), "critical");
  v1::GenerationReport info_only;
  info_only.add_alerts()->set_severity("info");
  EXPECT_EQ(ReportSeverity(info_only), "info");
}

// Only the latest --history-cache-per-tap reports stay in memory; the older
// ones are read back from SQLite, and nothing a client sees changes: history,
// retries of old generations, CloseGeneration of them, drift against an
// evicted baseline and the forecast are identical to a daemon that holds all.
TEST(HistoryCacheTest, EvictedReportsAreServedFromTheDatabase) {
  constexpr int32_t kM = 8;
  constexpr int kGenerations = 7;
  TempDir small_dir, big_dir;
  DaemonOptions small = TestOptions(small_dir.path());
  small.history_cache_per_tap = 2;
  DaemonOptions big = TestOptions(big_dir.path());
  big.history_cache_per_tap = 1000;
  auto ds = StartDaemon(small);
  auto db = StartDaemon(big);
  ASSERT_NE(ds, nullptr);
  ASSERT_NE(db, nullptr);
  v1::JobConfig cfg;
  cfg.set_n_a(64);
  std::vector<v1::GenerationReport> seen;
  for (int g = 0; g < kGenerations; ++g) {
    // Contracting: later generations put more weight on the first columns.
    const Rows rows = GaussianRows(200, kM, 100 + g, 1.0 / (1 + g), 2);
    v1::IngestResponse a, b;
    for (auto* d : {ds.get(), db.get()}) {
      v1::IngestResponse& resp = d == ds.get() ? a : b;
      ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("h", g, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg), rows, 0,
                            200, 50, v1::DTYPE_FP32, &resp)
                      .ok());
      ASSERT_TRUE(resp.sealed());
    }
    ExpectSameValues(a.report(), b.report());
    EXPECT_EQ(a.report().baseline_generation(), 0);
    EXPECT_EQ(a.report().has_generations_to_critical(), b.report().has_generations_to_critical()) << g;
    if (a.report().has_generations_to_critical())
      EXPECT_EQ(a.report().generations_to_critical(), b.report().generations_to_critical()) << g;
    seen.push_back(a.report());
  }
  // History: every generation, byte for byte what the client was told.
  v1::GetHistoryRequest hreq;
  hreq.set_job("h");
  v1::GetHistoryResponse history;
  grpc::ClientContext hctx;
  ASSERT_TRUE(ds->stub->GetHistory(&hctx, hreq, &history).ok());
  ASSERT_EQ(history.reports_size(), kGenerations);
  for (int g = 0; g < kGenerations; ++g)
    EXPECT_EQ(history.reports(g).SerializeAsString(), seen[g].SerializeAsString()) << g;
  // A retry of generation 0 (evicted) gets its stored report; so does a close.
  v1::IngestResponse retry;
  const Rows rows0 = GaussianRows(200, kM, 100, 1.0, 2);
  ASSERT_TRUE(SendShare(ds->stub.get(), MakeOpen("h", 0, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg), rows0, 0,
                        200, 50, v1::DTYPE_FP32, &retry)
                  .ok());
  EXPECT_EQ(retry.report().SerializeAsString(), seen[0].SerializeAsString());
  EXPECT_EQ(retry.batches_accepted(), 0);
  v1::CloseGenerationRequest creq;
  creq.set_job("h");
  creq.set_generation(1);
  v1::GenerationReport closed;
  grpc::ClientContext cctx;
  ASSERT_TRUE(ds->stub->CloseGeneration(&cctx, creq, &closed).ok());
  EXPECT_EQ(closed.SerializeAsString(), seen[1].SerializeAsString());

  // Proof that generation 0 came from the database in the small daemon and
  // from memory in the big one: remove it from both files behind their backs.
  for (const std::string& path : {small.db, big.db}) {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    sqlite3_busy_timeout(raw, 5000);
    ExecOrDie(raw, "DELETE FROM reports WHERE generation = 0;");
    sqlite3_close(raw);
  }
  v1::IngestResponse gone, kept;
  grpc::Status s_small = SendShare(ds->stub.get(), MakeOpen("h", 0, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg),
                                   rows0, 0, 200, 50, v1::DTYPE_FP32, &gone);
  EXPECT_EQ(s_small.error_code(), grpc::StatusCode::UNAVAILABLE) << s_small.error_message();
  EXPECT_NE(s_small.error_message().find("no stored report"), std::string::npos) << s_small.error_message();
  ASSERT_TRUE(SendShare(db->stub.get(), MakeOpen("h", 0, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg), rows0, 0,
                        200, 50, v1::DTYPE_FP32, &kept)
                  .ok());
  EXPECT_EQ(kept.report().generation(), 0);
  // The latest generation is held in the small daemon too.
  v1::IngestResponse latest;
  const Rows rows6 = GaussianRows(200, kM, 100 + kGenerations - 1, 1.0 / kGenerations, 2);
  ASSERT_TRUE(SendShare(ds->stub.get(),
                        MakeOpen("h", kGenerations - 1, 0, 1, kM, v1::DTYPE_FP32, std::nullopt, &cfg), rows6, 0, 200,
                        50, v1::DTYPE_FP32, &latest)
                  .ok());
  EXPECT_EQ(latest.report().SerializeAsString(), seen[kGenerations - 1].SerializeAsString());
}

}  // namespace
}  // namespace sigma::server::testing
