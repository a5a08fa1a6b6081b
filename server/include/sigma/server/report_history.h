// What the daemon knows of sealed reports: per (job, run, tap) the values later
// seals need (baselines, forecast points), the first successful generation
// (the default baseline), and the latest --history-cache-per-tap reports
// themselves; older reports are read back from SQLite (HistoryReader).
//
// One place decides what the gauges show: Record() says whether a report is
// its tap's highest generation (PublishReport it), and Replay() gives, after a
// restart, exactly the reports a running daemon would have published last.
//
// Thread-safety: one mutex (a leaf: nothing is called while holding it);
// SQLite reads happen outside it. A Staging overlay (one per seal batch, not
// thread-safe) lets the reports of one batch see each other before they are
// committed; seals of one tap must be staged and recorded by one thread at a
// time (the seal queue's lane of the tap's m guarantees it).
#ifndef SIGMA_SERVER_REPORT_HISTORY_H_
#define SIGMA_SERVER_REPORT_HISTORY_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "sigma/server/snapshot.h"
#include "sigma/server/storage.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

// The values of one sealed report later seals need (about 100 bytes), and
// the report itself while it is cached.
struct SealedEntry {
  ReportPtr report;  // null once evicted
  int32_t m = 0;
  bool failed = false;     // Cholesky failed: no values
  bool has_drift = false;  // baseline_generation >= 0
  double track1_upper = 0;
  double track2 = 0;
  double track2_ci_halfwidth = 0;
  double track2_pop_halfwidth = 0;
  double per_dim_track2_drift = 0;
  double drift_zscore = 0;
  bool low_confidence = false;   // n_A < 16 m
  bool trend_evaluated = false;  // z_drift is meaningful (not low confidence, has a drift)
};
SealedEntry EntryOf(const ReportPtr& report);

// Which history a seal compares against (runs, docs/server.md "Runs"): the
// job's `baseline_job` (default the seal's own job) and `baseline_run`
// (default: the seal's own run for its own job, run "1" of another job).
struct BaselineRef {
  std::string job;
  std::string run;
};
BaselineRef BaselineOf(const SnapshotKey& key, const sigma::v1::JobConfig& config);

// What a new report of (job, run, tap, generation) compares against (spec §3).
struct BaselineInputs {
  int64_t generation = -1;  // -1: no baseline yet
  std::string job;          // the baseline's job
  std::string run;          // the baseline's run
  bool self = false;        // the snapshot is its own baseline
  std::optional<SealedEntry> entry;  // its values (absent: unknown or evicted from the map)
  std::map<int64_t, double> drift_points;  // earlier generations with a drift: per-dim track2 drift
  // Every earlier sealed generation of the tap (failed ones too), for
  // early_warning_trend: whether its z_drift was evaluated, z_drift, per-dim drift.
  struct TrendPoint {
    bool evaluated = false;
    double z = 0;
    double per_dim_drift = 0;
  };
  std::map<int64_t, TrendPoint> trend_points;
};

// One tap's history: (job, run, tap).
struct TapKey {
  std::string job;
  std::string run;
  std::string tap;
  auto operator<=>(const TapKey&) const = default;
};
TapKey TapOf(const sigma::v1::GenerationReport& report);

class ReportHistory {
 public:
  // `reader` null: an in-memory database; every report stays cached.
  ReportHistory(int64_t cache_per_tap, std::unique_ptr<HistoryReader> reader);

  // Restart: records stored reports (in sealing order) and returns, per tap,
  // the reports to publish in order (the last successful one that was the
  // highest generation when it sealed, then the latest when that one failed).
  std::vector<ReportPtr> Replay(std::vector<sigma::v1::GenerationReport> reports);

  // Records a committed report; true when it is its tap's highest generation
  // in its run (the gauges show it when the run is the job's latest).
  bool Record(ReportPtr report);

  // Shared store (HistoryReader::shared): records the reports of (job, tap)
  // that other replicas committed and this daemon does not hold, as far as a
  // seal of generation `before` needs them (HistoryReader::SealWindow: the
  // `recent` latest earlier generations, the `with_drift` latest earlier ones
  // with a drift, the first successful one and `pinned`; -1: none). They are
  // not published to the gauges. One read of at most recent + with_drift + 2
  // reports whatever the history's length, outside mu_; a failed read changes
  // nothing and is returned (the seal cannot know its baseline). A no-op (OK)
  // for a store only this daemon writes.
  absl::Status CatchUp(const std::string& job, const std::string& run, const std::string& tap, int64_t before,
                       int recent, int with_drift, int64_t pinned);

  // DeleteJob: forgets every run and tap of `job` (the store rows are gone).
  void Forget(const std::string& job);
  // DeleteJob --run: forgets every tap of `run` of `job`.
  void ForgetRun(const std::string& job, const std::string& run);
  // What the gauges show of a run that becomes the job's latest again (DeleteJob
  // --run of the latest): per tap, its highest generation, preceded by the
  // latest successful one before it when that one failed (a failed seal keeps
  // the previous track values). Evicted reports are read from the store
  // (outside mu_); a report that cannot be read is left out.
  std::vector<ReportPtr> LatestReports(const std::string& job, const std::string& run) const;

  bool Contains(const SnapshotKey& key) const;
  // True when the tap has any sealed report (in any run).
  bool TapSealed(const std::string& job, const std::string& tap) const;
  // Sealed generations of the run (distinct over taps) and the highest (-1: none).
  int64_t Generations(const std::string& job, const std::string& run, int64_t* last) const;
  // One report: from the cache, else the store (NOT_FOUND when there is none;
  // a shared store is asked for reports this daemon does not know of).
  absl::StatusOr<ReportPtr> Read(const SnapshotKey& key) const;
  // Every report of the run (of `tap` when not empty), by generation then tap.
  absl::Status Reports(const std::string& job, const std::string& run, const std::string& tap,
                       std::vector<sigma::v1::GenerationReport>* out) const;

  // The overlay of one seal batch.
  class Staging {
   public:
    explicit Staging(const ReportHistory* history) : history_(history) {}
    // For a successful seal of `key`: the baseline (pinned `pinned`, else the
    // first successful generation of the tap in the `base` history, this one
    // when it is the first) and forecast points (of key's own run).
    BaselineInputs Resolve(const SnapshotKey& key, const BaselineRef& base, std::optional<int64_t> pinned) const;
    // Makes `report` visible to later Resolve calls of this batch.
    void Stage(const ReportPtr& report);

   private:
    std::optional<SealedEntry> Lookup(const TapKey& tap, int64_t g) const;
    const ReportHistory* history_;
    std::map<TapKey, std::map<int64_t, SealedEntry>> staged_;
    std::map<TapKey, int64_t> first_;
  };
  Staging Stage() const { return Staging(this); }

 private:
  struct Tap {
    std::optional<int64_t> first_sealed;  // default baseline: first successful seal
    std::map<int64_t, SealedEntry> reports;
    std::deque<int64_t> held;  // generations whose report is cached, in sealing order
  };
  void AddLocked(Tap& tap, ReportPtr report);  // mu_ held

  const int64_t cache_per_tap_;
  std::unique_ptr<HistoryReader> reader_;
  mutable std::mutex mu_;
  std::map<TapKey, Tap> taps_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_REPORT_HISTORY_H_
