// The compute queue of sigmad: lanes, each one thread with its own queue.
//   - seal lanes by size class: snapshots with m <= small_max_m seal on the
//     "small" lane, larger ones on the "large" lane, so a small job's seal never
//     waits behind a large one. Within a lane, seals that arrive within
//     `window_ms` of the first go through one `process` call (one SealBatch),
//     at most `max_batch` of them. One thread per lane keeps every tap's seals
//     in order (a tap's m, hence its lane, is fixed).
//   - a task lane: store writes and SQLite reads (ConfigureJob's commit, reads
//     of evicted reports, GetHistory), never on a gRPC thread, bounded by
//     `task_capacity`.
// A lane survives exceptions (std::bad_alloc included): the seals of a failed
// `process` call go to `fail`. Stop() runs everything queued, then joins.
// Thread-safe.
#ifndef SIGMA_SERVER_SEAL_QUEUE_H_
#define SIGMA_SERVER_SEAL_QUEUE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "sigma/server/snapshot.h"

namespace sigma::server {

class SealQueue {
 public:
  using Batch = std::vector<std::shared_ptr<Snapshot>>;
  struct Options {
    int64_t window_ms = 5;
    int64_t max_batch = 64;
    int64_t small_max_m = 1024;  // m above this seals on the large lane
    int64_t task_capacity = 1024;
  };
  // `process` seals a batch; `fail` settles the batch of a `process` call that
  // threw; `on_depth` gets the number of queued items after each change.
  SealQueue(Options options, std::function<void(Batch)> process,
            std::function<void(const Batch&, const absl::Status&)> fail,
            std::function<void(int64_t)> on_depth = nullptr);
  ~SealQueue();

  void Start();
  void Stop();

  void EnqueueSeal(std::shared_ptr<Snapshot> snapshot, SteadyTime requested);
  // Queues `fn` on the task lane; false (nothing queued) when it holds
  // task_capacity tasks already.
  bool TryEnqueueTask(std::function<void()> fn);
  // The same without the bound (follow-ups of accepted requests).
  void EnqueueTask(std::function<void()> fn);

  // Queued seals and tasks, seals waiting out their batching window included.
  int64_t depth() const { return depth_.load(); }

 private:
  class Lane;
  void Changed(int64_t delta);

  const Options options_;
  std::function<void(int64_t)> on_depth_;
  std::atomic<int64_t> depth_{0};
  std::unique_ptr<Lane> small_, large_, tasks_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_SEAL_QUEUE_H_
