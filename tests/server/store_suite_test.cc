// The Store contract (storage.h) run against both implementations: SQLite
// (a file in a temporary directory) and PostgreSQL (a real server,
// pg_test_util.h; skipped with the reason when PostgreSQL is not installed).
// Then what only the shared store does: two Stores on one database, the
// server unreachable at Open, stopped and restarted under a live Store.
#include <sqlite3.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pg_test_util.h"
#include "server_test_util.h"
#include "sigma/server/storage.h"
#include "sigma/server/store_migrate.h"

namespace sigma::server::testing {
namespace {

v1::GenerationReport Report(const std::string& job, const std::string& tap, int64_t generation, double track2) {
  v1::GenerationReport r;
  r.set_job(job);
  r.set_tap(tap);
  r.set_generation(generation);
  r.set_m(8);
  r.set_n(100);
  r.set_n_a(64);
  r.set_backend("cpu");
  r.set_track2(track2);
  r.set_compute_seconds(0.125);
  r.set_sealed_unix_ms(1700000000000 + generation);
  v1::Alert* a = r.add_alerts();
  a->set_rule("collapse_contraction");
  a->set_severity(generation % 2 ? "critical" : "warning");
  return r;
}

StoredJob Job(const std::string& name, int64_t n_a) {
  StoredJob j{name, {}, 8};
  j.config.set_n_a(n_a);
  return j;
}

// One implementation: a fresh database and a way to query it behind the Store.
class StoreSuite : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgresql") {
      std::string why;
      pg_ = PgServer::Get(&why);
      if (pg_ == nullptr) GTEST_SKIP() << "PostgreSQL: " << why;
      db_ = pg_->NewDatabase();
    } else {
      db_ = dir_.path() + "/store.db";
    }
  }
  // First column of every row of `sql`, as text.
  std::vector<std::string> Column(const std::string& sql) {
    if (pg_) {
      auto r = pg_->Query(db_, sql);
      EXPECT_TRUE(r.ok()) << r.status();
      return r.ok() ? *r : std::vector<std::string>{};
    }
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(db_.c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    std::vector<std::string> out;
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
      const unsigned char* t = sqlite3_column_text(st, 0);
      out.emplace_back(t ? reinterpret_cast<const char*>(t) : "");
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  }

  TempDir dir_;
  PgServer* pg_ = nullptr;
  std::string db_;
};

TEST_P(StoreSuite, FreshStoreRoundTripsJobsAndReportsInSealOrder) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->schema_version(), kSchemaVersion);
  EXPECT_EQ(std::string((*store)->kind()), GetParam());
  EXPECT_TRUE((*store)->Health().ok());
  const std::vector<v1::GenerationReport> written = {Report("b", "default", 0, -1.0), Report("a", "x", 0, -2.5),
                                                     Report("b", "default", 1, -3.25)};
  ASSERT_TRUE((*store)->Commit({Job("b", 64)}, {written[0]}).ok());
  ASSERT_TRUE((*store)->Commit({Job("a", 32)}, {written[1]}).ok());
  ASSERT_TRUE((*store)->Commit({Job("b", 128)}, {}).ok());  // ConfigureJob
  ASSERT_TRUE((*store)->Commit({Job("b", 128)}, {written[2]}).ok());
  ASSERT_TRUE((*store)->Commit({Job("b", 128)}, {}).ok());  // unchanged: no configs row
  store->reset();

  auto again = Store::Open(db_);  // reopening is a no-op
  ASSERT_TRUE(again.ok()) << again.status();
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*again)->LoadAll(&jobs, &reports).ok());
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].name, "a");
  EXPECT_EQ(jobs[1].name, "b");
  EXPECT_EQ(jobs[1].config.n_a(), 128);
  EXPECT_EQ(jobs[1].m, 8);
  ASSERT_EQ(reports.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i)
    EXPECT_EQ(reports[i].SerializeAsString(), written[i].SerializeAsString()) << i;
  EXPECT_EQ(Column("SELECT job FROM configs ORDER BY id"), (std::vector<std::string>{"b", "a", "b"}));
  EXPECT_EQ(Column("SELECT severity FROM reports ORDER BY id"),
            (std::vector<std::string>{"warning", "warning", "critical"}));
  EXPECT_EQ(Column("SELECT version FROM schema_version"),
            std::vector<std::string>{std::to_string(kSchemaVersion)});
}

// Job lifecycle (issue 15 item 4): the finished time round-trips and is
// sticky (an upsert without it keeps it); DeleteJob removes the job's
// reports, configs and row and nothing of the others.
TEST_P(StoreSuite, FinishedTimeIsStickyAndDeleteJobRemovesOneJob) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  StoredJob fin = Job("fin", 64);
  fin.finished_unix_ms = 1'700'000'123'456;
  ASSERT_TRUE((*store)->Commit({Job("fin", 64)}, {Report("fin", "default", 0, -1), Report("fin", "t", 0, -2)}).ok());
  ASSERT_TRUE((*store)->Commit({Job("other", 64)}, {Report("other", "default", 0, -3)}).ok());
  ASSERT_TRUE((*store)->Commit({fin}, {}).ok());                 // FinishJob
  ASSERT_TRUE((*store)->Commit({Job("fin", 32)}, {}).ok());      // a later ConfigureJob without it
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*store)->LoadAll(&jobs, &reports).ok());
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].name, "fin");
  EXPECT_EQ(jobs[0].finished_unix_ms, 1'700'000'123'456);
  EXPECT_EQ(jobs[1].finished_unix_ms, 0);
  absl::StatusOr<int64_t> deleted = (*store)->DeleteJob("fin");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 2);
  EXPECT_EQ(*(*store)->DeleteJob("never-stored"), 0);
  jobs.clear();
  reports.clear();
  ASSERT_TRUE((*store)->LoadAll(&jobs, &reports).ok());
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].name, "other");
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].job(), "other");
  EXPECT_EQ(Column("SELECT job FROM configs ORDER BY id"), std::vector<std::string>{"other"});
  // The name can be used again.
  EXPECT_TRUE((*store)->Commit({Job("fin", 64)}, {Report("fin", "default", 0, -4)}).ok());
}

TEST_P(StoreSuite, HistoryReaderSeesCommittedReports) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  auto reader = HistoryReader::Open(db_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*store)->Commit({Job("h", 64)}, {Report("h", "t2", 0, -1), Report("h", "t1", 0, -2)}).ok());
  ASSERT_TRUE((*store)->Commit({}, {Report("h", "t1", 1, -3)}).ok());
  std::vector<v1::GenerationReport> all, t1;
  ASSERT_TRUE((*reader)->Reports("h", "1", "", &all).ok());
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].tap(), "t1");  // by generation, then tap
  EXPECT_EQ(all[1].tap(), "t2");
  EXPECT_EQ(all[2].generation(), 1);
  ASSERT_TRUE((*reader)->Reports("h", "1", "t1", &t1).ok());
  EXPECT_EQ(t1.size(), 2u);
  auto one = (*reader)->Report("h", "1", "t1", 1);
  ASSERT_TRUE(one.ok()) << one.status();
  v1::GenerationReport expected = Report("h", "t1", 1, -3);
  expected.set_run("1");  // a report stored without a run is read back in run "1"
  EXPECT_EQ(one->SerializeAsString(), expected.SerializeAsString());
  EXPECT_EQ((*reader)->Report("h", "1", "t1", 7).status().code(), absl::StatusCode::kNotFound);
}

// A failed transaction stores nothing of itself: the job's config change is
// rolled back with the refused report.
TEST_P(StoreSuite, DuplicateReportIsRefusedAndTheTransactionRolledBack) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->Commit({Job("d", 64)}, {Report("d", "default", 0, -1)}).ok());
  const absl::Status s = (*store)->Commit({Job("d", 999)}, {Report("d", "default", 0, -9)});
  ASSERT_FALSE(s.ok());
  if (GetParam() == "postgresql") {
    EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
    // The same report again (a retry after a lost acknowledgement) is committed.
    EXPECT_TRUE((*store)->Commit({Job("d", 64)}, {Report("d", "default", 0, -1)}).ok());
  }
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*store)->LoadAll(&jobs, &reports).ok());
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].config.n_a(), 64);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].track2(), -1);
}

// Runs (issue 15 item 1): the key is (job, run, tap, generation). A report
// without a run is stored as run "1"; another run may hold the same tap and
// generation; within one run a different report is still refused.
TEST_P(StoreSuite, RunsKeepTheirOwnGenerations) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  v1::GenerationReport second = Report("r", "default", 0, -2);
  second.set_run("2");
  ASSERT_TRUE((*store)->Commit({Job("r", 64)}, {Report("r", "default", 0, -1)}).ok());
  ASSERT_TRUE((*store)->Commit({}, {second}).ok());
  EXPECT_EQ(Column("SELECT run FROM reports ORDER BY id"), (std::vector<std::string>{"1", "2"}));
  v1::GenerationReport other = second;
  other.set_track2(-9);
  EXPECT_FALSE((*store)->Commit({}, {other}).ok());
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*store)->LoadAll(&jobs, &reports).ok());
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[1].SerializeAsString(), second.SerializeAsString());
  auto reader = HistoryReader::Open(db_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<v1::GenerationReport> one, two;
  ASSERT_TRUE((*reader)->Reports("r", "1", "", &one).ok());
  ASSERT_TRUE((*reader)->Reports("r", "2", "default", &two).ok());
  ASSERT_EQ(one.size(), 1u);
  ASSERT_EQ(two.size(), 1u);
  EXPECT_EQ(one[0].track2(), -1);
  EXPECT_EQ(one[0].run(), "1");
  EXPECT_EQ(two[0].track2(), -2);
  auto point = (*reader)->Report("r", "2", "default", 0);
  ASSERT_TRUE(point.ok()) << point.status();
  EXPECT_EQ(point->track2(), -2);
  EXPECT_EQ((*reader)->Report("r", "3", "default", 0).status().code(), absl::StatusCode::kNotFound);
  std::vector<v1::GenerationReport> window;
  ASSERT_TRUE((*reader)->SealWindow("r", "2", "default", 1, 1, 1, -1, &window).ok());
  ASSERT_EQ(window.size(), 1u);
  EXPECT_EQ(window[0].track2(), -2);
}

// DeleteJob of one run (issue 15 item 4, `--run`): only that run's reports
// go; the job's row, its configuration log and its other runs stay.
TEST_P(StoreSuite, DeleteJobOfOneRunKeepsTheJobAndItsOtherRuns) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  v1::GenerationReport second = Report("r", "default", 0, -2), second_b = Report("r", "default", 1, -3);
  second.set_run("2");
  second_b.set_run("2");
  ASSERT_TRUE((*store)->Commit({Job("r", 64)}, {Report("r", "default", 0, -1)}).ok());
  ASSERT_TRUE((*store)->Commit({}, {second, second_b}).ok());
  ASSERT_TRUE((*store)->Commit({Job("keep", 64)}, {Report("keep", "default", 0, -4)}).ok());
  absl::StatusOr<int64_t> deleted = (*store)->DeleteJob("r", "2");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 2);
  EXPECT_EQ(*(*store)->DeleteJob("r", "7"), 0);  // no such run: nothing removed
  EXPECT_EQ(Column("SELECT run FROM reports WHERE job = 'r' ORDER BY id"), std::vector<std::string>{"1"});
  EXPECT_EQ(Column("SELECT name FROM jobs ORDER BY name"), (std::vector<std::string>{"keep", "r"}));
  EXPECT_EQ(Column("SELECT job FROM configs WHERE job = 'r'").size(), 1u);
  EXPECT_EQ(Column("SELECT job FROM reports WHERE job = 'keep'").size(), 1u);
}

// Schema version 5: the runs table lists every run with a stored report in
// first-sealed order, kept by the database itself (triggers) whatever inserts
// or deletes reports; a commit returns each job row's incarnation.
TEST_P(StoreSuite, RunsTableFollowsTheReports) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  auto in_run = [](v1::GenerationReport r, const std::string& run) {
    r.set_run(run);
    return r;
  };
  std::vector<int64_t> created;
  ASSERT_TRUE((*store)->Commit({Job("r", 64), Job("s", 64)},
                               {Report("r", "default", 0, -1), in_run(Report("r", "default", 0, -2), "b")}, &created)
                  .ok());
  ASSERT_EQ(created.size(), 2u);
  EXPECT_GT(created[0], 0);
  ASSERT_TRUE((*store)->Commit({}, {in_run(Report("r", "t", 0, -3), "a"), Report("r", "default", 1, -4),
                                    in_run(Report("s", "default", 0, -5), "x")})
                  .ok());
  const std::string runs = "SELECT job || ' ' || run FROM runs ORDER BY first_report";
  EXPECT_EQ(Column(runs), (std::vector<std::string>{"r 1", "r b", "r a", "s x"}));
  ASSERT_TRUE((*store)->DeleteJob("r").ok());
  EXPECT_EQ(Column(runs), (std::vector<std::string>{"s x"}));
  std::vector<int64_t> again;
  ASSERT_TRUE((*store)->Commit({Job("s", 64)}, {}, &again).ok());
  EXPECT_EQ(again, std::vector<int64_t>{created[1]});  // an upsert keeps the row's incarnation
}

TEST_P(StoreSuite, NewerSchemaIsRefusedAndLeftAlone) {
  { ASSERT_TRUE(Store::Open(db_).ok()); }
  Column("UPDATE schema_version SET version = 99");
  auto store = Store::Open(db_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("schema version 99 is newer"), std::string::npos) << store.status();
  EXPECT_EQ(Column("SELECT version FROM schema_version"), std::vector<std::string>{"99"});
}

// The configs log as comparable text: job, time and config bytes per row.
std::vector<std::string> LogOf(Store* store) {
  std::vector<ConfigRecord> log;
  EXPECT_TRUE(store->LoadConfigLog(&log).ok());
  std::vector<std::string> out;
  for (const ConfigRecord& c : log)
    out.push_back(absl::StrCat(c.job, "@", c.set_unix_ms, ":", c.config.SerializeAsString()));
  return out;
}

// An SQLite history copied into this store (sigmad-migrate): the same jobs,
// configs log (each change with its time) and reports in the same order, in
// several transactions; on PostgreSQL a second run (after an interruption)
// copies nothing twice.
TEST_P(StoreSuite, SqliteHistoryMigratesIntoThisStore) {
  const std::string source = dir_.path() + "/source.db";
  std::vector<v1::GenerationReport> written;
  std::vector<std::string> log;
  {
    auto src = Store::Open(source);
    ASSERT_TRUE(src.ok()) << src.status();
    ASSERT_TRUE((*src)->Commit({Job("m1", 64), Job("m2", 32)}, {}).ok());
    StoredJob changed = Job("m1", 64);
    changed.config.mutable_thresholds()->set_drift_warning(0.0625);
    ASSERT_TRUE((*src)->Commit({changed}, {}).ok());
    for (int g = 0; g < 5; ++g) {
      written.push_back(Report(g % 2 ? "m2" : "m1", "default", g, -1.0 * g));
      ASSERT_TRUE((*src)->Commit({}, {written.back()}).ok());
    }
    log = LogOf(src->get());
    ASSERT_EQ(log.size(), 3u);
  }
  absl::StatusOr<MigrateCounts> n = MigrateStore(source, db_, /*batch=*/2);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->jobs, 2);
  EXPECT_EQ(n->configs, 3);
  EXPECT_EQ(n->reports, 5);
  auto dst = Store::Open(db_);
  ASSERT_TRUE(dst.ok()) << dst.status();
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*dst)->LoadAll(&jobs, &reports).ok());
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].config.thresholds().drift_warning(), 0.0625);
  EXPECT_EQ(jobs[1].config.n_a(), 32);
  ASSERT_EQ(reports.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i)
    EXPECT_EQ(reports[i].SerializeAsString(), written[i].SerializeAsString()) << i;
  EXPECT_EQ(LogOf(dst->get()), log);
  dst->reset();
  absl::StatusOr<MigrateCounts> again = MigrateStore(source, db_, 2);
  if (GetParam() == "postgresql") {
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(Column("SELECT count(*) FROM reports"), std::vector<std::string>{"5"});
    EXPECT_EQ(Column("SELECT count(*) FROM configs"), std::vector<std::string>{"3"});
  } else {
    EXPECT_FALSE(again.ok());  // one writer: a second copy is a UNIQUE violation
  }
  EXPECT_EQ(MigrateStore(source, source).status().code(), absl::StatusCode::kInvalidArgument);
}

// What a seal reads of a long history (HistoryReader::SealWindow): the
// latest earlier generations, the latest earlier ones with a drift, the first
// successful one and a pinned one; whatever the history's length, and the
// same rows from every implementation as from the rule (the base class).
TEST_P(StoreSuite, SealWindowReadsOnlyWhatASealNeeds) {
  auto store = Store::Open(db_);
  ASSERT_TRUE(store.ok()) << store.status();
  auto reader = HistoryReader::Open(db_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<v1::GenerationReport> history;
  for (int g = 0; g < 40; ++g) {
    v1::GenerationReport r = Report("w", "default", g, -1.0 - g);
    r.mutable_flags()->set_cholesky_failed(g == 0 || g == 35 || g == 37);
    r.set_baseline_generation(g == 1 || g == 38 ? -1 : 1);  // 1: the first successful one; 38: no drift
    history.push_back(r);
    history.push_back(Report("w", "other", g, -2.0));
  }
  ASSERT_TRUE((*store)->Commit({Job("w", 64)}, history).ok());
  auto generations = [&](int64_t before, int recent, int with_drift, int64_t pinned, bool rule) {
    std::vector<v1::GenerationReport> out;
    const absl::Status s = rule ? (*reader)->HistoryReader::SealWindow("w", "1", "default", before, recent, with_drift,
                                                                       pinned, &out)
                                : (*reader)->SealWindow("w", "1", "default", before, recent, with_drift, pinned, &out);
    EXPECT_TRUE(s.ok()) << s;
    std::vector<int64_t> g;
    for (const auto& r : out) {
      EXPECT_EQ(r.tap(), "default");
      g.push_back(r.generation());
    }
    return g;
  };
  EXPECT_EQ(generations(39, 3, 5, 10, false), (std::vector<int64_t>{1, 10, 31, 32, 33, 34, 36, 37, 38}));
  EXPECT_EQ(generations(39, 3, 5, 10, true), generations(39, 3, 5, 10, false));
  EXPECT_EQ(generations(20, 1, 2, -1, false), (std::vector<int64_t>{1, 18, 19}));
  EXPECT_EQ(generations(0, 0, 0, 7, false), (std::vector<int64_t>{1, 7}));
  EXPECT_EQ(generations(0, 0, 0, 7, true), (std::vector<int64_t>{1, 7}));
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreSuite, ::testing::Values("sqlite", "postgresql"),
                         [](const auto& info) { return info.param; });

TEST(StoreUrlTest, PostgresUrlsAreRecognizedAndPasswordsRedacted) {
  EXPECT_TRUE(IsPostgresUrl("postgresql://u@h/db"));
  EXPECT_TRUE(IsPostgresUrl("postgres://u@h/db"));
  EXPECT_FALSE(IsPostgresUrl("./var/postgresql.db"));
  EXPECT_EQ(RedactDb("postgresql://u:secret@h:5432/db"), "postgresql://u:***@h:5432/db");
  EXPECT_EQ(RedactDb("postgresql://u@h/db?password=secret&sslmode=require"),
            "postgresql://u@h/db?password=***&sslmode=require");
  EXPECT_EQ(RedactDb("var/sigma.db"), "var/sigma.db");
}

TEST(PostgresStoreTest, UnreachableServerIsRefusedAtOpenWithoutThePassword) {
  const std::string url = "postgresql://sigma:hunter2@127.0.0.1:1/none?connect_timeout=2";
  auto store = Store::Open(url);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_NE(store.status().message().find("--db: "), std::string::npos) << store.status();
  EXPECT_EQ(store.status().message().find("hunter2"), std::string::npos) << store.status();
}

// A version-1 PostgreSQL schema (the DDL storage_postgres.cc creates before
// its migrations) with stored reports is migrated at Open: the version-2
// columns back-filled from the reports, which are intact.
TEST(PostgresStoreTest, VersionOneIsMigratedWithReportsIntact) {
  SIGMA_PG_OR_SKIP(pg);
  const std::string db = pg->NewDatabase();
  const v1::GenerationReport old = Report("old", "default", 1, -1.5);  // severity critical
  std::string hex;
  for (unsigned char c : old.SerializeAsString()) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
  ASSERT_TRUE(pg->Query(db,
                        "CREATE TABLE schema_version (version INTEGER NOT NULL);"
                        "CREATE TABLE jobs (name TEXT PRIMARY KEY, config BYTEA NOT NULL, m INTEGER NOT NULL DEFAULT 0,"
                        " created_unix_ms BIGINT NOT NULL, updated_unix_ms BIGINT NOT NULL);"
                        "CREATE TABLE configs (id BIGSERIAL PRIMARY KEY, job TEXT NOT NULL REFERENCES jobs(name),"
                        " config BYTEA NOT NULL, set_unix_ms BIGINT NOT NULL);"
                        "CREATE TABLE reports (id BIGSERIAL PRIMARY KEY, job TEXT NOT NULL REFERENCES jobs(name),"
                        " tap TEXT NOT NULL, generation BIGINT NOT NULL, m INTEGER NOT NULL, n DOUBLE PRECISION NOT NULL,"
                        " n_a BIGINT NOT NULL, backend TEXT NOT NULL, track1_lower DOUBLE PRECISION,"
                        " track1_upper DOUBLE PRECISION, track2 DOUBLE PRECISION, track2_ci_halfwidth DOUBLE PRECISION,"
                        " track1_drift DOUBLE PRECISION, track2_drift DOUBLE PRECISION, divergence DOUBLE PRECISION,"
                        " drift_halfwidth DOUBLE PRECISION, baseline_job TEXT, baseline_generation BIGINT,"
                        " failed INTEGER NOT NULL, sealed_unix_ms BIGINT NOT NULL, report BYTEA NOT NULL,"
                        " UNIQUE (job, tap, generation));"
                        "CREATE INDEX reports_by_job ON reports (job, tap, generation);"
                        "INSERT INTO schema_version (version) VALUES (1);"
                        "INSERT INTO jobs VALUES ('old', '', 8, 1, 1);"
                        "INSERT INTO reports (job, tap, generation, m, n, n_a, backend, failed, sealed_unix_ms, report)"
                        " VALUES ('old', 'default', 1, 8, 100, 64, 'cpu', 0, 1, '\\x" + hex + "');")
                  .ok());
  auto store = Store::Open(db);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->schema_version(), kSchemaVersion);
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*store)->LoadAll(&jobs, &reports).ok());
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].SerializeAsString(), old.SerializeAsString());
  EXPECT_EQ(*pg->Query(db, "SELECT severity || ' ' || compute_seconds FROM reports"),
            std::vector<std::string>{"critical 0.125"});
  EXPECT_EQ(*pg->Query(db, "SELECT version FROM schema_version"),
            std::vector<std::string>{std::to_string(kSchemaVersion)});
  EXPECT_EQ(*pg->Query(db, "SELECT finished_unix_ms FROM jobs"), std::vector<std::string>{"0"});  // version 3
  EXPECT_EQ(*pg->Query(db, "SELECT run FROM reports"), std::vector<std::string>{"1"});  // version 4
  EXPECT_EQ(*pg->Query(db, "SELECT job || ' ' || run FROM runs"), std::vector<std::string>{"old 1"});  // version 5
}

// Two replicas' Stores on one database: each sees the other's commits; the
// same report sealed by both is stored once, a different one is refused.
// A seal's commit from a replica with a stale view does not undo a
// configuration another replica committed (ConfigureJob owns it).
TEST(PostgresStoreTest, SealCommitKeepsTheStoredConfiguration) {
  SIGMA_PG_OR_SKIP(pg);
  const std::string db = pg->NewDatabase();
  auto a = Store::Open(db);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE((*a)->Commit({Job("k", 64)}, {}).ok());
  ASSERT_TRUE((*a)->Commit({Job("k", 128)}, {}).ok());
  ASSERT_TRUE((*a)->Commit({Job("k", 64)}, {Report("k", "default", 0, -1)}).ok());  // stale replica's seal
  absl::StatusOr<StoredJob> k = (*a)->LoadJob("k");
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->config.n_a(), 128);
  EXPECT_EQ((*a)->LoadJob("none").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*a)->shared());
}

TEST(PostgresStoreTest, TwoStoresShareOneDatabase) {
  SIGMA_PG_OR_SKIP(pg);
  const std::string db = pg->NewDatabase();
  auto a = Store::Open(db);
  auto b = Store::Open(db);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  auto reader_b = HistoryReader::Open(db);
  ASSERT_TRUE(reader_b.ok()) << reader_b.status();
  ASSERT_TRUE((*a)->Commit({Job("s", 64)}, {Report("s", "default", 0, -1)}).ok());
  auto seen = (*reader_b)->Report("s", "1", "default", 0);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->track2(), -1);
  EXPECT_TRUE((*b)->Commit({Job("s", 64)}, {Report("s", "default", 0, -1)}).ok());
  EXPECT_EQ((*b)->Commit({Job("s", 64)}, {Report("s", "default", 0, -2)}).code(), absl::StatusCode::kAlreadyExists);
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*b)->LoadAll(&jobs, &reports).ok());
  EXPECT_EQ(reports.size(), 1u);
}

// The database stopped under a live Store: commits fail UNAVAILABLE (nothing
// is claimed stored), Health says so; once it is back, the same Store and
// reader work again without being reopened.
TEST(PostgresStoreTest, StoreRecoversWhenTheDatabaseReturns) {
  SIGMA_PG_OR_SKIP(pg);
  const std::string db = pg->NewDatabase();
  auto store = Store::Open(db);
  ASSERT_TRUE(store.ok()) << store.status();
  auto reader = HistoryReader::Open(db);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*store)->Commit({Job("r", 64)}, {Report("r", "default", 0, -1)}).ok());
  ASSERT_TRUE(pg->Stop().ok());
  const absl::Status down = (*store)->Commit({}, {Report("r", "default", 1, -2)});
  EXPECT_EQ(down.code(), absl::StatusCode::kUnavailable) << down;
  EXPECT_EQ((*store)->Health().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*reader)->Report("r", "1", "default", 0).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(pg->Start().ok());
  ASSERT_TRUE((*store)->Commit({}, {Report("r", "default", 1, -2)}).ok());
  EXPECT_TRUE((*store)->Health().ok());
  std::vector<v1::GenerationReport> reports;
  ASSERT_TRUE((*reader)->Reports("r", "1", "", &reports).ok());
  EXPECT_EQ(reports.size(), 2u);
}

}  // namespace
}  // namespace sigma::server::testing
