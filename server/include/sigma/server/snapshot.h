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
// Memory: the row store (n_A slots of m x dtype width bytes at most), the seq
// runs (64 bytes each) and the sketch's bookkeeping (48 bytes per slot) are
// charged to a MemoryBudget through one RAII MemoryBudget::Charge, returned
// when the rows are gathered for the seal, on failure, or on destruction.
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
  auto operator<=>(const SnapshotKey&) const = default;
};
// "job 'J' tap 'T' generation G", for messages.
std::string KeyString(const SnapshotKey& key);

// The CPU working set of sealing m columns with n_a sampled rows: the Gram
// matrix, three shifted factors and q (4 x 8 m^2 bytes) plus the float64
// conversion of the rows (8 n_a m bytes) (issue 14 item 3).
inline int64_t SealWorkingSetBytes(int64_t m, int64_t n_a) { return 32 * m * m + 8 * n_a * m; }

// A byte budget shared by every charge (--max-memory-bytes). Thread-safe.
// A budget with a parent (a token's max_memory_bytes quota, quota.h) passes
// every charge on to it: a charge fits when it fits both.
// How a MemoryBudget names itself in refusals: "--max-memory-bytes" with
// reason memory_exhausted; a token's quota with reason quota_memory.
struct MemoryBudgetNaming {
  std::string limit = "--max-memory-bytes";
  std::string reason = "memory_exhausted";
};

class MemoryBudget {
 public:
  using Naming = MemoryBudgetNaming;
  explicit MemoryBudget(int64_t limit, std::function<void(int64_t used)> on_change = nullptr,
                        MemoryBudget* parent = nullptr, Naming naming = {})
      : limit_(limit), on_change_(std::move(on_change)), parent_(parent), naming_(std::move(naming)) {}

  // Bytes reserved from the budget, returned when the Charge is released or
  // destroyed. Movable; not thread-safe itself (its owner's lock).
  class Charge {
   public:
    Charge() = default;
    explicit Charge(MemoryBudget* budget) : budget_(budget) {}
    Charge(Charge&& other) noexcept { *this = std::move(other); }
    Charge& operator=(Charge&& other) noexcept;
    ~Charge() { Release(); }
    // Adds `delta` bytes (may be negative). Refused (false, nothing changed)
    // when a positive delta would bring the budget (or its parent) over its
    // limit; *would_hold is then the total it would have reached and
    // *refused_by the budget that refused.
    bool Grow(int64_t delta, int64_t* would_hold = nullptr, const MemoryBudget** refused_by = nullptr);
    // Adds `bytes` even beyond the limit (a seal in progress: new rows are
    // refused meanwhile, the seal itself is never stopped half-way).
    void Force(int64_t bytes);
    void Release();
    int64_t bytes() const { return bytes_; }
    int64_t limit() const { return budget_ ? budget_->limit() : 0; }

   private:
    MemoryBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
  };

  int64_t used() const { return used_.load(); }
  int64_t limit() const { return limit_; }
  const Naming& naming() const { return naming_; }

 private:
  bool Add(int64_t delta, int64_t* would_hold, const MemoryBudget** refused_by);
  void AddForced(int64_t delta);
  const int64_t limit_;
  std::function<void(int64_t)> on_change_;
  MemoryBudget* const parent_;
  const Naming naming_;
  std::atomic<int64_t> used_{0};
};

// The kernels' view of the daemon's --max-memory-bytes budget: the CUDA
// backend charges the device workspace and pinned staging it keeps between
// seals here (sigma::MemoryBudget), so they count like the CPU scratch.
// Created before the engine (the backend needs it at construction) and bound
// to the engine's MemoryBudget once that exists; unbound, it refuses nothing.
// Unbind before that MemoryBudget goes (the backend releases its scratch in
// its destructor, after the engine's budget is gone).
// Thread-safe (each device's backend charges from its own thread).
class BackendScratchBudget : public sigma::MemoryBudget {
 public:
  void Bind(server::MemoryBudget* budget);
  void Unbind();
  bool TryCharge(int64_t bytes) override;
  void Release(int64_t bytes) override;
  int64_t held() const;

 private:
  mutable std::mutex mu_;
  server::MemoryBudget::Charge charge_;  // bytes the backends hold now
  bool bound_ = false;
  int64_t unbound_ = 0;          // bytes charged while unbound
};

// The batch seqs one rank has sent, as disjoint runs [first, last] (a client
// numbering 0, 1, 2, ... holds one run whatever the batch count). Each run is
// charged kBytesPerRun, so sparse seqs cannot grow the daemon without bound.
// Not thread-safe (Snapshot's mutex).
class SeqRuns {
 public:
  static constexpr int64_t kBytesPerRun = 64;  // a std::map node, rounded up
  bool contains(int64_t seq) const;
  // Change in the number of runs insert(seq) would make: +1, 0 or -1.
  int RunDelta(int64_t seq) const;
  void insert(int64_t seq);
  size_t runs() const { return runs_.size(); }

 private:
  std::map<int64_t, int64_t> runs_;  // first -> last, disjoint, not adjacent
};

// What one gathered snapshot hands to the backend (SealBatch) and the report.
struct SealJob {
  std::vector<uint8_t> rows;  // I_A sorted by (priority, id), wire dtype
  sigma::SealInput input;     // points into `rows`
  sigma::EnergyStats energy;  // merged over ranks (client-reported energies included)
  double n = 0;               // corpus size: declared, else rows counted
  int32_t ranks_finished = 0;
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
  // True when a Batch with `seq` from `rank` would be ignored as a duplicate.
  bool IsDuplicate(int32_t rank, int64_t seq) const;
  // Takes a validated batch: energies already computed. Returns false (and
  // changes nothing) for a duplicate; refusals carry a reason.
  absl::StatusOr<bool> AddRows(int32_t rank, const sigma::v1::Batch& batch, const sigma::EnergyStats& energy,
                               const std::string& where, SteadyTime now);

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
  struct RankState {
    SeqRuns seqs;
    int64_t rows = 0;  // accepted rows, in stream order (default sample ids)
    bool finished = false;
    std::optional<sigma::v1::EndOfShare> end;
    sigma::EnergyStats energy;  // computed from the rows sent
  };
  // The outcome of a settled snapshot, or queues the waiter while it seals;
  // nullopt while kOpen. mu_ held.
  std::optional<Step> Await(ReportCallback& waiter);
  Step RequestSeal(bool closed_explicitly, ReportCallback waiter, SteadyTime now);  // mu_ held
  void ReleaseRows();  // mu_ held
  sigma::EnergyStats MergedEnergy(double* counted) const;  // mu_ held

  const Params p_;
  mutable std::mutex mu_;
  State state_ = State::kOpen;
  std::optional<int64_t> corpus_size_;
  std::unique_ptr<sigma::BottomKSketch> sketch_;
  std::vector<uint8_t> rows_;  // sketch slots, row_bytes each, wire dtype
  MemoryBudget::Charge charge_;
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
