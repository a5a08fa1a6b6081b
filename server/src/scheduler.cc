#include "sigma/server/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sigma/kernels/dtype.h"
#include "sigma/kernels/estimator.h"
#include "sigma/kernels/preprocess.h"
#include "sigma/kernels/routed_backend.h"
#include "sigma/kernels/sketch.h"

namespace sigma::server {

using grpc::Status;
using grpc::StatusCode;
namespace v1 = sigma::v1;

namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::optional<sigma::DType> MapDType(v1::DType d) {
  switch (d) {
    case v1::DTYPE_FP32: return sigma::DType::kFloat32;
    case v1::DTYPE_FP16: return sigma::DType::kFloat16;
    case v1::DTYPE_BF16: return sigma::DType::kBFloat16;
    case v1::DTYPE_FP64: return sigma::DType::kFloat64;
    default: return std::nullopt;
  }
}

sigma::Preprocessing MapPrep(v1::Preprocessing p) {
  return p == v1::PREPROCESSING_NONE ? sigma::Preprocessing::kNone : sigma::Preprocessing::kL2;
}

std::string KeyString(const SnapshotKey& k) {
  return absl::StrFormat("job '%s' tap '%s' generation %d", k.job, k.tap, k.generation);
}

sigma::AlertThresholds Thresholds(const v1::JobConfig& effective) {
  sigma::AlertThresholds t;
  t.drift_warning = effective.thresholds().drift_warning();
  t.drift_critical = effective.thresholds().drift_critical();
  t.divergence_warning = effective.thresholds().divergence_warning();
  t.track1_stable = effective.thresholds().track1_stable();
  return t;
}


}  // namespace

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (unsigned char c : name) {
    if (!(std::isalnum(c) || c == '_' || c == '.' || c == ':' || c == '-')) return false;
  }
  return true;
}

// The batch seqs one rank has sent, as disjoint runs [first, last] (a client
// numbering 0, 1, 2, ... holds one run whatever the batch count). Each run is
// charged kBytesPerRun against --max-memory-bytes, so a client sending sparse
// seqs cannot grow the daemon without bound. Not thread-safe (Snapshot::mu).
class SeqRuns {
 public:
  static constexpr int64_t kBytesPerRun = 64;  // a std::map node, rounded up

  bool contains(int64_t seq) const {
    auto it = runs_.upper_bound(seq);  // first run starting after seq
    return it != runs_.begin() && std::prev(it)->second >= seq;
  }
  // Change in the number of runs that insert(seq) would make: +1 (a new run),
  // 0 (extends one) or -1 (joins two). seq must not be contained.
  int RunDelta(int64_t seq) const {
    auto next = runs_.upper_bound(seq);
    const bool joins_prev = next != runs_.begin() && std::prev(next)->second == seq - 1;
    const bool joins_next = next != runs_.end() && next->first == seq + 1;
    return joins_prev && joins_next ? -1 : (joins_prev || joins_next ? 0 : 1);
  }
  void insert(int64_t seq) {
    auto next = runs_.upper_bound(seq);
    const bool joins_next = next != runs_.end() && next->first == seq + 1;
    const int64_t last = joins_next ? next->second : seq;
    if (joins_next) next = runs_.erase(next);
    if (next != runs_.begin() && std::prev(next)->second == seq - 1) {
      std::prev(next)->second = last;
    } else {
      runs_.emplace_hint(next, seq, last);
    }
  }
  size_t runs() const { return runs_.size(); }

 private:
  std::map<int64_t, int64_t> runs_;  // first -> last, disjoint, not adjacent
};

struct RankState {
  SeqRuns seqs;
  int64_t rows = 0;  // accepted rows, in stream order (default sample ids)
  bool finished = false;
  std::optional<v1::EndOfShare> end;
  sigma::EnergyStats energy;  // computed from the rows sent
};

struct Snapshot {
  enum State { kOpen, kSealing, kSealed, kFailed };

  SnapshotKey key;
  int32_t m = 0;
  sigma::DType dtype = sigma::DType::kFloat32;
  int32_t world_size = 1;
  std::optional<int64_t> corpus_size;
  v1::JobConfig config;  // effective, captured at open
  sigma::Preprocessing prep = sigma::Preprocessing::kL2;
  double rho = 1, delta = 1e-6;
  int64_t k = 0;
  size_t row_bytes = 0;

  std::mutex mu;
  State state = kOpen;
  std::unique_ptr<sigma::BottomKSketch> sketch;
  std::vector<uint8_t> rows;  // sketch slots, row_bytes each, wire dtype
  int64_t memory_accounted = 0;
  std::vector<RankState> ranks;
  int32_t finished = 0;
  int64_t total_rows = 0;
  bool closed_explicitly = false;
  std::chrono::steady_clock::time_point seal_requested;
  std::vector<ReportCallback> waiters;
  ReportPtr report;
  Status error;
};

struct Engine::SealWork {
  std::shared_ptr<Snapshot> snap;
  std::vector<uint8_t> rows;
  sigma::SealInput input;
  sigma::EnergyStats energy;
  double n = 0;
  int32_t ranks_finished = 0;
  bool closed_explicitly = false;
  sigma::SealMoments moments;
  Status error;
  ReportPtr report;
};

Engine::Engine(DaemonOptions options, std::unique_ptr<Store> store,
               std::unique_ptr<sigma::Backend> backend, Metrics* metrics)
    : options_(std::move(options)),
      store_(std::move(store)),
      backend_(std::move(backend)),
      backend_name_(backend_->name()),
      metrics_(metrics) {}

Engine::~Engine() { StopWorker(); }

Status Engine::Reject(const char* reason, StatusCode code, const std::string& message) {
  metrics_->Rejected(reason);
  return Status(code, message);
}

v1::JobConfig Engine::JobEffective(const JobState& job, int64_t m) const {
  return EffectiveJobConfig(MergeJobConfig(options_.job_defaults, job.config), m);
}

// ---------------------------------------------------------------- restore --

namespace {

// The values of a report later seals need (baseline, forecast).
Engine::SealedEntry EntryOf(const ReportPtr& r) {
  Engine::SealedEntry e;
  e.report = r;
  e.m = r->m();
  e.failed = r->flags().cholesky_failed();
  e.has_drift = r->baseline_generation() >= 0;
  e.track1_upper = r->track1_upper();
  e.track2 = r->track2();
  e.track2_ci_halfwidth = r->track2_ci_halfwidth();
  e.per_dim_track2_drift = r->per_dim().track2_drift();
  return e;
}

}  // namespace

void Engine::AddSealed(TapState& tap, ReportPtr report) {
  const int64_t g = report->generation();
  tap.reports[g] = EntryOf(report);
  tap.held.push_back(g);
  // Evict the oldest held reports beyond the cache, but never the tap's
  // highest generation (its report feeds the gauges).
  const int64_t highest = tap.reports.rbegin()->first;
  size_t guard = tap.held.size();
  while (history_ && static_cast<int64_t>(tap.held.size()) > options_.history_cache_per_tap && guard-- > 0) {
    const int64_t old = tap.held.front();
    tap.held.pop_front();
    if (old == highest) {
      tap.held.push_back(old);
      continue;
    }
    if (auto it = tap.reports.find(old); it != tap.reports.end()) it->second.report.reset();
  }
}

absl::StatusOr<ReportPtr> Engine::SealedReport(const std::string& job, const std::string& tap,
                                               const SealedEntry& entry, int64_t generation) {
  if (entry.report) return entry.report;
  if (!history_) return absl::UnavailableError("the history database is not open");
  absl::StatusOr<v1::GenerationReport> r = history_->Report(job, tap, generation);
  if (!r.ok()) return r.status();
  return std::make_shared<const v1::GenerationReport>(*std::move(r));
}

absl::Status Engine::Restore() {
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  if (auto s = store_->LoadAll(&jobs, &reports); !s.ok()) return s;
  // An in-memory database (":memory:", the fuzz targets) cannot be opened a
  // second time: then every report stays in memory and history is served from it.
  if (options_.db != ":memory:") {
    absl::StatusOr<std::unique_ptr<HistoryReader>> reader = HistoryReader::Open(options_.db);
    if (!reader.ok()) return reader.status();
    history_ = std::move(*reader);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (StoredJob& j : jobs) {
    JobState& js = jobs_[j.name];
    js.config = std::move(j.config);
    js.m = j.m;
  }
  // The track gauges a running daemon shows: those of the last successful
  // report that was the tap's highest generation when it sealed (a failed seal
  // publishes its alerts but keeps the previous track values), replayed here in
  // sealing order.
  std::map<std::pair<std::string, std::string>, ReportPtr> last_published_ok;
  for (v1::GenerationReport& r : reports) {
    JobState& js = jobs_[r.job()];
    TapState& tap = js.taps[r.tap()];
    tap.m = r.m();
    if (js.m == 0) js.m = r.m();
    js.has_sealed = true;
    if (!r.flags().cholesky_failed() && !tap.first_sealed) tap.first_sealed = r.generation();
    auto ptr = std::make_shared<const v1::GenerationReport>(std::move(r));
    metrics_->CountSeal(*ptr);
    const bool highest = tap.reports.empty() || tap.reports.rbegin()->first < ptr->generation();
    if (highest && !ptr->flags().cholesky_failed()) last_published_ok[{ptr->job(), ptr->tap()}] = ptr;
    AddSealed(tap, std::move(ptr));
  }
  reports.clear();
  reports.shrink_to_fit();
  for (const auto& [name, js] : jobs_) {
    for (const auto& [tap_name, tap] : js.taps) {
      if (tap.reports.empty() || !tap.reports.rbegin()->second.report) continue;
      const ReportPtr& latest = tap.reports.rbegin()->second.report;
      const sigma::AlertThresholds t = Thresholds(JobEffective(js, tap.m));
      if (latest->flags().cholesky_failed()) {
        if (auto ok = last_published_ok.find({name, tap_name}); ok != last_published_ok.end())
          metrics_->PublishReport(*ok->second, t);
      }
      metrics_->PublishReport(*latest, t);
    }
  }
  metrics_->SetJobs(static_cast<int64_t>(jobs_.size()));
  metrics_->SetOpenSnapshots(0);
  metrics_->SetQueueDepth(0);
  metrics_->SetMemoryBytes(0);
  return absl::OkStatus();
}

// ------------------------------------------------------------------ ingest --

Status Engine::Open(const v1::OpenSnapshot& open, IngestSession* session) {
  if (session->opened)
    return Reject("invalid_request", StatusCode::FAILED_PRECONDITION,
                  "OpenSnapshot sent twice in one Ingest stream (one stream carries one rank's share)");
  const std::string tap_name = open.tap().empty() ? "default" : open.tap();
  if (!ValidName(open.job()))
    return Reject("invalid_name", StatusCode::INVALID_ARGUMENT,
                  absl::StrCat("invalid job name '", open.job().substr(0, 200),
                               "': must match [A-Za-z0-9_.:-]{1,128}"));
  if (!ValidName(tap_name))
    return Reject("invalid_name", StatusCode::INVALID_ARGUMENT,
                  absl::StrCat("invalid tap name '", tap_name.substr(0, 200),
                               "': must match [A-Za-z0-9_.:-]{1,128}"));
  if (open.generation() < 0)
    return Reject("invalid_request", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("generation must be >= 0, got %d", open.generation()));
  if (open.world_size() < 1 || open.world_size() > 65536)
    return Reject("invalid_rank", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("world_size must be in [1, 65536], got %d", open.world_size()));
  if (open.rank() < 0 || open.rank() >= open.world_size())
    return Reject("invalid_rank", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("rank must be in [0, world_size = %d), got %d", open.world_size(),
                                  open.rank()));
  if (open.m() < 1 || open.m() > (1 << 20))
    return Reject("dimension_mismatch", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("m must be in [1, 2^20], got %d", open.m()));
  if (open.m() > options_.max_m)
    return Reject("m_too_large", StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrFormat("m = %d exceeds --max-m = %d", open.m(), options_.max_m));
  // The seal works on m x m float64 matrices (the Gram matrix and its shifted
  // factors, about 4 of them): a dimension whose seal could never fit in the
  // memory budget is refused here, before rows are taken.
  if (const int64_t seal_bytes = int64_t{32} * open.m() * open.m(); seal_bytes > options_.max_memory_bytes)
    return Reject("memory_exhausted", StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrFormat("m = %d needs about %d bytes to seal (4 m x m float64 matrices) > "
                                  "--max-memory-bytes = %d",
                                  open.m(), seal_bytes, options_.max_memory_bytes));
  const std::optional<sigma::DType> dtype = MapDType(open.dtype());
  if (!dtype)
    return Reject("invalid_dtype", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("unknown dtype %d (%s): use DTYPE_FP32, DTYPE_FP16, DTYPE_BF16 or DTYPE_FP64",
                                  static_cast<int>(open.dtype()), v1::DType_Name(open.dtype())));
  if (open.has_corpus_size() && open.corpus_size() < 1)
    return Reject("invalid_request", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("corpus_size must be >= 1, got %d", open.corpus_size()));
  if (auto s = ValidateJobConfig(open.config()); !s.ok())
    return Reject("invalid_request", StatusCode::INVALID_ARGUMENT, std::string(s.message()));
  if (!open.config().baseline_job().empty() && !ValidName(open.config().baseline_job()))
    return Reject("invalid_name", StatusCode::INVALID_ARGUMENT, "invalid config.baseline_job name");

  const SnapshotKey key{open.job(), tap_name, open.generation()};
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = open_.find(key); it != open_.end()) {
    std::shared_ptr<Snapshot> snap = it->second;
    std::lock_guard<std::mutex> slock(snap->mu);
    if (open.world_size() != snap->world_size)
      return Reject("invalid_rank", StatusCode::FAILED_PRECONDITION,
                    absl::StrFormat("world_size %d differs from %d declared by the other ranks of %s",
                                    open.world_size(), snap->world_size, KeyString(key)));
    if (open.m() != snap->m)
      return Reject("dimension_mismatch", StatusCode::INVALID_ARGUMENT,
                    absl::StrFormat("m = %d differs from m = %d of %s", open.m(), snap->m, KeyString(key)));
    if (*dtype != snap->dtype)
      return Reject("invalid_dtype", StatusCode::INVALID_ARGUMENT,
                    absl::StrFormat("dtype %s differs from %s used by the other ranks of %s",
                                    v1::DType_Name(open.dtype()), sigma::DTypeName(snap->dtype),
                                    KeyString(key)));
    if (open.has_corpus_size()) {
      if (snap->corpus_size && *snap->corpus_size != open.corpus_size())
        return Reject("invalid_request", StatusCode::INVALID_ARGUMENT,
                      absl::StrFormat("corpus_size %d differs from %d declared by another rank",
                                      open.corpus_size(), *snap->corpus_size));
      if (!snap->corpus_size) {
        if (open.corpus_size() < snap->total_rows)
          return Reject("corpus_exceeded", StatusCode::INVALID_ARGUMENT,
                        absl::StrFormat("corpus_size %d is smaller than the %d rows already streamed",
                                        open.corpus_size(), snap->total_rows));
        snap->corpus_size = open.corpus_size();
      }
    }
    session->snapshot = snap;
    session->rank = open.rank();
    session->opened = true;
    return Status::OK;
  }

  auto job_it = jobs_.find(open.job());
  if (job_it != jobs_.end()) {
    auto tap_it = job_it->second.taps.find(tap_name);
    if (tap_it != job_it->second.taps.end()) {
      if (auto r = tap_it->second.reports.find(open.generation()); r != tap_it->second.reports.end()) {
        // Already sealed: a retry. Batches are ignored; the response carries the report.
        absl::StatusOr<ReportPtr> report = SealedReport(open.job(), tap_name, r->second, open.generation());
        if (!report.ok())
          return Status(StatusCode::UNAVAILABLE,
                        absl::StrCat("reading the sealed report of ", KeyString(key), ": ", report.status().message()));
        session->sealed_report = *std::move(report);
        session->rank = open.rank();
        session->opened = true;
        return Status::OK;
      }
      if (tap_it->second.m != 0 && tap_it->second.m != open.m())
        return Reject("dimension_mismatch", StatusCode::INVALID_ARGUMENT,
                      absl::StrFormat("m = %d differs from m = %d of job '%s' tap '%s'", open.m(),
                                      tap_it->second.m, open.job(), tap_name));
    } else if (static_cast<int64_t>(job_it->second.taps.size()) >= options_.max_taps_per_job) {
      return Reject("too_many_taps", StatusCode::RESOURCE_EXHAUSTED,
                    absl::StrFormat("job '%s' already has %d taps (--max-taps-per-job)", open.job(),
                                    options_.max_taps_per_job));
    }
  } else if (static_cast<int64_t>(jobs_.size()) >= options_.max_jobs) {
    return Reject("too_many_jobs", StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrFormat("too many jobs: %d exist (--max-jobs = %d)", jobs_.size(),
                                  options_.max_jobs));
  }
  if (static_cast<int64_t>(open_.size()) >= options_.max_open_snapshots)
    return Reject("too_many_open_snapshots", StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrFormat("too many open snapshots: %d (--max-open-snapshots)",
                                  options_.max_open_snapshots));

  const bool new_job = job_it == jobs_.end();
  JobState fresh;
  if (new_job) {
    v1::JobConfig base;
    if (auto c = options_.job_configs.find(open.job()); c != options_.job_configs.end()) base = c->second;
    fresh.config = MergeJobConfig(base, open.config());
  }
  const v1::JobConfig effective = JobEffective(new_job ? fresh : job_it->second, open.m());
  if (new_job) {  // the configuration file's entry merged with the request's
    if (absl::Status s = ValidateThresholdOrder(effective.thresholds()); !s.ok())
      return Reject("invalid_request", StatusCode::INVALID_ARGUMENT, std::string(s.message()));
  }
  // The sketch's bookkeeping (heap + id map) is reserved up front; rows are
  // accounted as they arrive (Batch).
  const int64_t sketch_bytes = effective.n_a() * 48;
  const int64_t held = memory_bytes_.fetch_add(sketch_bytes);
  if (held + sketch_bytes > options_.max_memory_bytes) {
    memory_bytes_.fetch_sub(sketch_bytes);
    return Reject("memory_exhausted", StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrFormat("the sketch of n_a = %d would bring open snapshots to %d bytes > "
                                  "--max-memory-bytes = %d",
                                  effective.n_a(), held + sketch_bytes, options_.max_memory_bytes));
  }
  if (new_job) {
    job_it = jobs_.emplace(open.job(), std::move(fresh)).first;
    metrics_->SetJobs(static_cast<int64_t>(jobs_.size()));
  }
  JobState& job = job_it->second;
  TapState& tap = job.taps[tap_name];
  tap.m = open.m();
  if (job.m == 0) job.m = open.m();

  auto snap = std::make_shared<Snapshot>();
  snap->key = key;
  snap->m = open.m();
  snap->dtype = *dtype;
  snap->world_size = open.world_size();
  if (open.has_corpus_size()) snap->corpus_size = open.corpus_size();
  snap->memory_accounted = sketch_bytes;
  snap->config = effective;
  snap->prep = MapPrep(snap->config.preprocessing());
  snap->rho = snap->config.rho();
  snap->delta = snap->config.delta();
  snap->k = snap->config.n_a();
  snap->row_bytes = static_cast<size_t>(open.m()) * sigma::DTypeWidth(*dtype);
  snap->sketch = std::make_unique<sigma::BottomKSketch>(snap->config.seed(), snap->k);
  snap->ranks.resize(static_cast<size_t>(open.world_size()));
  open_.emplace(key, snap);
  ++job.open_snapshots;
  metrics_->SetOpenSnapshots(static_cast<int64_t>(open_.size()));
  metrics_->SetMemoryBytes(memory_bytes_.load());

  session->snapshot = snap;
  session->rank = open.rank();
  session->opened = true;
  return Status::OK;
}

bool Engine::IsDuplicate(const IngestSession& session, int64_t seq) const {
  if (!session.opened || session.ended) return false;
  if (session.sealed_report) return true;
  Snapshot& snap = *session.snapshot;
  std::lock_guard<std::mutex> slock(snap.mu);
  return snap.state != Snapshot::kOpen || snap.ranks[static_cast<size_t>(session.rank)].seqs.contains(seq);
}

Status Engine::Batch(IngestSession* session, const v1::Batch& batch) {
  if (!session->opened)
    return Reject("not_open", StatusCode::FAILED_PRECONDITION, "Batch before OpenSnapshot");
  if (session->ended)
    return Reject("invalid_request", StatusCode::FAILED_PRECONDITION, "Batch after EndOfShare");
  v1::IngestResponse& resp = session->response;
  if (session->sealed_report) {
    resp.set_batches_duplicate(resp.batches_duplicate() + 1);
    return Status::OK;
  }
  Snapshot& snap = *session->snapshot;
  RankState* rank = &snap.ranks[static_cast<size_t>(session->rank)];
  {
    std::lock_guard<std::mutex> slock(snap.mu);
    if (snap.state != Snapshot::kOpen || rank->seqs.contains(batch.seq())) {
      resp.set_batches_duplicate(resp.batches_duplicate() + 1);
      return Status::OK;
    }
  }
  const int64_t rows = batch.rows();
  const std::string where = absl::StrFormat("batch seq %d of rank %d", batch.seq(), session->rank);
  if (batch.seq() < 0)
    return Reject("invalid_request", StatusCode::INVALID_ARGUMENT, where + ": seq must be >= 0");
  if (rows <= 0)
    return Reject("empty_batch", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("%s: rows must be >= 1, got %d", where, rows));
  if (rows > options_.max_rows_per_batch)
    return Reject("too_many_rows", StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrFormat("%s: %d rows exceed --max-rows-per-batch = %d; send smaller batches", where,
                                  rows, options_.max_rows_per_batch));
  const int64_t payload = BatchPayloadBytes(batch);
  if (payload > options_.max_message_bytes)
    return Reject("too_large", StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrFormat("%s: %d payload bytes exceed --max-message-bytes = %d; send smaller batches",
                                  where, payload, options_.max_message_bytes));
  const int64_t width = static_cast<int64_t>(sigma::DTypeWidth(snap.dtype));
  const bool fits = rows <= options_.max_message_bytes / static_cast<int64_t>(snap.row_bytes) + 1;
  if (!fits || static_cast<int64_t>(batch.data().size()) != rows * static_cast<int64_t>(snap.row_bytes))
    return Reject("size_mismatch", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("%s: data has %d bytes, expected rows (%d) x m (%d) x %d bytes (%s) = %s",
                                  where, batch.data().size(), rows, snap.m, width,
                                  sigma::DTypeName(snap.dtype),
                                  fits ? absl::StrCat(rows * static_cast<int64_t>(snap.row_bytes))
                                       : std::string("too many")));
  if (batch.sample_ids_size() != 0 && batch.sample_ids_size() != rows)
    return Reject("sample_ids_mismatch", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("%s: %d sample_ids for %d rows (send none or one per row)", where,
                                  batch.sample_ids_size(), rows));
  // One pass: NaN/Inf check (CheckFinite names the element) and the energies.
  const sigma::RowBlock block{batch.data().data(), snap.dtype, rows, snap.m};
  sigma::EnergyStats energy;
  if (absl::Status s = BatchEnergy(block, snap.prep, snap.rho, &energy); !s.ok())
    return Reject("non_finite", StatusCode::INVALID_ARGUMENT, absl::StrCat(where, ": ", s.message()));

  std::lock_guard<std::mutex> slock(snap.mu);
  if (snap.state != Snapshot::kOpen || rank->seqs.contains(batch.seq())) {
    resp.set_batches_duplicate(resp.batches_duplicate() + 1);
    return Status::OK;
  }
  if (rank->finished)
    return Reject("finished_rank", StatusCode::FAILED_PRECONDITION,
                  absl::StrFormat("%s: rank %d already sent EndOfShare for %s", where, session->rank,
                                  KeyString(snap.key)));
  if (snap.corpus_size && snap.total_rows + rows > *snap.corpus_size)
    return Reject("corpus_exceeded", StatusCode::INVALID_ARGUMENT,
                  absl::StrFormat("%s: %d rows would exceed the declared corpus_size %d (%d streamed)",
                                  where, rows, *snap.corpus_size, snap.total_rows));
  // Memory: the row store grows to at most min(k, kept + rows) slots; the
  // rank's seq runs by at most one (a run joining two gives its bytes back).
  const size_t rb = snap.row_bytes;
  const size_t needed = static_cast<size_t>(std::min<int64_t>(snap.k, snap.sketch->size() + rows)) * rb;
  size_t new_capacity = snap.rows.capacity();
  if (needed > snap.rows.capacity())
    new_capacity = std::min(static_cast<size_t>(snap.k) * rb, std::max(needed, 2 * snap.rows.capacity()));
  const int64_t growth = static_cast<int64_t>(new_capacity - snap.rows.capacity()) +
                         rank->seqs.RunDelta(batch.seq()) * SeqRuns::kBytesPerRun;
  if (growth != 0) {
    const int64_t before = memory_bytes_.fetch_add(growth);
    if (growth > 0 && before + growth > options_.max_memory_bytes) {
      memory_bytes_.fetch_sub(growth);
      return Reject("memory_exhausted", StatusCode::RESOURCE_EXHAUSTED,
                    absl::StrFormat("%s: open snapshots would hold %d bytes > --max-memory-bytes = %d",
                                    where, before + growth, options_.max_memory_bytes));
    }
    snap.rows.reserve(new_capacity);
    snap.memory_accounted += growth;
    metrics_->SetMemoryBytes(memory_bytes_.load());
  }
  const uint8_t* data = reinterpret_cast<const uint8_t*>(batch.data().data());
  for (int64_t i = 0; i < rows; ++i) {
    const uint64_t id = batch.sample_ids_size() != 0
                            ? batch.sample_ids(static_cast<int>(i))
                            : sigma::DefaultSampleId(session->rank, rank->rows + i);
    const int64_t slot = snap.sketch->Offer(id);
    if (slot < 0) continue;
    const size_t end = static_cast<size_t>(slot + 1) * rb;
    if (snap.rows.size() < end) snap.rows.resize(end);
    std::memcpy(snap.rows.data() + static_cast<size_t>(slot) * rb, data + static_cast<size_t>(i) * rb, rb);
  }
  rank->seqs.insert(batch.seq());
  rank->rows += rows;
  rank->energy.Merge(energy);
  snap.total_rows += rows;
  resp.set_batches_accepted(resp.batches_accepted() + 1);
  resp.set_rows_accepted(resp.rows_accepted() + rows);
  metrics_->Ingested(static_cast<int64_t>(batch.data().size()), rows);
  return Status::OK;
}

void Engine::EndShare(IngestSession* session, const v1::EndOfShare* end,
                      std::function<void(const Status&, const v1::IngestResponse&)> done) {
  if (!session->opened) {
    done(Reject("not_open", StatusCode::FAILED_PRECONDITION,
                end ? "EndOfShare before OpenSnapshot" : "stream ended before OpenSnapshot"),
         session->response);
    return;
  }
  if (session->ended) {
    done(Reject("invalid_request", StatusCode::FAILED_PRECONDITION, "EndOfShare sent twice"),
         session->response);
    return;
  }
  session->ended = true;
  auto respond_with_report = [session, done](const Status& s, ReportPtr report) {
    v1::IngestResponse resp = session->response;
    if (s.ok() && report) {
      resp.set_sealed(true);
      *resp.mutable_report() = *report;
    }
    done(s, resp);
  };
  if (session->sealed_report) {
    respond_with_report(Status::OK, session->sealed_report);
    return;
  }
  std::shared_ptr<Snapshot> snap = session->snapshot;
  RankState& rank = snap->ranks[static_cast<size_t>(session->rank)];
  bool enqueue = false, discard = false;
  {
    std::unique_lock<std::mutex> slock(snap->mu);
    switch (snap->state) {
      case Snapshot::kSealed: {
        ReportPtr r = snap->report;
        slock.unlock();
        respond_with_report(Status::OK, r);
        return;
      }
      case Snapshot::kFailed: {
        Status e = snap->error;
        slock.unlock();
        done(e, session->response);
        return;
      }
      case Snapshot::kSealing:
        snap->waiters.push_back(respond_with_report);
        return;
      case Snapshot::kOpen:
        break;
    }
    if (end == nullptr || rank.finished) {
      slock.unlock();
      done(Status::OK, session->response);
      return;
    }
    if (end->count() < 0 || (end->count() > 0 && end->count() < rank.rows)) {
      const std::string msg = absl::StrFormat(
          "EndOfShare.count = %d is smaller than the %d rows rank %d sent", end->count(), rank.rows,
          session->rank);
      slock.unlock();
      session->ended = false;
      done(Reject("invalid_request", StatusCode::INVALID_ARGUMENT, msg), session->response);
      return;
    }
    auto bad_energy = [](bool has, double v) { return has && !(v >= 0 && std::isfinite(v)); };
    if (bad_energy(end->has_max_energy(), end->max_energy()) ||
        bad_energy(end->has_mean_energy(), end->mean_energy()) ||
        (end->has_rho_violations() && end->rho_violations() < 0)) {
      slock.unlock();
      session->ended = false;
      done(Reject("invalid_request", StatusCode::INVALID_ARGUMENT,
                  "EndOfShare: max_energy and mean_energy must be finite and >= 0, rho_violations >= 0"),
           session->response);
      return;
    }
    rank.finished = true;
    rank.end = *end;
    ++snap->finished;
    if (snap->finished < snap->world_size) {
      slock.unlock();
      done(Status::OK, session->response);
      return;
    }
    if (snap->total_rows == 0) {
      snap->state = Snapshot::kFailed;  // DiscardSnapshot removes it
      snap->error = Status(StatusCode::FAILED_PRECONDITION,
                           absl::StrCat("every rank finished but no rows were sent for ", KeyString(snap->key)));
      discard = true;
    } else {
      snap->state = Snapshot::kSealing;
      snap->seal_requested = std::chrono::steady_clock::now();
      snap->waiters.push_back(respond_with_report);
      enqueue = true;
    }
  }
  if (discard) {
    const Status error(StatusCode::FAILED_PRECONDITION,
                       absl::StrCat("every rank finished but no rows were sent for ", KeyString(snap->key)));
    DiscardSnapshot(snap, error);
    done(error, session->response);
  }
  if (enqueue) Enqueue(Task{snap, nullptr});
}

void Engine::Close(const v1::CloseGenerationRequest& request, ReportCallback done) {
  const std::string tap_name = request.tap().empty() ? "default" : request.tap();
  if (!ValidName(request.job()) || !ValidName(tap_name)) {
    done(Status(StatusCode::INVALID_ARGUMENT, "invalid job or tap name: must match [A-Za-z0-9_.:-]{1,128}"), nullptr);
    return;
  }
  if (request.generation() < 0) {
    done(Status(StatusCode::INVALID_ARGUMENT,
                absl::StrFormat("generation must be >= 0, got %d", request.generation())),
         nullptr);
    return;
  }
  const SnapshotKey key{request.job(), tap_name, request.generation()};
  std::shared_ptr<Snapshot> snap;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = open_.find(key);
    if (it == open_.end()) {
      auto job = jobs_.find(request.job());
      if (job == jobs_.end()) {
        done(Status(StatusCode::NOT_FOUND, absl::StrCat("unknown job '", request.job(), "'")), nullptr);
        return;
      }
      auto tap = job->second.taps.find(tap_name);
      if (tap != job->second.taps.end()) {
        if (auto r = tap->second.reports.find(request.generation()); r != tap->second.reports.end()) {
          absl::StatusOr<ReportPtr> report = SealedReport(request.job(), tap_name, r->second, request.generation());
          if (!report.ok()) {
            done(Status(StatusCode::UNAVAILABLE, absl::StrCat("reading the sealed report of ", KeyString(key), ": ",
                                                              report.status().message())),
                 nullptr);
            return;
          }
          done(Status::OK, *std::move(report));
          return;
        }
      }
      done(Status(StatusCode::NOT_FOUND, absl::StrCat("no open snapshot or report for ", KeyString(key))),
           nullptr);
      return;
    }
    snap = it->second;
  }
  std::unique_lock<std::mutex> slock(snap->mu);
  switch (snap->state) {
    case Snapshot::kSealed: {
      ReportPtr r = snap->report;
      slock.unlock();
      done(Status::OK, r);
      return;
    }
    case Snapshot::kFailed: {
      Status e = snap->error;
      slock.unlock();
      done(e, nullptr);
      return;
    }
    case Snapshot::kSealing:
      snap->waiters.push_back(std::move(done));
      return;
    case Snapshot::kOpen:
      break;
  }
  if (snap->total_rows == 0) {
    slock.unlock();
    done(Status(StatusCode::FAILED_PRECONDITION,
                absl::StrCat("cannot close ", KeyString(key), ": no rows received yet")),
         nullptr);
    return;
  }
  snap->state = Snapshot::kSealing;
  snap->closed_explicitly = snap->finished < snap->world_size;
  snap->seal_requested = std::chrono::steady_clock::now();
  snap->waiters.push_back(std::move(done));
  slock.unlock();
  Enqueue(Task{snap, nullptr});
}

void Engine::ReleaseRows(Snapshot& snap) {
  memory_bytes_.fetch_sub(snap.memory_accounted);
  snap.memory_accounted = 0;
  std::vector<uint8_t>().swap(snap.rows);
  metrics_->SetMemoryBytes(memory_bytes_.load());
}

void Engine::DiscardSnapshot(const std::shared_ptr<Snapshot>& snap, const Status& error) {
  std::vector<ReportCallback> waiters;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = open_.find(snap->key);
    if (it != open_.end() && it->second == snap) {
      open_.erase(it);
      if (auto j = jobs_.find(snap->key.job); j != jobs_.end()) {
        JobState& job = j->second;
        --job.open_snapshots;
        // A snapshot that never held a row does not fix the tap's m: without a
        // sealed report or another open snapshot the tap takes the m of the next
        // OpenSnapshot again (as after a restart, where it would not exist).
        auto tap = job.taps.find(snap->key.tap);
        const bool tap_open = std::any_of(open_.begin(), open_.end(), [&](const auto& o) {
          return o.first.job == snap->key.job && o.first.tap == snap->key.tap;
        });
        if (tap != job.taps.end() && tap->second.reports.empty() && !tap_open) {
          tap->second.m = 0;
          if (!job.has_sealed && std::all_of(job.taps.begin(), job.taps.end(),
                                             [](const auto& t) { return t.second.m == 0; }))
            job.m = 0;
        }
      }
    }
    metrics_->SetOpenSnapshots(static_cast<int64_t>(open_.size()));
    std::lock_guard<std::mutex> slock(snap->mu);
    snap->state = Snapshot::kFailed;
    snap->error = error;
    ReleaseRows(*snap);
    waiters.swap(snap->waiters);
  }
  for (auto& w : waiters) w(error, nullptr);
}

// ------------------------------------------------------------------ queries --

v1::JobInfo Engine::MakeJobInfo(const std::string& name, const JobState& job) const {
  v1::JobInfo info;
  info.set_job(name);
  *info.mutable_config() = JobEffective(job, job.m);
  std::set<int64_t> generations;
  for (const auto& [tap_name, tap] : job.taps) {
    info.add_taps(tap_name);
    for (const auto& [g, r] : tap.reports) generations.insert(g);
  }
  info.set_generations_sealed(static_cast<int64_t>(generations.size()));
  info.set_last_generation(generations.empty() ? -1 : *generations.rbegin());
  info.set_m(job.m);
  return info;
}

Status Engine::GetHistory(const v1::GetHistoryRequest& request, v1::GetHistoryResponse* response) {
  if (!ValidName(request.job()))
    return Status(StatusCode::INVALID_ARGUMENT, "invalid job name: must match [A-Za-z0-9_.:-]{1,128}");
  if (!request.tap().empty() && !ValidName(request.tap()))  // empty: every tap
    return Status(StatusCode::INVALID_ARGUMENT, "invalid tap name: must match [A-Za-z0-9_.:-]{1,128}");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!jobs_.contains(request.job()))
      return Status(StatusCode::NOT_FOUND, absl::StrCat("unknown job '", request.job(), "'"));
  }
  if (!history_) {  // in-memory database: every report is held
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ReportPtr> held;
    for (const auto& [tap_name, tap] : jobs_.at(request.job()).taps) {
      if (!request.tap().empty() && request.tap() != tap_name) continue;
      for (const auto& [g, e] : tap.reports) held.push_back(e.report);
    }
    std::stable_sort(held.begin(), held.end(), [](const ReportPtr& a, const ReportPtr& b) {
      return a->generation() != b->generation() ? a->generation() < b->generation() : a->tap() < b->tap();
    });
    for (const auto& r : held) *response->add_reports() = *r;
    return Status::OK;
  }
  // From SQLite (every report there was committed before any client heard of
  // it), without holding mu_: sealing goes on meanwhile.
  std::vector<v1::GenerationReport> reports;
  if (absl::Status s = history_->Reports(request.job(), request.tap(), &reports); !s.ok())
    return Status(StatusCode::UNAVAILABLE, absl::StrCat("reading the history: ", s.message()));
  response->mutable_reports()->Reserve(static_cast<int>(reports.size()));
  for (auto& r : reports) response->add_reports()->Swap(&r);
  return Status::OK;
}

Status Engine::ListJobs(v1::ListJobsResponse* response) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, job] : jobs_) *response->add_jobs() = MakeJobInfo(name, job);
  return Status::OK;
}

void Engine::Configure(const v1::ConfigureJobRequest& request,
                       std::function<void(const Status&, const v1::JobInfo&)> done) {
  if (!ValidName(request.job())) {
    done(Status(StatusCode::INVALID_ARGUMENT,
                absl::StrCat("invalid job name '", request.job().substr(0, 200),
                             "': must match [A-Za-z0-9_.:-]{1,128}")),
         {});
    return;
  }
  if (auto s = ValidateJobConfig(request.config()); !s.ok()) {
    done(Status(StatusCode::INVALID_ARGUMENT, std::string(s.message())), {});
    return;
  }
  if (!request.config().baseline_job().empty() && !ValidName(request.config().baseline_job())) {
    done(Status(StatusCode::INVALID_ARGUMENT, "invalid config.baseline_job name"), {});
    return;
  }
  {
    std::lock_guard<std::mutex> q(qmu_);
    if (queued_fns_ >= options_.compute_queue_capacity) {
      done(Status(StatusCode::RESOURCE_EXHAUSTED, "compute queue full (--compute-queue-capacity)"), {});
      return;
    }
  }
  // The SQLite write happens on the worker, never on a gRPC thread.
  Enqueue(Task{nullptr, [this, request, done]() {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(request.job());
    JobState fresh;
    if (it == jobs_.end()) {
      if (static_cast<int64_t>(jobs_.size()) >= options_.max_jobs) {
        done(Status(StatusCode::RESOURCE_EXHAUSTED,
                    absl::StrFormat("too many jobs: %d exist (--max-jobs = %d)", jobs_.size(), options_.max_jobs)),
             {});
        return;
      }
      if (auto c = options_.job_configs.find(request.job()); c != options_.job_configs.end())
        fresh.config = c->second;
    }
    const JobState& current = it == jobs_.end() ? fresh : it->second;
    JobState updated = current;
    updated.config = MergeJobConfig(current.config, request.config());
    const v1::JobConfig a = JobEffective(current, current.m), b = JobEffective(updated, current.m);
    if (absl::Status s = ValidateThresholdOrder(b.thresholds()); !s.ok()) {
      done(Status(StatusCode::INVALID_ARGUMENT, absl::StrCat("job '", request.job(), "': ", s.message())), {});
      return;
    }
    const bool sketch_changed = a.has_n_a() != b.has_n_a() || a.n_a() != b.n_a() ||
                                a.delta() != b.delta() || a.rho() != b.rho() ||
                                a.preprocessing() != b.preprocessing() || a.seed() != b.seed();
    if (sketch_changed && current.has_sealed) {
      done(Status(StatusCode::FAILED_PRECONDITION,
                  absl::StrCat("job '", request.job(),
                               "': sketch parameters (n_a, delta, rho, preprocessing, seed) are fixed once "
                               "a generation has sealed; thresholds and the baseline can change")),
           {});
      return;
    }
    if (sketch_changed && current.open_snapshots > 0) {
      done(Status(StatusCode::FAILED_PRECONDITION,
                  absl::StrCat("job '", request.job(),
                               "': sketch parameters cannot change while snapshots are open")),
           {});
      return;
    }
    if (absl::Status s = store_->Commit({StoredJob{request.job(), updated.config, updated.m}}, {}); !s.ok()) {
      done(Status(StatusCode::UNAVAILABLE, absl::StrCat("store: ", s.message())), {});
      return;
    }
    if (it == jobs_.end()) {
      it = jobs_.emplace(request.job(), std::move(fresh)).first;
      metrics_->SetJobs(static_cast<int64_t>(jobs_.size()));
    }
    it->second.config = updated.config;
    done(Status::OK, MakeJobInfo(request.job(), it->second));
  }});
}

// ------------------------------------------------------------------- worker --

void Engine::Enqueue(Task task) {
  {
    std::lock_guard<std::mutex> lock(qmu_);
    if (task.fn) ++queued_fns_;
    queue_.push_back(std::move(task));
    metrics_->SetQueueDepth(static_cast<int64_t>(queue_.size()));
  }
  qcv_.notify_all();
}

void Engine::StartWorker() {
  std::lock_guard<std::mutex> lock(qmu_);
  if (worker_.joinable()) return;
  stopping_ = false;
  worker_ = std::thread([this] { WorkerLoop(); });
}

void Engine::StopWorker() {
  {
    std::lock_guard<std::mutex> lock(qmu_);
    stopping_ = true;
  }
  qcv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Engine::WorkerLoop() {
  std::unique_lock<std::mutex> lock(qmu_);
  for (;;) {
    qcv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) {
      if (stopping_) return;
      continue;
    }
    Task task = std::move(queue_.front());
    queue_.pop_front();
    if (task.fn) {
      --queued_fns_;
      metrics_->SetQueueDepth(static_cast<int64_t>(queue_.size()));
      lock.unlock();
      task.fn();
      lock.lock();
      continue;
    }
    // A seal: wait up to the window for more seals, then take all queued seals.
    std::vector<std::shared_ptr<Snapshot>> batch{task.seal};
    const auto deadline = task.seal->seal_requested + std::chrono::milliseconds(options_.seal_batch_window_ms);
    auto count_seals = [this] {
      int64_t n = 0;
      for (const Task& t : queue_) n += t.seal ? 1 : 0;
      return n;
    };
    while (!stopping_ && 1 + count_seals() < options_.max_seal_batch &&
           std::chrono::steady_clock::now() < deadline) {
      qcv_.wait_until(lock, deadline);
    }
    for (auto it = queue_.begin(); it != queue_.end() &&
                                   static_cast<int64_t>(batch.size()) < options_.max_seal_batch;) {
      if (it->seal) {
        batch.push_back(std::move(it->seal));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    metrics_->SetQueueDepth(static_cast<int64_t>(queue_.size()));
    lock.unlock();
    ProcessSeals(std::move(batch));
    lock.lock();
  }
}

void Engine::ProcessSeals(std::vector<std::shared_ptr<Snapshot>> batch) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<SealWork> works(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    SealWork& w = works[i];
    w.snap = batch[i];
    Snapshot& s = *w.snap;
    std::lock_guard<std::mutex> slock(s.mu);
    // Gather I_A sorted by (priority, id): bitwise independent of arrival order.
    const std::vector<sigma::BottomKSketch::Entry> kept = s.sketch->Sorted();
    w.rows.resize(kept.size() * s.row_bytes);
    for (size_t j = 0; j < kept.size(); ++j)
      std::memcpy(w.rows.data() + j * s.row_bytes, s.rows.data() + static_cast<size_t>(kept[j].slot) * s.row_bytes,
                  s.row_bytes);
    ReleaseRows(s);
    s.sketch.reset();
    // A client's reported max energy against the budget (PreprocessRows' rule:
    // l2 rows count as exactly 1).
    const double limit = s.rho;
    double counted = 0;
    for (const RankState& r : s.ranks) {
      sigma::EnergyStats e = r.energy;
      const int64_t count = r.end && r.end->count() > 0 ? r.end->count() : r.rows;
      counted += static_cast<double>(count);
      if (r.end && (r.end->has_max_energy() || r.end->has_mean_energy() || r.end->has_rho_violations())) {
        sigma::EnergyStats p;
        p.count = count;
        p.max_energy = r.end->has_max_energy() ? std::max(r.end->max_energy(), r.energy.max_energy)
                                               : r.energy.max_energy;
        p.sum_energy = r.end->has_mean_energy() ? r.end->mean_energy() * static_cast<double>(count)
                                                : r.energy.sum_energy;
        p.rho_violations = r.end->has_rho_violations() ? std::max(r.end->rho_violations(), r.energy.rho_violations)
                                                       : r.energy.rho_violations;
        if (p.max_energy > limit && p.rho_violations == 0) p.rho_violations = 1;
        e = p;
      }
      w.energy.Merge(e);
    }
    w.n = s.corpus_size ? static_cast<double>(*s.corpus_size) : counted;
    w.ranks_finished = s.finished;
    w.closed_explicitly = s.closed_explicitly;
    w.input.rows = sigma::RowBlock{w.rows.data(), s.dtype, static_cast<int64_t>(kept.size()), s.m};
    w.input.preprocessing = s.prep;
    w.input.corpus_size = w.n;
    w.input.delta = s.delta;
    w.input.rho = s.rho;
    // Multi-GPU placement (RoutedBackend): one job's snapshots always on the same device.
    w.input.placement_key = sigma::PlacementKeyForJob(s.key.job);
    if (absl::Status v = sigma::ValidateSealInput(w.input); !v.ok())
      w.error = Status(StatusCode::FAILED_PRECONDITION, absl::StrCat(KeyString(s.key), ": ", v.message()));
  }
  metrics_->SetMemoryBytes(memory_bytes_.load());

  // One batched backend call for every valid snapshot.
  std::vector<size_t> valid;
  std::vector<sigma::SealInput> inputs;
  for (size_t i = 0; i < works.size(); ++i) {
    if (works[i].error.ok()) {
      valid.push_back(i);
      inputs.push_back(works[i].input);
    }
  }
  std::vector<sigma::SealMoments> moments(inputs.size());
  if (!inputs.empty()) {
    metrics_->SealBatchSize(inputs.size());
    absl::Status s = backend_->SealBatch(inputs, absl::MakeSpan(moments));
    if (!s.ok()) {  // isolate the failing snapshot(s)
      for (size_t j = 0; j < valid.size(); ++j) {
        absl::Status one = backend_->SealBatch({&inputs[j], 1}, {&moments[j], 1});
        if (!one.ok())
          works[valid[j]].error = Status(StatusCode::INTERNAL, absl::StrCat("backend ", backend_name_, ": ", one.message()));
      }
    }
  }
  for (size_t j = 0; j < valid.size(); ++j) works[valid[j]].moments = moments[j];
  const double compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Estimate, drift against the baseline, alerts, forecast.
  std::vector<size_t> order(works.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return works[a].snap->key < works[b].snap->key; });
  std::vector<v1::GenerationReport> to_store;
  std::map<std::string, StoredJob> jobs_to_store;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::pair<std::string, std::string>, std::map<int64_t, SealedEntry>> pending;
    std::map<std::pair<std::string, std::string>, int64_t> pending_first;
    auto lookup = [&](const std::string& job, const std::string& tap, int64_t g) -> const SealedEntry* {
      if (auto p = pending.find({job, tap}); p != pending.end()) {
        if (auto r = p->second.find(g); r != p->second.end()) return &r->second;
      }
      auto j = jobs_.find(job);
      if (j == jobs_.end()) return nullptr;
      auto t = j->second.taps.find(tap);
      if (t == j->second.taps.end()) return nullptr;
      auto r = t->second.reports.find(g);
      return r == t->second.reports.end() ? nullptr : &r->second;
    };
    auto first_sealed = [&](const std::string& job, const std::string& tap) -> std::optional<int64_t> {
      auto j = jobs_.find(job);
      if (j != jobs_.end()) {
        auto t = j->second.taps.find(tap);
        if (t != j->second.taps.end() && t->second.first_sealed) return t->second.first_sealed;
      }
      if (auto p = pending_first.find({job, tap}); p != pending_first.end()) return p->second;
      return std::nullopt;
    };
    for (size_t idx : order) {
      SealWork& w = works[idx];
      if (!w.error.ok()) continue;
      const Snapshot& s = *w.snap;
      const JobState& job = jobs_.at(s.key.job);
      const v1::JobConfig cfg = JobEffective(job, s.m);
      const sigma::TrackValues vals = sigma::EstimateTracks(w.moments, w.n, s.delta, s.rho, w.energy);
      const bool failed = vals.flags.cholesky_failed;
      if (!failed && !first_sealed(s.key.job, s.key.tap))
        pending_first[{s.key.job, s.key.tap}] = s.key.generation;

      v1::GenerationReport r;
      r.set_job(s.key.job);
      r.set_tap(s.key.tap);
      r.set_generation(s.key.generation);
      r.set_m(s.m);
      r.set_n(w.n);
      r.set_n_a(vals.n_a);
      r.set_backend(backend_name_);
      r.set_track1_lower(vals.track1_lower);
      r.set_track1_upper(vals.track1_upper);
      r.set_track2(vals.track2);
      r.set_track2_raw(vals.track2_raw);
      r.set_track2_bias(vals.track2_bias);
      r.set_track2_ci_halfwidth(vals.track2_ci_halfwidth);
      auto* f = r.mutable_flags();
      f->set_rho_violated(vals.flags.rho_violated);
      f->set_n_a_below_m(vals.flags.n_a_below_m);
      f->set_low_confidence(vals.flags.low_confidence);
      f->set_cholesky_failed(vals.flags.cholesky_failed);
      f->set_failure_reason(vals.flags.failure_reason);
      f->set_rho_violations(vals.rho_violations);
      f->set_max_energy(vals.max_energy);
      f->set_mean_energy(vals.mean_energy);
      f->set_closed_explicitly(w.closed_explicitly);
      r.set_compute_seconds(compute_seconds);
      r.set_sealed_unix_ms(NowUnixMs());
      r.set_world_size(s.world_size);
      r.set_ranks_finished(w.ranks_finished);

      // Baseline (spec §3): pinned generation, or the first sealed one; of this
      // job or of config.baseline_job.
      std::optional<sigma::DriftValues> drift;
      r.set_baseline_generation(-1);
      if (!failed) {
        const std::string bjob = cfg.baseline_job().empty() ? s.key.job : cfg.baseline_job();
        std::optional<int64_t> bgen;
        if (cfg.has_baseline_generation()) bgen = cfg.baseline_generation();
        else bgen = first_sealed(bjob, s.key.tap);
        if (bgen) {
          if (bjob == s.key.job && *bgen == s.key.generation) {
            drift.reset();  // the baseline itself: zero drift, no drift alerts
            r.set_baseline_generation(*bgen);
          } else if (const SealedEntry* base = lookup(bjob, s.key.tap, *bgen);
                     base && !base->failed && base->m == s.m) {
            sigma::TrackValues bv;
            bv.m = base->m;
            bv.track1_upper = base->track1_upper;
            bv.track2 = base->track2;
            bv.track2_ci_halfwidth = base->track2_ci_halfwidth;
            drift = sigma::ComputeDrift(vals, bv);
            r.set_baseline_generation(*bgen);
          }
          if (bjob != s.key.job && r.baseline_generation() >= 0) r.set_baseline_job(bjob);
        }
      }
      if (drift) {
        r.set_track1_drift(drift->track1_drift);
        r.set_track2_drift(drift->track2_drift);
        r.set_divergence(drift->divergence);
        r.set_drift_halfwidth(drift->drift_halfwidth);
        r.mutable_per_dim()->set_track1_drift(drift->track1_drift_per_dim);
        r.mutable_per_dim()->set_track2_drift(drift->track2_drift_per_dim);
        r.mutable_per_dim()->set_divergence(drift->divergence_per_dim);
        r.mutable_per_dim()->set_drift_halfwidth(drift->drift_halfwidth / std::max(1, s.m));
      } else if (!failed && r.baseline_generation() >= 0) {
        r.set_drift_halfwidth(std::hypot(vals.track2_ci_halfwidth, vals.track2_ci_halfwidth));
        r.mutable_per_dim()->set_drift_halfwidth(r.drift_halfwidth() / std::max(1, s.m));
      }
      for (const sigma::Alert& a : sigma::EvaluateAlerts(vals, drift, Thresholds(cfg))) {
        auto* out = r.add_alerts();
        out->set_rule(a.rule);
        out->set_severity(std::string(sigma::AlertSeverityName(a.severity)));
      }
      // Forecast over the generations up to this one that have a drift.
      if (!failed && r.baseline_generation() >= 0) {
        std::map<int64_t, double> points;
        auto add = [&](const std::map<int64_t, SealedEntry>& reports) {
          for (const auto& [g, p] : reports) {
            if (g < s.key.generation && !p.failed && p.has_drift) points[g] = p.per_dim_track2_drift;
          }
        };
        if (auto t = job.taps.find(s.key.tap); t != job.taps.end()) add(t->second.reports);
        if (auto p = pending.find({s.key.job, s.key.tap}); p != pending.end()) add(p->second);
        points[s.key.generation] = r.per_dim().track2_drift();
        std::vector<double> gens, values;
        for (const auto& [g, v] : points) {
          gens.push_back(static_cast<double>(g));
          values.push_back(v);
        }
        if (auto fc = sigma::GenerationsToCritical(gens, values, cfg.thresholds().drift_critical()))
          r.set_generations_to_critical(*fc);
      }
      auto ptr = std::make_shared<const v1::GenerationReport>(r);
      pending[{s.key.job, s.key.tap}][s.key.generation] = EntryOf(ptr);
      w.report = ptr;
      to_store.push_back(r);
      jobs_to_store[s.key.job] = StoredJob{s.key.job, job.config, job.m};
    }
  }

  // Durable before anyone hears about it.
  if (!to_store.empty()) {
    std::vector<StoredJob> jobs;
    for (auto& [name, j] : jobs_to_store) jobs.push_back(j);
    if (absl::Status s = store_->Commit(jobs, to_store); !s.ok()) {
      for (SealWork& w : works) {
        if (w.error.ok()) {
          w.error = Status(StatusCode::UNAVAILABLE, absl::StrCat("store: ", s.message()));
          w.report.reset();
        }
      }
    }
  }

  // Publish: state, gauges, then the waiters.
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t idx : order) {
      SealWork& w = works[idx];
      const Snapshot& s = *w.snap;
      auto it = open_.find(s.key);
      if (it != open_.end() && it->second == w.snap) {
        open_.erase(it);
        if (auto j = jobs_.find(s.key.job); j != jobs_.end()) --j->second.open_snapshots;
      }
      if (!w.error.ok()) continue;
      JobState& job = jobs_.at(s.key.job);
      job.has_sealed = true;
      TapState& tap = job.taps[s.key.tap];
      AddSealed(tap, w.report);
      if (!w.report->flags().cholesky_failed() && !tap.first_sealed) tap.first_sealed = s.key.generation;
      metrics_->CountSeal(*w.report);
      if (tap.reports.rbegin()->first == s.key.generation)
        metrics_->PublishReport(*w.report, Thresholds(JobEffective(job, s.m)));
    }
    metrics_->SetOpenSnapshots(static_cast<int64_t>(open_.size()));
  }
  const auto t1 = std::chrono::steady_clock::now();
  for (SealWork& w : works) {
    std::vector<ReportCallback> waiters;
    {
      std::lock_guard<std::mutex> slock(w.snap->mu);
      if (w.error.ok()) {
        w.snap->state = Snapshot::kSealed;
        w.snap->report = w.report;
      } else {
        w.snap->state = Snapshot::kFailed;
        w.snap->error = w.error;
      }
      waiters.swap(w.snap->waiters);
    }
    if (w.error.ok())
      metrics_->SealDuration(std::chrono::duration<double>(t1 - w.snap->seal_requested).count());
    for (auto& cb : waiters) cb(w.error, w.error.ok() ? w.report : nullptr);
  }
}

}  // namespace sigma::server
