// sigmad's event log: one line per event on stderr (or a given sink), as
// text ("2026-01-02T03:04:05.678Z level event key=value ...") or JSON (one
// object per line: {"ts":..., "level":..., "event":..., fields...}).
// Events: seal (job, tap, generation, m, n_a, backend, seconds, result),
// refusal (rpc, status, reason, message; rate-limited), store_failure, expiry.
// Thread-safe (one mutex around the sink).
#ifndef SIGMA_SERVER_LOG_H_
#define SIGMA_SERVER_LOG_H_

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sigma::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kText, kJson };

absl::StatusOr<LogLevel> ParseLogLevel(const std::string& name);
absl::StatusOr<LogFormat> ParseLogFormat(const std::string& name);

class Logger {
 public:
  using Field = std::pair<std::string, std::string>;  // key, value (value quoted as needed)
  using Sink = std::function<void(const std::string& line)>;  // gets one line without '\n'

  struct Options {
    LogFormat format = LogFormat::kText;
    LogLevel level = LogLevel::kInfo;
    // Refusal lines: at most `refusal_burst` per `refusal_period`; the lines
    // dropped are counted and reported in the next refusal line written
    // ("suppressed=N"), so a flood cannot fill the disk.
    int64_t refusal_burst = 20;
    absl::Duration refusal_period = absl::Seconds(10);
  };
  // `sink` null: stderr. `now`: wall time (tests pass a fake clock).
  explicit Logger(Options options, Sink sink = nullptr, std::function<absl::Time()> now = absl::Now);

  void Log(LogLevel level, const std::string& event, const std::vector<Field>& fields);
  // A refused request (rate-limited; warning level).
  void Refusal(const std::string& rpc, const std::string& status, const std::string& reason,
               const std::string& message);

  // The one line Log would write (exposed for tests).
  std::string Format(LogLevel level, const std::string& event, const std::vector<Field>& fields) const;

 private:
  const Options options_;
  Sink sink_;
  std::function<absl::Time()> now_;
  std::mutex mu_;
  absl::Time window_start_ = absl::InfinitePast();
  int64_t window_lines_ = 0;
  int64_t suppressed_ = 0;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_LOG_H_
