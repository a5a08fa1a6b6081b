// Replicas on one shared store (PostgreSQL) agree on jobs and runs (issue 15
// items 1 and 4): Engine methods (scheduler.h).
//
// What a replica learns, and when:
//   - the runs other replicas sealed, and the jobs they created: the sync
//     (SyncWithStore, every reaper period, at most 1 s), one Store::ListRuns
//     read on the task lane, merged under mu_;
//   - a job deleted (or deleted and created again) on another replica: the
//     sync, ListJobs and the reads before ConfigureJob (RefreshJobs) notice
//     its row gone or another incarnation (StoredJob::created_unix_ms); a
//     commit that would write it back is refused by the store
//     (JobDeletedElsewhere, nothing stored). Either way ForgetJobs drops it
//     here as RunDelete does, without touching the store.
// Epochs: a row incarnation learned from a read carries the epoch taken before
// that read, one learned from a commit an epoch taken after it; a read judges
// a job stale only when it learned its incarnation at an earlier epoch (so a
// job this replica committed while the read ran is never taken for deleted).
// House rules: store I/O on the task lane or a seal lane, never under mu_.
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "sigma/server/scheduler.h"

namespace sigma::server {

void Engine::SyncWithStore() {
  if (!store_->shared() || sync_queued_.exchange(true)) return;
  if (!queue_.TryEnqueueTask([this] {
        sync_queued_.store(false);
        RunSync();
      }))
    sync_queued_.store(false);
}

void Engine::RunSync() {
  const uint64_t epoch = NextSyncEpoch();
  absl::StatusOr<std::vector<StoredRuns>> listed = store_->ListRuns();
  if (!listed.ok()) return;  // Health() reports the store; the next period reads again
  std::set<std::string> unknown;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const StoredRuns& j : *listed)
      if (registry_.Find(j.job) == nullptr) unknown.insert(j.job);
  }
  std::vector<StoredJob> created_elsewhere;
  for (const std::string& name : unknown) {
    absl::StatusOr<StoredJob> row = store_->LoadJob(name);
    if (row.ok()) created_elsewhere.push_back(*std::move(row));  // NOT_FOUND: deleted since the list
  }
  std::vector<StaleJob> stale;
  std::vector<StaleRun> stale_runs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const StoredJob& row : created_elsewhere)
      if (registry_.Find(row.name) == nullptr) AdoptStoredJobLocked(row, epoch);
    std::map<std::string, int64_t> rows;
    for (const StoredRuns& j : *listed) {
      rows[j.job] = j.created_unix_ms;
      if (!registry_.NoteStored(j.job, j.created_unix_ms, epoch)) continue;  // unknown, or stale here
      for (const std::string& run : j.runs) registry_.MarkSealed(j.job, run, epoch);  // first-sealed order
      StaleRunsLocked(j, epoch, &stale_runs);
    }
    stale = StaleJobsLocked(rows, epoch, /*complete=*/true);
    metrics_->SetJobs(static_cast<int64_t>(registry_.jobs().size()));
  }
  ForgetJobs(stale);
  ForgetRuns(stale_runs);
}

// The runs of `listed.job` this replica learned sealed before `epoch` that the
// store no longer lists: another replica deleted them (DeleteJob --run).
void Engine::StaleRunsLocked(const StoredRuns& listed, uint64_t epoch, std::vector<StaleRun>* out) const {
  const JobState* job = registry_.Find(listed.job);
  if (job == nullptr) return;
  const std::set<std::string> stored(listed.runs.begin(), listed.runs.end());
  for (const auto& [run, learned] : job->sealed_runs) {
    if (learned < epoch && !stored.contains(run))
      out->push_back(StaleRun{listed.job, run, registry_.RunId(listed.job, run)});
  }
}

void Engine::ForgetRuns(const std::vector<StaleRun>& stale) {
  for (const StaleRun& r : stale) {
    std::vector<std::shared_ptr<Snapshot>> snaps;
    {
      std::unique_lock<std::shared_mutex> no_seal(commit_mu_);  // as RunDeleteRun
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (registry_.RunId(r.job, r.run) != r.run_id) continue;  // deleted or created anew meanwhile
      }
      snaps = ForgetRunHeld(r.job, r.run);
    }
    const int64_t discarded = AbortSnapshots(
        snaps, absl::AbortedError(absl::StrCat("job '", r.job, "' run '", r.run,
                                               "' was deleted on another replica: its open snapshots here are "
                                               "discarded; send again to start the run anew")));
    logger_.Log(LogLevel::kInfo, "run_deleted_elsewhere",
                {{"job", r.job}, {"run", r.run}, {"snapshots_discarded", absl::StrCat(discarded)}});
  }
}

std::vector<Engine::StaleJob> Engine::StaleJobsLocked(const std::map<std::string, int64_t>& rows, uint64_t epoch,
                                                      bool complete) const {
  std::vector<StaleJob> stale;
  auto check = [&](const std::string& name, const JobState& job) {
    if (job.stored_created_ms == 0 || job.stored_epoch >= epoch) return;  // never stored, or learned after the read
    auto row = rows.find(name);
    if (row == rows.end() && !complete) return;
    if (row != rows.end() && row->second == job.stored_created_ms) return;
    stale.push_back(StaleJob{name, job.incarnation, job.stored_created_ms});
  };
  if (complete) {
    for (const auto& [name, job] : registry_.jobs()) check(name, job);
  } else {
    for (const auto& [name, created] : rows)
      if (const JobState* job = registry_.Find(name)) check(name, *job);
  }
  return stale;
}

void Engine::ForgetJobs(const std::vector<StaleJob>& stale) {
  for (const StaleJob& j : stale) {
    std::vector<std::shared_ptr<Snapshot>> snaps;
    {
      std::unique_lock<std::shared_mutex> no_seal(commit_mu_);  // as RunDelete: no seal publishes between
      {
        std::lock_guard<std::mutex> lock(mu_);
        const JobState* job = registry_.Find(j.name);
        if (job == nullptr || job->incarnation != j.incarnation || job->stored_created_ms != j.created) continue;
        snaps = DetachJobLocked(j.name);
      }
      history_->Forget(j.name);
      metrics_->RemoveJob(j.name);
    }
    const int64_t discarded = AbortSnapshots(
        snaps, absl::AbortedError(absl::StrCat("job '", j.name,
                                               "' was deleted on another replica: its open snapshots here are "
                                               "discarded; send again to create the job anew")));
    logger_.Log(LogLevel::kInfo, "job_deleted_elsewhere",
                {{"job", j.name}, {"snapshots_discarded", absl::StrCat(discarded)}});
  }
}

bool Engine::ForgetIfDeleted(const absl::Status& status) {
  const std::string name = DeletedJob(status);
  if (name.empty()) return false;
  std::vector<StaleJob> stale;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (const JobState* job = registry_.Find(name); job != nullptr && job->stored_created_ms != 0)
      stale.push_back(StaleJob{name, job->incarnation, job->stored_created_ms});
  }
  ForgetJobs(stale);
  return true;
}

void Engine::NoteCommittedLocked(const std::vector<StoredJob>& rows, const std::vector<int64_t>& created) {
  const uint64_t epoch = NextSyncEpoch();
  for (size_t i = 0; i < rows.size() && i < created.size(); ++i) registry_.NoteStored(rows[i].name, created[i], epoch);
}

bool Engine::AdoptStoredJobLocked(const StoredJob& stored, uint64_t epoch) {
  const JobState* known = registry_.Find(stored.name);
  if (known && known->stored_created_ms != 0 && stored.created_unix_ms != 0 &&
      known->stored_created_ms != stored.created_unix_ms)
    return false;  // the job held here was deleted elsewhere: forgotten, not merged
  StoredJob refreshed = stored;  // keeps every stored field (finished_unix_ms, ...)
  if (known && known->m) refreshed.m = known->m;
  registry_.Restore(refreshed);
  registry_.NoteStored(stored.name, stored.created_unix_ms, epoch);
  return true;
}

std::vector<Engine::StaleJob> Engine::RefreshJobs(const std::set<std::string>& names) {
  if (!store_->shared()) return {};
  const uint64_t epoch = NextSyncEpoch();
  std::vector<StoredJob> stored;
  std::map<std::string, int64_t> rows;  // name -> created_unix_ms, 0: no row
  for (const std::string& name : names) {
    absl::StatusOr<StoredJob> j = store_->LoadJob(name);
    if (j.ok()) {
      rows[name] = j->created_unix_ms;
      stored.push_back(*std::move(j));
    } else if (absl::IsNotFound(j.status())) {
      rows[name] = 0;  // new, or deleted elsewhere
    }  // UNAVAILABLE: the commit will say so
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const StoredJob& j : stored) AdoptStoredJobLocked(j, epoch);
  return StaleJobsLocked(rows, epoch, /*complete=*/false);
}

}  // namespace sigma::server
