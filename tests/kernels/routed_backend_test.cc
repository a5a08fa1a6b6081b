// RoutedBackend (issue 5) without a GPU: its children are CPU backends wrapped
// in a counting fake that records what each was asked to seal (and can fail on
// demand), so routing by m, placement by key, result order, bitwise identity
// with the plain CPU backend and failure isolation are all checked here. The
// same class over real CUDA devices is exercised by the conformance suite
// (backend_conformance_test.cc, case cuda_routed) on a GPU machine.
#include "sigma/kernels/routed_backend.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "reference.h"
#include "sigma/kernels/backend_factory.h"

namespace sigma {
namespace {

std::unique_ptr<Backend> CpuOrNull() {
  absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend({.kind = BackendKind::kCpu});
  return b.ok() ? std::move(*b) : nullptr;
}

// A CPU backend that records the m of every snapshot it gets and the
// thread that ran each SealBatch, and fails every call while `fail` is set.
class CountingBackend : public Backend {
 public:
  CountingBackend(std::string name, std::unique_ptr<Backend> inner)
      : name_(std::move(name)), inner_(std::move(inner)) {}

  std::string name() const override { return name_; }

  absl::Status SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const SealInput& in : inputs) {
        sealed_m.push_back(in.rows.m);
        sealed_keys.push_back(in.placement_key);
      }
      ++seal_calls;
      seal_threads.insert(std::this_thread::get_id());
    }
    if (fail) return absl::InternalError("injected failure");
    return inner_->SealBatch(inputs, out);
  }

  std::vector<int64_t> sealed_m;
  std::vector<uint64_t> sealed_keys;
  std::set<std::thread::id> seal_threads;
  int seal_calls = 0;
  bool fail = false;

 private:
  std::mutex mu_;
  std::string name_;
  std::unique_ptr<Backend> inner_;
};

// A routed backend over counting CPU children: a CPU child and `devices`
// fake devices named "fake:<d> dev".
class RoutedBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reference_ = CpuOrNull();
    if (reference_ == nullptr) GTEST_SKIP() << "this build has no CPU backend";
  }

  std::unique_ptr<RoutedBackend> Make(int devices, int64_t gpu_min_m, bool with_cpu = true) {
    std::unique_ptr<Backend> cpu;
    cpu_ = nullptr;
    if (with_cpu) {
      auto c = std::make_unique<CountingBackend>("cpu", CpuOrNull());
      cpu_ = c.get();
      cpu = std::move(c);
    }
    std::vector<std::unique_ptr<Backend>> devs;
    dev_.clear();
    for (int d = 0; d < devices; ++d) {
      auto c = std::make_unique<CountingBackend>("fake:" + std::to_string(d) + " dev", CpuOrNull());
      dev_.push_back(c.get());
      devs.push_back(std::move(c));
    }
    absl::StatusOr<std::unique_ptr<RoutedBackend>> r = RoutedBackend::Create(std::move(cpu), std::move(devs), gpu_min_m);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : nullptr;
  }

  // Rows for a snapshot of width m (kept alive by the fixture).
  SealInput Input(int64_t m, uint64_t key, int seed) {
    std::mt19937_64 rng(static_cast<uint64_t>(seed) * 7919 + static_cast<uint64_t>(m));
    data_.push_back(testing::AnisotropicRows(rng, 3 * m + 5, m, 0.8, false));
    SealInput in{{data_.back().data(), DType::kFloat64, 3 * m + 5, m}, seed % 2 ? Preprocessing::kNone : Preprocessing::kL2,
                 30.0 * static_cast<double>(m), 1e-5, 2.0};
    in.placement_key = key;
    return in;
  }

  // The plain CPU backend's moments for one input.
  SealMoments Reference(const SealInput& in) {
    SealMoments m;
    EXPECT_TRUE(reference_->SealBatch({&in, 1}, {&m, 1}).ok());
    return m;
  }

  std::unique_ptr<Backend> reference_;
  CountingBackend* cpu_ = nullptr;
  std::vector<CountingBackend*> dev_;
  std::vector<std::vector<double>> data_;
};

// Every field, compared bit for bit.
void ExpectBitwiseEqual(const SealMoments& a, const SealMoments& b, const std::string& where) {
  EXPECT_EQ(a.n_a, b.n_a) << where;
  EXPECT_EQ(a.m, b.m) << where;
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(a.cholesky[c].ok, b.cholesky[c].ok) << where;
    EXPECT_EQ(a.cholesky[c].failed_column, b.cholesky[c].failed_column) << where;
    EXPECT_EQ(std::memcmp(&a.cholesky[c].log_det, &b.cholesky[c].log_det, sizeof(double)), 0) << where << " chol " << c;
  }
  for (auto [x, y, what] : {std::tuple{a.q_mean, b.q_mean, "q_mean"}, {a.q_sq_mean, b.q_sq_mean, "q_sq_mean"},
                            {a.q_sd, b.q_sd, "q_sd"}, {a.trace_a, b.trace_a, "trace_a"},
                            {a.trace_a2, b.trace_a2, "trace_a2"}, {a.energy.sum_energy, b.energy.sum_energy, "sum_energy"},
                            {a.energy.max_energy, b.energy.max_energy, "max_energy"}})
    EXPECT_EQ(std::memcmp(&x, &y, sizeof(double)), 0) << where << " " << what << ": " << x << " vs " << y;
  EXPECT_EQ(a.energy.count, b.energy.count) << where;
}

TEST(PlacementKeyTest, IsFixedFnv1aThenSplitMix) {
  // Golden values: a change here moves every job to another device.
  EXPECT_EQ(PlacementKeyForJob(""), 0xc3817c016ba4ff30ULL);
  EXPECT_EQ(PlacementKeyForJob("a"), 0x5f29c2aadd9b8527ULL);
  EXPECT_EQ(PlacementKeyForJob("opt125m-s2"), 0x6d71328bc910dad3ULL);
  // Consecutive job names spread over 2 and 3 devices.
  for (uint64_t n : {2, 3}) {
    std::set<uint64_t> seen;
    for (int j = 0; j < 12; ++j) seen.insert(PlacementKeyForJob("job-" + std::to_string(j)) % n);
    EXPECT_EQ(seen.size(), n);
  }
}

TEST_F(RoutedBackendTest, CreateRefusesBadArguments) {
  EXPECT_EQ(RoutedBackend::Create(nullptr, {}, 16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RoutedBackend::Create(CpuOrNull(), {}, -1).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<std::unique_ptr<Backend>> with_null;
  with_null.push_back(nullptr);
  EXPECT_EQ(RoutedBackend::Create(CpuOrNull(), std::move(with_null), 16).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RoutedBackendTest, NameSaysDevicesAndCpuThreshold) {
  EXPECT_EQ(Make(2, 256)->name(), "fake x2 dev + cpu (m < 256)");
  EXPECT_EQ(Make(1, 64)->name(), "fake:0 dev + cpu (m < 64)");
  EXPECT_EQ(Make(3, 64, /*with_cpu=*/false)->name(), "fake x3 dev");
  EXPECT_EQ(Make(0, 64)->name(), "cpu");
}

TEST_F(RoutedBackendTest, SmallMGoesToTheCpuLargeMToTheDevices) {
  std::unique_ptr<RoutedBackend> r = Make(2, 16);
  std::vector<SealInput> inputs;
  int seed = 0;
  for (int64_t m : {4, 20, 8, 15, 16, 32}) inputs.push_back(Input(m, /*key=*/0, seed++));
  std::vector<SealMoments> out(inputs.size());
  ASSERT_TRUE(r->SealBatch(inputs, absl::MakeSpan(out)).ok());
  EXPECT_EQ(cpu_->sealed_m, (std::vector<int64_t>{4, 8, 15}));  // in input order
  EXPECT_EQ(dev_[0]->sealed_m, (std::vector<int64_t>{20, 16, 32}));
  EXPECT_TRUE(dev_[1]->sealed_m.empty());
  EXPECT_EQ(r->Route(15, 1), RoutedBackend::kCpu);
  EXPECT_EQ(r->Route(16, 1), 1);
}

TEST_F(RoutedBackendTest, ZeroThresholdOrNoCpuSendsEverythingToTheDevices) {
  for (bool with_cpu : {true, false}) {
    std::unique_ptr<RoutedBackend> r = Make(2, with_cpu ? 0 : 256, with_cpu);
    std::vector<SealInput> inputs = {Input(3, 0, 1), Input(5, 1, 2)};
    std::vector<SealMoments> out(inputs.size());
    ASSERT_TRUE(r->SealBatch(inputs, absl::MakeSpan(out)).ok());
    if (with_cpu) EXPECT_TRUE(cpu_->sealed_m.empty());
    EXPECT_EQ(dev_[0]->sealed_m, (std::vector<int64_t>{3}));
    EXPECT_EQ(dev_[1]->sealed_m, (std::vector<int64_t>{5}));
  }
}

TEST_F(RoutedBackendTest, PlacementByKeyIsStableAcrossBatches) {
  for (int devices : {2, 3}) {
    std::unique_ptr<RoutedBackend> r = Make(devices, 8);
    std::map<uint64_t, int> device_of_key;
    for (int round = 0; round < 3; ++round) {
      std::vector<SealInput> inputs;
      for (int j = 0; j < 9; ++j) {
        // The same jobs every round, in a different order.
        const int job = (j * (round + 1)) % 9;
        inputs.push_back(Input(10 + job, PlacementKeyForJob("job-" + std::to_string(job)), job));
      }
      for (CountingBackend* d : dev_) d->sealed_keys.clear();
      std::vector<SealMoments> out(inputs.size());
      ASSERT_TRUE(r->SealBatch(inputs, absl::MakeSpan(out)).ok());
      for (int d = 0; d < devices; ++d) {
        for (uint64_t key : dev_[static_cast<size_t>(d)]->sealed_keys) {
          EXPECT_EQ(key % static_cast<uint64_t>(devices), static_cast<uint64_t>(d));
          auto [it, inserted] = device_of_key.emplace(key, d);
          EXPECT_EQ(it->second, d) << "key moved between batches";
        }
      }
    }
    EXPECT_EQ(device_of_key.size(), 9u);
    EXPECT_TRUE(cpu_->sealed_m.empty());  // every m >= 8
    // 9 jobs over 2-3 devices: every device got some.
    for (CountingBackend* d : dev_) EXPECT_GT(d->seal_calls, 0);
  }
}

TEST_F(RoutedBackendTest, MixedBatchKeepsOrderAndMatchesTheCpuBackendBitwise) {
  std::unique_ptr<RoutedBackend> r = Make(3, 12);
  std::vector<SealInput> inputs;
  const int64_t ms[] = {5, 40, 12, 7, 33, 11, 64, 13, 6, 24, 48, 9};
  for (int j = 0; j < 12; ++j) inputs.push_back(Input(ms[j], PlacementKeyForJob("j" + std::to_string(j % 5)), j));
  std::vector<SealMoments> out(inputs.size());
  ASSERT_TRUE(r->SealBatch(inputs, absl::MakeSpan(out)).ok());
  for (size_t k = 0; k < inputs.size(); ++k) {
    EXPECT_EQ(out[k].m, inputs[k].rows.m) << k;
    ExpectBitwiseEqual(out[k], Reference(inputs[k]), "input " + std::to_string(k));
  }
  // The whole batch through the plain CPU backend gives the same bits too.
  std::vector<SealMoments> plain(inputs.size());
  ASSERT_TRUE(reference_->SealBatch(inputs, absl::MakeSpan(plain)).ok());
  for (size_t k = 0; k < inputs.size(); ++k) ExpectBitwiseEqual(out[k], plain[k], "batch " + std::to_string(k));
  // Each child saw its own inputs once, the devices on other threads than the CPU's.
  size_t total = cpu_->sealed_m.size();
  for (CountingBackend* d : dev_) total += d->sealed_m.size();
  EXPECT_EQ(total, inputs.size());
  for (CountingBackend* d : dev_) {
    if (d->seal_calls == 0) continue;
    for (std::thread::id t : d->seal_threads) EXPECT_EQ(cpu_->seal_threads.count(t), 0u);
  }
}

TEST_F(RoutedBackendTest, AFailingChildFailsOnlyItsInputs) {
  std::unique_ptr<RoutedBackend> r = Make(2, 12);
  // Keys 0 -> device 0, 1 -> device 1.
  std::vector<SealInput> inputs = {Input(4, 0, 0), Input(20, 1, 1), Input(30, 0, 2), Input(6, 1, 3), Input(25, 1, 4)};
  dev_[1]->fail = true;
  std::vector<SealMoments> out(inputs.size());
  absl::Status s = r->SealBatch(inputs, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("fake:1 dev"), std::string::npos) << s;
  EXPECT_NE(s.message().find("injected failure"), std::string::npos) << s;
  // The groups that worked were written back in place.
  for (size_t k : {0u, 2u, 3u}) ExpectBitwiseEqual(out[k], Reference(inputs[k]), "input " + std::to_string(k));
  // Re-sealed one by one (what the daemon does to isolate a failure): only the
  // failing child's inputs fail.
  for (size_t k = 0; k < inputs.size(); ++k) {
    SealMoments one;
    const absl::Status single = r->SealBatch({&inputs[k], 1}, {&one, 1});
    const bool on_failing_device = inputs[k].rows.m >= 12 && inputs[k].placement_key == 1;
    EXPECT_EQ(single.ok(), !on_failing_device) << k << ": " << single;
    if (single.ok()) ExpectBitwiseEqual(one, Reference(inputs[k]), "single " + std::to_string(k));
  }
  // Two failing children: the status of the group holding the earliest input.
  cpu_->fail = true;
  s = r->SealBatch(inputs, absl::MakeSpan(out));
  EXPECT_NE(s.message().find("cpu: injected"), std::string::npos) << s;
}

TEST_F(RoutedBackendTest, InvalidShapeFailsBeforeAnyWork) {
  std::unique_ptr<RoutedBackend> r = Make(2, 12);
  std::vector<SealInput> inputs = {Input(4, 0, 0), Input(20, 1, 1)};
  inputs.push_back(inputs[1]);
  inputs.back().corpus_size = 1;  // < n_A
  std::vector<SealMoments> out(inputs.size());
  EXPECT_EQ(r->SealBatch(inputs, absl::MakeSpan(out)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu_->seal_calls + dev_[0]->seal_calls + dev_[1]->seal_calls, 0);
  EXPECT_EQ(r->SealBatch(inputs, absl::MakeSpan(out).subspan(1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(r->SealBatch({}, {}).ok());
}

// The factory on a machine without a usable device: auto is the CPU backend
// with a reason, cuda is UNAVAILABLE, bad options are refused.
TEST_F(RoutedBackendTest, FactoryWithoutDevice) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  std::string reason;
  absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend({.kind = BackendKind::kAuto, .max_devices = 2}, &reason);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->name(), "cpu");
  EXPECT_FALSE(reason.empty());
  EXPECT_EQ(MakeBackend({.kind = BackendKind::kCuda}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(MakeBackend({.kind = BackendKind::kAuto, .gpu_min_m = -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeBackend({.kind = BackendKind::kAuto, .max_devices = -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sigma
