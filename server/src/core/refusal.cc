#include "sigma/server/refusal.h"

#include "absl/strings/str_cat.h"

#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"

namespace sigma::server {

namespace {
constexpr char kReasonUrl[] = "sigma.dev/refusal-reason";
constexpr char kShareRowUrl[] = "sigma.dev/share-row";
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

absl::Status UnknownJob(const std::string& job) {
  return Refusal(absl::StatusCode::kNotFound, "not_found", absl::StrCat("unknown job '", job, "'"));
}

absl::Status WithShareRow(absl::Status status, int64_t row) {
  status.SetPayload(kShareRowUrl, absl::Cord(std::to_string(row)));
  return status;
}

std::optional<int64_t> ShareRow(const absl::Status& status) {
  const auto p = status.GetPayload(kShareRowUrl);
  int64_t row = 0;
  if (!p || !absl::SimpleAtoi(std::string(*p), &row)) return std::nullopt;
  return row;
}

}  // namespace sigma::server
