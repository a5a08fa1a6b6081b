// The state of sigmad and its compute queue.
//
// Threading: gRPC callback reactors call Open/Batch/EndShare/Close/... and
// never wait: per-batch work is validation, the NaN check, the energy of the
// rows and the bottom-k insert (O(rows x m), proportional to the message).
// Sealing (gather I_A, Backend::SealBatch, estimator, SQLite commit) and
// ConfigureJob's SQLite write run on one worker thread fed by a bounded queue;
// seals that arrive within --seal-batch-window-ms go through one SealBatch
// call. Completion callbacks (which Finish the reactors) run on the worker.
//
// Locks: mu_ (jobs, taps, reports, open snapshots) before Snapshot::mu; the
// per-batch path takes only its Snapshot's mu.
#ifndef SIGMA_SERVER_SCHEDULER_H_
#define SIGMA_SERVER_SCHEDULER_H_

#include <atomic>
#include <chrono>
#include <compare>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"
#include "sigma/kernels/backend.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/preprocess.h"
#include "sigma/server/config.h"
#include "sigma/server/metrics.h"
#include "sigma/server/storage.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

struct SnapshotKey {
  std::string job;
  std::string tap;
  int64_t generation = 0;
  auto operator<=>(const SnapshotKey&) const = default;
};

struct Snapshot;  // scheduler.cc
using ReportPtr = std::shared_ptr<const sigma::v1::GenerationReport>;
using ReportCallback = std::function<void(const grpc::Status&, ReportPtr)>;

// One Ingest stream's state.
struct IngestSession {
  bool opened = false;
  bool ended = false;
  std::shared_ptr<Snapshot> snapshot;  // the open snapshot
  ReportPtr sealed_report;             // set when opened on an already sealed one
  int32_t rank = -1;
  sigma::v1::IngestResponse response;  // running counters
};

// The energy statistics PreprocessRows would give for `block` (after
// preprocessing `p`: 1 per non-zero l2 row, else ||x||^2; > rho counts as a
// violation), in one pass over the wire bytes without conversion buffers.
// INVALID_ARGUMENT from CheckFinite when an element is NaN or Inf; `stats` is
// unchanged then.
absl::Status BatchEnergy(const sigma::RowBlock& block, sigma::Preprocessing p, double rho,
                         sigma::EnergyStats* stats);

// The payload of a Batch as the limits count it: data bytes plus 8 per sample id.
inline int64_t BatchPayloadBytes(const sigma::v1::Batch& batch) {
  return static_cast<int64_t>(batch.data().size()) + 8 * static_cast<int64_t>(batch.sample_ids_size());
}

// True when `name` matches [A-Za-z0-9_.:-]{1,128}.
bool ValidName(const std::string& name);

class Engine {
 public:
  Engine(DaemonOptions options, std::unique_ptr<Store> store,
         std::unique_ptr<sigma::Backend> backend, Metrics* metrics);
  ~Engine();

  // Loads jobs and reports from the store and re-publishes the gauges.
  absl::Status Restore();
  void StartWorker();
  // Runs every queued task, then stops the worker.
  void StopWorker();

  grpc::Status Open(const sigma::v1::OpenSnapshot& open, IngestSession* session);
  grpc::Status Batch(IngestSession* session, const sigma::v1::Batch& batch);
  // True when Batch would ignore `seq` as already taken (or the snapshot was
  // sealed): such resends are not charged to the client's rate limit.
  bool IsDuplicate(const IngestSession& session, int64_t seq) const;
  // Ends the stream's share: `end` is null on a half-close without EndOfShare.
  // `done` runs exactly once, inline or on the worker after the seal.
  void EndShare(IngestSession* session, const sigma::v1::EndOfShare* end,
                std::function<void(const grpc::Status&, const sigma::v1::IngestResponse&)> done);
  void Close(const sigma::v1::CloseGenerationRequest& request, ReportCallback done);
  void Configure(const sigma::v1::ConfigureJobRequest& request,
                 std::function<void(const grpc::Status&, const sigma::v1::JobInfo&)> done);
  grpc::Status GetHistory(const sigma::v1::GetHistoryRequest& request,
                          sigma::v1::GetHistoryResponse* response);
  grpc::Status ListJobs(sigma::v1::ListJobsResponse* response);

  const std::string& backend_name() const { return backend_name_; }

  // What the daemon keeps in memory of one sealed report: the values later
  // seals need (baseline values, forecast points; about 100 bytes with the map
  // node) and, for the tap's latest --history-cache-per-tap reports, the report
  // itself. Older reports are read back from SQLite (history_) when a retry or
  // GetHistory asks for them.
  struct SealedEntry {
    ReportPtr report;  // null once evicted
    int32_t m = 0;
    bool failed = false;     // Cholesky failed: no values
    bool has_drift = false;  // baseline_generation >= 0
    double track1_upper = 0;
    double track2 = 0;
    double track2_ci_halfwidth = 0;
    double per_dim_track2_drift = 0;
  };

 private:
  struct TapState {
    int32_t m = 0;
    std::optional<int64_t> first_sealed;  // default baseline: first successful seal
    std::map<int64_t, SealedEntry> reports;
    std::deque<int64_t> held;  // generations whose report is in memory, in sealing order
  };
  struct JobState {
    sigma::v1::JobConfig config;  // as configured
    int32_t m = 0;
    std::map<std::string, TapState> taps;
    int64_t open_snapshots = 0;
    bool has_sealed = false;
  };
  struct Task {
    std::shared_ptr<Snapshot> seal;
    std::function<void()> fn;
  };
  struct SealWork;

  grpc::Status Reject(const char* reason, grpc::StatusCode code, const std::string& message);
  sigma::v1::JobConfig JobEffective(const JobState& job, int64_t m) const;  // mu_ held
  sigma::v1::JobInfo MakeJobInfo(const std::string& name, const JobState& job) const;  // mu_ held
  void Enqueue(Task task);
  void WorkerLoop();
  void ProcessSeals(std::vector<std::shared_ptr<Snapshot>> batch);
  void DiscardSnapshot(const std::shared_ptr<Snapshot>& snap, const grpc::Status& error);
  void ReleaseRows(Snapshot& snap);  // snap.mu held
  // Records a sealed report in `tap` and evicts the oldest held report beyond
  // the cache size (mu_ held).
  void AddSealed(TapState& tap, ReportPtr report);
  // The report of a sealed generation: from memory, else from SQLite.
  absl::StatusOr<ReportPtr> SealedReport(const std::string& job, const std::string& tap,
                                         const SealedEntry& entry, int64_t generation);

  const DaemonOptions options_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<HistoryReader> history_;  // opened by Restore
  std::unique_ptr<sigma::Backend> backend_;
  std::string backend_name_;
  Metrics* metrics_;

  std::mutex mu_;
  std::map<std::string, JobState> jobs_;
  std::map<SnapshotKey, std::shared_ptr<Snapshot>> open_;

  std::atomic<int64_t> memory_bytes_{0};

  std::mutex qmu_;
  std::condition_variable qcv_;
  std::deque<Task> queue_;
  int64_t queued_fns_ = 0;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_SCHEDULER_H_
