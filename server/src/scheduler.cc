#include "sigma/server/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sigma/server/refusal.h"
#include "sigma/server/report_builder.h"
#include "sigma/server/requests.h"
#include "sigma/v1/wire.h"

namespace sigma::server {

namespace v1 = sigma::v1;
using absl::StatusCode;

Engine::Engine(DaemonOptions options, std::unique_ptr<Store> store, std::unique_ptr<sigma::Backend> backend,
               Metrics* metrics, EngineHooks hooks)
    : options_(std::move(options)),
      clock_(std::move(hooks.clock)),
      wall_clock_(hooks.wall_clock),
      logger_(Logger::Options{ParseLogFormat(options_.log_format).value_or(LogFormat::kText),
                              ParseLogLevel(options_.log_level).value_or(LogLevel::kInfo)},
              std::move(hooks.log_sink), std::move(hooks.wall_clock)),
      store_(std::move(store)),
      backend_(std::move(backend)),
      backend_name_(backend_->name()),
      metrics_(metrics),
      memory_(options_.max_memory_bytes, [metrics](int64_t used) { metrics->SetMemoryBytes(used); }),
      queue_(SealQueue::Options{options_.seal_batch_window_ms, options_.max_seal_batch, options_.small_seal_max_m,
                                options_.compute_queue_capacity},
             [this](SealQueue::Batch b) { ProcessSeals(std::move(b)); },
             [this](const SealQueue::Batch& b, const absl::Status& e) { FailSeals(b, e); },
             [metrics](int64_t depth) { metrics->SetQueueDepth(depth); }),
      registry_(options_),
      tenants_(&memory_),
      reaper_enabled_(hooks.reaper) {}

Engine::~Engine() { StopWorker(); }

void Engine::StartWorker() {
  queue_.Start();
  std::lock_guard<std::mutex> lock(reaper_mu_);
  if (!reaper_enabled_ || reaper_.joinable()) return;
  reaper_stop_ = false;
  reaper_ = std::thread([this] { ReaperLoop(); });
}

void Engine::StopWorker() {
  {
    std::lock_guard<std::mutex> lock(reaper_mu_);
    reaper_stop_ = true;
  }
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  queue_.Stop();
}

// Checks for idle snapshots every quarter of the timeout, at most every second.
void Engine::ReaperLoop() {
  const auto period = std::min<std::chrono::milliseconds>(
      std::chrono::milliseconds(1000), std::chrono::milliseconds(options_.snapshot_idle_timeout_s * 250));
  std::unique_lock<std::mutex> lock(reaper_mu_);
  while (!reaper_cv_.wait_for(lock, period, [this] { return reaper_stop_; })) {
    lock.unlock();
    ExpireIdle();
    SweepLifecycle();
    SyncWithStore();  // shared store: what other replicas committed (store_sync.cc)
    lock.lock();
  }
}

absl::Status Engine::Readiness() const {
  // A store that probes itself (PostgreSQL) says when it is back; SQLite
  // only recovers with the next successful commit.
  if (absl::Status h = store_->Health(); !h.ok()) return absl::UnavailableError(absl::StrCat("store: ", h.message()));
  if (!store_ok_.load() && !store_->shared()) return absl::UnavailableError("the latest store commit failed");
  if (!backend_ok_.load()) return absl::UnavailableError(absl::StrCat("backend ", backend_name_, " failed its latest seals"));
  return absl::OkStatus();
}

// ---------------------------------------------------------------- restore --

absl::Status Engine::Restore() {
  std::vector<StoredJob> jobs;
  std::vector<v1::GenerationReport> reports;
  if (auto s = store_->LoadAll(&jobs, &reports); !s.ok()) return s;
  // An in-memory database (":memory:", the fuzz targets) cannot be opened a
  // second time: then every report stays in memory and history is served from it.
  std::unique_ptr<HistoryReader> reader;
  if (options_.db != ":memory:") {
    absl::StatusOr<std::unique_ptr<HistoryReader>> r =
        HistoryReader::Open(options_.db, StoreOptions{options_.db_timeout_ms});
    if (!r.ok()) return r.status();
    reader = std::move(*r);
  }
  history_ = std::make_unique<ReportHistory>(options_.history_cache_per_tap, std::move(reader));
  std::lock_guard<std::mutex> lock(mu_);
  for (const StoredJob& j : jobs) {
    registry_.Restore(j);
    registry_.NoteStored(j.name, j.created_unix_ms, 0);
  }
  for (const v1::GenerationReport& r : reports) {
    registry_.RestoreTap(r.job(), r.tap(), r.m());
    registry_.MarkSealed(r.job(), StoredRun(r));  // runs in creation (first seal) order
    metrics_->CountSeal(r);
  }
  for (const ReportPtr& r : history_->Replay(std::move(reports))) {
    if (!registry_.IsLatestRun(r->job(), StoredRun(*r))) continue;  // the gauges show the latest run
    const JobState* job = registry_.Find(r->job());
    metrics_->PublishReport(*r, Thresholds(registry_.Effective(*job, r->m())));
  }
  for (const auto& [name, job] : registry_.jobs()) {
    if (job.finished_unix_ms > 0) metrics_->SetJobFinished(name, true);  // the sweep removes them after the TTL
  }
  metrics_->SetJobs(static_cast<int64_t>(registry_.jobs().size()));
  metrics_->SetOpenSnapshots(0);
  metrics_->SetQueueDepth(0);
  metrics_->SetMemoryBytes(0);
  return absl::OkStatus();
}

// ------------------------------------------------------------------ ingest --

absl::Status Engine::Open(const v1::OpenSnapshot& open, IngestSession* session) {
  if (session->opened)
    return Refusal(StatusCode::kFailedPrecondition, "invalid_request",
                   "OpenSnapshot sent twice in one Ingest stream (one stream carries one rank's share)");
  absl::StatusOr<sigma::DType> dtype = ValidateOpen(open, options_);
  if (!dtype.ok()) return dtype.status();
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::string> run = registry_.ResolveRun(open.job(), open.run(), open.resume());
  if (!run.ok()) return run.status();
  const SnapshotKey key{open.job(), TapName(open.tap()), open.generation(), *run};
  if (expired_.contains(key)) return ExpiredError(key);
  if (auto it = open_.find(key); it != open_.end()) {
    std::optional<int64_t> corpus;
    if (open.has_corpus_size()) corpus = open.corpus_size();
    if (absl::Status s = it->second->Join(open.world_size(), open.m(), *dtype, corpus, v1::DType_Name(open.dtype()),
                                          clock_());
        !s.ok())
      return s;
    session->snapshot = it->second;
    session->snapshot->Attach();
  } else if (history_->Contains(key)) {
    session->sealed = key;  // a retry: its digest is compared at EndShare, the response carries the report
    session->row_bytes = static_cast<size_t>(open.m()) * sigma::DTypeWidth(*dtype);
  } else if (absl::Status s = OpenNew(open, key, *dtype, session); !s.ok()) {
    return s;
  }
  session->response.set_run(*run);  // only once admitted: a refused Open leaves the response as it was
  session->rank = open.rank();
  session->opened = true;
  return absl::OkStatus();
}

absl::Status Engine::OpenNew(const v1::OpenSnapshot& open, const SnapshotKey& key, sigma::DType dtype,
                             IngestSession* session) {
  absl::StatusOr<v1::JobConfig> effective = registry_.AdmitOpen(key.job, key.tap, open.m(), open.config());
  if (!effective.ok()) return effective.status();
  const Tenant& tenant = session->tenant;
  const bool new_job = registry_.Find(key.job) == nullptr;
  if (new_job) {
    if (absl::Status s = tenants_.AdmitJob(tenant); !s.ok()) return s;
  }
  // A snapshot whose seal can never fit in the memory budget (even with one
  // row) is refused before rows are taken; a running seal charges its whole
  // working set (sealer.cc).
  if (const int64_t seal = SealWorkingSetBytes(open.m(), 1); seal > options_.max_memory_bytes)
    return Refusal(StatusCode::kResourceExhausted, "memory_exhausted",
                   absl::StrFormat("m = %d needs at least %d bytes to seal (32 m^2 + 8 n_a m with n_a >= 1: Gram, "
                                   "factors, conversion; %d with n_a = %d) > --max-memory-bytes = %d",
                                   open.m(), seal, SealWorkingSetBytes(open.m(), effective->n_a()), effective->n_a(),
                                   options_.max_memory_bytes));
  if (static_cast<int64_t>(open_.size()) >= options_.max_open_snapshots)
    return Refusal(StatusCode::kResourceExhausted, "too_many_open_snapshots",
                   absl::StrFormat("too many open snapshots: %d (--max-open-snapshots)", options_.max_open_snapshots));
  if (absl::Status s = tenants_.AdmitOpen(tenant); !s.ok()) return s;
  // The sketch's bookkeeping (heap + id map) is reserved up front; rows are
  // charged as they arrive (Batch), to the tenant's budget (quota.h).
  const int64_t sketch_bytes = effective->n_a() * 48;
  MemoryBudget::Charge charge(tenants_.Budget(tenant));
  int64_t would_hold = 0;
  const MemoryBudget* refused_by = nullptr;
  if (!charge.Grow(sketch_bytes, &would_hold, &refused_by))
    return Refusal(StatusCode::kResourceExhausted, refused_by->naming().reason,
                   absl::StrFormat("the sketch of n_a = %d would bring open snapshots to %d bytes > %s = %d",
                                   effective->n_a(), would_hold, refused_by->naming().limit, refused_by->limit()));
  registry_.OpenSnapshot(key.job, key.tap, open.m(), open.config(), tenant.limited() ? tenant.key : "");
  registry_.NoteTapDType(key.job, key.tap, open.dtype());
  registry_.NoteRun(key.job, key.run);
  if (new_job) {
    tenants_.JobCreated(tenant);
    metrics_->SetJobs(static_cast<int64_t>(registry_.jobs().size()));
  }
  tenants_.Opened(tenant);
  Snapshot::Params p;
  p.key = key;
  p.m = open.m();
  p.dtype = dtype;
  p.world_size = open.world_size();
  p.config = *effective;
  p.prep = sigma::FromWirePreprocessing(p.config.preprocessing());
  p.rho = p.config.rho();
  p.delta = p.config.delta();
  p.k = p.config.n_a();
  p.row_bytes = static_cast<size_t>(open.m()) * sigma::DTypeWidth(dtype);
  p.tenant = tenant.limited() ? tenant.key : "";
  p.job_incarnation = registry_.Find(key.job)->incarnation;
  p.run_id = registry_.RunId(key.job, key.run);
  std::optional<int64_t> corpus;
  if (open.has_corpus_size()) corpus = open.corpus_size();
  auto snap = std::make_shared<Snapshot>(std::move(p), corpus, std::move(charge), clock_());
  open_.emplace(key, snap);
  metrics_->SetOpenSnapshots(static_cast<int64_t>(open_.size()));
  snap->Attach();
  session->snapshot = std::move(snap);
  return absl::OkStatus();
}

bool Engine::IsDuplicate(const IngestSession& session, int64_t seq) const {
  if (!session.opened || session.ended) return false;
  if (session.sealed) return true;
  return session.snapshot->IsDuplicate(session.rank, seq);
}

absl::Status Engine::Batch(IngestSession* session, const v1::Batch& batch) {
  if (!session->opened) return Refusal(StatusCode::kFailedPrecondition, "not_open", "Batch before OpenSnapshot");
  if (session->ended) return Refusal(StatusCode::kFailedPrecondition, "invalid_request", "Batch after EndOfShare");
  v1::IngestResponse& resp = session->response;
  if (session->sealed) {  // a resend to a sealed generation: its digest decides at EndShare
    if (session->resent_seqs.insert(batch.seq()).second) {
      session->resent.set_rows(session->resent.rows() + batch.rows());
      session->resent.set_digest(session->resent.digest() + BatchDigest(batch, session->row_bytes));
    }
    resp.set_batches_duplicate(resp.batches_duplicate() + 1);
    return absl::OkStatus();
  }
  Snapshot& snap = *session->snapshot;
  const int64_t first = snap.ShareRows(session->rank);
  const std::string where = absl::StrFormat("rank %d's share of %s, batch seq %d (share rows %d..%d)", session->rank,
                                            KeyString(snap.key()), batch.seq(), first,
                                            first + std::max<int64_t>(batch.rows(), 1) - 1);
  absl::StatusOr<bool> added = AddBatch(snap, session->rank, batch, first, where);
  if (!added.ok()) {
    // Atomic shares (issue 15 item 2): a refused batch drops the whole share,
    // unless the refusal is about another sender or a share already finished.
    const std::string reason = RefusalReason(added.status());
    if (reason != "share_conflict" && reason != "finished_rank" && reason != "expired") snap.DropShare(session->rank);
    return added.status();
  }
  if (!*added) {
    resp.set_batches_duplicate(resp.batches_duplicate() + 1);
    return absl::OkStatus();
  }
  resp.set_batches_accepted(resp.batches_accepted() + 1);
  resp.set_rows_accepted(resp.rows_accepted() + batch.rows());
  metrics_->Ingested(static_cast<int64_t>(batch.data().size()), batch.rows());
  return absl::OkStatus();
}

absl::StatusOr<bool> Engine::AddBatch(Snapshot& snap, int32_t rank, const v1::Batch& batch, int64_t first_row,
                                      const std::string& where) {
  const uint64_t digest = BatchDigest(batch, snap.params().row_bytes);
  if (snap.IsDuplicate(rank, batch.seq()))  // the same rows again, or a conflict AddRows names
    return snap.AddRows(rank, batch, sigma::EnergyStats(), digest, where, clock_());
  if (absl::Status s = ValidateBatch(batch, snap.params(), options_, where); !s.ok()) return s;
  // One pass: NaN/Inf check (naming the share row and column) and the energies.
  const sigma::RowBlock block{batch.data().data(), snap.params().dtype, batch.rows(), snap.params().m};
  sigma::EnergyStats energy;
  if (absl::Status s = BatchEnergy(block, snap.params().prep, snap.params().rho, &energy, first_row); !s.ok()) {
    absl::Status refusal = Refusal(s.code(), RefusalReason(s), absl::StrCat(where, ": ", s.message()));
    return ShareRow(s) ? WithShareRow(std::move(refusal), *ShareRow(s)) : refusal;
  }
  return snap.AddRows(rank, batch, energy, digest, where, clock_());
}

void Engine::EndShare(IngestSession* session, const v1::EndOfShare* end, IngestDone done) {
  if (!session->opened)
    return done(Refusal(StatusCode::kFailedPrecondition, "not_open",
                        end ? "EndOfShare before OpenSnapshot" : "stream ended before OpenSnapshot"),
                session->response);
  if (session->ended)
    return done(Refusal(StatusCode::kFailedPrecondition, "invalid_request", "EndOfShare sent twice"),
                session->response);
  // The counters are final at EndOfShare (later Batches are refused): copied
  // now, since a refused stream's session is gone when its snapshot seals.
  auto reply = [response = session->response, done](const absl::Status& s, ReportPtr report) {
    v1::IngestResponse resp = response;
    if (s.ok() && report) {
      resp.set_sealed(true);
      *resp.mutable_report() = *report;
    }
    done(s, resp);
  };
  if (session->sealed) {
    session->ended = true;
    ResentShare resent{*session->sealed, session->rank, !session->resent_seqs.empty(), session->resent};
    const SnapshotKey key = resent.key;  // not a reference into `resent`, which the lambda takes
    return ReplySealed(key, [resent = std::move(resent), reply](const absl::Status& s, ReportPtr report) {
      if (s.ok() && report) {
        if (absl::Status c = CheckResent(resent, *report); !c.ok()) return reply(c, nullptr);
      }
      reply(s, std::move(report));
    });
  }
  std::shared_ptr<Snapshot> snap = session->snapshot;
  const Snapshot::Step step = snap->EndShare(session->rank, end, reply, clock_());
  // A refused EndOfShare leaves the share open (the client may correct it).
  session->ended = RefusalReason(step.status).empty();
  switch (step.kind) {
    case Snapshot::Step::kReply: return reply(step.status, step.report);
    case Snapshot::Step::kWait: return;
    case Snapshot::Step::kSeal: return queue_.EnqueueSeal(snap, std::chrono::steady_clock::now());
    case Snapshot::Step::kDiscard:
      Discard(snap, step.status);
      return done(step.status, session->response);
  }
}

absl::Status Engine::CheckResent(const ResentShare& resent, const v1::GenerationReport& report) {
  // A stream that only opened (no batch) asks for the report; reports sealed
  // before digests were stored cannot be compared and are answered as before.
  if (!resent.rows_resent || report.shares_size() == 0) return absl::OkStatus();
  const v1::ShareDigest* sealed = nullptr;
  for (const v1::ShareDigest& d : report.shares())
    if (d.rank() == resent.rank) sealed = &d;
  if (sealed && sealed->rows() == resent.digest.rows() && sealed->digest() == resent.digest.digest())
    return absl::OkStatus();
  const std::string was = sealed ? absl::StrCat("sealed with rank ", resent.rank, "'s share ",
                                                DigestString(sealed->rows(), sealed->digest()))
                                 : absl::StrCat("sealed without a share of rank ", resent.rank);
  return Refusal(StatusCode::kAlreadyExists, "share_conflict",
                 absl::StrFormat("%s was %s; this share (%s) has other data, and a sealed generation never changes: "
                                 "send it as the next generation, as a new run (resume never) or under another "
                                 "job name",
                                 KeyString(resent.key), was,
                                 DigestString(resent.digest.rows(), resent.digest.digest())));
}

void Engine::Close(const v1::CloseGenerationRequest& request, ReportCallback done) {
  absl::StatusOr<SnapshotKey> valid = ValidateKey(request.job(), request.tap(), request.generation(), request.run());
  if (!valid.ok()) return done(valid.status(), nullptr);
  SnapshotKey& key = *valid;
  std::shared_ptr<Snapshot> snap;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (request.run().empty()) key.run = registry_.LatestRun(key.job);
    if (auto it = open_.find(key); it != open_.end()) {
      snap = it->second;
    } else if (registry_.Find(request.job()) == nullptr) {
      return done(Refusal(StatusCode::kNotFound, "not_found", absl::StrCat("unknown job '", request.job(), "'")),
                  nullptr);
    } else if (!history_->Contains(key)) {
      return done(Refusal(StatusCode::kNotFound, "not_found",
                          absl::StrCat("no open snapshot or report for ", KeyString(key))),
                  nullptr);
    }
  }
  if (!snap) return ReplySealed(key, std::move(done));
  const Snapshot::Step step = snap->Close(done, clock_());
  if (step.kind == Snapshot::Step::kReply) return done(step.status, step.report);
  if (step.kind == Snapshot::Step::kSeal) queue_.EnqueueSeal(snap, std::chrono::steady_clock::now());
}

void Engine::ReplySealed(const SnapshotKey& key, ReportCallback done) {
  queue_.EnqueueTask([this, key, done = std::move(done)] {
    absl::StatusOr<ReportPtr> report = ReadSealed(key);
    if (!report.ok()) return done(report.status(), nullptr);
    done(absl::OkStatus(), *std::move(report));
  });
}

void Engine::DropLocked(const std::shared_ptr<Snapshot>& snap) {
  auto it = open_.find(snap->key());
  if (it == open_.end() || it->second != snap) return;
  open_.erase(it);
  tenants_.Closed(snap->params().tenant);
  const SnapshotKey& k = snap->key();
  const bool tap_open = std::any_of(open_.begin(), open_.end(), [&](const auto& o) {
    return o.first.job == k.job && o.first.tap == k.tap;
  });
  registry_.CloseSnapshot(k.job, k.tap, tap_open, history_->TapSealed(k.job, k.tap));
  metrics_->SetOpenSnapshots(static_cast<int64_t>(open_.size()));
}

void Engine::Discard(const std::shared_ptr<Snapshot>& snap, const absl::Status& error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    DropLocked(snap);
  }
  for (auto& w : snap->Fail(error)) w(error, nullptr);
}

void Engine::Abandon(IngestSession* session) {
  if (!session->snapshot || session->ended) return;
  std::shared_ptr<Snapshot> snap = std::move(session->snapshot);
  if (snap->Detach()) Discard(snap, absl::CancelledError(absl::StrCat("the stream that opened ", KeyString(snap->key()),
                                                                      " was refused before sending rows")));
}

absl::Status Engine::ExpiredError(const SnapshotKey& key) const {
  return Refusal(StatusCode::kFailedPrecondition, "expired",
                 absl::StrFormat("%s expired: no data for %d s (--snapshot-idle-timeout-s); its rows were discarded, "
                                 "send the share again under a new generation",
                                 KeyString(key), options_.snapshot_idle_timeout_s));
}

int64_t Engine::ExpireIdle() {
  const SteadyTime idle_since = clock_() - std::chrono::seconds(options_.snapshot_idle_timeout_s);
  std::vector<std::shared_ptr<Snapshot>> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::shared_ptr<Snapshot>> candidates;
    for (const auto& [key, snap] : open_) candidates.push_back(snap);
    for (const auto& snap : candidates) {
      if (!snap->Expire(idle_since, ExpiredError(snap->key()))) continue;
      DropLocked(snap);
      expired_order_.push_back(snap->key());
      expired_.insert(snap->key());
      if (expired_order_.size() > 4096) {
        expired_.erase(expired_order_.front());
        expired_order_.pop_front();
      }
      expired.push_back(snap);
    }
  }
  for (const auto& snap : expired) {
    metrics_->SnapshotExpired();
    const SnapshotKey& k = snap->key();
    logger_.Log(LogLevel::kWarning, "expiry",
                {{"job", k.job}, {"tap", k.tap}, {"generation", absl::StrCat(k.generation)},
                 {"idle_timeout_s", absl::StrCat(options_.snapshot_idle_timeout_s)}});
  }
  return static_cast<int64_t>(expired.size());
}

// ------------------------------------------------------------------ queries --

void Engine::GetHistory(const v1::GetHistoryRequest& request, v1::GetHistoryResponse* response,
                        std::function<void(const absl::Status&)> done) {
  if (!ValidName(request.job()))
    return done(Refusal(StatusCode::kInvalidArgument, "invalid_name",
                        "invalid job name: must match [A-Za-z0-9_.:-]{1,128}"));
  if (!request.tap().empty() && !ValidName(request.tap()))  // empty: every tap
    return done(Refusal(StatusCode::kInvalidArgument, "invalid_name",
                        "invalid tap name: must match [A-Za-z0-9_.:-]{1,128}"));
  if (absl::Status s = ValidateNames(request.job(), nullptr, request.run()); !s.ok()) return done(s);
  queue_.EnqueueTask([this, request, response, done = std::move(done)] {
    auto known = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      return registry_.Find(request.job()) != nullptr;
    };
    if (!known() && store_->shared()) RefreshJobs({request.job()});  // created on another replica
    if (!known())
      return done(Refusal(StatusCode::kNotFound, "not_found", absl::StrCat("unknown job '", request.job(), "'")));
    std::string run = request.run();
    if (run.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      run = registry_.LatestRun(request.job());
    }
    std::vector<v1::GenerationReport> reports;
    if (absl::Status s = history_->Reports(request.job(), run, request.tap(), &reports); !s.ok())
      return done(absl::UnavailableError(absl::StrCat("reading the history: ", s.message())));
    response->mutable_reports()->Reserve(static_cast<int>(reports.size()));
    for (auto& r : reports) response->add_reports()->Swap(&r);
    done(absl::OkStatus());
  });
}

void Engine::ListJobs(v1::ListJobsResponse* response, std::function<void(const absl::Status&)> done) {
  // `stored`: the shared store's view (generations counted there; read at
  // sync epoch `epoch`), else null.
  auto list = [this, response](const std::vector<JobSummary>* stored, uint64_t epoch) {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::string, const JobSummary*> in_store;
    if (stored) {
      for (const JobSummary& j : *stored) {
        if (!AdoptStoredJobLocked(j.job, epoch)) continue;
        for (const auto& [tap, m] : j.taps) registry_.RestoreTap(j.job.name, tap, m);
        in_store[j.job.name] = &j;
      }
      metrics_->SetJobs(static_cast<int64_t>(registry_.jobs().size()));
    }
    for (const auto& [name, job] : registry_.jobs()) {
      int64_t last = -1;
      int64_t generations = history_->Generations(name, registry_.LatestRun(name), &last);
      if (auto s = in_store.find(name); s != in_store.end() && s->second->generations >= generations) {
        generations = s->second->generations;
        last = s->second->last_generation;
      }
      *response->add_jobs() = registry_.Info(name, job, generations, last);
    }
  };
  if (!store_->shared()) {
    list(nullptr, 0);
    return done(absl::OkStatus());
  }
  queue_.EnqueueTask([this, list, done = std::move(done)] {
    const uint64_t epoch = NextSyncEpoch();
    absl::StatusOr<std::vector<JobSummary>> stored = store_->ListJobs();
    if (!stored.ok())
      return done(absl::UnavailableError(absl::StrCat("reading the jobs: ", stored.status().message())));
    std::map<std::string, int64_t> rows;
    for (const JobSummary& j : *stored) rows[j.job.name] = j.job.created_unix_ms;
    std::vector<StaleJob> stale;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stale = StaleJobsLocked(rows, epoch, /*complete=*/true);
    }
    ForgetJobs(stale);  // deleted on another replica: not listed
    list(&*stored, epoch);
    done(absl::OkStatus());
  });
}

void Engine::Configure(const v1::ConfigureJobRequest& request,
                       std::function<void(const absl::Status&, const v1::JobInfo&)> done, Tenant tenant) {
  if (absl::Status s = ValidateConfigure(request); !s.ok()) return done(s, {});
  // The SQLite write happens on the task lane, never on a gRPC thread.
  if (!queue_.TryEnqueueTask(
          [this, request, done, tenant = std::move(tenant)] { RunConfigure(request, tenant, done); }))
    done(Refusal(StatusCode::kResourceExhausted, "queue_full", "compute queue full (--compute-queue-capacity)"), {});
}

absl::StatusOr<StoredJob> Engine::PrepareConfigureLocked(const v1::ConfigureJobRequest& request,
                                                         const Tenant& tenant) const {
  if (registry_.Find(request.job()) == nullptr) {
    if (absl::Status s = tenants_.AdmitJob(tenant); !s.ok()) return s;
  }
  return registry_.PrepareConfigure(request.job(), request.config(), request.create());
}

// Prepare under mu_, commit (fsync) without it, apply under mu_. Configure
// tasks run one at a time on the task lane; if an Open changed the job while
// the commit ran so that the change is no longer allowed, the job's current
// configuration is committed again and the refusal returned.
void Engine::RunConfigure(const v1::ConfigureJobRequest& request, const Tenant& tenant,
                          const std::function<void(const absl::Status&, const v1::JobInfo&)>& done) {
  absl::StatusOr<StoredJob> updated;
  // A partial update applies to what another replica committed; a job deleted
  // there is forgotten here first (created anew when the request creates).
  ForgetJobs(RefreshJobs({request.job()}));
  {
    std::lock_guard<std::mutex> lock(mu_);
    updated = PrepareConfigureLocked(request, tenant);
  }
  if (!updated.ok()) return done(updated.status(), {});
  std::vector<int64_t> created;
  const absl::Status committed = store_->Commit({*updated}, {}, &created);
  store_ok_.store(committed.ok());
  if (ForgetIfDeleted(committed)) return done(committed, {});  // deleted elsewhere meanwhile
  if (!committed.ok()) {
    metrics_->StoreCommitFailed();
    logger_.Log(LogLevel::kError, "store_failure",
                {{"what", "configure"}, {"job", request.job()}, {"error", std::string(committed.message())}});
  }
  if (!committed.ok()) return done(absl::UnavailableError(absl::StrCat("store: ", committed.message())), {});
  v1::JobInfo info;
  std::optional<StoredJob> restore;
  absl::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<StoredJob> again = PrepareConfigureLocked(request, tenant);
    if (again.ok()) {
      const bool is_new = registry_.Find(request.job()) == nullptr;
      registry_.ApplyConfigure(*again, tenant.limited() ? tenant.key : "");
      NoteCommittedLocked({*updated}, created);
      if (is_new) {
        tenants_.JobCreated(tenant);
        metrics_->SetJobs(static_cast<int64_t>(registry_.jobs().size()));
      }
      int64_t last = -1;
      const int64_t generations = history_->Generations(request.job(), registry_.LatestRun(request.job()), &last);
      info = registry_.Info(request.job(), *registry_.Find(request.job()), generations, last);
      metrics_->SetThresholds(request.job(), Thresholds(info.config()));  // at once (issue 15 item 5)
    } else {
      status = again.status();
      if (const JobState* job = registry_.Find(request.job())) restore = JobRegistry::Stored(request.job(), *job);
    }
  }
  if (restore) store_ok_.store(store_->Commit({*restore}, {}).ok());
  done(status, info);
}

}  // namespace sigma::server
