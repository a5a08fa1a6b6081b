// One open snapshot (job, tap, generation) and the memory budget its rows are
// charged to.
//
// Snapshot holds the one state machine of a snapshot's life:
//   kOpen --EndShare of the last rank / Close--> kSealing --Settle--> kSealed | kFailed
//   kOpen --EndShare of the last rank with no rows / Expire / Fail--> kFailed
// Every event (EndShare, Close, Expire, Settle, Fail) is a method that returns
// what the caller must do (reply now, wait, enqueue the seal, drop the
// snapshot from the table); callers never switch on the state themselves.
//
// Thread-safety: every method takes the snapshot's own mutex (a leaf lock
// below Engine::mu_); the immutable parameters (params()) are read freely.
// Memory: the committed row store (n_A slots of m x dtype width bytes at
// most), each streaming rank's own row store (n_A slots at most, plus 48
// bytes of sketch bookkeeping per slot), the seq logs (32 bytes per batch)
// and the committed sketch's bookkeeping (48 bytes per slot, reserved at
// open) are charged to a MemoryBudget through RAII MemoryBudget::Charges,
// returned when the rows are gathered for the seal, on failure, or on
// destruction. Atomic shares (issue 15 item 2): a rank's rows join the
// committed store only at its EndOfShare, so a refused share can be dropped
// whole (DropShare) without touching the other ranks' rows.
#ifndef SIGMA_SERVER_SNAPSHOT_H_
#define SIGMA_SERVER_SNAPSHOT_H_

#include <atomic>
#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sigma/kernels/backend.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/preprocess.h"
#include "sigma/kernels/sketch.h"
#include "sigma/server/memory_budget.h"
#include "sigma/server/share.h"
#include "sigma/server/storage.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

using SteadyTime = std::chrono::steady_clock::time_point;
using ReportPtr = std::shared_ptr<const sigma::v1::GenerationReport>;
// A waiter on a snapshot's outcome: the report (OK) or the error.
using ReportCallback = std::function<void(const absl::Status&, ReportPtr)>;

struct SnapshotKey {
  std::string job;
  std::string tap;
  int64_t generation = 0;
  std::string run = kFirstRun;  // the job's run (docs/server.md "Runs"), resolved at OpenSnapshot
  auto operator<=>(const SnapshotKey&) const = default;
};
// "job 'J' tap 'T' generation G" (run "1"), else "job 'J' run 'R' tap 'T'
// generation G", for messages.
std::string KeyString(const SnapshotKey& key);

// The CPU working set of sealing m columns with n_a sampled rows: the Gram
// matrix, three shifted factors and q (4 x 8 m^2 bytes) plus the float64
// conversion of the rows (8 n_a m bytes) (issue 14 item 3).
inline int64_t SealWorkingSetBytes(int64_t m, int64_t n_a) { return 32 * m * m + 8 * n_a * m; }

// What one gathered snapshot hands to the backend (SealBatch) and the report.
struct SealJob {
  std::vector<uint8_t> rows;  // I_A sorted by (priority, id), wire dtype
  sigma::SealInput input;     // points into `rows`
  sigma::EnergyStats energy;  // merged over ranks (client-reported energies included)
  double n = 0;               // corpus size: declared, else rows counted
  int32_t ranks_finished = 0;
  std::vector<sigma::v1::ShareDigest> shares;  // by rank: the ranks whose rows are in `rows`
  bool closed_explicitly = false;
  SteadyTime seal_requested;
};

class Snapshot {
 public:
  enum class State { kOpen, kSealing, kSealed, kFailed };

  // Fixed at OpenSnapshot.
  struct Params {
    SnapshotKey key;
    int32_t m = 0;
    sigma::DType dtype = sigma::DType::kFloat32;
    int32_t world_size = 1;
    sigma::v1::JobConfig config;  // effective, captured at open
    sigma::Preprocessing prep = sigma::Preprocessing::kL2;
    double rho = 1, delta = 1e-6;
    int64_t k = 0;           // n_A
    size_t row_bytes = 0;    // m x dtype width
    std::string tenant;      // Tenant::key of the token that opened it ("": none; quota.h)
    uint64_t job_incarnation = 0;  // JobState::incarnation at open (a DeleteJob changes it)
    uint64_t run_id = 0;           // JobState::run_ids of key.run at open (a DeleteJob --run changes it)
  };

  // What the caller of an event must do.
  struct Step {
    enum Kind {
      kReply,    // call the waiter now with (status, report)
      kWait,     // the waiter was queued; Settle/Fail calls it
      kSeal,     // the waiter was queued; enqueue the snapshot's seal
      kDiscard,  // the snapshot failed (status): drop it from the table, reply
    } kind = kReply;
    absl::Status status;
    ReportPtr report;
  };

  // `charge` holds the sketch's reservation; the rows add to it.
  Snapshot(Params params, std::optional<int64_t> corpus_size, MemoryBudget::Charge charge, SteadyTime now);

  const Params& params() const { return p_; }
  const SnapshotKey& key() const { return p_.key; }

  // Another rank's OpenSnapshot: world_size, m, dtype and corpus_size must agree.
  absl::Status Join(int32_t world_size, int32_t m, sigma::DType dtype, std::optional<int64_t> corpus_size,
                    const std::string& dtype_name, SteadyTime now);
  // True when a Batch with `seq` from `rank` would be ignored as a duplicate
  // (the seq is taken; whether its rows match is AddRows's question).
  bool IsDuplicate(int32_t rank, int64_t seq) const;
  // Rows accepted from `rank`'s share so far: the share row of a batch's
  // first row, for messages.
  int64_t ShareRows(int32_t rank) const;
  // Takes a validated batch: energies and its digest (BatchDigest) already
  // computed. Returns false (and changes nothing) for a duplicate: a seq the
  // rank sent before with the same rows. The same seq with other rows is
  // ALREADY_EXISTS (reason share_conflict): two senders claim the rank.
  // Other refusals carry their reason; the caller then drops the share.
  absl::StatusOr<bool> AddRows(int32_t rank, const sigma::v1::Batch& batch, const sigma::EnergyStats& energy,
                               uint64_t digest, const std::string& where, SteadyTime now);
  // Atomic shares: forgets every row, seq and energy `rank` sent, so the rank
  // may resend from scratch. A finished (committed) share is kept.
  void DropShare(int32_t rank);
  // The digest of `rank`'s share so far (rows, sum) and whether it finished.
  sigma::v1::ShareDigest Digest(int32_t rank) const;

  // Events of the state machine.
  // EndOfShare of `rank` (`end` null: a half-close without one).
  Step EndShare(int32_t rank, const sigma::v1::EndOfShare* end, ReportCallback waiter, SteadyTime now);
  // CloseGeneration: seal with the ranks that finished.
  Step Close(ReportCallback waiter, SteadyTime now);
  // kOpen and no data since `idle_since`: fail with the expiry error (which
  // later Batches of its ranks get too). Returns true when it expired the
  // snapshot (the caller drops it from the table).
  bool Expire(SteadyTime idle_since, const absl::Status& error);
  // Streams holding the snapshot: Attach at OpenSnapshot; Detach when a
  // stream is refused. Detach returns true when no stream holds it any more
  // and it never received a row (the caller discards it: a refused stream
  // leaves no empty open snapshot behind).
  void Attach();
  bool Detach();
  // The seal's outcome (kSealing -> kSealed / kFailed); returns the waiters to call.
  std::vector<ReportCallback> Settle(const absl::Status& status, ReportPtr report);
  // Any state -> kFailed with `error` (rows released); returns the waiters.
  std::vector<ReportCallback> Fail(const absl::Status& error);
  // DeleteJob: kOpen -> kFailed with `error` (rows released), the waiters
  // moved to *waiters; false (nothing changed) once a seal holds it.
  bool Cancel(const absl::Status& error, std::vector<ReportCallback>* waiters);

  // What ListSnapshots shows of it (a consistent copy).
  struct Progress {
    State state = State::kOpen;
    std::vector<int32_t> ranks_finished, ranks_missing;
    int64_t rows = 0;
    SteadyTime opened, last_activity;
  };
  Progress progress() const;

  // kSealing: moves I_A and the energies into `job` and returns the rows'
  // memory to the budget.
  void Gather(SealJob* job);

  State state() const;
  int64_t total_rows() const;
  int64_t charged_bytes() const;
  SteadyTime last_activity() const;

 private:
  // One rank's share. Its rows stay in `pending` until its EndOfShare commits
  // them to committed_ (then its seqs and digest stay, for dedup).
  struct RankState {
    BatchLog seqs;
    std::unique_ptr<RowStore> pending;  // null until the first row, and after the commit
    int64_t rows = 0;  // accepted rows, in stream order (default sample ids)
    uint64_t digest = 0;  // sum of the accepted batches' digests
    bool finished = false;
    std::optional<sigma::v1::EndOfShare> end;
    sigma::EnergyStats energy;  // computed from the rows sent
  };
  // The outcome of a settled snapshot, or queues the waiter while it seals;
  // nullopt while kOpen. mu_ held.
  std::optional<Step> Await(ReportCallback& waiter);
  Step RequestSeal(bool closed_explicitly, ReportCallback waiter, SteadyTime now);  // mu_ held
  void ReleaseRows();  // mu_ held
  void Commit(RankState& rank);  // mu_ held: moves the rank's pending rows into committed_
  sigma::EnergyStats MergedEnergy(double* counted) const;  // mu_ held

  const Params p_;
  mutable std::mutex mu_;
  State state_ = State::kOpen;
  std::optional<int64_t> corpus_size_;
  std::unique_ptr<RowStore> committed_;  // the finished shares' bottom-k rows
  MemoryBudget::Charge charge_;           // the committed sketch's bookkeeping and the seq logs
  std::vector<RankState> ranks_;
  int32_t finished_ = 0;
  int64_t total_rows_ = 0;
  bool closed_explicitly_ = false;
  bool expired_ = false;  // Expire or Cancel: later Batches get error_
  int32_t attached_ = 0;
  const SteadyTime opened_;
  SteadyTime last_activity_;
  SteadyTime seal_requested_;
  std::vector<ReportCallback> waiters_;
  ReportPtr report_;
  absl::Status error_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_SNAPSHOT_H_
