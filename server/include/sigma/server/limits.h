// Per-client limits of sigmad: concurrent Ingest streams and the ingest
// payload rate (docs/reliability.md, "Limits").
//
// A client is a bearer token's entry when --tokens is set, otherwise the
// peer's IP address (so everything behind one proxy counts as one client).
// The rate limit is a token bucket over Batch payload bytes (data plus 8 bytes
// per sample id): it refills at `bytes_per_second` up to `burst_bytes`; a batch
// that finds the bucket short is refused with RESOURCE_EXHAUSTED and a
// retry-after hint, and the stream's snapshot keeps what it had (the clients
// resend from their last acknowledged batch; duplicates are ignored).
//
// Thread-safety: every method may be called from any thread (one mutex).
#ifndef SIGMA_SERVER_LIMITS_H_
#define SIGMA_SERVER_LIMITS_H_

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace sigma::server {

// The limits that apply to one client; 0 disables a limit.
struct ClientLimits {
  int64_t max_streams = 0;
  int64_t bytes_per_second = 0;
  int64_t burst_bytes = 0;  // 0 with a rate: one second's worth
};

class ClientLimiter {
 public:
  // `now` returns monotonic time (tests pass a fake clock).
  explicit ClientLimiter(std::function<absl::Time()> now = absl::Now) : now_(std::move(now)) {}

  // Counts a new stream of `client` (`label` names it in messages: a token's
  // name or the peer address, never a secret), or RESOURCE_EXHAUSTED when it
  // already has limits.max_streams open.
  absl::Status AcquireStream(const std::string& client, const std::string& label, const ClientLimits& limits);
  // Ends a stream counted by AcquireStream.
  void ReleaseStream(const std::string& client);

  // Takes `bytes` from the client's bucket, or returns RESOURCE_EXHAUSTED and
  // sets *retry_after to the time until the bucket holds them. A batch larger
  // than the burst can never pass: the message says to send smaller batches.
  absl::Status Consume(const std::string& client, const std::string& label, const ClientLimits& limits,
                       int64_t bytes, absl::Duration* retry_after);

  int64_t open_streams(const std::string& client) const;
  size_t tracked_clients() const;

 private:
  struct State {
    int64_t streams = 0;
    double bucket = 0;     // bytes available
    absl::Time refilled;   // when `bucket` was last brought up to date
    bool bucket_set = false;
  };
  // Drops clients with no stream whose bucket is full again (bounds the map).
  void PruneLocked(absl::Time now);

  std::function<absl::Time()> now_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, State> clients_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_LIMITS_H_
