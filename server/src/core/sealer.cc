// The sealer: Engine::ProcessSeals runs on a seal lane for a batch of
// snapshots in kSealing: gather (rows out of the snapshots, memory returned)
// -> compute (one SealBatch call) -> build (pure reports against the staged
// history) -> commit (SQLite, durable before anyone hears) -> publish
// (history, gauges, table, waiters).
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sigma/kernels/routed_backend.h"
#include "sigma/server/report_builder.h"
#include "sigma/server/scheduler.h"

namespace sigma::server {

namespace v1 = sigma::v1;

struct Engine::SealWork {
  std::shared_ptr<Snapshot> snap;
  SealJob job;
  sigma::SealMoments moments;
  v1::JobConfig config;  // the job's effective configuration at seal time
  double compute_seconds = 0;  // gather + backend call, wall time
  absl::Status error;
  ReportPtr report;
};

namespace {

// Seals whose working set reaches this trim the heap afterwards.
constexpr int64_t kTrimAboveBytes = int64_t{64} << 20;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void Engine::ProcessSeals(SealQueue::Batch batch) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<SealWork> works(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    SealWork& w = works[i];
    w.snap = std::move(batch[i]);
    w.snap->Gather(&w.job);
    // Multi-GPU placement (RoutedBackend): one job's snapshots always on the same device.
    w.job.input.placement_key = sigma::PlacementKeyForJob(w.snap->key().job);
    if (absl::Status v = sigma::ValidateSealInput(w.job.input); !v.ok())
      w.error = absl::FailedPreconditionError(absl::StrCat(KeyString(w.snap->key()), ": ", v.message()));
  }
  // Reports are built in key order: a batch's generations of one tap see each other.
  std::sort(works.begin(), works.end(), [](const SealWork& a, const SealWork& b) { return a.snap->key() < b.snap->key(); });
  {
    // The seal's working set counts against --max-memory-bytes while it runs
    // (the gathered rows' charge was returned by Gather).
    MemoryBudget::Charge working(&memory_);
    int64_t bytes = 0;
    for (const SealWork& w : works) bytes += SealWorkingSetBytes(w.snap->params().m, w.job.input.rows.num_rows);
    working.Force(bytes);
    Compute(works);
    for (SealWork& w : works) std::vector<uint8_t>().swap(w.job.rows);
    // Large scratch goes back to the system, not only to malloc's free lists
    // (RSS returns near its level before the seal).
    if (bytes >= kTrimAboveBytes) malloc_trim(0);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (SealWork& w : works) w.compute_seconds = seconds;
  BuildReports(works);
  std::shared_lock<std::shared_mutex> no_delete(commit_mu_);  // DeleteJob waits (scheduler.h)
  CommitReports(works);
  Publish(works);
}

// One batched backend call for every valid snapshot; on failure each one
// alone, to isolate the failing snapshot(s).
void Engine::Compute(std::vector<SealWork>& works) {
  std::vector<size_t> valid;
  std::vector<sigma::SealInput> inputs;
  for (size_t i = 0; i < works.size(); ++i) {
    if (!works[i].error.ok()) continue;
    valid.push_back(i);
    inputs.push_back(works[i].job.input);
  }
  if (inputs.empty()) return;
  std::vector<sigma::SealMoments> moments(inputs.size());
  metrics_->SealBatchSize(inputs.size());
  size_t failures = 0;
  if (absl::Status s = backend_->SealBatch(inputs, absl::MakeSpan(moments)); !s.ok()) {
    for (size_t j = 0; j < valid.size(); ++j) {
      absl::Status one = backend_->SealBatch({&inputs[j], 1}, {&moments[j], 1});
      if (one.ok()) continue;
      ++failures;
      works[valid[j]].error = absl::InternalError(absl::StrCat("backend ", backend_name_, ": ", one.message()));
    }
  }
  backend_ok_.store(failures < valid.size());
  for (size_t j = 0; j < valid.size(); ++j) works[valid[j]].moments = moments[j];
}

// Estimate, drift against the baseline, alerts, forecast: pure, against the
// history with this batch's earlier reports staged.
void Engine::BuildReports(std::vector<SealWork>& works) {
  {
    std::set<std::string> names;
    for (const SealWork& w : works) names.insert(w.snap->key().job);
    // Shared store: ConfigureJob on another replica. A job deleted there is
    // not adopted again: its commit is refused (JobDeletedElsewhere).
    RefreshJobs(names);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (SealWork& w : works) {
      if (const JobState* job = registry_.Find(w.snap->key().job)) w.config = registry_.Effective(*job, w.snap->params().m);
    }
  }
  // Shared store: what other replicas sealed of these taps that this seal
  // reads (baseline, trend and forecast points; ReportHistory::Staging::Resolve).
  // A failed read fails the seal: its baseline and forecast would be guesses.
  for (SealWork& w : works) {
    if (!w.error.ok()) continue;
    const SnapshotKey& key = w.snap->key();
    const int64_t pinned = w.config.has_baseline_generation() ? w.config.baseline_generation() : -1;
    const BaselineRef base = BaselineOf(key, w.config);
    const bool other = base.job != key.job || base.run != key.run;
    absl::Status read = history_->CatchUp(key.job, key.run, key.tap, key.generation,
                                          std::max(1, w.config.trend_k()), kForecastWindow, other ? -1 : pinned);
    if (read.ok() && other) read = history_->CatchUp(base.job, base.run, key.tap, /*before=*/0, 0, 0, pinned);
    if (read.ok()) continue;
    metrics_->StoreCommitFailed();
    w.error = absl::UnavailableError(
        absl::StrCat("store: reading the history of ", KeyString(key), ": ", read.message()));
  }
  ReportHistory::Staging staging = history_->Stage();
  const int64_t sealed_ms = NowUnixMs();
  for (SealWork& w : works) {
    if (!w.error.ok()) continue;
    const Snapshot::Params& p = w.snap->params();
    ReportInputs in;
    in.key = p.key;
    in.m = p.m;
    in.n = w.job.n;
    in.backend = backend_name_;
    in.moments = w.moments;
    in.energy = w.job.energy;
    in.delta = p.delta;
    in.rho = p.rho;
    in.config = w.config;
    in.closed_explicitly = w.job.closed_explicitly;
    in.world_size = p.world_size;
    in.ranks_finished = w.job.ranks_finished;
    in.shares = w.job.shares;
    in.compute_seconds = w.compute_seconds;
    in.sealed_unix_ms = sealed_ms;
    const sigma::TrackValues vals = Estimate(in);
    BaselineInputs baseline;
    if (!vals.flags.cholesky_failed) {
      std::optional<int64_t> pinned;
      if (w.config.has_baseline_generation()) pinned = w.config.baseline_generation();
      baseline = staging.Resolve(p.key, BaselineOf(p.key, w.config), pinned);
    }
    w.report = std::make_shared<const v1::GenerationReport>(BuildReport(in, vals, baseline));
    staging.Stage(w.report);
  }
}

// Durable before anyone hears about it: every report of the batch and its
// job's row in one transaction.
void Engine::CommitReports(std::vector<SealWork>& works) {
  std::vector<v1::GenerationReport> reports;
  std::map<std::string, StoredJob> jobs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (SealWork& w : works) {
      if (!w.error.ok()) continue;
      if (!SameJobLocked(*w.snap)) {  // DeleteJob (--run) ran while it sealed: nothing of it is stored
        w.error = absl::AbortedError(absl::StrCat(KeyString(w.snap->key()),
                                                  ": the job or its run was deleted while it sealed (DeleteJob on "
                                                  "this or another replica)"));
        w.report.reset();
        continue;
      }
      reports.push_back(*w.report);
      const JobState* job = registry_.Find(w.snap->key().job);
      jobs[w.snap->key().job] = JobRegistry::Stored(w.snap->key().job, *job);
    }
  }
  if (reports.empty()) return;
  std::vector<StoredJob> job_rows;
  for (auto& [name, j] : jobs) job_rows.push_back(std::move(j));
  std::vector<int64_t> created;
  const absl::Status s = store_->Commit(job_rows, reports, &created);
  // Shared store: a report another replica stored, or a job it deleted: each report alone.
  const bool one_by_one = s.code() == absl::StatusCode::kAlreadyExists || !DeletedJob(s).empty();
  store_ok_.store(s.ok() || one_by_one);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    return NoteCommittedLocked(job_rows, created);
  }
  if (one_by_one) return AdoptStoredReports(works, job_rows);
  metrics_->StoreCommitFailed();
  logger_.Log(LogLevel::kError, "store_failure", {{"what", "seal"}, {"reports", absl::StrCat(reports.size())},
                                                  {"error", std::string(s.message())}});
  for (SealWork& w : works) {
    if (!w.error.ok()) continue;
    w.error = absl::UnavailableError(absl::StrCat("store: ", s.message()));
    w.report.reset();
  }
}

namespace {
// Whether two seals of one generation sealed the same data: the same
// data_digest (share.h) when both carry one; for reports sealed before digests
// were stored, the same n and m and values equal up to the backends' rounding
// (a CPU and a GPU replica).
bool SameData(const v1::GenerationReport& a, const v1::GenerationReport& b) {
  if (a.n() != b.n() || a.m() != b.m()) return false;
  if (!a.data_digest().empty() && !b.data_digest().empty()) return a.data_digest() == b.data_digest();
  auto close = [](double x, double y) { return std::abs(x - y) <= 1e-6 * std::max(1.0, std::abs(x)); };
  return close(a.track2(), b.track2()) && close(a.track1_upper(), b.track1_upper());
}
}  // namespace

// Shared store: another replica committed some of these generations first, or
// deleted some of these jobs (storage.h, Commit). Each report is committed
// alone; one already stored is answered with the stored report when it sealed
// the same data (SameData: the same data digest, in any order of rows and
// batches), else ALREADY_EXISTS naming the generation; one of a job deleted
// elsewhere gets the store's refusal (JobDeletedElsewhere) and the job is
// forgotten here (on the task lane: commit_mu_ is held).
void Engine::AdoptStoredReports(std::vector<SealWork>& works, const std::vector<StoredJob>& job_rows) {
  std::vector<StaleJob> deleted;
  for (SealWork& w : works) {
    if (!w.error.ok()) continue;
    const SnapshotKey& key = w.snap->key();
    std::vector<StoredJob> job;
    for (const StoredJob& j : job_rows)
      if (j.name == key.job) job.push_back(j);
    std::vector<int64_t> created;
    const absl::Status one = store_->Commit(job, {*w.report}, &created);
    if (one.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      NoteCommittedLocked(job, created);
      continue;
    }
    if (!DeletedJob(one).empty() && !job.empty()) {
      deleted.push_back(StaleJob{key.job, w.snap->params().job_incarnation, job[0].created_unix_ms});
      w.error = one;
    } else if (one.code() == absl::StatusCode::kAlreadyExists) {
      history_->CatchUp(key.job, key.run, key.tap, /*before=*/0, 0, 0, /*pinned=*/w.report->generation())
          .IgnoreError();
      absl::StatusOr<ReportPtr> stored = history_->Read(key);
      if (stored.ok() && SameData(**stored, *w.report)) {
        w.report = *stored;
        continue;
      }
      w.error = absl::AlreadyExistsError(absl::StrCat(KeyString(key), ": ", one.message(), " from different data"));
    } else {
      metrics_->StoreCommitFailed();
      w.error = absl::UnavailableError(absl::StrCat("store: ", one.message()));
    }
    w.report.reset();
  }
  if (!deleted.empty()) queue_.EnqueueTask([this, deleted] { ForgetJobs(deleted); });
}

// History and gauges (one rule: ReportHistory::Record), the table, then the waiters.
void Engine::Publish(std::vector<SealWork>& works) {
  const uint64_t epoch = NextSyncEpoch();  // after the commit (store_sync.cc)
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (SealWork& w : works) {
      if (w.error.ok()) {
        registry_.MarkSealed(w.snap->key().job, w.snap->key().run, epoch);
        metrics_->CountSeal(*w.report);
        // The gauges show the job's latest run (docs/server.md "Runs").
        if (history_->Record(w.report) && registry_.IsLatestRun(w.snap->key().job, w.snap->key().run))
          metrics_->PublishReport(*w.report, Thresholds(w.config));
      }
      DropLocked(w.snap);
    }
  }
  const SteadyTime now = clock_();
  for (SealWork& w : works) {
    if (w.error.ok()) metrics_->SealDuration(std::chrono::duration<double>(now - w.job.seal_requested).count());
    LogSeal(w);
    for (auto& cb : w.snap->Settle(w.error, w.report)) cb(w.error, w.error.ok() ? w.report : nullptr);
  }
}

void Engine::LogSeal(const SealWork& w) {
  const SnapshotKey& k = w.snap->key();
  std::string result = "ok";
  if (!w.error.ok()) result = absl::StrCat("error: ", w.error.message());
  else if (w.report->flags().cholesky_failed()) result = "cholesky_failed";
  logger_.Log(w.error.ok() ? LogLevel::kInfo : LogLevel::kError, "seal",
              {{"job", k.job}, {"tap", k.tap}, {"generation", absl::StrCat(k.generation)},
               {"m", absl::StrCat(w.snap->params().m)}, {"n_a", absl::StrCat(w.job.input.rows.num_rows)},
               {"backend", backend_name_}, {"seconds", absl::StrFormat("%.6f", w.compute_seconds)},
               {"result", result}});
}

void Engine::FailSeals(const SealQueue::Batch& batch, const absl::Status& error) {
  for (const std::shared_ptr<Snapshot>& snap : batch) {
    if (snap->state() == Snapshot::State::kSealing) Discard(snap, error);
  }
}

}  // namespace sigma::server
