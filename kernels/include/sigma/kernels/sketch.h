// The bottom-k sub-sampler that picks I_A (spec §2). Thread-compatible.
//
// priority(seed, id) = SketchPriority (ingest_rules.h); the sketch keeps the
// k distinct ids of smallest (priority, id). The result does not depend on the
// arrival order, and the bottom-k of a union equals the bottom-k of the union of
// local bottom-k sets, so ranks may pre-sketch and the server merges.
#ifndef SIGMA_KERNELS_SKETCH_H_
#define SIGMA_KERNELS_SKETCH_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "sigma/kernels/ingest_rules.h"  // SplitMix64, SketchPriority, DefaultSampleId

namespace sigma {

// Keeps the k entries of smallest (priority, id) among distinct ids, each with a
// slot number in [0, k) where the caller keeps the entry's payload (a row).
class BottomKSketch {
 public:
  struct Entry {
    uint64_t priority;
    uint64_t id;
    int64_t slot;
  };

  BottomKSketch(uint64_t seed, int64_t k);

  uint64_t seed() const { return seed_; }
  int64_t k() const { return k_; }
  int64_t size() const { return static_cast<int64_t>(heap_.size()); }

  // Would `id` be admitted now? (Not a duplicate, and among the k smallest.)
  bool WouldAdmit(uint64_t id) const;

  // Offers `id`. Returns the slot where the caller must store its payload, or
  // -1 when it is not admitted (duplicate of a kept id, or too large). A slot
  // returned may be one freed by evicting the current largest entry.
  int64_t Offer(uint64_t id);

  // The kept entries sorted by (priority, id) ascending.
  std::vector<Entry> Sorted() const;

 private:
  static bool Less(const Entry& a, const Entry& b) {
    return a.priority != b.priority ? a.priority < b.priority : a.id < b.id;
  }
  uint64_t seed_;
  uint64_t seed_hash_;
  int64_t k_;
  std::vector<Entry> heap_;  // max-heap on (priority, id)
  absl::flat_hash_map<uint64_t, int64_t> kept_;  // id -> slot
};

// Offline selection: indices into `ids` of the bottom-k distinct ids, sorted
// by (priority, id). The first occurrence of a duplicated id is the one kept.
std::vector<int64_t> SelectBottomK(uint64_t seed, int64_t k, const std::vector<uint64_t>& ids);

}  // namespace sigma

#endif  // SIGMA_KERNELS_SKETCH_H_
