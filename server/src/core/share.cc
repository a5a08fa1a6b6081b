#include "sigma/server/share.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "sigma/kernels/ingest_rules.h"

namespace sigma::server {

namespace v1 = sigma::v1;

namespace {
constexpr uint64_t kRowSeed = 0x5349474d41524f57ull;  // "SIGMAROW"

constexpr uint64_t kLaneMul = 0x9e3779b97f4a7c15ull;

uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// One step of a lane: a bijection of the lane for a fixed word w, so one
// changed word always changes the lane; the rotation carries high bits down.
uint64_t Step(uint64_t lane, uint64_t w) { return Rotl((lane ^ w) * kLaneMul, 29); }

// Four independent lanes over the 8-byte words (no long dependency chain),
// the tail zero-padded, the id mixed in, then SplitMix64. A row's hash is
// InitLanes, Blocks over the whole 32-byte blocks, then FinishRow.
struct Lanes {
  uint64_t v[4];
};

Lanes InitLanes(size_t bytes) { return Lanes{{kRowSeed ^ bytes, kRowSeed + 1, kRowSeed + 2, kRowSeed + 3}}; }

void Blocks(const uint8_t* row, size_t bytes, Lanes& lanes) {
  for (size_t i = 0; i + 32 <= bytes; i += 32) {
    uint64_t w[4];
    std::memcpy(w, row + i, 32);
    for (int k = 0; k < 4; ++k) lanes.v[k] = Step(lanes.v[k], w[k]);
  }
}

// Blocks of two rows at once: eight independent chains keep the multiplier
// busy (about 1.4x the bytes per second of one row at a time; the same values).
void Blocks2(const uint8_t* a, const uint8_t* b, size_t bytes, Lanes& la, Lanes& lb) {
  for (size_t i = 0; i + 32 <= bytes; i += 32) {
    uint64_t wa[4], wb[4];
    std::memcpy(wa, a + i, 32);
    std::memcpy(wb, b + i, 32);
    for (int k = 0; k < 4; ++k) {
      la.v[k] = Step(la.v[k], wa[k]);
      lb.v[k] = Step(lb.v[k], wb[k]);
    }
  }
}

// The words after the last whole block, the zero-padded tail, the id, the mix.
uint64_t FinishRow(const uint8_t* row, size_t bytes, Lanes& lanes, bool has_id, uint64_t id) {
  size_t i = bytes / 32 * 32;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, row + i, 8);
    lanes.v[0] = Step(lanes.v[0], w);
  }
  if (i < bytes) {
    uint64_t w = 0;
    std::memcpy(&w, row + i, bytes - i);
    lanes.v[1] = Step(lanes.v[1], w);
  }
  if (has_id) lanes.v[2] = Step(lanes.v[2], sigma::SplitMix64(id + 1));
  uint64_t h = sigma::SplitMix64(lanes.v[0]);
  for (int k = 1; k < 4; ++k) h = sigma::SplitMix64(h ^ lanes.v[k]);
  return h;
}
}  // namespace

uint64_t BatchDigest(const v1::Batch& batch, size_t row_bytes) {
  const auto* data = reinterpret_cast<const uint8_t*>(batch.data().data());
  const bool ids = batch.sample_ids_size() != 0;
  auto id_of = [&](int64_t r) -> uint64_t {
    return ids && r < batch.sample_ids_size() ? batch.sample_ids(static_cast<int>(r)) : 0;
  };
  uint64_t sum = 0;
  const int64_t rows = std::min<int64_t>(batch.rows(), row_bytes ? batch.data().size() / row_bytes : 0);
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    const uint8_t* a = data + static_cast<size_t>(r) * row_bytes;
    const uint8_t* b = a + row_bytes;
    Lanes la = InitLanes(row_bytes), lb = InitLanes(row_bytes);
    Blocks2(a, b, row_bytes, la, lb);
    sum += FinishRow(a, row_bytes, la, ids, id_of(r)) + FinishRow(b, row_bytes, lb, ids, id_of(r + 1));
  }
  if (r < rows) {
    const uint8_t* a = data + static_cast<size_t>(r) * row_bytes;
    Lanes la = InitLanes(row_bytes);
    Blocks(a, row_bytes, la);
    sum += FinishRow(a, row_bytes, la, ids, id_of(r));
  }
  return sum;
}

std::string DigestString(int64_t rows, uint64_t digest) { return absl::StrFormat("%d:%016x", rows, digest); }

std::string GenerationDigest(int32_t world_size, const std::vector<v1::ShareDigest>& shares) {
  uint64_t h = sigma::SplitMix64(kRowSeed ^ static_cast<uint64_t>(world_size));
  for (const v1::ShareDigest& s : shares) {
    h = sigma::SplitMix64(h ^ static_cast<uint64_t>(s.rank()));
    h = sigma::SplitMix64(h ^ static_cast<uint64_t>(s.rows()));
    h = sigma::SplitMix64(h ^ s.digest());
    h = sigma::SplitMix64(h ^ (s.finished() ? 1u : 2u));
  }
  return absl::StrFormat("%016x", h);
}

BatchLog::Seen BatchLog::Check(int64_t seq, uint64_t digest) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return Seen::kNew;
  return it->second == digest ? Seen::kSame : Seen::kDifferent;
}

// ---------------------------------------------------------------- RowStore --

RowStore::RowStore(uint64_t seed, int64_t k, size_t row_bytes, MemoryBudget::Charge charge)
    : k_(k), row_bytes_(row_bytes), sketch_(std::make_unique<sigma::BottomKSketch>(seed, k)),
      charge_(std::move(charge)) {}

bool RowStore::Reserve(int64_t rows, bool bookkeeping, int64_t* would_hold, const MemoryBudget** refused_by) {
  const int64_t kept = size();
  const size_t needed = static_cast<size_t>(std::min<int64_t>(k_, kept + rows)) * row_bytes_;
  if (needed <= rows_.capacity()) return true;
  const size_t new_capacity =
      std::min(static_cast<size_t>(k_) * row_bytes_, std::max(needed, 2 * rows_.capacity()));
  int64_t growth = static_cast<int64_t>(new_capacity - rows_.capacity());
  if (bookkeeping && row_bytes_ > 0)
    growth += kBookkeepingPerSlot * static_cast<int64_t>((new_capacity - rows_.capacity()) / row_bytes_);
  if (!charge_.Grow(growth, would_hold, refused_by)) return false;
  rows_.reserve(new_capacity);
  return true;
}

void RowStore::Offer(uint64_t id, const uint8_t* row) {
  const int64_t slot = sketch_->Offer(id);
  if (slot < 0) return;
  const size_t end = static_cast<size_t>(slot + 1) * row_bytes_;
  if (rows_.size() < end) rows_.resize(end);
  std::memcpy(rows_.data() + static_cast<size_t>(slot) * row_bytes_, row, row_bytes_);
}

void RowStore::Absorb(const RowStore& other) {
  if (!other.sketch_) return;
  const std::vector<sigma::BottomKSketch::Entry> entries = other.sketch_->Sorted();
  if (!Reserve(static_cast<int64_t>(entries.size()), false, nullptr, nullptr)) {
    const size_t target = static_cast<size_t>(std::min<int64_t>(k_, size() + static_cast<int64_t>(entries.size()))) *
                          row_bytes_;
    charge_.Force(static_cast<int64_t>(target - std::min(target, rows_.capacity())));
    rows_.reserve(target);
  }
  for (const auto& e : entries)
    Offer(e.id, other.rows_.data() + static_cast<size_t>(e.slot) * row_bytes_);
}

std::vector<uint8_t> RowStore::SortedRows() const {
  std::vector<uint8_t> out;
  if (!sketch_) return out;
  const std::vector<sigma::BottomKSketch::Entry> kept = sketch_->Sorted();
  out.resize(kept.size() * row_bytes_);
  for (size_t j = 0; j < kept.size(); ++j)
    std::memcpy(out.data() + j * row_bytes_, rows_.data() + static_cast<size_t>(kept[j].slot) * row_bytes_,
                row_bytes_);
  return out;
}

void RowStore::Release() {
  charge_.Release();
  std::vector<uint8_t>().swap(rows_);
  sketch_.reset();
}

}  // namespace sigma::server
