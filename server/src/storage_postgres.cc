// The PostgreSQL Store and HistoryReader (storage.h), over libpq: the shared
// store for several sigmad replicas (docs/deployment.md).
//
// Same tables, columns and schema versions as the SQLite store (storage.cc),
// with PostgreSQL types (BYTEA, BIGINT, DOUBLE PRECISION, BIGSERIAL). Open
// creates or migrates the schema in one transaction under a transaction-level
// advisory lock, so replicas starting together migrate once.
//
// Connections: one per Store and one per HistoryReader, each used under its
// object's mutex, each with the server-side statement_timeout of StoreOptions
// (a statement past it: DEADLINE_EXCEEDED, its transaction rolled back). A
// broken connection is re-established by the next call; a call that failed
// on a broken connection is retried once on the new one
// (Commit is idempotent: a report already stored byte for byte counts as
// committed, so a retry after a lost COMMIT acknowledgement is safe).
#include <arpa/inet.h>
#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sigma/server/storage.h"
#include "pg_connection.h"
#include "pg_store_sync.h"
#include "storage_backends.h"
#include "storage_runs_sql.h"

namespace sigma::server {
namespace {

using pg::Bytes;
using pg::Connection;
using pg::GetBytes;
using pg::GetInt;
using pg::Int;
using pg::Param;
using pg::Real;
using pg::Result;
using pg::Text;
using pg::WithRetry;

// Any fixed key: the advisory lock that serializes schema set-up across replicas.
constexpr int64_t kSchemaLockKey = 0x5349474d41;  // "SIGMA"

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class PgStore final : public Store {
 public:
  PgStore(std::string url, const StoreOptions& options) : conn_(std::move(url), options) {}
  absl::Status Init();
  absl::Status LoadAll(std::vector<StoredJob>* jobs, std::vector<sigma::v1::GenerationReport>* reports) override;
  absl::Status Commit(const std::vector<StoredJob>& jobs, const std::vector<sigma::v1::GenerationReport>& reports,
                      std::vector<int64_t>* created) override;
  absl::Status LoadConfigLog(std::vector<ConfigRecord>* out) override;
  absl::Status Import(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log) override;
  absl::Status Health() override;
  bool shared() const override { return true; }
  absl::StatusOr<StoredJob> LoadJob(const std::string& name) override;
  absl::StatusOr<std::vector<JobSummary>> ListJobs() override;
  absl::StatusOr<std::vector<StoredRuns>> ListRuns() override {
    std::lock_guard<std::mutex> lock(mu_);
    return WithRetry([&] { return pg::ListRuns(conn_); });
  }
  absl::StatusOr<int64_t> DeleteJob(const std::string& job, const std::string& run) override;
  int schema_version() const override { return schema_version_; }
  const char* kind() const override { return "postgresql"; }

 private:
  absl::Status InitLocked();
  absl::Status MigrateTo2();
  absl::Status LoadAllLocked(std::vector<StoredJob>* jobs, std::vector<sigma::v1::GenerationReport>* reports);
  absl::Status Migrate(int next);
  absl::StatusOr<int64_t> DeleteJobOnce(const std::string& job, const std::string& run);
  absl::Status CommitOnce(const std::vector<StoredJob>& jobs, const std::vector<sigma::v1::GenerationReport>& reports,
                          std::vector<int64_t>* created);
  absl::Status InsertReport(const sigma::v1::GenerationReport& r, int64_t now);
  absl::Status ImportOnce(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log);
  absl::Status Probe();
  void Remember(const absl::Status& s);

  Connection conn_;
  int schema_version_ = 0;
  std::mutex mu_;  // conn_, every call
  std::mutex health_mu_;  // health_, last_probe_ms_
  absl::Status health_;
  int64_t last_probe_ms_ = 0;
};

absl::Status PgStore::Init() {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = conn_.Connect(); !s.ok()) return s;
  if (auto s = conn_.Run("BEGIN"); !s.ok()) return s;
  // Migrations back-fill every report and replicas wait here for each other: no statement_timeout.
  absl::Status s = conn_.Run("SET LOCAL statement_timeout = 0");
  if (s.ok()) s = InitLocked();
  if (!s.ok()) {
    conn_.Rollback();
    return s;
  }
  return conn_.Run("COMMIT");
}

absl::Status PgStore::InitLocked() {
  if (auto s = conn_.Run("SELECT pg_advisory_xact_lock($1)", {Int(kSchemaLockKey)}); !s.ok()) return s;
  if (auto s = conn_.Run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"); !s.ok()) return s;
  {
    auto r = conn_.Exec("SELECT version FROM schema_version LIMIT 1");
    if (!r.ok()) return r.status();
    if (PQntuples(r->get()) == 1) schema_version_ = static_cast<int>(GetInt(r->get(), 0, 0));
  }
  if (schema_version_ > kSchemaVersion)
    return absl::FailedPreconditionError(absl::StrCat("--db: schema version ", schema_version_,
                                                      " is newer than this sigmad (", kSchemaVersion, ")"));
  if (schema_version_ == 0) {
    const char* ddl =
        "CREATE TABLE jobs ("
        "  name TEXT PRIMARY KEY,"
        "  config BYTEA NOT NULL,"
        "  m INTEGER NOT NULL DEFAULT 0,"
        "  created_unix_ms BIGINT NOT NULL,"
        "  updated_unix_ms BIGINT NOT NULL);"
        "CREATE TABLE configs ("
        "  id BIGSERIAL PRIMARY KEY,"
        "  job TEXT NOT NULL REFERENCES jobs(name),"
        "  config BYTEA NOT NULL,"
        "  set_unix_ms BIGINT NOT NULL);"
        "CREATE TABLE reports ("
        "  id BIGSERIAL PRIMARY KEY,"
        "  job TEXT NOT NULL REFERENCES jobs(name),"
        "  tap TEXT NOT NULL,"
        "  generation BIGINT NOT NULL,"
        "  m INTEGER NOT NULL,"
        "  n DOUBLE PRECISION NOT NULL,"
        "  n_a BIGINT NOT NULL,"
        "  backend TEXT NOT NULL,"
        "  track1_lower DOUBLE PRECISION, track1_upper DOUBLE PRECISION, track2 DOUBLE PRECISION,"
        "  track2_ci_halfwidth DOUBLE PRECISION, track1_drift DOUBLE PRECISION, track2_drift DOUBLE PRECISION,"
        "  divergence DOUBLE PRECISION, drift_halfwidth DOUBLE PRECISION,"
        "  baseline_job TEXT, baseline_generation BIGINT,"
        "  failed INTEGER NOT NULL,"
        "  sealed_unix_ms BIGINT NOT NULL,"
        "  report BYTEA NOT NULL,"
        "  UNIQUE (job, tap, generation));"
        "CREATE INDEX reports_by_job ON reports (job, tap, generation);"
        "INSERT INTO schema_version (version) VALUES (1);";
    if (auto s = conn_.Run(ddl); !s.ok()) return s;
    schema_version_ = 1;
  }
  // Migrations v-1 -> v, in order, inside this transaction (storage.h).
  while (schema_version_ < kSchemaVersion) {
    const int next = schema_version_ + 1;
    absl::Status s = Migrate(next);
    if (s.ok()) s = conn_.Run("UPDATE schema_version SET version = $1", {Int(next)});
    if (!s.ok())
      return absl::Status(s.code(), absl::StrCat("--db: migrating the schema to version ", next, ": ", s.message()));
    schema_version_ = next;
  }
  return absl::OkStatus();
}

// Version 2 (as in storage.cc): reports.severity and reports.compute_seconds,
// back-filled from the stored reports.
absl::Status PgStore::MigrateTo2() {
  if (auto s = conn_.Run("ALTER TABLE reports ADD COLUMN severity TEXT NOT NULL DEFAULT 'ok';"
                         "ALTER TABLE reports ADD COLUMN compute_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;"
                         "CREATE INDEX reports_by_severity ON reports (severity, job);");
      !s.ok())
    return s;
  auto rows = conn_.Exec("SELECT id, report FROM reports");
  if (!rows.ok()) return rows.status();
  for (int i = 0; i < PQntuples(rows->get()); ++i) {
    sigma::v1::GenerationReport r;
    const int64_t id = GetInt(rows->get(), i, 0);
    if (!r.ParseFromString(GetBytes(rows->get(), i, 1)))
      return absl::DataLossError(absl::StrCat("reports row ", id, " holds an unreadable report"));
    if (auto s = conn_.Run("UPDATE reports SET severity = $1, compute_seconds = $2 WHERE id = $3",
                           {Text(ReportSeverity(r)), Real(r.compute_seconds()), Int(id)});
        !s.ok())
      return s;
  }
  return absl::OkStatus();
}

// The migration to schema version `next` (storage.h lists them; as in storage.cc).
absl::Status PgStore::Migrate(int next) {
  switch (next) {
    case 2: return MigrateTo2();
    // Version 3 (job lifecycle, issue 15 item 4): FinishJob's time, 0 = not finished.
    case 3: return conn_.Run("ALTER TABLE jobs ADD COLUMN finished_unix_ms BIGINT NOT NULL DEFAULT 0");
    // Version 4 (runs, issue 15 item 1): reports.run, key (job, run, tap, generation).
    case 4: return conn_.Run(kPostgresRunsMigration);
    // Version 5: the runs table and its triggers (storage_runs_sql.h).
    case 5: return conn_.Run(kPostgresRunsTableMigration);
  }
  return absl::InternalError(absl::StrCat("no migration to ", next));
}

absl::StatusOr<int64_t> PgStore::DeleteJobOnce(const std::string& job, const std::string& run) {
  if (auto s = conn_.Run("BEGIN"); !s.ok()) return s;
  // The row first: a concurrent commit of the job on another replica either
  // finishes before (and its reports are deleted here) or finds the row gone.
  if (auto s = conn_.Run("SELECT 1 FROM jobs WHERE name = $1 FOR UPDATE", {Text(job)}); !s.ok()) {
    conn_.Rollback();
    return s;
  }
  auto deleted = run.empty()
                     ? conn_.Exec("WITH d AS (DELETE FROM reports WHERE job = $1 RETURNING 1) SELECT count(*) FROM d",
                                  {Text(job)})
                     : conn_.Exec("WITH d AS (DELETE FROM reports WHERE job = $1 AND run = $2 RETURNING 1)"
                                  " SELECT count(*) FROM d",
                                  {Text(job), Text(run)});
  absl::Status s = deleted.status();
  if (s.ok() && run.empty()) s = conn_.Run("DELETE FROM configs WHERE job = $1", {Text(job)});
  if (s.ok() && run.empty()) s = conn_.Run("DELETE FROM jobs WHERE name = $1", {Text(job)});
  if (s.ok()) s = conn_.Run("COMMIT");
  if (!s.ok()) {
    conn_.Rollback();
    return s;
  }
  return GetInt(deleted->get(), 0, 0);
}

absl::StatusOr<int64_t> PgStore::DeleteJob(const std::string& job, const std::string& run) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<int64_t> r = WithRetry([&] { return DeleteJobOnce(job, run); });
  Remember(r.status());
  return r;
}

absl::Status PgStore::LoadAll(std::vector<StoredJob>* jobs, std::vector<sigma::v1::GenerationReport>* reports) {
  std::lock_guard<std::mutex> lock(mu_);
  // Reading the whole history at start-up may take longer than statement_timeout.
  conn_.Run("SET statement_timeout = 0").IgnoreError();
  absl::Status s = LoadAllLocked(jobs, reports);
  conn_.Run("RESET statement_timeout").IgnoreError();
  return s;
}

absl::Status PgStore::LoadAllLocked(std::vector<StoredJob>* jobs, std::vector<sigma::v1::GenerationReport>* reports) {
  auto j = WithRetry(
      [&] { return conn_.Exec("SELECT name, config, m, finished_unix_ms, created_unix_ms FROM jobs ORDER BY name"); });
  if (!j.ok()) return j.status();
  for (int i = 0; i < PQntuples(j->get()); ++i) {
    StoredJob job;
    job.name = GetBytes(j->get(), i, 0);
    if (!job.config.ParseFromString(GetBytes(j->get(), i, 1)))
      return absl::DataLossError(absl::StrCat("--db: job ", job.name, ": unreadable config"));
    job.m = static_cast<int32_t>(GetInt(j->get(), i, 2));
    job.finished_unix_ms = GetInt(j->get(), i, 3);
    job.created_unix_ms = GetInt(j->get(), i, 4);
    jobs->push_back(std::move(job));
  }
  auto r = WithRetry([&] { return conn_.Exec("SELECT report FROM reports ORDER BY id"); });
  if (!r.ok()) return r.status();
  for (int i = 0; i < PQntuples(r->get()); ++i) {
    if (!reports->emplace_back().ParseFromString(GetBytes(r->get(), i, 0)))
      return absl::DataLossError("--db: unreadable report");
  }
  return absl::OkStatus();
}

absl::StatusOr<StoredJob> PgStore::LoadJob(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = WithRetry([&] {
    return conn_.Exec("SELECT config, m, finished_unix_ms, created_unix_ms FROM jobs WHERE name = $1", {Text(name)});
  });
  if (!r.ok()) return r.status();
  if (PQntuples(r->get()) == 0) return absl::NotFoundError(absl::StrCat("no stored job ", name));
  StoredJob job;
  job.name = name;
  if (!job.config.ParseFromString(GetBytes(r->get(), 0, 0)))
    return absl::DataLossError(absl::StrCat("--db: job ", name, ": unreadable config"));
  job.m = static_cast<int32_t>(GetInt(r->get(), 0, 1));
  job.finished_unix_ms = GetInt(r->get(), 0, 2);
  job.created_unix_ms = GetInt(r->get(), 0, 3);
  return job;
}

// Inserts the report unless its (job, run, tap, generation) is stored: a stored
// byte-identical report is this one (a retry), a different one ALREADY_EXISTS.
absl::Status PgStore::InsertReport(const sigma::v1::GenerationReport& r, int64_t) {
  std::string blob;
  r.SerializeToString(&blob);
  auto ins = conn_.Exec(
      "INSERT INTO reports (job, tap, generation, m, n, n_a, backend, track1_lower, track1_upper,"
      " track2, track2_ci_halfwidth, track1_drift, track2_drift, divergence, drift_halfwidth,"
      " baseline_job, baseline_generation, failed, sealed_unix_ms, report, severity, compute_seconds, run)"
      " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,"
      " $21, $22, $23) ON CONFLICT (job, run, tap, generation) DO NOTHING RETURNING id",
      {Text(r.job()), Text(r.tap()), Int(r.generation()), Int(r.m()), Real(r.n()), Int(r.n_a()), Text(r.backend()),
       Real(r.track1_lower()), Real(r.track1_upper()), Real(r.track2()), Real(r.track2_ci_halfwidth()),
       Real(r.track1_drift()), Real(r.track2_drift()), Real(r.divergence()), Real(r.drift_halfwidth()),
       Text(r.baseline_job()), Int(r.baseline_generation()), Int(r.flags().cholesky_failed() ? 1 : 0),
       Int(r.sealed_unix_ms()), Bytes(blob), Text(ReportSeverity(r)), Real(r.compute_seconds()), Text(StoredRun(r))});
  if (!ins.ok()) return ins.status();
  if (PQntuples(ins->get()) == 1) return absl::OkStatus();
  auto stored = conn_.Exec("SELECT report FROM reports WHERE job = $1 AND run = $4 AND tap = $2 AND generation = $3",
                           {Text(r.job()), Text(r.tap()), Int(r.generation()), Text(StoredRun(r))});
  if (!stored.ok()) return stored.status();
  if (PQntuples(stored->get()) == 1 && GetBytes(stored->get(), 0, 0) == blob) return absl::OkStatus();
  return absl::AlreadyExistsError(absl::StrCat("a different report of ", r.job(), " run ", StoredRun(r), "/",
                                               r.tap(), " generation ", r.generation(),
                                               " is already stored (sealed by another replica)"));
}

absl::Status PgStore::CommitOnce(const std::vector<StoredJob>& jobs,
                                 const std::vector<sigma::v1::GenerationReport>& reports,
                                 std::vector<int64_t>* created) {
  if (auto s = conn_.Run("BEGIN"); !s.ok()) return s;
  const int64_t now = NowMs();
  absl::Status s;
  std::vector<int64_t> rows;
  for (const StoredJob& j : jobs) {
    if (!s.ok()) break;
    absl::StatusOr<int64_t> row = reports.empty() ? pg::UpsertJob(conn_, j, now) : pg::EnsureJob(conn_, j, now);
    s = row.status();
    if (s.ok()) rows.push_back(*row);
  }
  for (const auto& r : reports) {
    if (s.ok()) s = InsertReport(r, now);
  }
  if (s.ok()) s = conn_.Run("COMMIT");
  if (!s.ok()) {
    conn_.Rollback();
    return s;
  }
  if (created) *created = std::move(rows);
  return s;
}

absl::Status PgStore::Commit(const std::vector<StoredJob>& jobs,
                             const std::vector<sigma::v1::GenerationReport>& reports, std::vector<int64_t>* created) {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Status s = WithRetry([&] { return CommitOnce(jobs, reports, created); });
  Remember(s);
  return s;
}

void PgStore::Remember(const absl::Status& s) {
  std::lock_guard<std::mutex> lock(health_mu_);
  if (s.ok() || s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded)
    health_ = s;
  last_probe_ms_ = NowMs();
}

absl::Status PgStore::Health() {
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  {
    std::lock_guard<std::mutex> h(health_mu_);
    // A commit in progress, or a probe less than a second ago: the latest state.
    if (!lock.owns_lock() || NowMs() - last_probe_ms_ < 1000) return health_;
  }
  Remember(Probe());
  std::lock_guard<std::mutex> h(health_mu_);
  return health_;
}

// Can a commit run now: the locks a commit takes, without waiting (a table
// locked by another session, e.g. a long ALTER or LOCK TABLE, fails at once
// with DEADLINE_EXCEEDED), then rolled back.
absl::Status PgStore::Probe() {
  if (auto s = conn_.Run("BEGIN"); !s.ok()) return s;
  absl::Status s = conn_.Run("LOCK TABLE jobs, configs, reports IN ROW EXCLUSIVE MODE NOWAIT");
  conn_.Rollback();
  return s;
}

absl::StatusOr<std::vector<JobSummary>> PgStore::ListJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  auto j = WithRetry([&] { return conn_.Exec("SELECT name, config, m, created_unix_ms FROM jobs ORDER BY name"); });
  if (!j.ok()) return j.status();
  auto t = WithRetry(
      [&] { return conn_.Exec("SELECT job, tap, max(m) FROM reports GROUP BY job, tap ORDER BY 1, 2"); });
  if (!t.ok()) return t.status();
  auto g = WithRetry([&] {
    return conn_.Exec("SELECT job, count(DISTINCT generation), max(generation) FROM reports GROUP BY job ORDER BY 1");
  });
  if (!g.ok()) return g.status();
  std::vector<JobSummary> out;
  int ti = 0, gi = 0;  // both ordered by job, like the jobs
  for (int i = 0; i < PQntuples(j->get()); ++i) {
    JobSummary& s = out.emplace_back();
    s.job.name = GetBytes(j->get(), i, 0);
    if (!s.job.config.ParseFromString(GetBytes(j->get(), i, 1)))
      return absl::DataLossError(absl::StrCat("--db: job ", s.job.name, ": unreadable config"));
    s.job.m = static_cast<int32_t>(GetInt(j->get(), i, 2));
    s.job.created_unix_ms = GetInt(j->get(), i, 3);
    for (; ti < PQntuples(t->get()) && GetBytes(t->get(), ti, 0) <= s.job.name; ++ti) {
      if (GetBytes(t->get(), ti, 0) == s.job.name)
        s.taps.emplace_back(GetBytes(t->get(), ti, 1), static_cast<int32_t>(GetInt(t->get(), ti, 2)));
    }
    for (; gi < PQntuples(g->get()) && GetBytes(g->get(), gi, 0) <= s.job.name; ++gi) {
      if (GetBytes(g->get(), gi, 0) != s.job.name) continue;
      s.generations = GetInt(g->get(), gi, 1);
      s.last_generation = GetInt(g->get(), gi, 2);
    }
  }
  return out;
}

absl::Status PgStore::LoadConfigLog(std::vector<ConfigRecord>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = WithRetry([&] { return conn_.Exec("SELECT job, config, set_unix_ms FROM configs ORDER BY id"); });
  if (!r.ok()) return r.status();
  for (int i = 0; i < PQntuples(r->get()); ++i) {
    ConfigRecord& c = out->emplace_back();
    c.job = GetBytes(r->get(), i, 0);
    if (!c.config.ParseFromString(GetBytes(r->get(), i, 1)))
      return absl::DataLossError(absl::StrCat("--db: a configs row of job ", c.job, " is unreadable"));
    c.set_unix_ms = GetInt(r->get(), i, 2);
  }
  return absl::OkStatus();
}

absl::Status PgStore::Import(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log) {
  std::lock_guard<std::mutex> lock(mu_);
  return WithRetry([&] { return ImportOnce(jobs, log); });
}

absl::Status PgStore::ImportOnce(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log) {
  if (auto s = conn_.Run("BEGIN"); !s.ok()) return s;
  const int64_t now = NowMs();
  absl::Status s;
  for (const StoredJob& j : jobs) {
    if (s.ok())
      s = conn_.Run("INSERT INTO jobs (name, config, m, created_unix_ms, updated_unix_ms) VALUES ($1, $2, $3, $4, $4)"
                    " ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config, m = EXCLUDED.m,"
                    " updated_unix_ms = EXCLUDED.updated_unix_ms",
                    {Text(j.name), Bytes(j.config.SerializeAsString()), Int(j.m), Int(now)});
  }
  for (const ConfigRecord& c : log) {
    if (s.ok())
      s = conn_.Run("INSERT INTO configs (job, config, set_unix_ms) SELECT $1, $2, $3 WHERE NOT EXISTS"
                    " (SELECT 1 FROM configs WHERE job = $1 AND set_unix_ms = $3 AND config = $2)",
                    {Text(c.job), Bytes(c.config.SerializeAsString()), Int(c.set_unix_ms)});
  }
  if (!s.ok()) {
    conn_.Rollback();
    return s;
  }
  return conn_.Run("COMMIT");
}

class PgHistoryReader final : public HistoryReader {
 public:
  PgHistoryReader(std::string url, const StoreOptions& options) : conn_(std::move(url), options) {}
  absl::Status Reports(const std::string& job, const std::string& run, const std::string& tap,
                       std::vector<sigma::v1::GenerationReport>* out) override;
  absl::StatusOr<sigma::v1::GenerationReport> Report(const std::string& job, const std::string& run,
                                                     const std::string& tap, int64_t generation) override;
  absl::Status SealWindow(const std::string& job, const std::string& run, const std::string& tap, int64_t before,
                          int recent, int with_drift, int64_t pinned,
                          std::vector<sigma::v1::GenerationReport>* out) override;
  bool shared() const override { return true; }

  Connection conn_;
  std::mutex mu_;  // conn_
};

absl::Status PgHistoryReader::Reports(const std::string& job, const std::string& run, const std::string& tap,
                                      std::vector<sigma::v1::GenerationReport>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = WithRetry([&] {
    return tap.empty() ? conn_.Exec("SELECT report FROM reports WHERE job = $1 AND run = $2 ORDER BY generation, tap",
                                    {Text(job), Text(run)})
                       : conn_.Exec("SELECT report FROM reports WHERE job = $1 AND run = $2 AND tap = $3"
                                    " ORDER BY generation",
                                    {Text(job), Text(run), Text(tap)});
  });
  if (!r.ok()) return absl::UnavailableError(r.status().message());
  for (int i = 0; i < PQntuples(r->get()); ++i) {
    if (!out->emplace_back().ParseFromString(GetBytes(r->get(), i, 0)))
      return absl::DataLossError(absl::StrCat("a stored report of job '", job, "' is unreadable"));
    NameRun(run, &out->back());
  }
  return absl::OkStatus();
}

absl::StatusOr<sigma::v1::GenerationReport> PgHistoryReader::Report(const std::string& job, const std::string& run,
                                                                    const std::string& tap, int64_t generation) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = WithRetry([&] {
    return conn_.Exec("SELECT report FROM reports WHERE job = $1 AND tap = $2 AND generation = $3 AND run = $4",
                      {Text(job), Text(tap), Int(generation), Text(run)});
  });
  if (!r.ok()) return absl::UnavailableError(r.status().message());
  if (PQntuples(r->get()) == 0)
    return absl::NotFoundError(absl::StrCat("no stored report for ", job, "/", tap, " generation ", generation));
  sigma::v1::GenerationReport out;
  if (!out.ParseFromString(GetBytes(r->get(), 0, 0)))
    return absl::DataLossError(absl::StrCat("the stored report of ", job, "/", tap, " generation ", generation,
                                            " is unreadable"));
  NameRun(run, &out);
  return out;
}

// The rows of SealWindow's rule (storage.h; HistoryReader::SealWindow is the
// reference): each part a LIMIT scan of the (job, tap, generation) index, so
// the plan never scans the tap (as a join on the generations could with
// stale statistics).
absl::Status PgHistoryReader::SealWindow(const std::string& job, const std::string& run, const std::string& tap,
                                         int64_t before, int recent, int with_drift, int64_t pinned,
                                         std::vector<sigma::v1::GenerationReport>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = WithRetry([&] {
    return conn_.Exec(
        "SELECT DISTINCT ON (generation) generation, report FROM ("
        " (SELECT generation, report FROM reports WHERE job = $1 AND run = $7 AND tap = $2 AND generation < $3"
        "  ORDER BY generation DESC LIMIT $4)"
        " UNION ALL (SELECT generation, report FROM reports WHERE job = $1 AND run = $7 AND tap = $2"
        "  AND generation < $3"
        "  AND failed = 0 AND baseline_generation >= 0 ORDER BY generation DESC LIMIT $5)"
        " UNION ALL (SELECT generation, report FROM reports WHERE job = $1 AND run = $7 AND tap = $2 AND failed = 0"
        "  ORDER BY generation LIMIT 1)"
        " UNION ALL (SELECT generation, report FROM reports WHERE job = $1 AND run = $7 AND tap = $2"
        "  AND generation = $6)"
        ") AS w ORDER BY generation",
        {Text(job), Text(tap), Int(before), Int(std::max(recent, 0)), Int(std::max(with_drift, 0)), Int(pinned),
         Text(run)});
  });
  if (!r.ok()) return absl::Status(r.status().code(), r.status().message());
  for (int i = 0; i < PQntuples(r->get()); ++i) {
    if (!out->emplace_back().ParseFromString(GetBytes(r->get(), i, 1)))
      return absl::DataLossError(absl::StrCat("a stored report of job '", job, "' is unreadable"));
    NameRun(run, &out->back());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenPostgresStore(const std::string& url, const StoreOptions& options) {
  auto store = std::make_unique<PgStore>(url, options);
  if (auto s = store->Init(); !s.ok()) {
    if (s.message().rfind("--db:", 0) == 0) return s;
    return absl::Status(s.code(), absl::StrCat("--db: ", RedactDb(url), ": ", s.message()));
  }
  return std::unique_ptr<Store>(std::move(store));
}

absl::StatusOr<std::unique_ptr<HistoryReader>> OpenPostgresHistoryReader(const std::string& url,
                                                                         const StoreOptions& options) {
  auto reader = std::make_unique<PgHistoryReader>(url, options);
  if (auto s = reader->conn_.Connect(); !s.ok())
    return absl::Status(s.code(), absl::StrCat("--db: ", RedactDb(url), ": ", s.message()));
  return std::unique_ptr<HistoryReader>(std::move(reader));
}

}  // namespace sigma::server
