// The state of sigmad: the Engine composes its parts and owns their wiring.
//
// Parts (one owner, one job each):
//   JobRegistry    (job_registry.h)   jobs, taps, m, configuration rules; guarded by Engine::mu_
//   open_          (here)             the snapshot table: (job, tap, generation) -> Snapshot; Engine::mu_
//   Snapshot       (snapshot.h)       rows, ranks, the one state machine, RAII memory charge; own mutex
//   MemoryBudget   (snapshot.h)       --max-memory-bytes; atomic
//   TenantBook     (quota.h)          per-token quotas: jobs, open snapshots, memory; Engine::mu_
//   SealQueue      (seal_queue.h)     size-classed seal lanes + the task lane (SQLite I/O)
//   ReportHistory  (report_history.h) sealed reports, baselines, forecast inputs, the gauges' rule; own mutex
//   BuildReport    (report_builder.h) the pure report computation
//   the sealer     (sealer.cc)        gather -> compute -> commit -> publish, on a seal lane
//   queries        (engine_queries.cc) GetJob (memory, under mu_) and GetReport (task lane)
//
// Threading: gRPC callback reactors call Open/Batch/EndShare/Close/... and
// never wait and never touch SQLite: per-batch work is validation, the NaN
// check, the energies and the bottom-k insert (O(rows x m)). Seals run on the
// seal lanes; store commits of ConfigureJob, GetHistory and reads of evicted
// reports run on the task lane. Completion callbacks (which Finish the
// reactors) run on those lanes.
//
// Locks: Engine::mu_ (registry, snapshot table) before Snapshot's mutex;
// ReportHistory's and the Store's mutexes are leaves. No SQLite I/O and no
// backend call under mu_.
//
// Errors: absl::Status; refusals carry a reason (refusal.h) that api.cc counts.
#ifndef SIGMA_SERVER_SCHEDULER_H_
#define SIGMA_SERVER_SCHEDULER_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <set>
#include <shared_mutex>
#include <thread>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sigma/kernels/backend.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/preprocess.h"
#include "sigma/server/config.h"
#include "sigma/server/job_registry.h"
#include "sigma/server/log.h"
#include "sigma/server/metrics.h"
#include "sigma/server/quota.h"
#include "sigma/server/report_history.h"
#include "sigma/server/seal_queue.h"
#include "sigma/server/snapshot.h"
#include "sigma/server/storage.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

// One Ingest stream's state.
struct IngestSession {
  bool opened = false;
  bool ended = false;
  std::shared_ptr<Snapshot> snapshot;       // the open snapshot
  std::optional<SnapshotKey> sealed;        // set when opened on an already sealed one
  // On a sealed one: the digest of the rows resent (distinct seqs), compared
  // at EndShare with the rank's share as sealed (share.h).
  size_t row_bytes = 0;
  absl::flat_hash_set<int64_t> resent_seqs;
  sigma::v1::ShareDigest resent;
  int32_t rank = -1;
  sigma::v1::IngestResponse response;  // running counters
  Tenant tenant;                       // who the stream is charged to (quota.h); set before Open
};

// The energy statistics PreprocessRows would give for `block` (after
// preprocessing `p`: 1 per non-zero l2 row, else ||x||^2; > rho counts as a
// violation), in one pass over the wire bytes without conversion buffers.
// Refusals (INVALID_ARGUMENT, `stats` unchanged): reason non_finite when an
// element is NaN or Inf (CheckFinite names it), invalid_norm when a row's norm
// is refused (RowRefusal: norm 0 under l2, norm or ||x||^2 beyond float64).
// `first_row`: the share row of the block's first row, added to the row that
// refusal messages name.
absl::Status BatchEnergy(const sigma::RowBlock& block, sigma::Preprocessing p, double rho,
                         sigma::EnergyStats* stats, int64_t first_row = 0);

// The payload of a Batch as the limits count it: data bytes plus 8 per sample id.
inline int64_t BatchPayloadBytes(const sigma::v1::Batch& batch) {
  return static_cast<int64_t>(batch.data().size()) + 8 * static_cast<int64_t>(batch.sample_ids_size());
}

// True when `name` matches [A-Za-z0-9_.:-]{1,128}.
bool ValidName(const std::string& name);

// What tests inject into an Engine.
struct EngineHooks {
  std::function<SteadyTime()> clock = std::chrono::steady_clock::now;  // idle expiry, seal timing
  Logger::Sink log_sink;                                               // null: stderr
  std::function<absl::Time()> wall_clock = absl::Now;                  // log timestamps, log rate limit
  bool reaper = true;  // a thread runs ExpireIdle (tests call it themselves)
};

class Engine {
 public:
  using Clock = std::function<SteadyTime()>;
  using IngestDone = std::function<void(const absl::Status&, const sigma::v1::IngestResponse&)>;

  Engine(DaemonOptions options, std::unique_ptr<Store> store, std::unique_ptr<sigma::Backend> backend,
         Metrics* metrics, EngineHooks hooks = {});
  ~Engine();

  // Loads jobs and reports from the store and re-publishes the gauges.
  absl::Status Restore();
  void StartWorker();
  // Runs every queued seal and task, then stops the lanes.
  void StopWorker();
  // OK unless the store's Health() fails (PostgreSQL unreachable), the latest
  // store commit failed and none succeeded since (SQLite; a shared store says
  // itself when it is back), or the backend failed every seal of its latest call.
  absl::Status Readiness() const;
  // --max-memory-bytes as the engine accounts it (open snapshots and seals);
  // the daemon binds the backend's scratch budget to it.
  MemoryBudget* memory_budget() { return &memory_; }

  absl::Status Open(const sigma::v1::OpenSnapshot& open, IngestSession* session);
  absl::Status Batch(IngestSession* session, const sigma::v1::Batch& batch);
  // True when Batch would ignore `seq` as already taken (or the snapshot was
  // sealed): such resends are not charged to the client's rate limit.
  bool IsDuplicate(const IngestSession& session, int64_t seq) const;
  // Ends the stream's share: `end` is null on a half-close without EndOfShare.
  // `done` runs exactly once, inline or on a lane after the seal.
  void EndShare(IngestSession* session, const sigma::v1::EndOfShare* end, IngestDone done);
  void Close(const sigma::v1::CloseGenerationRequest& request, ReportCallback done);
  // `tenant`: who a job created here is charged to (quota.h).
  void Configure(const sigma::v1::ConfigureJobRequest& request,
                 std::function<void(const absl::Status&, const sigma::v1::JobInfo&)> done, Tenant tenant = {});
  // `done` runs once, on the task lane or inline for a refusal. A shared
  // store: a job this replica has not seen is read from the store first.
  void GetHistory(const sigma::v1::GetHistoryRequest& request, sigma::v1::GetHistoryResponse* response,
                  std::function<void(const absl::Status&)> done);
  // Every job. A shared store: the jobs, taps and sealed generations any
  // replica committed (Store::ListJobs, read on the task lane; `done` runs
  // there), plus the jobs only this replica holds (those another replica
  // deleted are forgotten first, store_sync.cc); otherwise inline from memory.
  void ListJobs(sigma::v1::ListJobsResponse* response, std::function<void(const absl::Status&)> done);

  // GetJob / GetReport block (engine_queries.cc).
  // One job's effective settings (n_a for request.m, else the job's m), taps
  // and open snapshots: memory only, under mu_ (no store I/O).
  absl::Status GetJob(const sigma::v1::GetJobRequest& request, sigma::v1::JobInfo* info);
  // One sealed report; `done` runs once, on the task lane (the report may be
  // read back from the store) or inline for a refusal or NOT_FOUND.
  void GetReport(const sigma::v1::GetReportRequest& request, ReportCallback done);

  // Job lifecycle (issue 15 item 4; lifecycle.cc). `done` runs once, on the
  // task lane (store I/O) or inline for a refusal.
  using DeleteDone = std::function<void(const absl::Status&, const sigma::v1::DeleteJobResponse&)>;
  using InfoDone = std::function<void(const absl::Status&, const sigma::v1::JobInfo&)>;
  // Removes the job: store rows, open snapshots (their waiters get ABORTED),
  // state, series. A seal in flight for it is dropped at its commit.
  void DeleteJob(const sigma::v1::DeleteJobRequest& request, DeleteDone done);
  // Marks the job finished (persisted); later OpenSnapshots of new
  // generations are refused. Idempotent (the first time is kept).
  void FinishJob(const sigma::v1::FinishJobRequest& request, InfoDone done);
  absl::Status ListSnapshots(const sigma::v1::ListSnapshotsRequest& request,
                             sigma::v1::ListSnapshotsResponse* response) const;
  // The reaper's lifecycle sweep (wall clock): removes the series of jobs
  // finished --finished-series-ttl-s ago and queues the deletion of jobs
  // finished --retention-days ago (store I/O on the task lane, never under
  // mu_). Returns the jobs queued for deletion.
  std::vector<std::string> SweepLifecycle();
  // Blocks until every task queued before the call has run (tests).
  void WaitForTasks();
  // Shared store (store_sync.cc; a no-op otherwise): queues, unless one is
  // queued already, a task-lane sync with what other replicas committed: the
  // jobs they created (adopted), deleted (forgotten here: snapshots aborted,
  // series removed, slot freed) and the runs they sealed (merged into the
  // registry, in first-sealed order), from Store::ListRuns. The reaper calls it
  // every period (at most 1 s).
  void SyncWithStore();

  // A stream was refused after its OpenSnapshot: the snapshot it opened is
  // discarded when no other stream holds it and it never got a row.
  void Abandon(IngestSession* session);
  // Discards open snapshots idle for --snapshot-idle-timeout-s (counted,
  // logged, memory returned); returns how many. A reaper thread calls it.
  int64_t ExpireIdle();

  const std::string& backend_name() const { return backend_name_; }
  Logger* logger() { return &logger_; }

 private:
  struct SealWork;
  // The sealer (sealer.cc), on a seal lane.
  void ProcessSeals(SealQueue::Batch batch);
  // Dedup, validation, the energy pass and the insert of one batch of `rank`.
  absl::StatusOr<bool> AddBatch(Snapshot& snap, int32_t rank, const sigma::v1::Batch& batch, int64_t first_row,
                                const std::string& where);
  // A resent share's answer on a sealed generation: the stored report when its
  // digest matches the rank's share as sealed, else ALREADY_EXISTS. Takes a
  // copy of what it compares: the session may be gone when the report is read
  // (the client cancelled while the task lane read it).
  struct ResentShare {
    SnapshotKey key;
    int32_t rank = -1;
    bool rows_resent = false;  // a stream that only opened asks for the report
    sigma::v1::ShareDigest digest;
  };
  static absl::Status CheckResent(const ResentShare& resent, const sigma::v1::GenerationReport& report);
  void Compute(std::vector<SealWork>& works);
  void BuildReports(std::vector<SealWork>& works);
  void CommitReports(std::vector<SealWork>& works);
  // Shared store (store_sync.cc): a job this replica holds whose store row
  // was deleted (or deleted and created again) by another replica: its name,
  // its registry incarnation and the row incarnation this replica knew.
  struct StaleJob {
    std::string name;
    uint64_t incarnation = 0;
    int64_t created = 0;
  };
  // Shared store: the registry's configuration of `names` replaced by what any
  // replica committed last (no-op otherwise). Store I/O outside mu_. Returns
  // the jobs it found deleted elsewhere (not adopted; ForgetJobs forgets them).
  std::vector<StaleJob> RefreshJobs(const std::set<std::string>& names);
  // The registry's view of a job some replica committed, read at sync epoch
  // `epoch` (mu_ held): its configuration and incarnation, and its m unless
  // this replica already has one. False (nothing changed) when this replica
  // holds another incarnation of the job (deleted elsewhere).
  bool AdoptStoredJobLocked(const StoredJob& stored, uint64_t epoch);
  // The jobs this replica holds whose row, as a read at sync epoch `epoch`
  // found it (`rows`: name -> created_unix_ms, 0: no row), is gone or another
  // incarnation; `complete`: `rows` lists every stored job (mu_ held).
  std::vector<StaleJob> StaleJobsLocked(const std::map<std::string, int64_t>& rows, uint64_t epoch,
                                        bool complete) const;
  // Forgets jobs deleted on another replica, as RunDelete does without
  // touching the store (task lane; takes commit_mu_ exclusively, then mu_).
  // A job changed since it was found stale (recreated, relearned) is kept.
  void ForgetJobs(const std::vector<StaleJob>& stale);
  // A commit refused with JobDeletedElsewhere (storage.h): forgets the job
  // (task lane) and returns true; false for any other status.
  bool ForgetIfDeleted(const absl::Status& status);
  // A commit of `rows` stored them as incarnations `created` (mu_ held).
  void NoteCommittedLocked(const std::vector<StoredJob>& rows, const std::vector<int64_t>& created);
  void RunSync();
  uint64_t NextSyncEpoch() { return sync_epoch_.fetch_add(1) + 1; }
  void AdoptStoredReports(std::vector<SealWork>& works, const std::vector<StoredJob>& job_rows);
  void Publish(std::vector<SealWork>& works);
  void FailSeals(const SealQueue::Batch& batch, const absl::Status& error);
  void LogSeal(const SealWork& w);

  // Removes `snap` from the table if it is there (mu_ held).
  void DropLocked(const std::shared_ptr<Snapshot>& snap);
  // Drops a failed snapshot and calls its waiters with `error`.
  void Discard(const std::shared_ptr<Snapshot>& snap, const absl::Status& error);
  // Replies with the report of an already sealed generation (read on the task lane).
  void ReplySealed(const SnapshotKey& key, ReportCallback done);
  // A sealed report from the cache or the store (task lane). UNAVAILABLE
  // naming `key` when the store read fails, or finds nothing although the
  // history lists it; NOT_FOUND when there is none and `may_be_absent` (a
  // shared store asked for what another replica may have sealed).
  absl::StatusOr<ReportPtr> ReadSealed(const SnapshotKey& key, bool may_be_absent = false) const;
  absl::Status OpenNew(const sigma::v1::OpenSnapshot& open, const SnapshotKey& key, sigma::DType dtype,
                       IngestSession* session);  // mu_ held
  void RunConfigure(const sigma::v1::ConfigureJobRequest& request, const Tenant& tenant,
                    const std::function<void(const absl::Status&, const sigma::v1::JobInfo&)>& done);
  // PrepareConfigure plus the tenant's job quota when the job is new (mu_ held).
  absl::StatusOr<StoredJob> PrepareConfigureLocked(const sigma::v1::ConfigureJobRequest& request,
                                                   const Tenant& tenant) const;

  void ReaperLoop();
  absl::Status ExpiredError(const SnapshotKey& key) const;
  // DeleteJob's work on the task lane; `why` ("DeleteJob", "retention") is logged.
  void RunDelete(const std::string& job, const std::string& why, const DeleteDone& done);
  // DeleteJob --run on the task lane, and its steps (lifecycle.cc).
  void RunDeleteRun(const std::string& job, const std::string& run, const DeleteDone& done);
  absl::Status KnownRunLocked(const std::string& job, const std::string& run) const;  // mu_ held
  void RepublishRun(const std::string& job, const std::string& run);  // commit_mu_ held, not mu_
  // DeleteJob --run after the store (commit_mu_ held exclusively, not mu_):
  // the run's open snapshots leave the table (returned, to abort), its history
  // and registry entry go; when it was the latest, the gauges show the new latest.
  std::vector<std::shared_ptr<Snapshot>> ForgetRunHeld(const std::string& job, const std::string& run);
  // Shared store: runs another replica deleted (sealed here before `epoch`,
  // missing from a store read at `epoch`): forgotten as by ForgetRunHeld,
  // without touching the store (store_sync.cc).
  struct StaleRun {
    std::string job, run;
    uint64_t run_id = 0;
  };
  void ForgetRuns(const std::vector<StaleRun>& stale);
  void StaleRunsLocked(const StoredRuns& listed, uint64_t epoch, std::vector<StaleRun>* out) const;  // mu_ held
  // Fails the snapshots not already sealing with `aborted`; returns how many.
  static int64_t AbortSnapshots(const std::vector<std::shared_ptr<Snapshot>>& snaps, const absl::Status& aborted);
  // Takes `job`'s open snapshots out of the table and the job out of the
  // registry (mu_ held); returns the snapshots.
  std::vector<std::shared_ptr<Snapshot>> DetachJobLocked(const std::string& job);
  // True when the snapshot's job and run still exist as the ones it was opened
  // in: neither DeleteJob nor DeleteJob --run ran since (mu_ held).
  bool SameJobLocked(const Snapshot& snap) const;
  int64_t WallMs() const { return absl::ToUnixMillis(wall_clock_()); }

  const DaemonOptions options_;
  const Clock clock_;
  const std::function<absl::Time()> wall_clock_;  // FinishJob times, the lifecycle sweep
  Logger logger_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<sigma::Backend> backend_;
  const std::string backend_name_;
  Metrics* metrics_;
  MemoryBudget memory_;
  std::unique_ptr<ReportHistory> history_;  // created by Restore
  SealQueue queue_;

  // A seal's commit and publish hold it shared, DeleteJob exclusive: a delete
  // never falls between a seal's check that its job exists and its publish.
  // Taken before mu_.
  std::shared_mutex commit_mu_;
  mutable std::mutex mu_;
  JobRegistry registry_;
  TenantBook tenants_;
  std::map<SnapshotKey, std::shared_ptr<Snapshot>> open_;
  // Recently expired keys (bounded, oldest dropped first): their ranks'
  // OpenSnapshot is refused naming the expiry.
  std::set<SnapshotKey> expired_;
  std::deque<SnapshotKey> expired_order_;

  const bool reaper_enabled_;
  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool reaper_stop_ = false;
  std::thread reaper_;

  std::atomic<bool> store_ok_{true};
  // Shared store sync (store_sync.cc): reads and commits are ordered by epoch
  // (a row learned at an epoch after a read began is never judged by it).
  std::atomic<uint64_t> sync_epoch_{0};
  std::atomic<bool> sync_queued_{false};
  std::atomic<bool> backend_ok_{true};
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_SCHEDULER_H_
