#include "sigma/server/refusal.h"

#include <optional>

#include "absl/strings/cord.h"

namespace sigma::server {

namespace {
constexpr char kReasonUrl[] = "sigma.dev/refusal-reason";
}  // namespace

absl::Status Refusal(absl::StatusCode code, absl::string_view reason, absl::string_view message) {
  absl::Status s(code, message);
  s.SetPayload(kReasonUrl, absl::Cord(reason));
  return s;
}

std::string RefusalReason(const absl::Status& status) {
  const auto p = status.GetPayload(kReasonUrl);
  return p ? std::string(*p) : std::string();
}

}  // namespace sigma::server
