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
  return absl::StrFormat("job '%s' tap '%s' generation %d", k.job, k.tap, k.generation);
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

// ----------------------------------------------------------------- SeqRuns --

bool SeqRuns::contains(int64_t seq) const {
  auto it = runs_.upper_bound(seq);  // first run starting after seq
  return it != runs_.begin() && std::prev(it)->second >= seq;
}

int SeqRuns::RunDelta(int64_t seq) const {
  auto next = runs_.upper_bound(seq);
  const bool joins_prev = next != runs_.begin() && std::prev(next)->second == seq - 1;
  const bool joins_next = next != runs_.end() && next->first == seq + 1;
  return joins_prev && joins_next ? -1 : (joins_prev || joins_next ? 0 : 1);
}

void SeqRuns::insert(int64_t seq) {
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

// ---------------------------------------------------------------- Snapshot --

Snapshot::Snapshot(Params params, std::optional<int64_t> corpus_size, MemoryBudget::Charge charge, SteadyTime now)
    : p_(std::move(params)),
      corpus_size_(corpus_size),
      sketch_(std::make_unique<sigma::BottomKSketch>(p_.config.seed(), p_.k)),
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

absl::StatusOr<bool> Snapshot::AddRows(int32_t rank_index, const v1::Batch& batch, const sigma::EnergyStats& energy,
                                       const std::string& where, SteadyTime now) {
  std::lock_guard<std::mutex> lock(mu_);
  RankState& rank = ranks_[static_cast<size_t>(rank_index)];
  if (expired_) return error_;
  if (state_ != State::kOpen || rank.seqs.contains(batch.seq())) return false;
  const int64_t rows = batch.rows();
  if (rank.finished)
    return Refusal(absl::StatusCode::kFailedPrecondition, "finished_rank",
                   absl::StrFormat("%s: rank %d already sent EndOfShare for %s", where, rank_index,
                                   KeyString(p_.key)));
  if (corpus_size_ && total_rows_ + rows > *corpus_size_)
    return Refusal(absl::StatusCode::kInvalidArgument, "corpus_exceeded",
                   absl::StrFormat("%s: %d rows would exceed the declared corpus_size %d (%d streamed)", where,
                                   rows, *corpus_size_, total_rows_));
  // Memory: the row store grows to at most min(k, kept + rows) slots; the
  // rank's seq runs by at most one (a run joining two gives its bytes back).
  const size_t rb = p_.row_bytes;
  const size_t needed = static_cast<size_t>(std::min<int64_t>(p_.k, sketch_->size() + rows)) * rb;
  size_t new_capacity = rows_.capacity();
  if (needed > rows_.capacity())
    new_capacity = std::min(static_cast<size_t>(p_.k) * rb, std::max(needed, 2 * rows_.capacity()));
  const int64_t growth = static_cast<int64_t>(new_capacity - rows_.capacity()) +
                         rank.seqs.RunDelta(batch.seq()) * SeqRuns::kBytesPerRun;
  int64_t would_hold = 0;
  const MemoryBudget* refused_by = nullptr;
  if (!charge_.Grow(growth, &would_hold, &refused_by))
    return Refusal(absl::StatusCode::kResourceExhausted, refused_by->naming().reason,
                   absl::StrFormat("%s: open snapshots would hold %d bytes > %s = %d", where, would_hold,
                                   refused_by->naming().limit, refused_by->limit()));
  rows_.reserve(new_capacity);
  const uint8_t* data = reinterpret_cast<const uint8_t*>(batch.data().data());
  for (int64_t i = 0; i < rows; ++i) {
    const uint64_t id = batch.sample_ids_size() != 0 ? batch.sample_ids(static_cast<int>(i))
                                                     : sigma::DefaultSampleId(rank_index, rank.rows + i);
    const int64_t slot = sketch_->Offer(id);
    if (slot < 0) continue;
    const size_t end = static_cast<size_t>(slot + 1) * rb;
    if (rows_.size() < end) rows_.resize(end);
    std::memcpy(rows_.data() + static_cast<size_t>(slot) * rb, data + static_cast<size_t>(i) * rb, rb);
  }
  rank.seqs.insert(batch.seq());
  rank.rows += rows;
  rank.energy.Merge(energy);
  total_rows_ += rows;
  last_activity_ = now;
  return true;
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
  std::vector<uint8_t>().swap(rows_);
  sketch_.reset();
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
  // I_A sorted by (priority, id): bitwise independent of arrival order.
  const std::vector<sigma::BottomKSketch::Entry> kept = sketch_ ? sketch_->Sorted()
                                                                : std::vector<sigma::BottomKSketch::Entry>{};
  job->rows.resize(kept.size() * p_.row_bytes);
  for (size_t j = 0; j < kept.size(); ++j)
    std::memcpy(job->rows.data() + j * p_.row_bytes, rows_.data() + static_cast<size_t>(kept[j].slot) * p_.row_bytes,
                p_.row_bytes);
  ReleaseRows();
  double counted = 0;
  job->energy = MergedEnergy(&counted);
  job->n = corpus_size_ ? static_cast<double>(*corpus_size_) : counted;
  job->ranks_finished = finished_;
  job->closed_explicitly = closed_explicitly_;
  job->seal_requested = seal_requested_;
  job->input.rows = sigma::RowBlock{job->rows.data(), p_.dtype, static_cast<int64_t>(kept.size()), p_.m};
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
  return charge_.bytes();
}

SteadyTime Snapshot::last_activity() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_activity_;
}

}  // namespace sigma::server
