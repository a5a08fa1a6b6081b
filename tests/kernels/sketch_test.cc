#include "sigma/kernels/sketch.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "reference.h"

namespace sigma {
namespace {

TEST(SketchTest, SharedSketchVector) {
  std::ifstream in(testing::SharedDir() + "/testvectors/sketch.json");
  ASSERT_TRUE(in) << "missing sketch.json under " << testing::SharedDir();
  const nlohmann::json doc = nlohmann::json::parse(in);
  const uint64_t seed = doc.at("seed");
  const int64_t k = doc.at("k");
  const std::vector<uint64_t> ids = doc.at("sample_ids");
  const std::vector<uint64_t> priorities = doc.at("priorities_of_first_5");
  for (size_t i = 0; i < priorities.size(); ++i)
    EXPECT_EQ(SketchPriority(seed, ids[i]), priorities[i]) << i;
  const std::vector<uint64_t> expected = doc.at("expected_selected");
  std::vector<uint64_t> selected;
  for (int64_t index : SelectBottomK(seed, k, ids)) selected.push_back(ids[index]);
  EXPECT_EQ(selected, expected);
}

TEST(SketchTest, SplitMix64KnownValue) {
  // splitmix64(0) as in the reference implementation (Vigna).
  EXPECT_EQ(SplitMix64(0), 0xE220A8397B1DCDAFull);
}

std::vector<uint64_t> SelectedIds(uint64_t seed, int64_t k, const std::vector<uint64_t>& ids) {
  std::vector<uint64_t> out;
  for (int64_t index : SelectBottomK(seed, k, ids)) out.push_back(ids[index]);
  return out;
}

TEST(SketchTest, ArrivalOrderDoesNotMatter) {
  std::mt19937_64 rng(7);
  std::vector<uint64_t> ids(5000);
  for (auto& id : ids) id = rng() % 3000;  // many duplicates
  const std::vector<uint64_t> reference = SelectedIds(42, 300, ids);
  ASSERT_EQ(reference.size(), 300u);
  EXPECT_EQ(std::set<uint64_t>(reference.begin(), reference.end()).size(), 300u);
  for (int trial = 0; trial < 10; ++trial) {
    std::shuffle(ids.begin(), ids.end(), rng);
    EXPECT_EQ(SelectedIds(42, 300, ids), reference);
  }
}

TEST(SketchTest, MergingLocalBottomKEqualsGlobal) {
  std::mt19937_64 rng(11);
  std::vector<uint64_t> ids(8000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = i * 7919 + 13;
  const int64_t k = 256;
  const std::vector<uint64_t> global = SelectedIds(3, k, ids);
  for (int ranks : {2, 3, 8}) {
    std::vector<std::vector<uint64_t>> shares(ranks);
    for (uint64_t id : ids) shares[rng() % ranks].push_back(id);
    std::vector<uint64_t> merged_input;
    for (const auto& share : shares) {
      std::vector<uint64_t> local = SelectedIds(3, k, share);
      merged_input.insert(merged_input.end(), local.begin(), local.end());
    }
    std::shuffle(merged_input.begin(), merged_input.end(), rng);
    EXPECT_EQ(SelectedIds(3, k, merged_input), global) << ranks << " ranks";
  }
}

TEST(SketchTest, DuplicatesCountOnceAndKeepTheirSlot) {
  BottomKSketch sketch(1, 4);
  const int64_t slot = sketch.Offer(100);
  EXPECT_GE(slot, 0);
  EXPECT_EQ(sketch.Offer(100), -1);
  EXPECT_EQ(sketch.size(), 1);
  for (uint64_t id = 0; id < 1000; ++id) sketch.Offer(id);
  EXPECT_EQ(sketch.size(), 4);
  std::set<int64_t> slots;
  for (const auto& e : sketch.Sorted()) slots.insert(e.slot);
  EXPECT_EQ(slots, (std::set<int64_t>{0, 1, 2, 3}));
}

TEST(SketchTest, DefaultSampleIdOffsetsRanks) {
  EXPECT_EQ(DefaultSampleId(0, 5), 5u);
  EXPECT_EQ(DefaultSampleId(3, 5), (3ull << 40) + 5);
}

}  // namespace
}  // namespace sigma
