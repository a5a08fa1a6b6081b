// Job lifecycle (issue 15 item 4): DeleteJob, FinishJob, ListSnapshots and the
// lifecycle sweep (--finished-series-ttl-s, --retention-days). Engine methods
// (scheduler.h). Store I/O runs on the task lane; DeleteJob holds commit_mu_
// exclusively so that no seal commits or publishes between its steps.
#include <algorithm>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sigma/server/refusal.h"
#include "sigma/server/report_builder.h"
#include "sigma/server/requests.h"
#include "sigma/server/scheduler.h"

namespace sigma::server {

namespace v1 = sigma::v1;
using absl::StatusCode;

bool Engine::SameJobLocked(const Snapshot& snap) const {
  const JobState* job = registry_.Find(snap.key().job);
  return job != nullptr && job->incarnation == snap.params().job_incarnation &&
         registry_.RunId(snap.key().job, snap.key().run) == snap.params().run_id;
}

// NOT_FOUND (unknown_run) when `job` has no run `run` (mu_ held).
absl::Status Engine::KnownRunLocked(const std::string& job, const std::string& run) const {
  if (registry_.Find(job) == nullptr) return UnknownJob(job);
  if (registry_.RunId(job, run) == 0)
    return Refusal(StatusCode::kNotFound, "unknown_run",
                   absl::StrCat("job '", job, "' has no run '", run, "' (sigmactl job --job ", job, " lists its runs)"));
  return absl::OkStatus();
}

void Engine::DeleteJob(const v1::DeleteJobRequest& request, DeleteDone done) {
  if (absl::Status s = ValidateNames(request.job(), nullptr, request.run()); !s.ok()) return done(s, {});
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!request.run().empty()) {
      if (absl::Status s = KnownRunLocked(request.job(), request.run()); !s.ok()) return done(s, {});
    } else if (registry_.Find(request.job()) == nullptr) {
      return done(UnknownJob(request.job()), {});
    }
  }
  const std::string job = request.job(), run = request.run();
  auto task = [this, job, run, done] {
    if (run.empty()) return RunDelete(job, "DeleteJob", done);
    RunDeleteRun(job, run, done);
  };
  if (!queue_.TryEnqueueTask(std::move(task)))
    done(Refusal(StatusCode::kResourceExhausted, "queue_full", "compute queue full (--compute-queue-capacity)"), {});
}

int64_t Engine::AbortSnapshots(const std::vector<std::shared_ptr<Snapshot>>& snaps, const absl::Status& aborted) {
  int64_t discarded = 0;
  for (const std::shared_ptr<Snapshot>& snap : snaps) {
    std::vector<ReportCallback> waiters;
    if (!snap->Cancel(aborted, &waiters)) continue;  // sealing: its commit drops it (SameJobLocked)
    ++discarded;
    for (auto& w : waiters) w(aborted, nullptr);
  }
  return discarded;
}

// DeleteJob --run: as RunDelete (exclusive commit_mu_, the store first), for
// one run: its reports and open snapshots go, the job stays. When the run was
// the latest, the gauges show the run created before it (or nothing).
void Engine::RunDeleteRun(const std::string& job, const std::string& run, const DeleteDone& done) {
  v1::DeleteJobResponse response;
  response.set_job(job);
  response.set_run(run);
  std::vector<std::shared_ptr<Snapshot>> snaps;
  {
    std::unique_lock<std::shared_mutex> no_seal(commit_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (absl::Status s = KnownRunLocked(job, run); !s.ok()) return done(s, {});  // deleted meanwhile
    }
    absl::StatusOr<int64_t> deleted = store_->DeleteJob(job, run);
    if (!deleted.ok()) {
      metrics_->StoreCommitFailed();
      logger_.Log(LogLevel::kError, "store_failure", {{"what", "delete_run"}, {"job", job}, {"run", run},
                                                      {"error", std::string(deleted.status().message())}});
      return done(absl::UnavailableError(absl::StrCat("store: ", deleted.status().message(), "; job '", job,
                                                      "' run '", run, "' is unchanged, retry DeleteJob")),
                  response);
    }
    response.set_reports_deleted(*deleted);
    snaps = ForgetRunHeld(job, run);
  }
  const absl::Status aborted = absl::AbortedError(absl::StrCat("job '", job, "' run '", run, "' was deleted (DeleteJob)"));
  response.set_snapshots_discarded(AbortSnapshots(snaps, aborted));
  logger_.Log(LogLevel::kInfo, "delete_run",
              {{"job", job}, {"run", run}, {"reports_deleted", absl::StrCat(response.reports_deleted())},
               {"snapshots_discarded", absl::StrCat(response.snapshots_discarded())}});
  done(absl::OkStatus(), response);
}

std::vector<std::shared_ptr<Snapshot>> Engine::ForgetRunHeld(const std::string& job, const std::string& run) {
  std::vector<std::shared_ptr<Snapshot>> snaps;
  std::string latest;
  bool was_latest = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_latest = registry_.IsLatestRun(job, run);
    for (const auto& [key, snap] : open_) {
      if (key.job == job && key.run == run) snaps.push_back(snap);
    }
    history_->ForgetRun(job, run);
    for (const std::shared_ptr<Snapshot>& snap : snaps) DropLocked(snap);
    registry_.RemoveRun(job, run);
    latest = registry_.LatestRun(job);
  }
  if (was_latest) RepublishRun(job, latest);
  return snaps;
}

// The job's series again from `run` (now its latest): its reports, its
// thresholds and finished flag (unless the TTL removed them).
void Engine::RepublishRun(const std::string& job, const std::string& run) {
  const std::vector<ReportPtr> reports = history_->LatestReports(job, run);  // may read the store
  std::lock_guard<std::mutex> lock(mu_);
  const JobState* state = registry_.Find(job);
  metrics_->RemoveJob(job);
  if (state == nullptr || state->series_removed) return;
  for (const ReportPtr& r : reports) metrics_->PublishReport(*r, Thresholds(registry_.Effective(*state, r->m())));
  metrics_->SetThresholds(job, Thresholds(registry_.Effective(*state, state->m)));
  metrics_->SetJobFinished(job, state->finished_unix_ms > 0);
}

std::vector<std::shared_ptr<Snapshot>> Engine::DetachJobLocked(const std::string& job) {
  std::vector<std::shared_ptr<Snapshot>> snaps;
  for (auto it = open_.lower_bound(SnapshotKey{job, "", INT64_MIN}); it != open_.end() && it->first.job == job;) {
    tenants_.Closed(it->second->params().tenant);
    snaps.push_back(std::move(it->second));
    it = open_.erase(it);
  }
  for (auto it = expired_.lower_bound(SnapshotKey{job, "", INT64_MIN}); it != expired_.end() && it->job == job;)
    it = expired_.erase(it);  // expired_order_ keeps the key until it ages out (erasing it then is harmless)
  if (std::optional<JobState> gone = registry_.Remove(job); gone && !gone->tenant.empty())
    tenants_.JobDeleted(gone->tenant);
  metrics_->SetOpenSnapshots(static_cast<int64_t>(open_.size()));
  metrics_->SetJobs(static_cast<int64_t>(registry_.jobs().size()));
  return snaps;
}

// Exclusive commit_mu_: seals of the job that already committed are published
// (and their reports deleted below); seals that commit later find the job
// gone (SameJobLocked) and store nothing. The store goes first: when its
// delete fails, nothing else changed (the job, its snapshots and series stay;
// the caller gets UNAVAILABLE and may retry).
void Engine::RunDelete(const std::string& job, const std::string& why, const DeleteDone& done) {
  std::vector<std::shared_ptr<Snapshot>> snaps;
  v1::DeleteJobResponse response;
  response.set_job(job);
  absl::StatusOr<int64_t> deleted;
  {
    std::unique_lock<std::shared_mutex> no_seal(commit_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (registry_.Find(job) == nullptr) return done(UnknownJob(job), {});  // deleted meanwhile
    }
    deleted = store_->DeleteJob(job);
    if (!deleted.ok()) {
      metrics_->StoreCommitFailed();
      logger_.Log(LogLevel::kError, "store_failure",
                  {{"what", "delete_job"}, {"job", job}, {"error", std::string(deleted.status().message())}});
      return done(absl::UnavailableError(absl::StrCat("store: ", deleted.status().message(), "; job '", job,
                                                      "' is unchanged, retry DeleteJob")),
                  response);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);  // no commit ran since the check: commit_mu_ is held
      snaps = DetachJobLocked(job);
    }
    history_->Forget(job);
    metrics_->RemoveJob(job);
  }
  const absl::Status aborted = absl::AbortedError(absl::StrCat("job '", job, "' was deleted (", why, ")"));
  const int64_t discarded = AbortSnapshots(snaps, aborted);
  response.set_reports_deleted(*deleted);
  response.set_snapshots_discarded(discarded);
  logger_.Log(LogLevel::kInfo, "delete_job",
              {{"job", job}, {"why", why}, {"reports_deleted", absl::StrCat(*deleted)},
               {"snapshots_discarded", absl::StrCat(discarded)}});
  done(absl::OkStatus(), response);
}

void Engine::FinishJob(const v1::FinishJobRequest& request, InfoDone done) {
  if (absl::Status s = ValidateNames(request.job(), nullptr); !s.ok()) return done(s, {});
  const std::string job = request.job();
  // Commit first, apply after: a failed commit leaves the job as it was.
  auto run = [this, job, done] {
    std::optional<StoredJob> row;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (const JobState* state = registry_.Find(job)) {
        row = JobRegistry::Stored(job, *state);
        if (row->finished_unix_ms == 0) row->finished_unix_ms = WallMs();  // the first time is kept
      }
    }
    if (!row) return done(UnknownJob(job), {});
    const absl::Status committed = store_->Commit({*row}, {});
    store_ok_.store(committed.ok());
    if (ForgetIfDeleted(committed)) return done(committed, {});  // shared store: deleted on another replica
    if (!committed.ok()) {
      metrics_->StoreCommitFailed();
      return done(absl::UnavailableError(absl::StrCat("store: ", committed.message())), {});
    }
    v1::JobInfo info;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!registry_.Finish(job, row->finished_unix_ms)) return done(UnknownJob(job), {});  // deleted meanwhile
      const JobState* state = registry_.Find(job);
      int64_t last = -1;
      const int64_t generations = history_->Generations(job, registry_.LatestRun(job), &last);
      info = registry_.Info(job, *state, generations, last);
    }
    metrics_->SetJobFinished(job, true);
    logger_.Log(LogLevel::kInfo, "finish_job",
                {{"job", job}, {"finished_unix_ms", absl::StrCat(row->finished_unix_ms)}});
    done(absl::OkStatus(), info);
  };
  if (!queue_.TryEnqueueTask(std::move(run)))
    done(Refusal(StatusCode::kResourceExhausted, "queue_full", "compute queue full (--compute-queue-capacity)"), {});
}

absl::Status Engine::ListSnapshots(const v1::ListSnapshotsRequest& request, v1::ListSnapshotsResponse* response) const {
  if (!request.job().empty()) {
    if (absl::Status s = ValidateNames(request.job(), nullptr); !s.ok()) return s;
  }
  const SteadyTime now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  if (!request.job().empty() && registry_.Find(request.job()) == nullptr) return UnknownJob(request.job());
  for (const auto& [key, snap] : open_) {
    if (!request.job().empty() && key.job != request.job()) continue;
    const Snapshot::Progress p = snap->progress();
    if (p.state != Snapshot::State::kOpen && p.state != Snapshot::State::kSealing) continue;
    v1::SnapshotInfo* info = response->add_snapshots();
    info->set_job(key.job);
    info->set_tap(key.tap);
    info->set_generation(key.generation);
    info->set_m(snap->params().m);
    info->set_world_size(snap->params().world_size);
    for (int32_t r : p.ranks_finished) info->add_ranks_finished(r);
    for (int32_t r : p.ranks_missing) info->add_ranks_missing(r);
    info->set_age_seconds(std::chrono::duration<double>(now - p.opened).count());
    info->set_idle_seconds(std::chrono::duration<double>(now - p.last_activity).count());
    info->set_rows(p.rows);
    info->set_state(p.state == Snapshot::State::kOpen ? "open" : "sealing");
    info->set_run(key.run);
  }
  return absl::OkStatus();
}

std::vector<std::string> Engine::SweepLifecycle() {
  const int64_t now_ms = WallMs();
  std::vector<std::string> expired_series, retired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, job] : registry_.jobs()) {
      if (job.finished_unix_ms == 0) continue;
      if (options_.retention_days > 0 && now_ms - job.finished_unix_ms >= options_.retention_days * 86'400'000)
        retired.push_back(name);
      else if (!job.series_removed && now_ms - job.finished_unix_ms >= options_.finished_series_ttl_s * 1000)
        expired_series.push_back(name);
    }
    for (const std::string& name : expired_series) registry_.MarkSeriesRemoved(name);
  }
  for (const std::string& name : expired_series) {
    metrics_->RemoveJob(name);
    logger_.Log(LogLevel::kInfo, "finished_series_removed",
                {{"job", name}, {"finished_series_ttl_s", absl::StrCat(options_.finished_series_ttl_s)}});
  }
  for (const std::string& name : retired) {
    queue_.EnqueueTask([this, name] {
      RunDelete(name, absl::StrCat("--retention-days ", options_.retention_days),
                [](const absl::Status&, const v1::DeleteJobResponse&) {});
    });
  }
  return retired;
}

void Engine::WaitForTasks() {
  std::promise<void> ran;
  queue_.EnqueueTask([&ran] { ran.set_value(); });
  ran.get_future().wait();
}

}  // namespace sigma::server
