// GetJob / GetReport block (issue 17 "Protocol"): the Engine's read paths for
// one job's effective settings and one sealed report. See scheduler.h for the
// threading rules: GetJob reads memory only under mu_; a report that may need
// the store is read on the task lane.
#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sigma/server/refusal.h"
#include "sigma/server/requests.h"
#include "sigma/server/scheduler.h"
#include "sigma/v1/wire.h"

namespace sigma::server {

namespace v1 = sigma::v1;
using absl::StatusCode;

namespace {

// A report that has not sealed (yet) is an answer, not a refusal of the
// request: NOT_FOUND without a reason, so polling clients are not counted in
// sigma_rejected_batches_total.
absl::Status NotSealed(const SnapshotKey& key, bool open) {
  return absl::NotFoundError(absl::StrCat("no sealed report of ", KeyString(key),
                                          open ? ": the snapshot is open (ranks are still sending)"
                                               : ": it has not sealed"));
}

}  // namespace

absl::Status Engine::GetJob(const v1::GetJobRequest& request, v1::JobInfo* info) {
  if (absl::Status s = ValidateNames(request.job(), nullptr); !s.ok()) return s;
  if (request.has_m() && (request.m() < 1 || request.m() > (1 << 20)))
    return Refusal(StatusCode::kInvalidArgument, "invalid_request",
                   absl::StrFormat("m must be in [1, 2^20], got %d", request.m()));
  std::lock_guard<std::mutex> lock(mu_);
  const JobState* job = registry_.Find(request.job());
  if (job == nullptr) return UnknownJob(request.job());
  int64_t last = -1;
  const int64_t generations = history_->Generations(request.job(), registry_.LatestRun(request.job()), &last);
  *info = registry_.Info(request.job(), *job, generations, last);
  if (request.has_m()) *info->mutable_config() = registry_.Effective(*job, request.m());
  // The job's open snapshots, in (tap, generation) order: params are fixed at open.
  const SnapshotKey first{request.job(), "", std::numeric_limits<int64_t>::min()};
  for (auto it = open_.lower_bound(first); it != open_.end() && it->first.job == request.job(); ++it) {
    auto tap = std::find_if(info->mutable_tap_info()->begin(), info->mutable_tap_info()->end(),
                            [&](const v1::TapInfo& t) { return t.tap() == it->first.tap; });
    if (tap == info->mutable_tap_info()->end()) continue;  // every open snapshot's tap is registered
    v1::OpenGeneration* open = tap->add_open();
    open->set_generation(it->first.generation);
    open->set_dtype(sigma::ToWireDType(it->second->params().dtype));
    open->set_world_size(it->second->params().world_size);
  }
  return absl::OkStatus();
}

void Engine::GetReport(const v1::GetReportRequest& request, ReportCallback done) {
  absl::StatusOr<SnapshotKey> valid = ValidateKey(request.job(), request.tap(), request.generation(), request.run());
  if (!valid.ok()) return done(valid.status(), nullptr);
  SnapshotKey key = *std::move(valid);
  bool open = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (registry_.Find(key.job) == nullptr) return done(UnknownJob(key.job), nullptr);
    if (request.run().empty()) key.run = registry_.LatestRun(key.job);
    open = open_.contains(key);
  }
  // Held in memory (the cache or its index): read on the task lane, as an
  // evicted report comes from the store. A shared store may hold a report
  // another replica sealed: asked on the task lane too.
  const bool held = history_->Contains(key);
  if (!held && !store_->shared()) return done(NotSealed(key, open), nullptr);
  queue_.EnqueueTask([this, key, open, held, done = std::move(done)] {
    absl::StatusOr<ReportPtr> report = ReadSealed(key, /*may_be_absent=*/!held);
    if (absl::IsNotFound(report.status())) return done(NotSealed(key, open), nullptr);
    if (!report.ok()) return done(report.status(), nullptr);
    done(absl::OkStatus(), *std::move(report));
  });
}

absl::StatusOr<ReportPtr> Engine::ReadSealed(const SnapshotKey& key, bool may_be_absent) const {
  absl::StatusOr<ReportPtr> report = history_->Read(key);
  if (report.ok() || (may_be_absent && absl::IsNotFound(report.status()))) return report;
  return absl::UnavailableError(
      absl::StrCat("reading the sealed report of ", KeyString(key), ": ", report.status().message()));
}

}  // namespace sigma::server
