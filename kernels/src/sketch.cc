#include "sigma/kernels/sketch.h"

#include <algorithm>

namespace sigma {

BottomKSketch::BottomKSketch(uint64_t seed, int64_t k)
    : seed_(seed), seed_hash_(SplitMix64(seed)), k_(k) {
  heap_.reserve(static_cast<size_t>(k));
}

bool BottomKSketch::WouldAdmit(uint64_t id) const {
  if (k_ <= 0 || kept_.contains(id)) return false;
  if (size() < k_) return true;
  const Entry candidate{SplitMix64(id ^ seed_hash_), id, -1};
  return Less(candidate, heap_.front());
}

int64_t BottomKSketch::Offer(uint64_t id) {
  if (!WouldAdmit(id)) return -1;
  const Entry candidate{SplitMix64(id ^ seed_hash_), id, -1};
  int64_t slot;
  if (size() < k_) {
    slot = size();
  } else {
    std::pop_heap(heap_.begin(), heap_.end(), Less);
    slot = heap_.back().slot;
    kept_.erase(heap_.back().id);
    heap_.pop_back();
  }
  heap_.push_back({candidate.priority, id, slot});
  std::push_heap(heap_.begin(), heap_.end(), Less);
  kept_.emplace(id, slot);
  return slot;
}

std::vector<BottomKSketch::Entry> BottomKSketch::Sorted() const {
  std::vector<Entry> sorted = heap_;
  std::sort(sorted.begin(), sorted.end(), Less);
  return sorted;
}

std::vector<int64_t> SelectBottomK(uint64_t seed, int64_t k, const std::vector<uint64_t>& ids) {
  BottomKSketch sketch(seed, k);
  std::vector<int64_t> slot_to_index(static_cast<size_t>(std::max<int64_t>(k, 0)), -1);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t slot = sketch.Offer(ids[i]);
    if (slot >= 0) slot_to_index[static_cast<size_t>(slot)] = static_cast<int64_t>(i);
  }
  std::vector<int64_t> selected;
  for (const BottomKSketch::Entry& e : sketch.Sorted())
    selected.push_back(slot_to_index[static_cast<size_t>(e.slot)]);
  return selected;
}

}  // namespace sigma
