// The SQLite Store and HistoryReader (storage.h); the --db dispatch is in store_dispatch.cc.
#include "sigma/server/storage.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <utility>
#include <filesystem>
#include <memory>
#include <mutex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "storage_backends.h"
#include "storage_runs_sql.h"

namespace sigma::server {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// RAII prepared statement.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  sqlite3_stmt* get() { return stmt_; }
  void Text(int i, const std::string& s) { sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void Blob(int i, const std::string& s) { sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void Int(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void Real(int i, double v) { sqlite3_bind_double(stmt_, i, v); }
  int Step() { return sqlite3_step(stmt_); }
  std::string ColumnBlob(int i) {
    const void* p = sqlite3_column_blob(stmt_, i);
    const int n = sqlite3_column_bytes(stmt_, i);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// SQLite: one connection, one mutex (mu_) around LoadAll and Commit.
class SqliteStore final : public Store {
 public:
  SqliteStore(sqlite3* db, int lock_fd) : db_(db), lock_fd_(lock_fd) {}
  ~SqliteStore() override;
  absl::Status LoadAll(std::vector<StoredJob>* jobs, std::vector<sigma::v1::GenerationReport>* reports) override;
  absl::Status Commit(const std::vector<StoredJob>& jobs, const std::vector<sigma::v1::GenerationReport>& reports,
                      std::vector<int64_t>* created) override;
  absl::Status LoadConfigLog(std::vector<ConfigRecord>* out) override;
  absl::Status Import(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log) override;
  absl::StatusOr<int64_t> DeleteJob(const std::string& job, const std::string& run) override;
  absl::Status Health() override { return absl::OkStatus(); }
  int schema_version() const override { return schema_version_; }
  const char* kind() const override { return "sqlite"; }
  absl::Status Init();

 private:
  absl::Status Exec(const char* sql);
  absl::Status UpsertJob(const StoredJob& job, int64_t* created);
  absl::Status InsertReport(const sigma::v1::GenerationReport& report);
  absl::Status ImportLocked(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log);
  absl::Status MigrateTo2();
  absl::Status Migrate(int next);

  sqlite3* db_;
  int lock_fd_ = -1;  // flock(LOCK_EX) on the database's ".lock" file, -1 for ":memory:"
  int schema_version_ = 0;
  std::mutex mu_;  // LoadAll, Commit
};

class SqliteHistoryReader final : public HistoryReader {
 public:
  explicit SqliteHistoryReader(sqlite3* db) : db_(db) {}
  ~SqliteHistoryReader() override;
  absl::Status Reports(const std::string& job, const std::string& run, const std::string& tap,
                       std::vector<sigma::v1::GenerationReport>* out) override;
  absl::StatusOr<sigma::v1::GenerationReport> Report(const std::string& job, const std::string& run,
                                                     const std::string& tap, int64_t generation) override;

 private:
  sqlite3* db_;
  std::mutex mu_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path) {
  if (path != ":memory:") {
    std::error_code ec;
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    if (!parent.empty()) {
      std::filesystem::create_directories(parent, ec);
      if (ec) return absl::UnavailableError(absl::StrCat("--db: cannot create directory ", parent.string(), ": ", ec.message()));
    }
  }
  // One writer per database: a second sigmad on the same file would seal the
  // same generations from a stale view (its own baselines, UNIQUE violations
  // at commit). The lock is a separate file so that no descriptor of the
  // database itself is ever closed under SQLite's POSIX locks.
  int lock_fd = -1;
  if (path != ":memory:" && !path.empty()) {
    // Next to the real file: a symlinked path must find the same lock.
    std::error_code cec;
    const std::filesystem::path real = std::filesystem::weakly_canonical(path, cec);
    const std::string lock_path = (cec ? path : real.string()) + ".lock";
    lock_fd = ::open(lock_path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644);  // flock needs no write access
    if (lock_fd < 0)
      return absl::UnavailableError(
          absl::StrCat("--db: cannot open the lock file ", lock_path, ": ", std::strerror(errno)));
    if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      ::close(lock_fd);
      if (e == EWOULDBLOCK)
        return absl::FailedPreconditionError(
            absl::StrCat("--db: ", path, " is in use by another sigmad (", lock_path,
                         " is locked); each daemon needs its own database"));
      return absl::UnavailableError(absl::StrCat("--db: cannot lock ", lock_path, ": ", std::strerror(e)));
    }
  }
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    if (lock_fd >= 0) ::close(lock_fd);
    return absl::UnavailableError(absl::StrCat("--db: cannot open ", path, ": ", msg));
  }
  // SQLite falls back to read-only when the file cannot be opened for writing;
  // sigmad would then start and fail every seal.
  if (sqlite3_db_readonly(db, "main") == 1) {
    sqlite3_close(db);
    if (lock_fd >= 0) ::close(lock_fd);
    return absl::UnavailableError(
        absl::StrCat("--db: ", path, " is read-only (no write permission on the file or its directory)"));
  }
  auto store = std::make_unique<SqliteStore>(db, lock_fd);
  if (auto s = store->Init(); !s.ok()) {
    if (absl::StartsWith(s.message(), "--db:")) return s;
    return absl::Status(s.code(), absl::StrCat("--db: ", path, ": ", s.message()));
  }
  return std::unique_ptr<Store>(std::move(store));
}

SqliteStore::~SqliteStore() {
  sqlite3_close(db_);
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

absl::Status SqliteStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("sqlite: ", msg, " (in: ", sql, ")"));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::Init() {
  sqlite3_busy_timeout(db_, 5000);
  if (auto s = Exec("PRAGMA journal_mode=WAL;"); !s.ok()) return s;
  if (auto s = Exec("PRAGMA synchronous=FULL;"); !s.ok()) return s;
  if (auto s = Exec("PRAGMA foreign_keys=ON;"); !s.ok()) return s;
  if (auto s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
  auto fail = [this](absl::Status s) {
    Exec("ROLLBACK;").IgnoreError();
    return s;
  };
  if (auto s = Exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"); !s.ok()) return fail(s);
  {
    Stmt q(db_, "SELECT version FROM schema_version LIMIT 1;");
    if (auto s = q.status(); !s.ok()) return fail(s);
    if (q.Step() == SQLITE_ROW) schema_version_ = sqlite3_column_int(q.get(), 0);
  }
  if (schema_version_ > kSchemaVersion)
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "--db: schema version ", schema_version_, " is newer than this sigmad (", kSchemaVersion, ")")));
  if (schema_version_ == 0) {
    const char* ddl =
        "CREATE TABLE jobs ("
        "  name TEXT PRIMARY KEY,"
        "  config BLOB NOT NULL,"
        "  m INTEGER NOT NULL DEFAULT 0,"
        "  created_unix_ms INTEGER NOT NULL,"
        "  updated_unix_ms INTEGER NOT NULL);"
        "CREATE TABLE configs ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  job TEXT NOT NULL REFERENCES jobs(name),"
        "  config BLOB NOT NULL,"
        "  set_unix_ms INTEGER NOT NULL);"
        "CREATE TABLE reports ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  job TEXT NOT NULL REFERENCES jobs(name),"
        "  tap TEXT NOT NULL,"
        "  generation INTEGER NOT NULL,"
        "  m INTEGER NOT NULL,"
        "  n REAL NOT NULL,"
        "  n_a INTEGER NOT NULL,"
        "  backend TEXT NOT NULL,"
        "  track1_lower REAL, track1_upper REAL, track2 REAL, track2_ci_halfwidth REAL,"
        "  track1_drift REAL, track2_drift REAL, divergence REAL, drift_halfwidth REAL,"
        "  baseline_job TEXT, baseline_generation INTEGER,"
        "  failed INTEGER NOT NULL,"
        "  sealed_unix_ms INTEGER NOT NULL,"
        "  report BLOB NOT NULL,"
        "  UNIQUE (job, tap, generation));"
        "CREATE INDEX reports_by_job ON reports (job, tap, generation);"
        "INSERT INTO schema_version (version) VALUES (1);";
    if (auto s = Exec(ddl); !s.ok()) return fail(s);
    schema_version_ = 1;
  }
  // Migrations: version v-1 -> v, in order, inside this one transaction (a
  // crash mid-way leaves the database at its old version).
  while (schema_version_ < kSchemaVersion) {
    const int next = schema_version_ + 1;
    absl::Status s = Migrate(next);
    if (s.ok()) {
      Stmt q(db_, "UPDATE schema_version SET version = ?1;");
      q.Int(1, next);
      s = q.status();
      if (s.ok() && q.Step() != SQLITE_DONE)
        s = absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
    }
    if (!s.ok())
      return fail(absl::Status(s.code(), absl::StrCat("--db: migrating the schema to version ", next, ": ",
                                                      s.message())));
    schema_version_ = next;
  }
  return Exec("COMMIT;");
}

absl::Status SqliteStore::LoadAll(std::vector<StoredJob>* jobs,
                            std::vector<sigma::v1::GenerationReport>* reports) {
  std::lock_guard<std::mutex> lock(mu_);
  {
    Stmt q(db_, "SELECT name, config, m, finished_unix_ms, created_unix_ms FROM jobs ORDER BY name;");
    if (auto s = q.status(); !s.ok()) return s;
    int rc;
    while ((rc = q.Step()) == SQLITE_ROW) {
      StoredJob job;
      job.name = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0));
      if (!job.config.ParseFromString(q.ColumnBlob(1)))
        return absl::DataLossError(absl::StrCat("--db: job ", job.name, ": unreadable config"));
      job.m = sqlite3_column_int(q.get(), 2);
      job.finished_unix_ms = sqlite3_column_int64(q.get(), 3);
      job.created_unix_ms = sqlite3_column_int64(q.get(), 4);
      jobs->push_back(std::move(job));
    }
    if (rc != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  Stmt q(db_, "SELECT report FROM reports ORDER BY id;");
  if (auto s = q.status(); !s.ok()) return s;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    sigma::v1::GenerationReport r;
    if (!r.ParseFromString(q.ColumnBlob(0))) return absl::DataLossError("--db: unreadable report");
    reports->push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  return absl::OkStatus();
}

// `created`: the row's created_unix_ms (one writer: job.created_unix_ms is not checked).
absl::Status SqliteStore::UpsertJob(const StoredJob& job, int64_t* created) {
  std::string blob;
  job.config.SerializeToString(&blob);
  std::string old;
  bool exists = false;
  const int64_t now = NowMs();
  *created = now;
  {
    Stmt q(db_, "SELECT config, created_unix_ms FROM jobs WHERE name = ?1;");
    if (auto s = q.status(); !s.ok()) return s;
    q.Text(1, job.name);
    if (q.Step() == SQLITE_ROW) {
      exists = true;
      old = q.ColumnBlob(0);
      *created = sqlite3_column_int64(q.get(), 1);
    }
  }
  {
    Stmt q(db_,
           "INSERT INTO jobs (name, config, m, created_unix_ms, updated_unix_ms, finished_unix_ms) "
           "VALUES (?1, ?2, ?3, ?4, ?4, ?5) "
           "ON CONFLICT(name) DO UPDATE SET config = excluded.config, m = excluded.m, "
           "updated_unix_ms = excluded.updated_unix_ms, "
           "finished_unix_ms = MAX(finished_unix_ms, excluded.finished_unix_ms);");
    if (auto s = q.status(); !s.ok()) return s;
    q.Text(1, job.name);
    q.Blob(2, blob);
    q.Int(3, job.m);
    q.Int(4, now);
    q.Int(5, job.finished_unix_ms);
    if (q.Step() != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  if (!exists || old != blob) {
    Stmt q(db_, "INSERT INTO configs (job, config, set_unix_ms) VALUES (?1, ?2, ?3);");
    if (auto s = q.status(); !s.ok()) return s;
    q.Text(1, job.name);
    q.Blob(2, blob);
    q.Int(3, now);
    if (q.Step() != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  return absl::OkStatus();
}

// Version 2: reports.severity (the highest alert severity: ok, info, warning
// or critical) and reports.compute_seconds, for operators querying the file
// (e.g. SELECT job, generation FROM reports WHERE severity = 'critical'),
// back-filled from the stored reports.
absl::Status SqliteStore::MigrateTo2() {
  if (auto s = Exec("ALTER TABLE reports ADD COLUMN severity TEXT NOT NULL DEFAULT 'ok';"
                    "ALTER TABLE reports ADD COLUMN compute_seconds REAL NOT NULL DEFAULT 0;"
                    "CREATE INDEX reports_by_severity ON reports (severity, job);");
      !s.ok())
    return s;
  std::vector<std::pair<int64_t, sigma::v1::GenerationReport>> rows;
  {
    Stmt q(db_, "SELECT id, report FROM reports;");
    if (auto s = q.status(); !s.ok()) return s;
    while (q.Step() == SQLITE_ROW) {
      sigma::v1::GenerationReport r;
      if (!r.ParseFromString(q.ColumnBlob(1)))
        return absl::DataLossError(absl::StrCat("reports row ", sqlite3_column_int64(q.get(), 0),
                                                " holds an unreadable report"));
      rows.emplace_back(sqlite3_column_int64(q.get(), 0), std::move(r));
    }
  }
  for (const auto& [id, r] : rows) {
    Stmt u(db_, "UPDATE reports SET severity = ?1, compute_seconds = ?2 WHERE id = ?3;");
    if (auto s = u.status(); !s.ok()) return s;
    u.Text(1, ReportSeverity(r));
    u.Real(2, r.compute_seconds());
    u.Int(3, id);
    if (u.Step() != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  return absl::OkStatus();
}

// The migration to schema version `next` (storage.h lists them).
absl::Status SqliteStore::Migrate(int next) {
  switch (next) {
    case 2: return MigrateTo2();
    // Version 3 (job lifecycle, issue 15 item 4): FinishJob's time, 0 = not finished.
    case 3: return Exec("ALTER TABLE jobs ADD COLUMN finished_unix_ms INTEGER NOT NULL DEFAULT 0;");
    // Version 4 (runs, issue 15 item 1): reports.run, key (job, run, tap,
    // generation); SQLite cannot change a UNIQUE constraint, so the table is
    // rebuilt (ids kept) with every stored report in run "1".
    case 4: return Exec(kSqliteRunsMigration);
    // Version 5: the runs table and its triggers (storage_runs_sql.h).
    case 5: return Exec(kSqliteRunsTableMigration);
  }
  return absl::InternalError(absl::StrCat("no migration to ", next));
}

absl::StatusOr<int64_t> SqliteStore::DeleteJob(const std::string& job, const std::string& run) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
  int64_t reports = 0;
  const char* const kSql[] = {"DELETE FROM reports WHERE job = ?1;", "DELETE FROM configs WHERE job = ?1;",
                              "DELETE FROM jobs WHERE name = ?1;"};
  const char* const kRunSql = "DELETE FROM reports WHERE job = ?1 AND run = ?2;";
  for (int i = 0; i < (run.empty() ? 3 : 1); ++i) {
    Stmt q(db_, run.empty() ? kSql[i] : kRunSql);
    absl::Status s = q.status();
    if (s.ok()) {
      q.Text(1, job);
      if (!run.empty()) q.Text(2, run);
      if (q.Step() != SQLITE_DONE) s = absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
    }
    if (!s.ok()) {
      Exec("ROLLBACK;").IgnoreError();
      return s;
    }
    if (i == 0) reports = sqlite3_changes(db_);
  }
  if (auto s = Exec("COMMIT;"); !s.ok()) return s;
  return reports;
}

std::string ReportSeverity(const sigma::v1::GenerationReport& report) {
  int rank = 0;  // ok < info < warning < critical
  static const char* kNames[] = {"ok", "info", "warning", "critical"};
  for (const auto& alert : report.alerts()) {
    for (int i = 1; i < 4; ++i) {
      if (alert.severity() == kNames[i]) rank = std::max(rank, i);
    }
  }
  return kNames[rank];
}

absl::Status SqliteStore::InsertReport(const sigma::v1::GenerationReport& r) {
  std::string blob;
  r.SerializeToString(&blob);
  Stmt q(db_,
         "INSERT INTO reports (job, tap, generation, m, n, n_a, backend, track1_lower, track1_upper,"
         " track2, track2_ci_halfwidth, track1_drift, track2_drift, divergence, drift_halfwidth,"
         " baseline_job, baseline_generation, failed, sealed_unix_ms, report, severity, compute_seconds, run)"
         " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,"
         " ?21, ?22, ?23);");
  if (auto s = q.status(); !s.ok()) return s;
  q.Text(1, r.job());
  q.Text(2, r.tap());
  q.Int(3, r.generation());
  q.Int(4, r.m());
  q.Real(5, r.n());
  q.Int(6, r.n_a());
  q.Text(7, r.backend());
  q.Real(8, r.track1_lower());
  q.Real(9, r.track1_upper());
  q.Real(10, r.track2());
  q.Real(11, r.track2_ci_halfwidth());
  q.Real(12, r.track1_drift());
  q.Real(13, r.track2_drift());
  q.Real(14, r.divergence());
  q.Real(15, r.drift_halfwidth());
  q.Text(16, r.baseline_job());
  q.Int(17, r.baseline_generation());
  q.Int(18, r.flags().cholesky_failed() ? 1 : 0);
  q.Int(19, r.sealed_unix_ms());
  q.Blob(20, blob);
  q.Text(21, ReportSeverity(r));
  q.Real(22, r.compute_seconds());
  q.Text(23, StoredRun(r));
  if (q.Step() != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  return absl::OkStatus();
}

absl::Status SqliteStore::Commit(const std::vector<StoredJob>& jobs,
                                 const std::vector<sigma::v1::GenerationReport>& reports,
                                 std::vector<int64_t>* created) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
  std::vector<int64_t> rows(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (auto s = UpsertJob(jobs[i], &rows[i]); !s.ok()) {
      Exec("ROLLBACK;").IgnoreError();
      return s;
    }
  }
  for (const auto& r : reports) {
    if (auto s = InsertReport(r); !s.ok()) {
      Exec("ROLLBACK;").IgnoreError();
      return s;
    }
  }
  if (auto s = Exec("COMMIT;"); !s.ok()) return s;
  if (created) *created = std::move(rows);
  return absl::OkStatus();
}

absl::Status SqliteStore::LoadConfigLog(std::vector<ConfigRecord>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "SELECT job, config, set_unix_ms FROM configs ORDER BY id;");
  if (auto s = q.status(); !s.ok()) return s;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    ConfigRecord& c = out->emplace_back();
    c.job = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0));
    if (!c.config.ParseFromString(q.ColumnBlob(1)))
      return absl::DataLossError(absl::StrCat("--db: a configs row of job ", c.job, " is unreadable"));
    c.set_unix_ms = sqlite3_column_int64(q.get(), 2);
  }
  if (rc != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  return absl::OkStatus();
}

absl::Status SqliteStore::Import(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
  if (auto s = ImportLocked(jobs, log); !s.ok()) {
    Exec("ROLLBACK;").IgnoreError();
    return s;
  }
  return Exec("COMMIT;");
}

absl::Status SqliteStore::ImportLocked(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log) {
  const int64_t now = NowMs();
  for (const StoredJob& j : jobs) {
    Stmt q(db_,
           "INSERT INTO jobs (name, config, m, created_unix_ms, updated_unix_ms) VALUES (?1, ?2, ?3, ?4, ?4) "
           "ON CONFLICT(name) DO UPDATE SET config = excluded.config, m = excluded.m, "
           "updated_unix_ms = excluded.updated_unix_ms;");
    if (auto s = q.status(); !s.ok()) return s;
    q.Text(1, j.name);
    q.Blob(2, j.config.SerializeAsString());
    q.Int(3, j.m);
    q.Int(4, now);
    if (q.Step() != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  for (const ConfigRecord& c : log) {
    Stmt q(db_,
           "INSERT INTO configs (job, config, set_unix_ms) SELECT ?1, ?2, ?3 WHERE NOT EXISTS "
           "(SELECT 1 FROM configs WHERE job = ?1 AND set_unix_ms = ?3 AND config = ?2);");
    if (auto s = q.status(); !s.ok()) return s;
    q.Text(1, c.job);
    q.Blob(2, c.config.SerializeAsString());
    q.Int(3, c.set_unix_ms);
    if (q.Step() != SQLITE_DONE) return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HistoryReader>> OpenSqliteHistoryReader(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("--db: cannot open ", path, " for reading: ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  return std::unique_ptr<HistoryReader>(std::make_unique<SqliteHistoryReader>(db));
}

SqliteHistoryReader::~SqliteHistoryReader() { sqlite3_close(db_); }

absl::Status SqliteHistoryReader::Reports(const std::string& job, const std::string& run, const std::string& tap,
                                    std::vector<sigma::v1::GenerationReport>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, tap.empty() ? "SELECT report FROM reports WHERE job = ?1 AND run = ?3 ORDER BY generation, tap;"
                          : "SELECT report FROM reports WHERE job = ?1 AND run = ?3 AND tap = ?2 ORDER BY generation;");
  if (auto s = q.status(); !s.ok()) return s;
  q.Text(1, job);
  if (!tap.empty()) q.Text(2, tap);
  q.Text(3, run);
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    if (!out->emplace_back().ParseFromString(q.ColumnBlob(0)))
      return absl::DataLossError(absl::StrCat("a stored report of job '", job, "' is unreadable"));
    NameRun(run, &out->back());
  }
  if (rc != SQLITE_DONE) return absl::UnavailableError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  return absl::OkStatus();
}

absl::StatusOr<sigma::v1::GenerationReport> SqliteHistoryReader::Report(const std::string& job, const std::string& run,
                                                                  const std::string& tap, int64_t generation) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "SELECT report FROM reports WHERE job = ?1 AND tap = ?2 AND generation = ?3 AND run = ?4;");
  if (auto s = q.status(); !s.ok()) return s;
  q.Text(1, job);
  q.Text(2, tap);
  q.Int(3, generation);
  q.Text(4, run);
  const int rc = q.Step();
  if (rc == SQLITE_DONE)
    return absl::NotFoundError(absl::StrCat("no stored report for ", job, "/", tap, " generation ", generation));
  if (rc != SQLITE_ROW) return absl::UnavailableError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  sigma::v1::GenerationReport r;
  if (!r.ParseFromString(q.ColumnBlob(0)))
    return absl::DataLossError(absl::StrCat("the stored report of ", job, "/", tap, " generation ", generation,
                                            " is unreadable"));
  NameRun(run, &r);
  return r;
}

}  // namespace sigma::server
