#include "sigma/server/quota.h"

#include "absl/strings/str_format.h"
#include "sigma/server/refusal.h"

namespace sigma::server {

absl::Status TenantBook::AdmitJob(const Tenant& t) const {
  if (!t.limited() || t.max_jobs <= 0) return absl::OkStatus();
  const int64_t held = jobs(t.key);
  if (held < t.max_jobs) return absl::OkStatus();
  return Refusal(absl::StatusCode::kResourceExhausted, "quota_jobs",
                 absl::StrFormat("%s has created %d jobs: its max_jobs quota is %d (tokens file)", t.label, held,
                                 t.max_jobs));
}

absl::Status TenantBook::AdmitOpen(const Tenant& t) const {
  if (!t.limited() || t.max_open_snapshots <= 0) return absl::OkStatus();
  const int64_t held = open_snapshots(t.key);
  if (held < t.max_open_snapshots) return absl::OkStatus();
  return Refusal(absl::StatusCode::kResourceExhausted, "quota_open_snapshots",
                 absl::StrFormat("%s holds %d open snapshots: its max_open_snapshots quota is %d (tokens file)",
                                 t.label, held, t.max_open_snapshots));
}

void TenantBook::JobCreated(const Tenant& t) {
  if (t.limited()) ++held_[t.key].jobs;
}

void TenantBook::Opened(const Tenant& t) {
  if (t.limited()) ++held_[t.key].open_snapshots;
}

void TenantBook::JobDeleted(const std::string& key) {
  if (auto it = held_.find(key); it != held_.end() && it->second.jobs > 0) --it->second.jobs;
}

void TenantBook::Closed(const std::string& key) {
  if (auto it = held_.find(key); it != held_.end()) --it->second.open_snapshots;
}

MemoryBudget* TenantBook::Budget(const Tenant& t) {
  if (!t.limited() || t.max_memory_bytes <= 0) return global_;
  Held& h = held_[t.key];
  if (!h.memory)
    h.memory = std::make_unique<MemoryBudget>(
        t.max_memory_bytes, nullptr, global_,
        MemoryBudget::Naming{absl::StrFormat("the max_memory_bytes quota of %s", t.label), "quota_memory"});
  return h.memory.get();
}

int64_t TenantBook::jobs(const std::string& key) const {
  auto it = held_.find(key);
  return it == held_.end() ? 0 : it->second.jobs;
}

int64_t TenantBook::open_snapshots(const std::string& key) const {
  auto it = held_.find(key);
  return it == held_.end() ? 0 : it->second.open_snapshots;
}

}  // namespace sigma::server
