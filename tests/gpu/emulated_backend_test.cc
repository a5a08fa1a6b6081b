// Tests that only the host CUDA emulator (tests/gpu/emulator) can run: HOW the
// CUDA backend uses the device (one context, workspace reuse, one batched
// factorisation per group, one host synchronisation per group), its error
// paths under injected CUDA/cuBLAS/cuSOLVER failures and a small device
// memory, and a guard that no test of this executable touched device memory
// out of range. Built into sigma_gpu_emulated_test with cuda_backend_test.cc.
#include <gtest/gtest.h>

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <system_error>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "cuda_backend.h"
#include "cuda_device.h"
#include "emulator.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/backend.h"
#include "sigma/kernels/estimator.h"
#if SIGMA_HAVE_CPU_BLAS
#include "sigma/kernels/cpu_backend.h"
#endif

namespace sigma {
namespace {

namespace emu = cuda_emulator;

// Fails the run if anything in this process broke a device-memory rule (each
// ctest case is its own process, so this covers every test, including those
// of cuda_backend_test.cc).
class NoViolations : public testing::Environment {
 public:
  void TearDown() override {
    EXPECT_EQ(emu::GetCounters().violations, 0)
        << "the CUDA emulator saw out-of-range device accesses or API misuse (see '[cuda emulator]' on stderr)";
  }
};
const testing::Environment* const kNoViolations = testing::AddGlobalTestEnvironment(new NoViolations);

uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// rows [n, m] float32, seeded. `input.rows.data` points into `values`; copies
// re-point it at their own copy.
struct Rows {
  std::vector<float> values;
  SealInput input;

  Rows() = default;
  Rows(const Rows& o) : values(o.values), input(o.input) { input.rows.data = values.data(); }
  Rows& operator=(const Rows& o) {
    values = o.values;
    input = o.input;
    input.rows.data = values.data();
    return *this;
  }
};
Rows MakeRows(int64_t n, int64_t m, uint64_t seed) {
  Rows r;
  r.values.resize(static_cast<size_t>(n * m));
  uint64_t s = Mix(seed);
  for (float& v : r.values) {
    s = Mix(s);
    v = static_cast<float>(static_cast<double>(s >> 11) * 0x1.0p-53 - 0.5);
  }
  r.input.rows = RowBlock{r.values.data(), DType::kFloat32, n, m};
  r.input.preprocessing = Preprocessing::kL2;
  r.input.corpus_size = 4.0 * static_cast<double>(n);
  r.input.delta = 1e-6;
  r.input.rho = 1.0;
  return r;
}

class EmulatedCuda : public testing::Test {
 protected:
  void SetUp() override {
    emu::Reset();
    emu::SetDeviceCount(1);
    emu::SetDeviceMemoryLimit(size_t{4} << 30);
  }
  void TearDown() override {
    EXPECT_EQ(emu::GetCounters().violations, 0);
    emu::Reset();
    emu::SetDeviceMemoryLimit(size_t{4} << 30);
  }
  static std::unique_ptr<Backend> Make(const cuda::CudaBackendOptions& o = {}) {
    absl::StatusOr<std::unique_ptr<Backend>> b = cuda::MakeCudaBackend(0, o);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : nullptr;
  }
  static absl::Status SealAll(Backend& b, const std::vector<Rows>& rows, std::vector<SealMoments>* out) {
    std::vector<SealInput> in;
    for (const Rows& r : rows) in.push_back(r.input);
    out->assign(in.size(), SealMoments{});
    return b.SealBatch(in, absl::MakeSpan(*out));
  }
};

TEST_F(EmulatedCuda, NoDeviceIsUnavailable) {
  emu::SetDeviceCount(0);
  EXPECT_EQ(cuda::DeviceCount(), 0);
  absl::StatusOr<std::unique_ptr<Backend>> b = cuda::MakeCudaBackend(0);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable) << b.status();
  emu::SetDeviceCount(1);
  EXPECT_EQ(cuda::MakeCudaBackend(1).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(cuda::MakeCudaBackend(0).ok());
}

TEST_F(EmulatedCuda, ContextAndWorkspaceAreNotPerRequest) {
  std::unique_ptr<Backend> b = Make();
  ASSERT_NE(b, nullptr);
  const emu::Counters created = emu::GetCounters();
  EXPECT_EQ(created.malloc_calls, 0) << "the device workspace is sized by the first call, not at start-up";
  std::vector<Rows> rows = {MakeRows(300, 40, 1)};
  std::vector<SealMoments> out;
  ASSERT_TRUE(SealAll(*b, rows, &out).ok());
  const emu::Counters first = emu::GetCounters();
  EXPECT_GE(first.malloc_calls, 1);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(SealAll(*b, rows, &out).ok());
  const emu::Counters later = emu::GetCounters();
  EXPECT_EQ(later.malloc_calls, first.malloc_calls) << "same-size seals must reuse the workspace";
  EXPECT_EQ(later.malloc_host_calls, first.malloc_host_calls) << "same-size seals must reuse the pinned staging";
  // A smaller call fits in what is there.
  std::vector<Rows> small = {MakeRows(50, 40, 2)};
  ASSERT_TRUE(SealAll(*b, small, &out).ok());
  EXPECT_EQ(emu::GetCounters().malloc_calls, first.malloc_calls);
}

TEST_F(EmulatedCuda, OneBatchedFactorisationAndOneHostSyncPerGroup) {
  cuda::CudaBackendOptions batched;
  batched.batched_potrf_max_m = std::numeric_limits<int64_t>::max();
  std::unique_ptr<Backend> b = Make(batched);
  ASSERT_NE(b, nullptr);
  // Five snapshots of m = 24 and two of m = 40: two groups.
  std::vector<Rows> rows;
  for (int i = 0; i < 5; ++i) rows.push_back(MakeRows(100 + 10 * i, 24, 10 + i));
  for (int i = 0; i < 2; ++i) rows.push_back(MakeRows(120, 40, 20 + i));
  std::vector<SealMoments> out;
  emu::Reset();
  ASSERT_TRUE(SealAll(*b, rows, &out).ok());
  const emu::Counters c = emu::GetCounters();
  EXPECT_EQ(c.potrf_batched_calls, 2);
  EXPECT_EQ(c.potrf_batched_matrices, 3 * 7);
  EXPECT_EQ(c.potrf_calls, 0);
  // One stream synchronisation per m-group (the host also waits on the upload
  // events of the two pinned slots when a third snapshot reuses one).
  EXPECT_EQ(c.stream_syncs, 2) << "one stream synchronisation per m-group";
  for (const SealMoments& mo : out) EXPECT_TRUE(mo.cholesky[2].ok);

  cuda::CudaBackendOptions per_matrix;
  per_matrix.batched_potrf_max_m = 0;
  std::unique_ptr<Backend> p = Make(per_matrix);
  ASSERT_NE(p, nullptr);
  std::vector<SealMoments> out2;
  emu::Reset();
  ASSERT_TRUE(SealAll(*p, rows, &out2).ok());
  EXPECT_EQ(emu::GetCounters().potrf_calls, 3 * 7);
  EXPECT_EQ(emu::GetCounters().potrf_batched_calls, 0);
  for (size_t i = 0; i < out.size(); ++i) {
    for (int k = 0; k < 3; ++k)
      EXPECT_NEAR(out2[i].cholesky[k].log_det, out[i].cholesky[k].log_det,
                  1e-9 * std::fabs(out[i].cholesky[k].log_det));
  }
}

TEST_F(EmulatedCuda, GroupThatDoesNotFitIsSplitAndGivesTheSameResults) {
  std::vector<Rows> rows;
  for (int i = 0; i < 6; ++i) rows.push_back(MakeRows(800, 64, 30 + i));
  std::vector<SealMoments> want;
  {
    std::unique_ptr<Backend> b = Make();
    ASSERT_NE(b, nullptr);
    ASSERT_TRUE(SealAll(*b, rows, &want).ok());
  }
  // A snapshot needs ~0.5 MB on the device (x: 800 x 64 float64, three 64 x 64
  // matrices), plus 128 KiB of upload slots; the workspace grows in 2 MiB
  // steps. Six (4 MiB) do not fit in 3 MiB; three (2 MiB) do.
  emu::SetDeviceMemoryLimit(size_t{3} << 20);
  cuda::CudaBackendOptions o;
  o.staging_slot_bytes = 64 << 10;
  std::unique_ptr<Backend> b = Make(o);
  ASSERT_NE(b, nullptr);
  std::vector<SealMoments> got;
  absl::Status s = SealAll(*b, rows, &got);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_GT(emu::GetCounters().stream_syncs, 1) << "expected the group to be split";
  for (size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE("snapshot " + std::to_string(i));
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(got[i].cholesky[k].ok, want[i].cholesky[k].ok);
      EXPECT_NEAR(got[i].cholesky[k].log_det, want[i].cholesky[k].log_det,
                  1e-12 * std::fabs(want[i].cholesky[k].log_det));
    }
    EXPECT_NEAR(got[i].trace_a, want[i].trace_a, 1e-12 * std::fabs(want[i].trace_a));
    EXPECT_NEAR(got[i].q_mean, want[i].q_mean, 1e-12 * std::fabs(want[i].q_mean));
  }
  // A single snapshot larger than the device: RESOURCE_EXHAUSTED, then usable.
  std::vector<Rows> big = {MakeRows(4000, 128, 40)};
  std::vector<SealMoments> none;
  EXPECT_EQ(SealAll(*b, big, &none).code(), absl::StatusCode::kResourceExhausted);
  std::vector<Rows> one = {rows[0]};
  ASSERT_TRUE(SealAll(*b, one, &got).ok());
  EXPECT_NEAR(got[0].cholesky[2].log_det, want[0].cholesky[2].log_det,
              1e-12 * std::fabs(want[0].cholesky[2].log_det));
}

struct Injection {
  const char* function;
  int status;
  absl::StatusCode want;
  const char* in_message;  // the status must name where it failed
};

TEST_F(EmulatedCuda, LibraryErrorsBecomeStatusesAndTheBackendRecovers) {
  const std::vector<Injection> cases = {
      {"cudaMalloc", cudaErrorMemoryAllocation, absl::StatusCode::kResourceExhausted, "cudaMalloc"},
      {"cudaMemcpyAsync", cudaErrorInvalidValue, absl::StatusCode::kInternal, "cudaMemcpyAsync"},
      {"cublasDsyrk_v2", CUBLAS_STATUS_ALLOC_FAILED, absl::StatusCode::kResourceExhausted, "cublasDsyrk"},
      {"cublasDsyrk_v2", CUBLAS_STATUS_EXECUTION_FAILED, absl::StatusCode::kInternal, "cublasDsyrk"},
      {"cublasDtrsm_v2", CUBLAS_STATUS_INTERNAL_ERROR, absl::StatusCode::kInternal, "cublasDtrsm"},
      {"cusolverDnDpotrfBatched", CUSOLVER_STATUS_ALLOC_FAILED, absl::StatusCode::kResourceExhausted,
       "cusolverDnDpotrfBatched"},
      {"cusolverDnDpotri", CUSOLVER_STATUS_EXECUTION_FAILED, absl::StatusCode::kInternal, "cusolverDnDpotri"},
      {"cudaStreamWaitEvent", cudaErrorInvalidValue, absl::StatusCode::kInternal, "cudaStreamWaitEvent"},
      {"cudaLaunchKernel", cudaErrorLaunchOutOfResources, absl::StatusCode::kInternal, "ConvertRows kernel"},
  };
  std::vector<Rows> rows = {MakeRows(200, 32, 50)};
  std::vector<SealMoments> want;
  {
    std::unique_ptr<Backend> b = Make();
    ASSERT_TRUE(SealAll(*b, rows, &want).ok());
  }
  for (const Injection& c : cases) {
    SCOPED_TRACE(std::string(c.function) + " -> " + std::to_string(c.status));
    std::unique_ptr<Backend> b = Make();  // fresh: cudaMalloc happens on the first seal
    ASSERT_NE(b, nullptr);
    emu::FailNextCall(c.function, c.status);
    std::vector<SealMoments> out;
    absl::Status s = SealAll(*b, rows, &out);
    EXPECT_EQ(s.code(), c.want) << s;
    EXPECT_NE(s.message().find(c.in_message), std::string::npos) << s;
    // Not sticky: the same backend seals correctly afterwards.
    s = SealAll(*b, rows, &out);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(out[0].cholesky[2].log_det, want[0].cholesky[2].log_det);
  }
}

TEST_F(EmulatedCuda, StickyErrorMarksTheBackendBroken) {
  std::unique_ptr<Backend> b = Make();
  ASSERT_NE(b, nullptr);
  std::vector<Rows> rows = {MakeRows(200, 32, 60)};
  std::vector<SealMoments> out;
  ASSERT_TRUE(SealAll(*b, rows, &out).ok());
  emu::FailNextCall("cudaStreamSynchronize", cudaErrorIllegalAddress);
  absl::Status s = SealAll(*b, rows, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  absl::Status again = SealAll(*b, rows, &out);
  EXPECT_EQ(again.code(), absl::StatusCode::kInternal) << again;
  EXPECT_NE(again.message().find("unusable after an earlier error"), std::string::npos) << again;
  emu::Reset();  // the emulated context is healthy again; the backend stays marked
  EXPECT_EQ(SealAll(*b, rows, &out).code(), absl::StatusCode::kInternal);
}

// cudaErrorUnknown is how the driver reports faults it cannot classify: the
// context cannot be trusted after it.
TEST_F(EmulatedCuda, UnknownErrorMarksTheBackendBroken) {
  std::unique_ptr<Backend> b = Make();
  ASSERT_NE(b, nullptr);
  std::vector<Rows> rows = {MakeRows(100, 16, 61)};
  std::vector<SealMoments> out;
  emu::FailNextCall("cudaStreamSynchronize", cudaErrorUnknown);
  EXPECT_EQ(SealAll(*b, rows, &out).code(), absl::StatusCode::kInternal);
  absl::Status again = SealAll(*b, rows, &out);
  EXPECT_NE(again.message().find("unusable after an earlier error"), std::string::npos) << again;
}

TEST_F(EmulatedCuda, CudaOlderThan12_1IsRefusedAtStart) {
  emu::SetRuntimeVersion(12000);
  absl::StatusOr<std::unique_ptr<Backend>> b = cuda::MakeCudaBackend(0);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(b.status().message().find("needs CUDA >= 12.1"), std::string::npos) << b.status();
  emu::SetRuntimeVersion(12010);
  EXPECT_TRUE(cuda::MakeCudaBackend(0).ok());
}

// Sizes whose products overflow 64 bits are refused before anything is
// allocated or read (the rows pointer is never dereferenced).
TEST_F(EmulatedCuda, GroupTotalsThatOverflowAreInvalidArguments) {
  std::unique_ptr<Backend> b = Make();
  ASSERT_NE(b, nullptr);
  const float dummy = 0.0f;
  SealInput huge;
  huge.rows = RowBlock{&dummy, DType::kFloat32, int64_t{1} << 30, int64_t{1} << 30};
  huge.corpus_size = 1e12;
  SealMoments out;
  absl::Status s = b->SealBatch({&huge, 1}, {&out, 1});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("more memory than can be addressed"), std::string::npos) << s;
  EXPECT_EQ(emu::GetCounters().malloc_calls, 0);
}

// Large copies are split over threads; a thread that cannot be started
// (std::system_error) leaves its piece to the calling thread.
TEST(CopyToPinned, ThreadsThatCannotStartLeaveTheirPiecesToTheCaller) {
  const size_t bytes = (size_t{16} << 20) + 12345;
  std::vector<char> src(bytes), dst(bytes, 0);
  for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<char>(i * 131 + 7);
  int started = 0;
  auto one_then_fail = [&](std::function<void()> fn) -> std::thread {
    if (started++ >= 1) throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
    return std::thread(std::move(fn));
  };
  cuda::CopyToPinned(dst.data(), src.data(), bytes, 4, one_then_fail);
  EXPECT_EQ(started, 2) << "one thread started, the second attempt failed";
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), bytes), 0);
  std::fill(dst.begin(), dst.end(), 0);
  cuda::CopyToPinned(dst.data(), src.data(), bytes, 4, [](std::function<void()>) -> std::thread {
    throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
  });
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), bytes), 0);
}

// A MemoryBudget that counts and refuses above a limit.
class CountingBudget : public MemoryBudget {
 public:
  explicit CountingBudget(int64_t limit) : limit_(limit) {}
  bool TryCharge(int64_t bytes) override {
    if (held_ + bytes > limit_) return false;
    held_ += bytes;
    peak_ = std::max(peak_.load(), held_.load());
    return true;
  }
  void Release(int64_t bytes) override { held_ -= bytes; }
  int64_t held() const { return held_; }
  int64_t peak() const { return peak_; }

 private:
  const int64_t limit_;
  std::atomic<int64_t> held_{0}, peak_{0};
};

// The workspace and the staging grow for a large batch and are freed after
// it when larger than keep_bytes; everything is charged to the budget while
// held and given back when freed.
TEST_F(EmulatedCuda, WorkspaceAboveTheCapIsReturnedAndCountedAgainstTheBudget) {
  CountingBudget budget(int64_t{1} << 30);
  cuda::CudaBackendOptions o;
  o.keep_bytes = size_t{3} << 20;
  o.staging_slot_bytes = 64 << 10;  // the staging stays under the cap: only the workspace is trimmed
  o.memory_budget = &budget;
  std::unique_ptr<Backend> b = Make(o);
  ASSERT_NE(b, nullptr);
  const int64_t small_pinned = budget.held();
  EXPECT_GT(small_pinned, 0) << "the small pinned buffer is charged too";
  std::vector<Rows> small = {MakeRows(200, 32, 80)};
  std::vector<SealMoments> out;
  ASSERT_TRUE(SealAll(*b, small, &out).ok());
  const size_t kept = emu::DeviceBytesInUse();
  EXPECT_GT(kept, 0u) << "a workspace under the cap is kept";
  EXPECT_LE(kept, o.keep_bytes);
  EXPECT_GE(budget.held(), small_pinned + static_cast<int64_t>(kept)) << "workspace and staging are charged";
  const int64_t held_small = budget.held();
  // ~12 MB of rows as float64 on the device: above the cap.
  std::vector<Rows> large;
  for (int i = 0; i < 4; ++i) large.push_back(MakeRows(6000, 64, 81 + i));
  ASSERT_TRUE(SealAll(*b, large, &out).ok());
  EXPECT_GT(budget.peak(), int64_t{12} << 20);
  EXPECT_EQ(emu::DeviceBytesInUse(), 0u) << "the large workspace must be returned after the call";
  EXPECT_LE(budget.held(), held_small) << "and given back to the budget";
  ASSERT_TRUE(SealAll(*b, small, &out).ok());
  EXPECT_EQ(emu::DeviceBytesInUse(), kept);
  b.reset();
  EXPECT_EQ(budget.held(), 0) << "a destroyed backend gives everything back";
}

// A budget too small for the batch splits it; too small for one snapshot is
// RESOURCE_EXHAUSTED naming the budget, and the backend stays usable.
TEST_F(EmulatedCuda, BudgetRefusalSplitsTheBatchThenFailsCleanly) {
  std::vector<Rows> rows;
  for (int i = 0; i < 4; ++i) rows.push_back(MakeRows(2000, 64, 90 + i));
  std::vector<SealMoments> want, got;
  {
    std::unique_ptr<Backend> b = Make();
    ASSERT_TRUE(SealAll(*b, rows, &want).ok());
  }
  CountingBudget budget(int64_t{5} << 20);  // one snapshot needs ~1 MB of x, a 2 MiB-rounded workspace
  cuda::CudaBackendOptions o;
  o.memory_budget = &budget;
  o.staging_slot_bytes = 64 << 10;
  std::unique_ptr<Backend> b = Make(o);
  ASSERT_NE(b, nullptr);
  absl::Status s = SealAll(*b, rows, &got);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_LE(budget.peak(), int64_t{5} << 20);
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(got[i].cholesky[2].log_det, want[i].cholesky[2].log_det);
  CountingBudget tiny(int64_t{3} << 20);
  o.memory_budget = &tiny;
  std::unique_ptr<Backend> t = Make(o);
  ASSERT_NE(t, nullptr);
  std::vector<Rows> one = {MakeRows(8000, 64, 96)};  // 4 MB of float64 rows alone
  s = SealAll(*t, one, &got);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("memory budget"), std::string::npos) << s;
  std::vector<Rows> small = {MakeRows(50, 8, 95)};
  EXPECT_TRUE(SealAll(*t, small, &got).ok());
}

// Uploads run on a copy stream (so they overlap kernels and cuBLAS on the
// device), ordered by events both ways: with lazily executed streams, a
// missing wait would convert stale slot data and change the results.
TEST_F(EmulatedCuda, UploadsRunOnACopyStreamOrderedByEvents) {
  cuda::CudaBackendOptions o;
  o.staging_slot_bytes = 640;  // 8 float32 rows of m = 20 per chunk: many chunks, slots reused
  std::unique_ptr<Backend> tiny = Make(o);
  std::unique_ptr<Backend> whole = Make();
  ASSERT_NE(tiny, nullptr);
  ASSERT_NE(whole, nullptr);
  std::vector<Rows> rows = {MakeRows(333, 20, 70), MakeRows(101, 20, 71)};
  std::vector<SealMoments> want, got;
  ASSERT_TRUE(SealAll(*whole, rows, &want).ok());
  emu::Reset();
  ASSERT_TRUE(SealAll(*tiny, rows, &got).ok());
  const emu::Counters c = emu::GetCounters();
  const int64_t row_bytes = (333 + 101) * 20 * static_cast<int64_t>(sizeof(float));
  EXPECT_EQ(c.bytes_h2d_on_copy_only_streams, row_bytes) << "every row upload on the copy stream";
  EXPECT_GE(c.stream_waits, 2 * (434 / 8)) << "each chunk: compute waits for its upload, copy for the slot";
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(got[i].energy.count, want[i].energy.count);
    EXPECT_NEAR(got[i].cholesky[2].log_det, want[i].cholesky[2].log_det,
                1e-12 * std::fabs(want[i].cholesky[2].log_det));
    EXPECT_NEAR(got[i].q_mean, want[i].q_mean, 1e-12 * want[i].q_mean);
  }
}

// The traces come from one potri per snapshot (no trtri + SYRK); the blocked
// Gram is SYRK on the diagonal blocks and GEMM below them.
TEST_F(EmulatedCuda, TracesByPotriAndBlockedGramCalls) {
  cuda::CudaBackendOptions o;
  o.gram = cuda::GramAlgo::kBlocked;
  o.gram_block = 16;
  std::unique_ptr<Backend> b = Make(o);
  ASSERT_NE(b, nullptr);
  std::vector<Rows> rows = {MakeRows(300, 40, 75), MakeRows(200, 40, 76)};
  std::vector<SealMoments> out, want;
  emu::Reset();
  ASSERT_TRUE(SealAll(*b, rows, &out).ok());
  const emu::Counters c = emu::GetCounters();
  EXPECT_EQ(c.potri_calls, 2);
  EXPECT_EQ(c.trtri_calls, 0);
  EXPECT_EQ(c.syrk_calls, 2 * 3) << "blocks [0,16), [16,32), [32,40)";
  EXPECT_EQ(c.gemm_calls, 2 * 2) << "below the first two blocks";
  std::unique_ptr<Backend> syrk = Make();
  ASSERT_TRUE(SealAll(*syrk, rows, &want).ok());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_NEAR(out[i].cholesky[2].log_det, want[i].cholesky[2].log_det, 1e-12 * std::fabs(want[i].cholesky[2].log_det));
    EXPECT_NEAR(out[i].trace_a2, want[i].trace_a2, 1e-12 * want[i].trace_a2);
  }
}

// The factory refuses a module built with another ABI, naming both.
TEST(CudaModuleAbi, MismatchIsRefusedAndTheRightModuleLoads) {
  absl::Status skewed = internal::ProbeCudaModule(SIGMA_SKEWED_CUDA_MODULE);
  EXPECT_EQ(skewed.code(), absl::StatusCode::kUnavailable) << skewed;
  EXPECT_NE(skewed.message().find("ABI mismatch"), std::string::npos) << skewed;
  absl::Status right = internal::ProbeCudaModule(SIGMA_EMULATED_CUDA_MODULE);
  EXPECT_TRUE(right.ok()) << right;
}

#if SIGMA_HAVE_CPU_BLAS
// Many pipelined uploads through tiny pinned slots, with lazily executed
// streams: a slot overwritten before its upload ran would change the data.
TEST_F(EmulatedCuda, DoubleBufferedUploadsNeverOverwriteAPendingSlot) {
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  cuda::CudaBackendOptions o;
  o.staging_slot_bytes = 700;  // a few rows per slot
  std::unique_ptr<Backend> b = Make(o);
  ASSERT_NE(b, nullptr);
  Rows r = MakeRows(333, 20, 70);
  std::vector<SealMoments> out;
  std::vector<Rows> rows = {r};
  ASSERT_TRUE(SealAll(*b, rows, &out).ok());
  SealMoments want;
  ASSERT_TRUE(cpu->SealBatch({&r.input, 1}, {&want, 1}).ok());
  EXPECT_NEAR(out[0].cholesky[2].log_det, want.cholesky[2].log_det, 1e-9 * std::fabs(want.cholesky[2].log_det));
  EXPECT_NEAR(out[0].q_mean, want.q_mean, 1e-9 * want.q_mean);
  EXPECT_EQ(out[0].energy.count, 333);
}
#endif

}  // namespace
}  // namespace sigma
