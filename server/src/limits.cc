#include "sigma/server/limits.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "absl/strings/str_format.h"

namespace sigma::server {
namespace {

constexpr size_t kPruneAbove = 4096;  // tracked clients before idle ones are dropped

double Burst(const ClientLimits& limits) {
  return static_cast<double>(limits.burst_bytes > 0 ? limits.burst_bytes : limits.bytes_per_second);
}

// Brings `bucket` up to `now` (refill at the rate, capped at the burst).
void Refill(const ClientLimits& limits, absl::Time now, double* bucket, absl::Time* refilled) {
  const double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - *refilled));
  *bucket = std::min(Burst(limits), *bucket + elapsed * static_cast<double>(limits.bytes_per_second));
  *refilled = now;
}

}  // namespace

absl::Status ClientLimiter::AcquireStream(const std::string& client, const std::string& label,
                                          const ClientLimits& limits) {
  std::lock_guard<std::mutex> lock(mu_);
  if (clients_.size() > kPruneAbove) PruneLocked(now_());
  State& state = clients_[client];
  if (limits.max_streams > 0 && state.streams >= limits.max_streams)
    return absl::ResourceExhaustedError(
        absl::StrFormat("client %s already has %d open Ingest streams (--max-streams-per-client or the "
                        "token's max_streams = %d); finish one first",
                        label, state.streams, limits.max_streams));
  ++state.streams;
  return absl::OkStatus();
}

void ClientLimiter::ReleaseStream(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = clients_.find(client);
  if (it != clients_.end() && it->second.streams > 0) --it->second.streams;
}

absl::Status ClientLimiter::Consume(const std::string& client, const std::string& label,
                                    const ClientLimits& limits, int64_t bytes, absl::Duration* retry_after) {
  *retry_after = absl::ZeroDuration();
  if (limits.bytes_per_second <= 0) return absl::OkStatus();
  const double burst = Burst(limits);
  if (static_cast<double>(bytes) > burst)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "client %s: a batch of %d bytes is larger than the rate-limit burst of %.0f bytes "
        "(--rate-limit-burst-bytes or the token's rate_limit_burst_bytes); send smaller batches",
        label, bytes, burst));
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time now = now_();
  State& state = clients_[client];
  if (!state.bucket_set) {  // a new client starts with a full bucket
    state.bucket = burst;
    state.refilled = now;
    state.bucket_set = true;
  }
  Refill(limits, now, &state.bucket, &state.refilled);
  if (state.bucket >= static_cast<double>(bytes)) {
    state.bucket -= static_cast<double>(bytes);
    return absl::OkStatus();
  }
  const double missing = static_cast<double>(bytes) - state.bucket;
  *retry_after = absl::Milliseconds(
      std::ceil(1000.0 * missing / static_cast<double>(limits.bytes_per_second)));
  return absl::ResourceExhaustedError(absl::StrFormat(
      "client %s exceeded its ingest rate limit of %d bytes/s (burst %.0f); retry after %d ms",
      label, limits.bytes_per_second, burst, absl::ToInt64Milliseconds(*retry_after)));
}

int64_t ClientLimiter::open_streams(const std::string& client) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = clients_.find(client);
  return it == clients_.end() ? 0 : it->second.streams;
}

size_t ClientLimiter::tracked_clients() const {
  std::lock_guard<std::mutex> lock(mu_);
  return clients_.size();
}

void ClientLimiter::PruneLocked(absl::Time now) {
  // A client with no open stream and no batch for a minute is forgotten (its
  // bucket has refilled by then for any burst below a minute's rate); one
  // refused recently keeps its short bucket, so reconnecting does not reset it.
  for (auto it = clients_.begin(); it != clients_.end();) {
    const State& s = it->second;
    const bool idle = s.streams == 0 && (!s.bucket_set || now - s.refilled > absl::Seconds(60));
    it = idle ? clients_.erase(it) : std::next(it);
  }
}

}  // namespace sigma::server
