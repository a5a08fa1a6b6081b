// One rank's share of a snapshot: its digest (run identity, issue 15 item 1)
// and the row store that keeps a share apart until it is committed (atomic
// shares, issue 15 item 2).
//
// Digest: a row's hash runs four multiply-rotate lanes over its wire bytes (8
// at a time, the tail zero-padded) and its explicit sample id (default ids
// depend on the arrival order and are left out), finished with SplitMix64; a batch's digest is the sum of its rows'
// hashes mod 2^64 and a share's the sum over its distinct batch seqs. So the
// digest does not depend on the order of rows or batches, nor on how the rows
// were cut into batches. Not cryptographic: it tells a retry of the same data
// from different data, it does not defend against a forger.
//
// RowStore: a bottom-k sketch with the rows of its kept entries (wire dtype)
// and one memory charge for them; one per rank while its share streams, one
// for the committed shares (Snapshot). Not thread-safe (the Snapshot's mutex).
#ifndef SIGMA_SERVER_SHARE_H_
#define SIGMA_SERVER_SHARE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "sigma/kernels/sketch.h"
#include "sigma/server/memory_budget.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::server {

// Sum of the row hashes of `batch` (rows of `row_bytes` bytes each). O(bytes).
uint64_t BatchDigest(const sigma::v1::Batch& batch, size_t row_bytes);

// "ROWS:16 hex digits" of a share, as stored in ShareDigest and messages.
std::string DigestString(int64_t rows, uint64_t digest);

// The generation's digest over its shares (rank order, world_size included):
// 16 hex digits, GenerationReport.data_digest.
std::string GenerationDigest(int32_t world_size, const std::vector<sigma::v1::ShareDigest>& shares);

// The batch seqs one rank has sent with each batch's digest, so a repeated
// seq is a duplicate only when its rows are the same (two senders that claim
// one rank are told, not merged). Each seq is charged kBytesPerSeq.
class BatchLog {
 public:
  static constexpr int64_t kBytesPerSeq = 32;  // a flat_hash_map slot with its control bytes, rounded up
  enum class Seen { kNew, kSame, kDifferent };
  Seen Check(int64_t seq, uint64_t digest) const;
  bool contains(int64_t seq) const { return seqs_.contains(seq); }
  void insert(int64_t seq, uint64_t digest) { seqs_.emplace(seq, digest); }
  int64_t size() const { return static_cast<int64_t>(seqs_.size()); }
  void clear() { absl::flat_hash_map<int64_t, uint64_t>().swap(seqs_); }

 private:
  absl::flat_hash_map<int64_t, uint64_t> seqs_;
};

class RowStore {
 public:
  // Bytes charged per kept slot besides the row: the sketch's heap entry and id map.
  static constexpr int64_t kBookkeepingPerSlot = 48;

  RowStore(uint64_t seed, int64_t k, size_t row_bytes, MemoryBudget::Charge charge);

  // Makes room for `rows` more offered rows (the store never exceeds k slots):
  // false, nothing changed, when the charge cannot grow (*would_hold,
  // *refused_by as MemoryBudget::Charge::Grow). `bookkeeping`: also charge the
  // sketch's 48 bytes per new slot (false when they were reserved up front).
  bool Reserve(int64_t rows, bool bookkeeping, int64_t* would_hold, const MemoryBudget** refused_by);
  // Offers row `id` with its bytes; copies them when the sketch keeps it.
  void Offer(uint64_t id, const uint8_t* row);
  // Offers every kept row of `other` to this store (reserving beyond the
  // budget if it must: the rows already are in memory, `other` is released next).
  void Absorb(const RowStore& other);
  int64_t size() const { return sketch_ ? sketch_->size() : 0; }
  // The kept rows sorted by (priority, id), concatenated.
  std::vector<uint8_t> SortedRows() const;
  // Frees the rows and the sketch and returns their bytes to the budget.
  void Release();
  int64_t charged_bytes() const { return charge_.bytes(); }

 private:
  int64_t k_;
  size_t row_bytes_;
  std::unique_ptr<sigma::BottomKSketch> sketch_;
  std::vector<uint8_t> rows_;  // slot s at s * row_bytes_
  MemoryBudget::Charge charge_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_SHARE_H_
