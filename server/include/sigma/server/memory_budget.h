// The byte budget of --max-memory-bytes (and of a token's max_memory_bytes
// quota) and the RAII charges held against it; implemented in snapshot.cc.
#ifndef SIGMA_SERVER_MEMORY_BUDGET_H_
#define SIGMA_SERVER_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "sigma/kernels/backend.h"

namespace sigma::server {

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
    MemoryBudget* budget() const { return budget_; }

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

}  // namespace sigma::server

#endif  // SIGMA_SERVER_MEMORY_BUDGET_H_
