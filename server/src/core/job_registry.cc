#include "sigma/server/job_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "sigma/server/refusal.h"

namespace sigma::server {

namespace v1 = sigma::v1;

v1::JobConfig JobRegistry::Effective(const JobState& job, int64_t m) const {
  return EffectiveJobConfig(MergeJobConfig(options_.job_defaults, job.config), m);
}

v1::JobConfig JobRegistry::Initial(const std::string& job, const v1::JobConfig& request) const {
  v1::JobConfig base;
  if (auto c = options_.job_configs.find(job); c != options_.job_configs.end()) base = c->second;
  return MergeJobConfig(base, request);
}

absl::StatusOr<v1::JobConfig> JobRegistry::AdmitOpen(const std::string& job, const std::string& tap, int32_t m,
                                                     const v1::JobConfig& request) const {
  auto it = jobs_.find(job);
  if (it != jobs_.end()) {
    auto t = it->second.taps.find(tap);
    if (t != it->second.taps.end()) {
      if (t->second != 0 && t->second != m)
        return Refusal(absl::StatusCode::kInvalidArgument, "dimension_mismatch",
                       absl::StrFormat("m = %d differs from m = %d of job '%s' tap '%s'", m, t->second, job, tap));
    } else if (static_cast<int64_t>(it->second.taps.size()) >= options_.max_taps_per_job) {
      return Refusal(absl::StatusCode::kResourceExhausted, "too_many_taps",
                     absl::StrFormat("job '%s' already has %d taps (--max-taps-per-job)", job,
                                     options_.max_taps_per_job));
    }
    if (it->second.finished_unix_ms > 0) {
      const std::string at = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(it->second.finished_unix_ms),
                                              absl::UTCTimeZone());
      return Refusal(absl::StatusCode::kFailedPrecondition, "job_finished",
                     absl::StrFormat("job '%s' is finished (FinishJob at %s): its history is kept and takes no new "
                                     "generation; send to a new job name, or delete it first to reuse the name "
                                     "(sigmactl delete-job --job %s, admin)",
                                     job, at, job));
    }
    return Effective(it->second, m);
  }
  if (static_cast<int64_t>(jobs_.size()) >= options_.max_jobs)
    return Refusal(absl::StatusCode::kResourceExhausted, "too_many_jobs",
                   absl::StrFormat("too many jobs: %d exist (--max-jobs = %d)", jobs_.size(), options_.max_jobs));
  JobState fresh;
  fresh.config = Initial(job, request);
  v1::JobConfig effective = Effective(fresh, m);
  // The configuration file's entry merged with the request.
  if (absl::Status s = ValidateThresholdOrder(effective.thresholds()); !s.ok())
    return Refusal(absl::StatusCode::kInvalidArgument, "invalid_request", s.message());
  return effective;
}

void JobRegistry::OpenSnapshot(const std::string& job, const std::string& tap, int32_t m,
                               const v1::JobConfig& request, const std::string& tenant) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) {
    JobState& fresh = Create(job);
    fresh.config = Initial(job, request);
    fresh.tenant = tenant;
    it = jobs_.find(job);
  }
  JobState& state = it->second;
  state.taps[tap] = m;
  if (state.m == 0) state.m = m;
  ++state.open_snapshots;
}

void JobRegistry::CloseSnapshot(const std::string& job, const std::string& tap, bool still_open_on_tap,
                                bool tap_sealed) {
  auto j = jobs_.find(job);
  if (j == jobs_.end()) return;
  JobState& state = j->second;
  --state.open_snapshots;
  auto t = state.taps.find(tap);
  if (t == state.taps.end() || tap_sealed || still_open_on_tap) return;
  t->second = 0;
  if (!state.has_sealed &&
      std::all_of(state.taps.begin(), state.taps.end(), [](const auto& e) { return e.second == 0; }))
    state.m = 0;
}

void JobRegistry::MarkSealed(const std::string& job, const std::string& run, uint64_t epoch) {
  if (auto j = jobs_.find(job); j != jobs_.end()) {
    j->second.has_sealed = true;
    NoteRun(job, run);
    j->second.sealed_runs.emplace(run, epoch);
  }
}

void JobRegistry::NoteTapDType(const std::string& job, const std::string& tap, v1::DType dtype) {
  if (auto j = jobs_.find(job); j != jobs_.end()) j->second.tap_dtypes[tap] = dtype;
}

absl::StatusOr<StoredJob> JobRegistry::PrepareConfigure(const std::string& job, const v1::JobConfig& request,
                                                        bool create) const {
  auto it = jobs_.find(job);
  JobState fresh;
  if (it == jobs_.end()) {
    if (!create && !options_.job_configs.contains(job))
      return Refusal(absl::StatusCode::kNotFound, "not_found",
                     absl::StrCat("unknown job '", job,
                                  "': ConfigureJob creates a job only when asked (create: true; sigmactl configure "
                                  "--create); check the name (sigmactl jobs)"));
    if (static_cast<int64_t>(jobs_.size()) >= options_.max_jobs)
      return Refusal(absl::StatusCode::kResourceExhausted, "too_many_jobs",
                     absl::StrFormat("too many jobs: %d exist (--max-jobs = %d)", jobs_.size(), options_.max_jobs));
    fresh.config = Initial(job, v1::JobConfig());
  }
  const JobState& current = it == jobs_.end() ? fresh : it->second;
  JobState updated = current;
  updated.config = MergeJobConfig(current.config, request);
  const v1::JobConfig a = Effective(current, current.m), b = Effective(updated, current.m);
  if (absl::Status s = ValidateThresholdOrder(b.thresholds()); !s.ok())
    return Refusal(absl::StatusCode::kInvalidArgument, "invalid_request", absl::StrCat("job '", job, "': ", s.message()));
  const bool sketch_changed = a.has_n_a() != b.has_n_a() || a.n_a() != b.n_a() || a.delta() != b.delta() ||
                              a.rho() != b.rho() || a.preprocessing() != b.preprocessing() || a.seed() != b.seed();
  if (sketch_changed && current.has_sealed)
    return Refusal(absl::StatusCode::kFailedPrecondition, "sketch_fixed",
                   absl::StrCat("job '", job,
                                "': sketch parameters (n_a, delta, rho, preprocessing, seed) are fixed once "
                                "a generation has sealed; thresholds and the baseline can change"));
  if (sketch_changed && current.open_snapshots > 0)
    return Refusal(absl::StatusCode::kFailedPrecondition, "sketch_fixed",
                   absl::StrCat("job '", job, "': sketch parameters cannot change while snapshots are open"));
  return Stored(job, updated);
}

void JobRegistry::ApplyConfigure(const StoredJob& updated, const std::string& tenant) {
  auto it = jobs_.find(updated.name);
  if (it == jobs_.end()) {
    Create(updated.name).tenant = tenant;
    it = jobs_.find(updated.name);
  }
  it->second.config = updated.config;
}

JobState& JobRegistry::Create(const std::string& job) {
  JobState& state = jobs_[job];
  state.incarnation = next_incarnation_++;
  return state;
}

StoredJob JobRegistry::Stored(const std::string& name, const JobState& job) {
  StoredJob s{name, job.config, job.m};
  s.finished_unix_ms = job.finished_unix_ms;
  s.created_unix_ms = job.stored_created_ms;  // a shared store refuses a row deleted since
  return s;
}

bool JobRegistry::NoteStored(const std::string& job, int64_t created, uint64_t epoch) {
  auto it = jobs_.find(job);
  if (it == jobs_.end() || created == 0) return false;
  if (it->second.stored_created_ms == 0) {
    it->second.stored_created_ms = created;
    it->second.stored_epoch = epoch;
  }
  return it->second.stored_created_ms == created;
}

bool JobRegistry::Finish(const std::string& job, int64_t unix_ms) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return false;
  if (it->second.finished_unix_ms == 0) it->second.finished_unix_ms = unix_ms;
  return true;
}

std::optional<JobState> JobRegistry::Remove(const std::string& job) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return std::nullopt;
  JobState state = std::move(it->second);
  jobs_.erase(it);
  return state;
}

void JobRegistry::MarkSeriesRemoved(const std::string& job) {
  if (auto it = jobs_.find(job); it != jobs_.end()) it->second.series_removed = true;
}

void JobRegistry::Restore(const StoredJob& job) {
  auto it = jobs_.find(job.name);
  JobState& state = it == jobs_.end() ? Create(job.name) : it->second;
  state.config = job.config;
  state.m = job.m;
  state.finished_unix_ms = std::max(state.finished_unix_ms, job.finished_unix_ms);
}

void JobRegistry::RestoreTap(const std::string& job, const std::string& tap, int32_t m) {
  auto it = jobs_.find(job);
  JobState& state = it == jobs_.end() ? Create(job) : it->second;
  state.taps[tap] = m;
  if (state.m == 0) state.m = m;
  state.has_sealed = true;
}

const JobState* JobRegistry::Find(const std::string& job) const {
  auto it = jobs_.find(job);
  return it == jobs_.end() ? nullptr : &it->second;
}

// ------------------------------------------------------------------- runs --

std::string JobRegistry::LatestRun(const std::string& job) const {
  const JobState* state = Find(job);
  return state == nullptr || state->runs.empty() ? std::string(kFirstRun) : state->runs.back();
}

void JobRegistry::NoteRun(const std::string& job, const std::string& run) {
  auto j = jobs_.find(job);
  if (j == jobs_.end()) return;
  std::vector<std::string>& runs = j->second.runs;
  if (std::find(runs.begin(), runs.end(), run) != runs.end()) return;
  runs.push_back(run);
  j->second.run_ids[run] = next_run_id_++;
}

uint64_t JobRegistry::RunId(const std::string& job, const std::string& run) const {
  const JobState* state = Find(job);
  if (state == nullptr) return 0;
  auto it = state->run_ids.find(run);
  return it == state->run_ids.end() ? 0 : it->second;
}

bool JobRegistry::RemoveRun(const std::string& job, const std::string& run) {
  auto j = jobs_.find(job);
  if (j == jobs_.end()) return false;
  std::vector<std::string>& runs = j->second.runs;
  auto it = std::find(runs.begin(), runs.end(), run);
  if (it == runs.end()) return false;
  runs.erase(it);
  j->second.sealed_runs.erase(run);
  j->second.run_ids.erase(run);
  return true;
}

absl::StatusOr<std::string> JobRegistry::ResolveRun(const std::string& job, const std::string& run,
                                                    v1::Resume resume) const {
  const JobState* state = Find(job);
  static const std::vector<std::string> kNone;
  const std::vector<std::string>& runs = state ? state->runs : kNone;
  const bool known = std::find(runs.begin(), runs.end(), run) != runs.end();
  const auto sealed = [&](const std::string& r) { return state && state->sealed_runs.contains(r); };
  switch (resume) {
    case v1::RESUME_MUST:
      if (run.empty() ? runs.empty() : !known)
        return Refusal(absl::StatusCode::kNotFound, "unknown_run",
                       absl::StrCat("job '", job, "' has no run '", run.empty() ? "(any)" : run,
                                    "' (resume = must): name an existing run, or use resume allow to create it"));
      return run.empty() ? runs.back() : run;
    case v1::RESUME_NEVER:
      if (!run.empty() && sealed(run))
        return Refusal(absl::StatusCode::kAlreadyExists, "run_exists",
                       absl::StrCat("job '", job, "' run '", run, "' has already sealed a generation (resume = never):",
                                    " name a new run, or leave the run unnamed to start the next one"));
      if (!run.empty()) return run;
      if (runs.empty()) return std::string(kFirstRun);
      if (!sealed(runs.back())) return runs.back();  // ranks of one new run join it
      for (int64_t n = static_cast<int64_t>(runs.size()) + 1;; ++n) {
        std::string next = absl::StrCat(n);
        if (std::find(runs.begin(), runs.end(), next) == runs.end()) return next;
      }
    default:  // allow
      if (!run.empty()) return run;
      return runs.empty() ? std::string(kFirstRun) : runs.back();
  }
}

v1::JobInfo JobRegistry::Info(const std::string& name, const JobState& job, int64_t generations, int64_t last) const {
  v1::JobInfo info;
  info.set_job(name);
  *info.mutable_config() = Effective(job, job.m);
  for (const auto& [tap, m] : job.taps) {
    info.add_taps(tap);
    v1::TapInfo* t = info.add_tap_info();
    t->set_tap(tap);
    t->set_m(m);
    if (auto d = job.tap_dtypes.find(tap); d != job.tap_dtypes.end()) t->set_dtype(d->second);
  }
  info.set_generations_sealed(generations);
  info.set_last_generation(last);
  info.set_m(job.m);
  info.set_finished(job.finished_unix_ms > 0);
  info.set_finished_unix_ms(job.finished_unix_ms);
  for (const std::string& run : job.runs) info.add_runs(run);
  info.set_run(job.runs.empty() ? std::string(kFirstRun) : job.runs.back());
  return info;
}

}  // namespace sigma::server
