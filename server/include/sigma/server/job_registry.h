// The jobs sigmad knows: configuration as set, each tap's dimension m, the
// count of open snapshots, and the rules that govern them (cardinality caps,
// a new job's configuration, which changes ConfigureJob may make).
// Not thread-safe: the Engine's mutex guards it.
#ifndef SIGMA_SERVER_JOB_REGISTRY_H_
#define SIGMA_SERVER_JOB_REGISTRY_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sigma/server/config.h"
#include "sigma/server/storage.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

struct JobState {
  sigma::v1::JobConfig config;  // as configured (unset fields: defaults)
  int32_t m = 0;                // the job's first m (JobInfo.m), 0 while unknown
  std::map<std::string, int32_t> taps;  // tap -> m (0: no snapshot holds or sealed rows yet)
  int64_t open_snapshots = 0;
  bool has_sealed = false;
  // GetJob block: tap -> dtype of its latest snapshot opened since start
  // (not stored: absent after a restart until one opens).
  std::map<std::string, sigma::v1::DType> tap_dtypes;
  // Job lifecycle (issue 15 item 4).
  int64_t finished_unix_ms = 0;  // FinishJob's time (persisted), 0: not finished
  bool series_removed = false;   // its /metrics series left after --finished-series-ttl-s
  // Distinct for every creation of a job name (a job deleted and created again
  // has a new one): a seal in flight across a DeleteJob finds it changed.
  uint64_t incarnation = 0;
  std::string tenant;            // Tenant::key of the token that created it ("": none; quota.h)
  // Runs (issue 15 item 1; docs/server.md "Runs"): in creation order (the
  // last is the latest), and those that sealed a generation. Rebuilt from the
  // stored reports at restart (a run that never sealed is not stored); with a
  // shared store, the runs other replicas sealed are merged in by the sync
  // (store_sync.cc).
  std::vector<std::string> runs;
  // The runs that sealed a generation -> the sync epoch at which this replica
  // learned it (store_sync.cc; 0: at start). With a shared store, a sync read
  // begun later that does not list the run finds it deleted on another replica.
  std::map<std::string, uint64_t> sealed_runs;
  // run -> an id distinct for every time the run is noted anew (a run deleted
  // by DeleteJob --run and opened again has a new one): a seal in flight across
  // the delete finds it changed.
  std::map<std::string, uint64_t> run_ids;
  // The incarnation of the job's store row this replica knows
  // (StoredJob::created_unix_ms; 0: none, the job was never seen stored), and
  // the sync epoch at which it learned it (store_sync.cc).
  int64_t stored_created_ms = 0;
  uint64_t stored_epoch = 0;
};

class JobRegistry {
 public:
  explicit JobRegistry(const DaemonOptions& options) : options_(options) {}

  // The configuration a job runs with at dimension m.
  sigma::v1::JobConfig Effective(const JobState& job, int64_t m) const;
  // The configuration of a job created now: its configuration-file entry
  // (YAML `jobs:`) with `request`'s set fields on top.
  sigma::v1::JobConfig Initial(const std::string& job, const sigma::v1::JobConfig& request) const;

  // May a snapshot of (job, tap) at m open? Checks the tap's m and the caps
  // on taps and jobs; returns the effective configuration it would seal with
  // (new job: `request` merged in, threshold order checked). Changes nothing.
  absl::StatusOr<sigma::v1::JobConfig> AdmitOpen(const std::string& job, const std::string& tap, int32_t m,
                                                 const sigma::v1::JobConfig& request) const;
  // Records the snapshot admitted by AdmitOpen; `tenant` created the job
  // when it is new.
  void OpenSnapshot(const std::string& job, const std::string& tap, int32_t m,
                    const sigma::v1::JobConfig& request, const std::string& tenant = "");
  // A snapshot left the table: `tap_sealed` whether the tap has a sealed
  // report. A tap that never held a row and has nothing open or sealed takes
  // the m of the next OpenSnapshot again (as after a restart).
  void CloseSnapshot(const std::string& job, const std::string& tap, bool still_open_on_tap, bool tap_sealed);
  // `epoch`: the sync epoch at which it is learned (JobState::sealed_runs; the first is kept).
  void MarkSealed(const std::string& job, const std::string& run, uint64_t epoch = 0);

  // Runs: the run an OpenSnapshot of `job` goes to (`run` may be empty;
  // resume: allow, must or never, docs/server.md "Runs"), or the refusal
  // (must: NOT_FOUND; never: ALREADY_EXISTS). Changes nothing.
  absl::StatusOr<std::string> ResolveRun(const std::string& job, const std::string& run,
                                         sigma::v1::Resume resume) const;
  // The run a request without one reads (GetHistory, CloseGeneration,
  // GetReport): the job's latest run; "1" for a job without runs.
  std::string LatestRun(const std::string& job) const;
  bool IsLatestRun(const std::string& job, const std::string& run) const { return LatestRun(job) == run; }
  // Records `run` of a known job (a no-op when it is known).
  void NoteRun(const std::string& job, const std::string& run);
  // The run's id (JobState::run_ids), 0 when the job or the run is unknown.
  uint64_t RunId(const std::string& job, const std::string& run) const;
  // DeleteJob --run: forgets `run` of `job` (false when unknown); the next
  // latest run is the one created before it.
  bool RemoveRun(const std::string& job, const std::string& run);
  // GetJob block: the dtype of a snapshot of (job, tap) that OpenSnapshot admitted.
  void NoteTapDType(const std::string& job, const std::string& tap, sigma::v1::DType dtype);

  // ConfigureJob: the job's configuration with `request` merged in, or a
  // refusal (an unknown job without `create` that the configuration file does
  // not name: NOT_FOUND; threshold order; sketch parameters fixed once sealed
  // or while snapshots are open; the job cap). Changes nothing.
  absl::StatusOr<StoredJob> PrepareConfigure(const std::string& job, const sigma::v1::JobConfig& request,
                                             bool create = true) const;
  // Applies a committed PrepareConfigure result (creating the job for `tenant`).
  void ApplyConfigure(const StoredJob& updated, const std::string& tenant = "");

  // Job lifecycle (issue 15 item 4). Finish: records FinishJob's committed
  // time (kept when already finished); false when the job is unknown.
  // Remove: forgets the job (its slot is free) and returns its state; nullopt
  // when unknown.
  bool Finish(const std::string& job, int64_t unix_ms);
  std::optional<JobState> Remove(const std::string& job);
  void MarkSeriesRemoved(const std::string& job);
  // The store row of a known job (name, configuration, m, finished time).
  static StoredJob Stored(const std::string& name, const JobState& job);

  // The job's store row is incarnation `created` (a commit, or a read of the
  // store at sync epoch `epoch`): recorded when the job knew none. False when
  // it knows another one (the job it holds was deleted elsewhere) or is unknown.
  bool NoteStored(const std::string& job, int64_t created, uint64_t epoch);

  // Restart: a stored job, and the m of a stored report's tap (its run:
  // MarkSealed).
  void Restore(const StoredJob& job);
  void RestoreTap(const std::string& job, const std::string& tap, int32_t m);

  const JobState* Find(const std::string& job) const;
  const std::map<std::string, JobState>& jobs() const { return jobs_; }
  // Information for ListJobs and GetJob: the effective configuration at the
  // job's m, with the sealed generation count and the highest one
  // of its latest run (ReportHistory), each tap's m and dtype (tap_info) and
  // the job's runs.
  sigma::v1::JobInfo Info(const std::string& name, const JobState& job, int64_t generations, int64_t last) const;

 private:
  JobState& Create(const std::string& job);  // a new entry with a fresh incarnation

  const DaemonOptions& options_;
  std::map<std::string, JobState> jobs_;
  uint64_t next_incarnation_ = 1;
  uint64_t next_run_id_ = 1;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_JOB_REGISTRY_H_
