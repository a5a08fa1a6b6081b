// Cancels streams that stay silent: targets (Ingest reactors) are added when
// they start reading, touched on every message, removed when they end; Check()
// calls OnIdle on those silent for longer than the timeout. A thread calls
// Check every min(timeout / 4, 1 s) unless tests drive it with their clock.
// Thread-safe; OnIdle runs under the watchdog's mutex (a target must not call
// back into the watchdog from OnIdle; it may Remove itself from another thread,
// which then waits until OnIdle returned).
#ifndef SIGMA_SERVER_STREAM_WATCHDOG_H_
#define SIGMA_SERVER_STREAM_WATCHDOG_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "sigma/server/snapshot.h"

namespace sigma::server {

class StreamWatchdog {
 public:
  class Target {
   public:
    virtual ~Target() = default;
    // Returns true when the target ended itself (it is then forgotten).
    virtual bool OnIdle() = 0;
  };
  // `timeout` zero: never idle (Check does nothing, no thread).
  StreamWatchdog(std::chrono::seconds timeout, std::function<SteadyTime()> clock, bool thread);
  ~StreamWatchdog();

  void Add(Target* target);
  void Touch(Target* target);
  void Remove(Target* target);
  // Ends the idle targets; returns how many ended.
  int Check();
  std::chrono::seconds timeout() const { return timeout_; }

 private:
  const std::chrono::seconds timeout_;
  std::function<SteadyTime()> clock_;
  std::mutex mu_;
  std::map<Target*, SteadyTime> last_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_STREAM_WATCHDOG_H_
