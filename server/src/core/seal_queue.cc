#include "sigma/server/seal_queue.h"

#include <exception>
#include <new>

#include "absl/strings/str_cat.h"

namespace sigma::server {

// One thread and its queue. Items are either a seal or a task.
class SealQueue::Lane {
 public:
  struct Item {
    std::shared_ptr<Snapshot> seal;
    SteadyTime requested;
    std::function<void()> fn;
  };
  Lane(SealQueue* owner, std::function<void(Batch)> process,
       std::function<void(const Batch&, const absl::Status&)> fail)
      : owner_(owner), process_(std::move(process)), fail_(std::move(fail)) {}

  void Start() {
    std::lock_guard<std::mutex> lock(mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    thread_ = std::thread([this] { Loop(); });
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  bool Push(Item item, int64_t capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (capacity > 0 && static_cast<int64_t>(queue_.size()) >= capacity) return false;
      queue_.push_back(std::move(item));
      owner_->Changed(1);
    }
    cv_.notify_all();
    return true;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, everything ran
      Item item = std::move(queue_.front());
      queue_.pop_front();
      if (item.fn) {
        owner_->Changed(-1);
        lock.unlock();
        RunTask(item.fn);
        lock.lock();
        continue;
      }
      Batch batch = TakeBatch(std::move(item), lock);
      lock.unlock();
      RunSeals(std::move(batch));
      lock.lock();
    }
  }

  // Waits up to the window for more seals, then takes the queued ones; they
  // count in the depth until then. mu_ held.
  Batch TakeBatch(Item first, std::unique_lock<std::mutex>& lock) {
    Batch batch{std::move(first.seal)};
    const auto deadline = first.requested + std::chrono::milliseconds(owner_->options_.window_ms);
    const int64_t max = owner_->options_.max_batch;
    while (!stopping_ && 1 + static_cast<int64_t>(queue_.size()) < max && std::chrono::steady_clock::now() < deadline)
      cv_.wait_until(lock, deadline);
    for (auto it = queue_.begin(); it != queue_.end() && static_cast<int64_t>(batch.size()) < max;) {
      if (!it->seal) {
        ++it;
        continue;
      }
      batch.push_back(std::move(it->seal));
      it = queue_.erase(it);
    }
    owner_->Changed(-static_cast<int64_t>(batch.size()));
    return batch;
  }

  void RunSeals(Batch batch) {
    absl::Status error;
    try {
      process_(batch);
      return;
    } catch (const std::bad_alloc&) {
      error = absl::ResourceExhaustedError("the seal ran out of memory (std::bad_alloc)");
    } catch (const std::exception& e) {
      error = absl::InternalError(absl::StrCat("the seal failed: ", e.what()));
    }
    try {
      fail_(batch, error);
    } catch (...) {  // nothing more can be done for these waiters
    }
  }

  static void RunTask(const std::function<void()>& fn) {
    try {
      fn();
    } catch (...) {  // a task reports its own errors; the lane goes on
    }
  }

  SealQueue* owner_;
  std::function<void(Batch)> process_;
  std::function<void(const Batch&, const absl::Status&)> fail_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

SealQueue::SealQueue(Options options, std::function<void(Batch)> process,
                     std::function<void(const Batch&, const absl::Status&)> fail,
                     std::function<void(int64_t)> on_depth)
    : options_(options), on_depth_(std::move(on_depth)) {
  small_ = std::make_unique<Lane>(this, process, fail);
  large_ = std::make_unique<Lane>(this, process, fail);
  tasks_ = std::make_unique<Lane>(this, process, fail);
}

SealQueue::~SealQueue() { Stop(); }

void SealQueue::Start() {
  for (Lane* l : {small_.get(), large_.get(), tasks_.get()}) l->Start();
}

void SealQueue::Stop() {
  // Seals first (their commits may queue nothing further), then the tasks.
  for (Lane* l : {small_.get(), large_.get(), tasks_.get()}) l->Stop();
}

void SealQueue::Changed(int64_t delta) {
  const int64_t now = depth_.fetch_add(delta) + delta;
  if (on_depth_) on_depth_(now);
}

void SealQueue::EnqueueSeal(std::shared_ptr<Snapshot> snapshot, SteadyTime requested) {
  Lane* lane = snapshot->params().m <= options_.small_max_m ? small_.get() : large_.get();
  lane->Push(Lane::Item{std::move(snapshot), requested, nullptr}, 0);
}

bool SealQueue::TryEnqueueTask(std::function<void()> fn) {
  return tasks_->Push(Lane::Item{nullptr, {}, std::move(fn)}, options_.task_capacity);
}

void SealQueue::EnqueueTask(std::function<void()> fn) { tasks_->Push(Lane::Item{nullptr, {}, std::move(fn)}, 0); }

}  // namespace sigma::server
