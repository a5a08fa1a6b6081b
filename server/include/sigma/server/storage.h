// The embedded store: SQLite in WAL mode with synchronous=FULL. Tables:
// schema_version, jobs (current config), configs (every config change),
// reports (every sealed GenerationReport, serialized, plus indexed columns).
// Schema history (migrations run at Open, in one transaction):
//   1: the tables above;
//   2: reports.severity (highest alert severity) and reports.compute_seconds.
// Thread-safe: one mutex serializes LoadAll and Commit (sigmad commits from
// its seal lanes and its task lane; seal_queue.h).
#ifndef SIGMA_SERVER_STORAGE_H_
#define SIGMA_SERVER_STORAGE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sigma/v1/sigma.pb.h"

struct sqlite3;

namespace sigma::server {

inline constexpr int kSchemaVersion = 2;

struct StoredJob {
  std::string name;
  sigma::v1::JobConfig config;  // as configured (unset fields = defaults)
  int32_t m = 0;
};

// "ok", "info", "warning" or "critical": the highest severity among the
// report's alerts (the reports.severity column).
std::string ReportSeverity(const sigma::v1::GenerationReport& report);

class Store {
 public:
  // Opens or creates the database at `path` (parent directory created).
  // Refused when the file cannot be written (read-only file or directory) or
  // when another Store (another sigmad) has it open: each Store holds an
  // exclusive flock(2) on `path + ".lock"` (symbolic links resolved) until it
  // is destroyed.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Every job, and every report in the order it was sealed.
  absl::Status LoadAll(std::vector<StoredJob>* jobs,
                       std::vector<sigma::v1::GenerationReport>* reports);

  // Upserts jobs (a configs row is appended when the config changed) and
  // inserts reports, in one transaction; durable when it returns OK.
  absl::Status Commit(const std::vector<StoredJob>& jobs,
                      const std::vector<sigma::v1::GenerationReport>& reports);

  int schema_version() const { return schema_version_; }

 private:
  Store(sqlite3* db, int lock_fd) : db_(db), lock_fd_(lock_fd) {}
  absl::Status Exec(const char* sql);
  absl::Status Init();
  absl::Status UpsertJob(const StoredJob& job);
  absl::Status InsertReport(const sigma::v1::GenerationReport& report);
  absl::Status MigrateTo2();

  sqlite3* db_;
  int lock_fd_ = -1;  // flock(LOCK_EX) on the database's ".lock" file, -1 for ":memory:"
  int schema_version_ = 0;
  std::mutex mu_;  // LoadAll, Commit
};

// Read-only access to the reports for GetHistory and for retries of snapshots
// whose report is no longer held in memory: a second SQLite connection
// (read-only; WAL lets it read while the Store writes, and it sees every
// committed report). Thread-safe (one mutex); point reads use the
// (job, tap, generation) index.
class HistoryReader {
 public:
  // `path` must have been created by Store::Open.
  static absl::StatusOr<std::unique_ptr<HistoryReader>> Open(const std::string& path);
  ~HistoryReader();
  HistoryReader(const HistoryReader&) = delete;
  HistoryReader& operator=(const HistoryReader&) = delete;

  // Every report of `job` (of `tap` only, when not empty), by generation then tap.
  absl::Status Reports(const std::string& job, const std::string& tap,
                       std::vector<sigma::v1::GenerationReport>* out);
  // One report, NOT_FOUND when there is none.
  absl::StatusOr<sigma::v1::GenerationReport> Report(const std::string& job, const std::string& tap,
                                                     int64_t generation);

 private:
  explicit HistoryReader(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  std::mutex mu_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_STORAGE_H_
