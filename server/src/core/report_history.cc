#include "sigma/server/report_history.h"

#include <algorithm>
#include <iterator>
#include <set>

namespace sigma::server {

namespace v1 = sigma::v1;

SealedEntry EntryOf(const ReportPtr& r) {
  SealedEntry e;
  e.report = r;
  e.m = r->m();
  e.failed = r->flags().cholesky_failed();
  e.has_drift = r->baseline_generation() >= 0;
  e.track1_upper = r->track1_upper();
  e.track2 = r->track2();
  e.track2_ci_halfwidth = r->track2_ci_halfwidth();
  e.track2_pop_halfwidth = r->track2_pop_halfwidth();
  e.per_dim_track2_drift = r->per_dim().track2_drift();
  e.drift_zscore = r->drift_zscore();
  e.trend_evaluated = r->trend_evaluated();
  e.low_confidence = r->flags().low_confidence();
  return e;
}

TapKey TapOf(const v1::GenerationReport& r) { return {r.job(), StoredRun(r), r.tap()}; }

BaselineRef BaselineOf(const SnapshotKey& key, const v1::JobConfig& config) {
  BaselineRef b{config.baseline_job().empty() ? key.job : config.baseline_job(), config.baseline_run()};
  if (b.run.empty()) b.run = b.job == key.job ? key.run : std::string(kFirstRun);
  return b;
}

namespace {
// Adds an earlier generation's forecast and trend points (spec §3).
void AddPoint(int64_t g, const SealedEntry& p, BaselineInputs* in) {
  if (!p.failed && p.has_drift) in->drift_points[g] = p.per_dim_track2_drift;
  in->trend_points[g] = {p.trend_evaluated && !p.failed, p.drift_zscore, p.per_dim_track2_drift};
}
}  // namespace

ReportHistory::ReportHistory(int64_t cache_per_tap, std::unique_ptr<HistoryReader> reader)
    : cache_per_tap_(cache_per_tap), reader_(std::move(reader)) {}

void ReportHistory::AddLocked(Tap& tap, ReportPtr report) {
  const int64_t g = report->generation();
  if (!report->flags().cholesky_failed() && !tap.first_sealed) tap.first_sealed = g;
  tap.reports[g] = EntryOf(report);
  tap.held.push_back(g);
  // Evict the oldest cached reports beyond the cache, but never the tap's
  // highest generation (its report feeds the gauges). Without a reader every
  // report stays.
  const int64_t highest = tap.reports.rbegin()->first;
  size_t guard = tap.held.size();
  while (reader_ && static_cast<int64_t>(tap.held.size()) > cache_per_tap_ && guard-- > 0) {
    const int64_t old = tap.held.front();
    tap.held.pop_front();
    if (old == highest) {
      tap.held.push_back(old);
      continue;
    }
    if (auto it = tap.reports.find(old); it != tap.reports.end()) it->second.report.reset();
  }
}

bool ReportHistory::Record(ReportPtr report) {
  std::lock_guard<std::mutex> lock(mu_);
  Tap& tap = taps_[TapOf(*report)];
  const int64_t g = report->generation();
  AddLocked(tap, std::move(report));
  return tap.reports.rbegin()->first == g;
}

std::vector<ReportPtr> ReportHistory::Replay(std::vector<v1::GenerationReport> reports) {
  std::lock_guard<std::mutex> lock(mu_);
  // The track gauges a running daemon shows: those of the last successful
  // report that was the tap's highest generation when it sealed (a failed seal
  // publishes its alerts but keeps the previous track values).
  std::map<TapKey, ReportPtr> last_published_ok;
  for (v1::GenerationReport& r : reports) {
    Tap& tap = taps_[TapOf(r)];
    auto ptr = std::make_shared<const v1::GenerationReport>(std::move(r));
    const bool highest = tap.reports.empty() || tap.reports.rbegin()->first < ptr->generation();
    if (highest && !ptr->flags().cholesky_failed()) last_published_ok[TapOf(*ptr)] = ptr;
    AddLocked(tap, std::move(ptr));
  }
  std::vector<ReportPtr> publish;
  for (const auto& [key, tap] : taps_) {
    if (tap.reports.empty() || !tap.reports.rbegin()->second.report) continue;
    const ReportPtr& latest = tap.reports.rbegin()->second.report;
    if (latest->flags().cholesky_failed()) {
      if (auto ok = last_published_ok.find(key); ok != last_published_ok.end()) publish.push_back(ok->second);
    }
    publish.push_back(latest);
  }
  return publish;
}

absl::Status ReportHistory::CatchUp(const std::string& job, const std::string& run, const std::string& tap,
                                    int64_t before, int recent, int with_drift, int64_t pinned) {
  if (!reader_ || !reader_->shared()) return absl::OkStatus();
  std::vector<v1::GenerationReport> stored;  // by generation: the first successful one sets first_sealed
  if (auto s = reader_->SealWindow(job, run, tap, before, recent, with_drift, pinned, &stored); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  Tap& t = taps_[{job, run, tap}];
  for (v1::GenerationReport& r : stored) {
    if (!t.reports.contains(r.generation())) AddLocked(t, std::make_shared<const v1::GenerationReport>(std::move(r)));
  }
  return absl::OkStatus();
}

void ReportHistory::Forget(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = taps_.lower_bound({job, "", ""}); it != taps_.end() && it->first.job == job;) it = taps_.erase(it);
}

void ReportHistory::ForgetRun(const std::string& job, const std::string& run) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = taps_.lower_bound({job, run, ""}); it != taps_.end() && it->first.job == job && it->first.run == run;)
    it = taps_.erase(it);
}

std::vector<ReportPtr> ReportHistory::LatestReports(const std::string& job, const std::string& run) const {
  std::vector<SnapshotKey> keys;  // in publishing order
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = taps_.lower_bound({job, run, ""}); it != taps_.end() && it->first.job == job && it->first.run == run;
         ++it) {
      const std::map<int64_t, SealedEntry>& reports = it->second.reports;
      if (reports.empty()) continue;
      auto latest = std::prev(reports.end());
      if (latest->second.failed) {
        for (auto ok = std::make_reverse_iterator(latest); ok != reports.rend(); ++ok) {
          if (ok->second.failed) continue;
          keys.push_back({job, it->first.tap, ok->first, run});
          break;
        }
      }
      keys.push_back({job, it->first.tap, latest->first, run});
    }
  }
  std::vector<ReportPtr> out;
  for (const SnapshotKey& key : keys) {
    if (absl::StatusOr<ReportPtr> r = Read(key); r.ok()) out.push_back(*std::move(r));
  }
  return out;
}

bool ReportHistory::Contains(const SnapshotKey& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto t = taps_.find({key.job, key.run, key.tap});
  return t != taps_.end() && t->second.reports.contains(key.generation);
}

bool ReportHistory::TapSealed(const std::string& job, const std::string& tap) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = taps_.lower_bound({job, "", ""}); it != taps_.end() && it->first.job == job; ++it) {
    if (it->first.tap == tap && !it->second.reports.empty()) return true;
  }
  return false;
}

int64_t ReportHistory::Generations(const std::string& job, const std::string& run, int64_t* last) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<int64_t> generations;
  for (auto it = taps_.lower_bound({job, run, ""}); it != taps_.end() && it->first.job == job && it->first.run == run;
       ++it) {
    for (const auto& [g, e] : it->second.reports) generations.insert(g);
  }
  *last = generations.empty() ? -1 : *generations.rbegin();
  return static_cast<int64_t>(generations.size());
}

absl::StatusOr<ReportPtr> ReportHistory::Read(const SnapshotKey& key) const {
  const int64_t generation = key.generation;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto t = taps_.find({key.job, key.run, key.tap});
    const bool held = t != taps_.end() && t->second.reports.contains(generation);
    // A shared store may hold what another replica sealed (GetReport).
    if (!held && !(reader_ && reader_->shared())) return absl::NotFoundError("no sealed report");
    if (held) {
      if (ReportPtr r = t->second.reports.at(generation).report) return r;
    }
  }
  if (!reader_) return absl::UnavailableError("the history database is not open");
  absl::StatusOr<v1::GenerationReport> r = reader_->Report(key.job, key.run, key.tap, generation);
  if (!r.ok()) return r.status();
  return std::make_shared<const v1::GenerationReport>(*std::move(r));
}

absl::Status ReportHistory::Reports(const std::string& job, const std::string& run, const std::string& tap,
                                    std::vector<v1::GenerationReport>* out) const {
  // From SQLite (every report there was committed before any client heard of
  // it), without holding mu_: sealing goes on meanwhile.
  if (reader_) return reader_->Reports(job, run, tap, out);
  std::vector<ReportPtr> held;  // in-memory database: every report is cached
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = taps_.lower_bound({job, run, ""});
         it != taps_.end() && it->first.job == job && it->first.run == run; ++it) {
      if (!tap.empty() && tap != it->first.tap) continue;
      for (const auto& [g, e] : it->second.reports) held.push_back(e.report);
    }
  }
  std::stable_sort(held.begin(), held.end(), [](const ReportPtr& a, const ReportPtr& b) {
    return a->generation() != b->generation() ? a->generation() < b->generation() : a->tap() < b->tap();
  });
  for (const ReportPtr& r : held) out->push_back(*r);
  return absl::OkStatus();
}

// ----------------------------------------------------------------- Staging --

std::optional<SealedEntry> ReportHistory::Staging::Lookup(const TapKey& tap, int64_t g) const {
  if (auto s = staged_.find(tap); s != staged_.end()) {
    if (auto r = s->second.find(g); r != s->second.end()) return r->second;
  }
  std::lock_guard<std::mutex> lock(history_->mu_);
  auto t = history_->taps_.find(tap);
  if (t == history_->taps_.end()) return std::nullopt;
  auto r = t->second.reports.find(g);
  if (r == t->second.reports.end()) return std::nullopt;
  return r->second;
}

BaselineInputs ReportHistory::Staging::Resolve(const SnapshotKey& key, const BaselineRef& base,
                                               std::optional<int64_t> pinned) const {
  BaselineInputs in;
  in.job = base.job;
  in.run = base.run;
  const TapKey own{key.job, key.run, key.tap};
  const TapKey other{base.job, base.run, key.tap};
  std::optional<int64_t> first;
  {
    std::lock_guard<std::mutex> lock(history_->mu_);
    if (auto t = history_->taps_.find(other); t != history_->taps_.end()) first = t->second.first_sealed;
    if (auto t = history_->taps_.find(own); t != history_->taps_.end()) {
      for (const auto& [g, p] : t->second.reports)
        if (g < key.generation) AddPoint(g, p, &in);
    }
  }
  if (!first) {
    if (auto f = first_.find(other); f != first_.end()) first = f->second;
  }
  if (!first && other == own) first = key.generation;  // this successful seal is the tap's first
  if (auto s = staged_.find(own); s != staged_.end()) {
    for (const auto& [g, p] : s->second)
      if (g < key.generation) AddPoint(g, p, &in);
  }
  const std::optional<int64_t> bgen = pinned ? pinned : first;
  if (!bgen) return in;
  in.generation = *bgen;
  in.self = other == own && *bgen == key.generation;
  if (!in.self) in.entry = Lookup(other, *bgen);
  return in;
}

void ReportHistory::Staging::Stage(const ReportPtr& report) {
  const TapKey key = TapOf(*report);
  staged_[key][report->generation()] = EntryOf(report);
  if (report->flags().cholesky_failed() || first_.contains(key)) return;
  std::lock_guard<std::mutex> lock(history_->mu_);
  auto t = history_->taps_.find(key);
  if (t == history_->taps_.end() || !t->second.first_sealed) first_[key] = report->generation();
}

}  // namespace sigma::server
