#include "sigma/server/snapshot.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sigma/server/refusal.h"

namespace sigma::server {

namespace v1 = sigma::v1;

std::string KeyString(const SnapshotKey& k) {
  if (k.run == kFirstRun) return absl::StrFormat("job '%s' tap '%s' generation %d", k.job, k.tap, k.generation);
  return absl::StrFormat("job '%s' run '%s' tap '%s' generation %d", k.job, k.run, k.tap, k.generation);
}

// ------------------------------------------------------------ MemoryBudget --

bool MemoryBudget::Add(int64_t delta, int64_t* would_hold, const MemoryBudget** refused_by) {
  const int64_t before = used_.fetch_add(delta);
  if (delta > 0 && before + delta > limit_) {
    used_.fetch_sub(delta);
    if (would_hold) *would_hold = before + delta;
    if (refused_by) *refused_by = this;
    return false;
  }
  if (parent_ && !parent_->Add(delta, would_hold, refused_by)) {
    used_.fetch_sub(delta);
    return false;
  }
  if (on_change_) on_change_(before + delta);
  return true;
}

void MemoryBudget::AddForced(int64_t delta) {
  used_.fetch_add(delta);
  if (parent_) parent_->AddForced(delta);
  if (on_change_) on_change_(used_.load());
}

MemoryBudget::Charge& MemoryBudget::Charge::operator=(Charge&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = other.budget_;
    bytes_ = other.bytes_;
    other.bytes_ = 0;
  }
  return *this;
}

void BackendScratchBudget::Bind(server::MemoryBudget* budget) {
  std::lock_guard<std::mutex> lock(mu_);
  charge_ = server::MemoryBudget::Charge(budget);
  charge_.Force(unbound_);  // what the backends already hold counts from now on
  unbound_ = 0;
  bound_ = true;
}

void BackendScratchBudget::Unbind() {
  std::lock_guard<std::mutex> lock(mu_);
  unbound_ += charge_.bytes();
  charge_.Release();
  charge_ = server::MemoryBudget::Charge();
  bound_ = false;
}

bool BackendScratchBudget::TryCharge(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!bound_) {
    unbound_ += bytes;
    return true;
  }
  return charge_.Grow(bytes);
}

void BackendScratchBudget::Release(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!bound_) {
    unbound_ -= bytes;
    return;
  }
  charge_.Grow(-bytes);
}

int64_t BackendScratchBudget::held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return charge_.bytes() + unbound_;
}

bool MemoryBudget::Charge::Grow(int64_t delta, int64_t* would_hold, const MemoryBudget** refused_by) {
  if (delta == 0) return true;
  if (!budget_->Add(delta, would_hold, refused_by)) return false;
  bytes_ += delta;
  return true;
}

void MemoryBudget::Charge::Force(int64_t bytes) {
  budget_->AddForced(bytes);
  bytes_ += bytes;
}

void MemoryBudget::Charge::Release() {
  if (budget_ && bytes_ != 0) budget_->Add(-bytes_, nullptr, nullptr);
  bytes_ = 0;
}

// ---------------------------------------------------------------- Snapshot --

Snapshot::Snapshot(Params params, std::optional<int64_t> corpus_size, MemoryBudget::Charge charge, SteadyTime now)
    : p_(std::move(params)),
      corpus_size_(corpus_size),
      committed_(std::make_unique<RowStore>(p_.config.seed(), p_.k, p_.row_bytes, MemoryBudget::Charge(charge.budget()))),
      charge_(std::move(charge)),
      ranks_(static_cast<size_t>(p_.world_size)),
      opened_(now),
      last_activity_(now) {}

absl::Status Snapshot::Join(int32_t world_size, int32_t m, sigma::DType dtype, std::optional<int64_t> corpus_size,
                            const std::string& dtype_name, SteadyTime now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (world_size != p_.world_size)
    return Refusal(absl::StatusCode::kFailedPrecondition, "invalid_rank",
                   absl::StrFormat("world_size %d differs from %d declared by the other ranks of %s", world_size,
                                   p_.world_size, KeyString(p_.key)));
  if (m != p_.m)
    return Refusal(absl::StatusCode::kInvalidArgument, "dimension_mismatch",
                   absl::StrFormat("m = %d differs from m = %d of %s", m, p_.m, KeyString(p_.key)));
  if (dtype != p_.dtype)
    return Refusal(absl::StatusCode::kInvalidArgument, "invalid_dtype",
                   absl::StrFormat("dtype %s differs from %s used by the other ranks of %s", dtype_name,
                                   sigma::DTypeName(p_.dtype), KeyString(p_.key)));
  if (corpus_size) {
    if (corpus_size_ && *corpus_size_ != *corpus_size)
      return Refusal(absl::StatusCode::kInvalidArgument, "invalid_request",
                     absl::StrFormat("corpus_size %d differs from %d declared by another rank", *corpus_size,
                                     *corpus_size_));
    if (!corpus_size_) {
      if (*corpus_size < total_rows_)
        return Refusal(absl::StatusCode::kInvalidArgument, "corpus_exceeded",
                       absl::StrFormat("corpus_size %d is smaller than the %d rows already streamed",
                                       *corpus_size, total_rows_));
      corpus_size_ = corpus_size;
    }
  }
  last_activity_ = now;
  return absl::OkStatus();
}

bool Snapshot::IsDuplicate(int32_t rank, int64_t seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (expired_) return false;
  return state_ != State::kOpen || ranks_[static_cast<size_t>(rank)].seqs.contains(seq);
}

int64_t Snapshot::ShareRows(int32_t rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  return ranks_[static_cast<size_t>(rank)].rows;
}

absl::StatusOr<bool> Snapshot::AddRows(int32_t rank_index, const v1::Batch& batch, const sigma::EnergyStats& energy,
                                       uint64_t digest, const std::string& where, SteadyTime now) {
  std::lock_guard<std::mutex> lock(mu_);
  RankState& rank = ranks_[static_cast<size_t>(rank_index)];
  if (expired_) return error_;
  if (state_ != State::kOpen) return false;
  switch (rank.seqs.Check(batch.seq(), digest)) {
    case BatchLog::Seen::kSame: return false;
    case BatchLog::Seen::kDifferent:
      return Refusal(absl::StatusCode::kAlreadyExists, "share_conflict",
                     absl::StrFormat("%s: rank %d already sent batch seq %d of %s with other rows: two senders claim "
                                     "rank %d of %d (give each process its RANK and WORLD_SIZE, or create the "
                                     "Monitor after init_process_group), or a retry sent different data; send it "
                                     "as the next generation or under another job name",
                                     where, rank_index, batch.seq(), KeyString(p_.key), rank_index, p_.world_size));
    case BatchLog::Seen::kNew: break;
  }
  const int64_t rows = batch.rows();
  if (rank.finished)
    return Refusal(absl::StatusCode::kFailedPrecondition, "finished_rank",
                   absl::StrFormat("%s: rank %d already sent EndOfShare for %s", where, rank_index,
                                   KeyString(p_.key)));
  if (corpus_size_ && total_rows_ + rows > *corpus_size_)
    return Refusal(absl::StatusCode::kInvalidArgument, "corpus_exceeded",
                   absl::StrFormat("%s: %d rows would exceed the declared corpus_size %d (%d streamed)", where,
                                   rows, *corpus_size_, total_rows_));
  // Memory: the rank's row store grows to at most min(k, kept + rows) slots
  // (rows and sketch bookkeeping); the seq log by one entry.
  if (!rank.pending)
    rank.pending = std::make_unique<RowStore>(p_.config.seed(), p_.k, p_.row_bytes,
                                              MemoryBudget::Charge(charge_.budget()));
  int64_t would_hold = 0;
  const MemoryBudget* refused_by = nullptr;
  auto exhausted = [&] {
    return Refusal(absl::StatusCode::kResourceExhausted, refused_by->naming().reason,
                   absl::StrFormat("%s: open snapshots would hold %d bytes > %s = %d", where, would_hold,
                                   refused_by->naming().limit, refused_by->limit()));
  };
  if (!charge_.Grow(BatchLog::kBytesPerSeq, &would_hold, &refused_by)) return exhausted();
  if (!rank.pending->Reserve(rows, true, &would_hold, &refused_by)) {
    charge_.Grow(-BatchLog::kBytesPerSeq);
    return exhausted();
  }
  const uint8_t* data = reinterpret_cast<const uint8_t*>(batch.data().data());
  for (int64_t i = 0; i < rows; ++i) {
    const uint64_t id = batch.sample_ids_size() != 0 ? batch.sample_ids(static_cast<int>(i))
                                                     : sigma::DefaultSampleId(rank_index, rank.rows + i);
    rank.pending->Offer(id, data + static_cast<size_t>(i) * p_.row_bytes);
  }
  rank.seqs.insert(batch.seq(), digest);
  rank.rows += rows;
  rank.digest += digest;
  rank.energy.Merge(energy);
  total_rows_ += rows;
  last_activity_ = now;
  return true;
}

void Snapshot::DropShare(int32_t rank_index) {
  std::lock_guard<std::mutex> lock(mu_);
  RankState& rank = ranks_[static_cast<size_t>(rank_index)];
  if (rank.finished || state_ != State::kOpen) return;
  if (rank.pending) rank.pending->Release();
  rank.pending.reset();
  charge_.Grow(-BatchLog::kBytesPerSeq * rank.seqs.size());
  rank.seqs.clear();
  total_rows_ -= rank.rows;
  rank.rows = 0;
  rank.digest = 0;
  rank.energy = sigma::EnergyStats();
}

v1::ShareDigest Snapshot::Digest(int32_t rank_index) const {
  std::lock_guard<std::mutex> lock(mu_);
  const RankState& rank = ranks_[static_cast<size_t>(rank_index)];
  v1::ShareDigest d;
  d.set_rank(rank_index);
  d.set_rows(rank.rows);
  d.set_digest(rank.digest);
  d.set_finished(rank.finished);
  return d;
}

void Snapshot::Commit(RankState& rank) {
  if (!rank.pending) return;
  if (committed_->size() == 0) {
    committed_->Release();
    committed_ = std::move(rank.pending);
  } else {
    committed_->Absorb(*rank.pending);
    rank.pending->Release();
    rank.pending.reset();
  }
}

// ------------------------------------------------------------ state machine --

std::optional<Snapshot::Step> Snapshot::Await(ReportCallback& waiter) {
  switch (state_) {
    case State::kSealed: return Step{Step::kReply, absl::OkStatus(), report_};
    case State::kFailed: return Step{Step::kReply, error_, nullptr};
    case State::kSealing:
      waiters_.push_back(std::move(waiter));
      return Step{Step::kWait, absl::OkStatus(), nullptr};
    case State::kOpen: break;
  }
  return std::nullopt;
}

Snapshot::Step Snapshot::RequestSeal(bool closed_explicitly, ReportCallback waiter, SteadyTime now) {
  state_ = State::kSealing;
  closed_explicitly_ = closed_explicitly;
  seal_requested_ = now;
  waiters_.push_back(std::move(waiter));
  return Step{Step::kSeal, absl::OkStatus(), nullptr};
}

Snapshot::Step Snapshot::EndShare(int32_t rank_index, const v1::EndOfShare* end, ReportCallback waiter,
                                  SteadyTime now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (std::optional<Step> settled = Await(waiter)) return *settled;
  RankState& rank = ranks_[static_cast<size_t>(rank_index)];
  if (end == nullptr || rank.finished) return Step{};
  if (end->count() < 0 || (end->count() > 0 && end->count() < rank.rows))
    return Step{Step::kReply,
                Refusal(absl::StatusCode::kInvalidArgument, "invalid_request",
                        absl::StrFormat("EndOfShare.count = %d is smaller than the %d rows rank %d sent",
                                        end->count(), rank.rows, rank_index)),
                nullptr};
  auto bad_energy = [](bool has, double v) { return has && !(v >= 0 && std::isfinite(v)); };
  if (bad_energy(end->has_max_energy(), end->max_energy()) || bad_energy(end->has_mean_energy(), end->mean_energy()) ||
      (end->has_rho_violations() && end->rho_violations() < 0))
    return Step{Step::kReply,
                Refusal(absl::StatusCode::kInvalidArgument, "invalid_request",
                        "EndOfShare: max_energy and mean_energy must be finite and >= 0, rho_violations >= 0"),
                nullptr};
  rank.finished = true;
  rank.end = *end;
  Commit(rank);
  last_activity_ = now;
  if (++finished_ < p_.world_size) return Step{};
  if (total_rows_ == 0) {
    state_ = State::kFailed;
    error_ = absl::FailedPreconditionError(
        absl::StrCat("every rank finished but no rows were sent for ", KeyString(p_.key)));
    ReleaseRows();
    return Step{Step::kDiscard, error_, nullptr};
  }
  return RequestSeal(false, std::move(waiter), now);
}

Snapshot::Step Snapshot::Close(ReportCallback waiter, SteadyTime now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (std::optional<Step> settled = Await(waiter)) return *settled;
  if (total_rows_ == 0)
    return Step{Step::kReply,
                Refusal(absl::StatusCode::kFailedPrecondition, "not_open",
                        absl::StrCat("cannot close ", KeyString(p_.key), ": no rows received yet")),
                nullptr};
  return RequestSeal(finished_ < p_.world_size, std::move(waiter), now);
}

bool Snapshot::Expire(SteadyTime idle_since, const absl::Status& error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ != State::kOpen || last_activity_ > idle_since) return false;
  state_ = State::kFailed;
  error_ = error;
  expired_ = true;
  ReleaseRows();
  return true;
}

void Snapshot::Attach() {
  std::lock_guard<std::mutex> lock(mu_);
  ++attached_;
}

bool Snapshot::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  --attached_;
  return attached_ <= 0 && state_ == State::kOpen && total_rows_ == 0 && finished_ == 0;
}

std::vector<ReportCallback> Snapshot::Settle(const absl::Status& status, ReportPtr report) {
  std::lock_guard<std::mutex> lock(mu_);
  state_ = status.ok() ? State::kSealed : State::kFailed;
  if (status.ok()) report_ = std::move(report);
  else error_ = status;
  ReleaseRows();
  return std::move(waiters_);
}

std::vector<ReportCallback> Snapshot::Fail(const absl::Status& error) { return Settle(error, nullptr); }

bool Snapshot::Cancel(const absl::Status& error, std::vector<ReportCallback>* waiters) {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ != State::kOpen) return false;
  state_ = State::kFailed;
  error_ = error;
  expired_ = true;  // as after an expiry: its ranks' later Batches get `error`
  ReleaseRows();
  *waiters = std::move(waiters_);
  return true;
}

Snapshot::Progress Snapshot::progress() const {
  std::lock_guard<std::mutex> lock(mu_);
  Progress p;
  p.state = state_;
  for (int32_t r = 0; r < static_cast<int32_t>(ranks_.size()); ++r)
    (ranks_[static_cast<size_t>(r)].finished ? p.ranks_finished : p.ranks_missing).push_back(r);
  p.rows = total_rows_;
  p.opened = opened_;
  p.last_activity = last_activity_;
  return p;
}

void Snapshot::ReleaseRows() {
  charge_.Release();
  committed_->Release();
  for (RankState& r : ranks_) {
    if (r.pending) r.pending->Release();
    r.pending.reset();
  }
}

// The energies of every rank, with the client's reported values where it sent
// them (sigma::MergeReportedEnergy, the one rule). *counted: rows declared.
sigma::EnergyStats Snapshot::MergedEnergy(double* counted) const {
  sigma::EnergyStats merged;
  *counted = 0;
  for (const RankState& r : ranks_) {
    const int64_t count = r.end && r.end->count() > 0 ? r.end->count() : r.rows;
    *counted += static_cast<double>(count);
    sigma::ReportedEnergy reported;
    if (r.end) {
      if (r.end->has_max_energy()) reported.max_energy = r.end->max_energy();
      if (r.end->has_mean_energy()) reported.mean_energy = r.end->mean_energy();
      if (r.end->has_rho_violations()) reported.rho_violations = r.end->rho_violations();
    }
    merged.Merge(sigma::MergeReportedEnergy(r.energy, count, reported, p_.rho));
  }
  return merged;
}

void Snapshot::Gather(SealJob* job) {
  std::lock_guard<std::mutex> lock(mu_);
  // An explicit close seals the unfinished ranks' rows too.
  for (RankState& r : ranks_) Commit(r);
  // I_A sorted by (priority, id): bitwise independent of arrival order.
  job->rows = committed_->SortedRows();
  const int64_t kept = p_.row_bytes ? static_cast<int64_t>(job->rows.size() / p_.row_bytes) : 0;
  for (size_t i = 0; i < ranks_.size(); ++i) {
    const RankState& r = ranks_[i];
    if (r.rows == 0 && !r.finished) continue;
    v1::ShareDigest* d = &job->shares.emplace_back();
    d->set_rank(static_cast<int32_t>(i));
    d->set_rows(r.rows);
    d->set_digest(r.digest);
    d->set_finished(r.finished);
  }
  ReleaseRows();
  double counted = 0;
  job->energy = MergedEnergy(&counted);
  job->n = corpus_size_ ? static_cast<double>(*corpus_size_) : counted;
  job->ranks_finished = finished_;
  job->closed_explicitly = closed_explicitly_;
  job->seal_requested = seal_requested_;
  job->input.rows = sigma::RowBlock{job->rows.data(), p_.dtype, kept, p_.m};
  job->input.preprocessing = p_.prep;
  job->input.corpus_size = job->n;
  job->input.delta = p_.delta;
  job->input.rho = p_.rho;
}

Snapshot::State Snapshot::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

int64_t Snapshot::total_rows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_rows_;
}

int64_t Snapshot::charged_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t bytes = charge_.bytes() + committed_->charged_bytes();
  for (const RankState& r : ranks_)
    if (r.pending) bytes += r.pending->charged_bytes();
  return bytes;
}

SteadyTime Snapshot::last_activity() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_activity_;
}

}  // namespace sigma::server
