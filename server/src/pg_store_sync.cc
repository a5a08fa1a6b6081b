// The PostgreSQL Store's job rows, incarnation check and runs listing (pg_store_sync.h).
#include "pg_store_sync.h"

#include <utility>

namespace sigma::server::pg {

absl::StatusOr<std::optional<LockedJob>> LockJobRow(Connection& conn, const StoredJob& job) {
  // FOR UPDATE: a DeleteJob on another replica locks the row first too, so
  // either it waits for this transaction (and deletes what it stored) or this
  // one waits for it and finds the row gone.
  auto r = conn.Exec("SELECT created_unix_ms, config FROM jobs WHERE name = $1 FOR UPDATE", {Text(job.name)});
  if (!r.ok()) return r.status();
  std::optional<LockedJob> row;
  if (PQntuples(r->get()) == 1) row = LockedJob{GetInt(r->get(), 0, 0), GetBytes(r->get(), 0, 1)};
  if (job.created_unix_ms != 0 && (!row || row->created_unix_ms != job.created_unix_ms))
    return JobDeletedElsewhere(job.name);
  return row;
}

absl::StatusOr<int64_t> UpsertJob(Connection& conn, const StoredJob& job, int64_t now) {
  std::string blob;
  job.config.SerializeToString(&blob);
  auto old = LockJobRow(conn, job);
  if (!old.ok()) return old.status();
  const bool changed = !*old || (*old)->config != blob;
  if (auto s = conn.Run("INSERT INTO jobs (name, config, m, created_unix_ms, updated_unix_ms, finished_unix_ms)"
                        " VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config,"
                        " m = EXCLUDED.m, updated_unix_ms = EXCLUDED.updated_unix_ms,"
                        " finished_unix_ms = GREATEST(jobs.finished_unix_ms, EXCLUDED.finished_unix_ms)",
                        {Text(job.name), Bytes(blob), Int(job.m), Int(now), Int(job.finished_unix_ms)});
      !s.ok())
    return s;
  const int64_t created = *old ? (*old)->created_unix_ms : now;
  if (!changed) return created;
  if (auto s = conn.Run("INSERT INTO configs (job, config, set_unix_ms) VALUES ($1, $2, $3)",
                        {Text(job.name), Bytes(blob), Int(now)});
      !s.ok())
    return s;
  return created;
}

absl::StatusOr<int64_t> EnsureJob(Connection& conn, const StoredJob& job, int64_t now) {
  std::string blob;
  job.config.SerializeToString(&blob);
  auto row = LockJobRow(conn, job);
  if (!row.ok()) return row.status();
  auto r = conn.Exec(
      "INSERT INTO jobs (name, config, m, created_unix_ms, updated_unix_ms)"
      " VALUES ($1, $2, $3, $4, $4) ON CONFLICT (name) DO UPDATE SET m = EXCLUDED.m,"
      " updated_unix_ms = EXCLUDED.updated_unix_ms WHERE jobs.m = 0 RETURNING (xmax = 0)",
      {Text(job.name), Bytes(blob), Int(job.m), Int(now)});
  if (!r.ok()) return r.status();
  const bool inserted = PQntuples(r->get()) == 1 && PQgetvalue(r->get(), 0, 0)[0] == 1;
  if (*row) return (*row)->created_unix_ms;
  if (!inserted) {  // another replica created it since the lock's read
    auto again = LockJobRow(conn, job);
    if (!again.ok()) return again.status();
    return *again ? (*again)->created_unix_ms : now;
  }
  if (auto s = conn.Run("INSERT INTO configs (job, config, set_unix_ms) VALUES ($1, $2, $3)",
                        {Text(job.name), Bytes(blob), Int(now)});
      !s.ok())
    return s;
  return now;
}

absl::StatusOr<std::vector<StoredRuns>> ListRuns(Connection& conn) {
  auto r = conn.Exec(
      "SELECT j.name, j.created_unix_ms, r.run FROM jobs j LEFT JOIN runs r ON r.job = j.name"
      " ORDER BY j.name, r.first_report");
  if (!r.ok()) return r.status();
  std::vector<StoredRuns> out;
  for (int i = 0; i < PQntuples(r->get()); ++i) {
    std::string name = GetBytes(r->get(), i, 0);
    if (out.empty() || out.back().job != name) {
      out.emplace_back().job = std::move(name);
      out.back().created_unix_ms = GetInt(r->get(), i, 1);
    }
    if (!PQgetisnull(r->get(), i, 2)) out.back().runs.push_back(GetBytes(r->get(), i, 2));
  }
  return out;
}

}  // namespace sigma::server::pg
