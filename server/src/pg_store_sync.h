// The job rows of the PostgreSQL Store's commits (storage_postgres.cc), with
// what keeps replicas in agreement (issue 15 items 1 and 4 on the shared
// store): the row's incarnation checked under its row lock, and the runs of
// every job read in one query (Store::ListRuns). Internal to server/src.
#ifndef SIGMA_SERVER_SRC_PG_STORE_SYNC_H_
#define SIGMA_SERVER_SRC_PG_STORE_SYNC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pg_connection.h"
#include "sigma/server/storage.h"

namespace sigma::server::pg {

// A job's row as a commit found it, locked FOR UPDATE until its transaction ends.
struct LockedJob {
  int64_t created_unix_ms = 0;
  std::string config;  // serialized JobConfig
};

// Locks `job.name`'s row (inside a transaction); nullopt when there is none.
// JobDeletedElsewhere (storage.h) when job.created_unix_ms is set and the row
// is gone or another incarnation: the job was deleted on another replica
// (after this one stored or loaded it), and the caller's transaction must not
// write it back.
absl::StatusOr<std::optional<LockedJob>> LockJobRow(Connection& conn, const StoredJob& job);

// A commit's job row, inside its transaction; both return the row's
// created_unix_ms and refuse with LockJobRow's JobDeletedElsewhere.
// UpsertJob (commits without reports: ConfigureJob, FinishJob) writes the
// configuration, m and finished time (appending a configs row when the
// configuration changed). EnsureJob (seals) creates the row with this
// replica's configuration when new; an existing row keeps its configuration
// (ConfigureJob on any replica owns it) and only gets its m when it had none.
absl::StatusOr<int64_t> UpsertJob(Connection& conn, const StoredJob& job, int64_t now);
absl::StatusOr<int64_t> EnsureJob(Connection& conn, const StoredJob& job, int64_t now);

// Every job's incarnation and runs (StoredRuns), by name.
absl::StatusOr<std::vector<StoredRuns>> ListRuns(Connection& conn);

}  // namespace sigma::server::pg

#endif  // SIGMA_SERVER_SRC_PG_STORE_SYNC_H_
