// The history store behind sigmad: jobs (current config), configs (every
// config change) and reports (every sealed GenerationReport, serialized, plus
// indexed columns). Two implementations, chosen by the --db value (Open):
//   - SQLite (default; --db FILE): an embedded file in WAL mode with
//     synchronous=FULL, one sigmad per file (flock on FILE.lock);
//   - PostgreSQL (--db postgresql://user@host:port/dbname?... or postgres://):
//     a shared database that several sigmad replicas use at once
//     (storage_postgres.cc; docs/deployment.md).
// Schema history (the same in both; migrations run at Open in one
// transaction, a schema newer than this sigmad is refused):
//   1: the tables above;
//   2: reports.severity (highest alert severity) and reports.compute_seconds;
//   3: jobs.finished_unix_ms (FinishJob; 0 = not finished);
//   4: reports.run (issue 15 item 1): the key becomes (job, run, tap,
//      generation); every history stored before is run "1" (StoredRun);
//   5: runs (job, run, first_report): every run with a stored report, in
//      first-sealed order (first_report: the id of its first report),
//      maintained by triggers on reports (insert and delete, whatever deletes
//      them) and back-filled; read by ListRuns (replicas learning each
//      other's runs, store_sync.cc).
// Durability: Commit returns OK only once the transaction is durable (SQLite
// fsync; PostgreSQL COMMIT acknowledged by the server).
// Timeouts (PostgreSQL): every statement runs under the server-side
// statement_timeout StoreOptions::statement_timeout_ms (sigmad --db-timeout-ms);
// a statement past it fails DEADLINE_EXCEEDED and its transaction is rolled
// back (nothing of it stored), so a slow or locked database never blocks a
// seal commit for longer.
// Thread-safety: every Store and HistoryReader serializes its calls with its
// own mutex (sigmad commits from its seal lanes and its task lane;
// seal_queue.h); a HistoryReader is a second connection, so reads never wait
// for a commit in progress.
#ifndef SIGMA_SERVER_STORAGE_H_
#define SIGMA_SERVER_STORAGE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

inline constexpr int kSchemaVersion = 5;

// The run of a job whose reports carry no run name (histories stored before
// schema version 4, and the first unnamed run of a job).
inline constexpr char kFirstRun[] = "1";
// The run a report is stored under: report.run(), or kFirstRun when empty.
inline std::string StoredRun(const sigma::v1::GenerationReport& report) {
  return report.run().empty() ? std::string(kFirstRun) : report.run();
}
// A report read back from the store of `run`: its run named (reports stored
// before schema version 4 carry none).
inline void NameRun(const std::string& run, sigma::v1::GenerationReport* report) {
  if (report->run().empty()) report->set_run(run);
}

struct StoredJob {
  std::string name;
  sigma::v1::JobConfig config;  // as configured (unset fields = defaults)
  int32_t m = 0;
  // FinishJob's time (0: not finished). Sticky in the store: an upsert never
  // clears it (a stale replica cannot un-finish a job); DeleteJob removes it.
  int64_t finished_unix_ms = 0;
  // The incarnation of the job's row: its creation time in the store (set by
  // LoadAll, LoadJob, ListJobs, ListRuns; never changed by an upsert). In a
  // Commit: the incarnation the committing replica holds, 0 when it knows
  // none (a job it never saw stored: created by whichever replica commits
  // first). A shared store refuses a commit whose row is gone or has another
  // incarnation (the job was deleted, perhaps created again, on another
  // replica): JobDeletedElsewhere, nothing of the transaction stored. SQLite
  // (one writer) ignores it.
  int64_t created_unix_ms = 0;
};

// A shared store's view of one job for the replicas' periodic sync
// (Store::ListRuns): its row's incarnation and its runs with a stored report,
// in first-sealed order.
struct StoredRuns {
  std::string job;
  int64_t created_unix_ms = 0;
  std::vector<std::string> runs;
};

// The refusal of a commit to a job another replica deleted (StoredJob::
// created_unix_ms): FAILED_PRECONDITION naming the job, with a payload that
// DeletedJob reads back.
absl::Status JobDeletedElsewhere(const std::string& job);
// The job of a JobDeletedElsewhere status; empty for any other status.
std::string DeletedJob(const absl::Status& status);

// How Store::Open and HistoryReader::Open connect (PostgreSQL only; SQLite
// ignores it).
struct StoreOptions {
  // Server-side statement_timeout of every statement, in ms; 0 = none. An
  // `options=...` parameter in the URL replaces it (libpq keyword "options";
  // add `-c statement_timeout=...` there).
  int64_t statement_timeout_ms = 10000;
};

// One row of the configs log: a job's configuration as set at set_unix_ms.
struct ConfigRecord {
  std::string job;
  sigma::v1::JobConfig config;
  int64_t set_unix_ms = 0;
};

// A job as the shared store knows it (ListJobs on a replica): its row, the
// taps of its reports with their m, and its sealed generations.
struct JobSummary {
  StoredJob job;
  std::vector<std::pair<std::string, int32_t>> taps;  // (tap, m), by tap
  int64_t generations = 0;       // distinct sealed generations over taps
  int64_t last_generation = -1;  // highest sealed generation, -1: none
};

// "ok", "info", "warning" or "critical": the highest severity among the
// report's alerts (the reports.severity column).
std::string ReportSeverity(const sigma::v1::GenerationReport& report);

// True when `db` names a PostgreSQL database (postgresql:// or postgres://).
bool IsPostgresUrl(const std::string& db);

// `db` with any password in a PostgreSQL URL replaced by "***" (for messages
// and logs); other values unchanged.
std::string RedactDb(const std::string& db);

class Store {
 public:
  // Opens `db`: a PostgreSQL URL (IsPostgresUrl), or an SQLite file that is
  // created when missing (parent directory created). SQLite: refused when the
  // file cannot be written (read-only file or directory) or when another Store
  // (another sigmad) has it open: each SQLite Store holds an exclusive
  // flock(2) on `path + ".lock"` (symbolic links resolved) until destroyed.
  // PostgreSQL: refused (UNAVAILABLE) when the server cannot be reached.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& db, const StoreOptions& options = {});
  virtual ~Store() = default;

  // Every job, and every report in the order it was sealed (committed).
  virtual absl::Status LoadAll(std::vector<StoredJob>* jobs,
                               std::vector<sigma::v1::GenerationReport>* reports) = 0;

  // Upserts jobs (a configs row is appended when the config changed) and
  // inserts reports, in one transaction; durable when it returns OK. A report
  // whose (job, run, tap, generation) is already stored: PostgreSQL (replicas
  // share the database) treats a byte-identical row as committed and refuses
  // a different one with ALREADY_EXISTS (nothing of the transaction is
  // stored); SQLite (one writer) refuses it as before (INTERNAL, UNIQUE).
  // UNAVAILABLE when the database cannot be reached (the connection is
  // re-established by the next call). A job whose created_unix_ms is set and
  // whose row is gone or another incarnation: JobDeletedElsewhere (shared
  // stores). `created`, when not null: the created_unix_ms of each of `jobs`
  // as committed, in order.
  absl::Status Commit(const std::vector<StoredJob>& jobs, const std::vector<sigma::v1::GenerationReport>& reports) {
    return Commit(jobs, reports, nullptr);
  }
  virtual absl::Status Commit(const std::vector<StoredJob>& jobs,
                              const std::vector<sigma::v1::GenerationReport>& reports,
                              std::vector<int64_t>* created) = 0;

  // The configs log: every configuration change, in the order it was made.
  virtual absl::Status LoadConfigLog(std::vector<ConfigRecord>* out) = 0;
  // Migration (sigmad-migrate): upserts `jobs` and appends `log` as given
  // (times kept, no row of its own), in one transaction. A log row already
  // stored (same job, time and config) is not appended again, so a second
  // run after an interruption copies nothing twice.
  virtual absl::Status Import(const std::vector<StoredJob>& jobs, const std::vector<ConfigRecord>& log) = 0;
  // Removes `job` (every run): its reports, its configs and its row, in one
  // transaction. With `run` not empty, only that run's reports (the job's row,
  // configs and other runs stay). Returns the number of reports removed (0
  // when the store never held them). UNAVAILABLE when the database cannot be reached.
  virtual absl::StatusOr<int64_t> DeleteJob(const std::string& job, const std::string& run = "") = 0;

  // OK when the store can take commits now; UNAVAILABLE with the reason
  // otherwise (PostgreSQL: the server is unreachable, or DEADLINE_EXCEEDED: the
  // latest commit timed out or a probe could not take a commit's locks
  // NOWAIT; probed at most once a second, reconnecting when needed). Never waits for a commit in progress: while one
  // runs, the latest known state is returned. For /readyz.
  virtual absl::Status Health() = 0;

  // True when several sigmad replicas write the database (PostgreSQL). Then:
  // Health() notices by itself that the store is back after a failure (a
  // failed commit need not keep the daemon unready until the next one
  // succeeds); a commit with reports never changes an existing job's
  // configuration (only commits without reports, ConfigureJob's, do; a
  // replica's view may be stale); LoadJob reads what any replica committed.
  virtual bool shared() const { return false; }
  // One job's row (NOT_FOUND when none). Shared stores only (UNIMPLEMENTED
  // otherwise: the daemon's memory is the truth).
  virtual absl::StatusOr<StoredJob> LoadJob(const std::string& name) {
    return absl::UnimplementedError(absl::StrCat("LoadJob(", name, "): not a shared store"));
  }
  // Every job with its taps and sealed generations, by name, as committed by
  // any replica. Shared stores only (UNIMPLEMENTED otherwise).
  virtual absl::StatusOr<std::vector<JobSummary>> ListJobs() {
    return absl::UnimplementedError("ListJobs: not a shared store");
  }
  // Every job's incarnation and runs (StoredRuns), by name, as committed by
  // any replica: two small reads (jobs and runs tables), no report read.
  // Shared stores only (UNIMPLEMENTED otherwise).
  virtual absl::StatusOr<std::vector<StoredRuns>> ListRuns() {
    return absl::UnimplementedError("ListRuns: not a shared store");
  }

  virtual int schema_version() const = 0;
  // "sqlite" or "postgresql".
  virtual const char* kind() const = 0;

 protected:
  Store() = default;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
};

// Read-only access to the reports for GetHistory and for retries of snapshots
// whose report is no longer held in memory: a second connection that sees
// every committed report (SQLite: read-only, WAL lets it read while the Store
// writes; PostgreSQL: also the reports other replicas committed). Point reads
// use the (job, run, tap, generation) index. Reports stored before runs come
// back with run set to "1".
class HistoryReader {
 public:
  // `db` must have been opened by Store::Open before.
  static absl::StatusOr<std::unique_ptr<HistoryReader>> Open(const std::string& db,
                                                             const StoreOptions& options = {});
  virtual ~HistoryReader() = default;

  // Every report of the job's run (of `tap` only, when not empty), by generation then tap.
  virtual absl::Status Reports(const std::string& job, const std::string& run, const std::string& tap,
                               std::vector<sigma::v1::GenerationReport>* out) = 0;
  // One report, NOT_FOUND when there is none.
  virtual absl::StatusOr<sigma::v1::GenerationReport> Report(const std::string& job, const std::string& run,
                                                             const std::string& tap, int64_t generation) = 0;
  // What a seal of (job, run, tap, `before`) reads of the tap's earlier history
  // (spec §3; ReportHistory::CatchUp), by generation: the `recent` latest
  // reports with generation < `before`, the `with_drift` latest successful
  // ones with a baseline (baseline_generation >= 0) and generation < `before`,
  // the first successful report (lowest generation: the default baseline)
  // and report `pinned` (a pinned baseline; -1: none). Each report once. The
  // rows read do not grow with the tap's history. This default filters
  // Reports(); PostgreSQL reads only those rows.
  virtual absl::Status SealWindow(const std::string& job, const std::string& run, const std::string& tap,
                                  int64_t before, int recent, int with_drift, int64_t pinned,
                                  std::vector<sigma::v1::GenerationReport>* out);
  // True when other sigmad replicas write the same database (PostgreSQL):
  // reports this daemon did not seal may appear at any time (ReportHistory::CatchUp).
  virtual bool shared() const { return false; }

 protected:
  HistoryReader() = default;
  HistoryReader(const HistoryReader&) = delete;
  HistoryReader& operator=(const HistoryReader&) = delete;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_STORAGE_H_
