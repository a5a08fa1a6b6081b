#include "sigma/server/stream_watchdog.h"

#include <algorithm>
#include <vector>

namespace sigma::server {

StreamWatchdog::StreamWatchdog(std::chrono::seconds timeout, std::function<SteadyTime()> clock, bool thread)
    : timeout_(timeout), clock_(std::move(clock)) {
  if (!thread || timeout_.count() <= 0) return;
  const auto period = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(1000),
                                                          std::chrono::duration_cast<std::chrono::milliseconds>(timeout_) / 4);
  thread_ = std::thread([this, period] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, period, [this] { return stop_; })) {
      lock.unlock();
      Check();
      lock.lock();
    }
  });
}

StreamWatchdog::~StreamWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StreamWatchdog::Add(Target* target) {
  if (timeout_.count() <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  last_[target] = clock_();
}

void StreamWatchdog::Touch(Target* target) {
  if (timeout_.count() <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = last_.find(target); it != last_.end()) it->second = clock_();
}

void StreamWatchdog::Remove(Target* target) {
  std::lock_guard<std::mutex> lock(mu_);
  last_.erase(target);
}

int StreamWatchdog::Check() {
  if (timeout_.count() <= 0) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  const SteadyTime cutoff = clock_() - timeout_;
  int ended = 0;
  for (auto it = last_.begin(); it != last_.end();) {
    if (it->second <= cutoff && it->first->OnIdle()) {
      it = last_.erase(it);
      ++ended;
    } else {
      ++it;
    }
  }
  return ended;
}

}  // namespace sigma::server
