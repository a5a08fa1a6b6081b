// Tests that only the host CUDA emulator (tests/gpu/emulator) can run: HOW the
// CUDA backend uses the device (one context, workspace reuse, one batched
// factorisation per group, one host synchronisation per group), its error
// paths under injected CUDA/cuBLAS/cuSOLVER failures and a small device
// memory, and a guard that no test of this executable touched device memory
// out of range. Built into sigma_gpu_emulated_test with cuda_backend_test.cc.
#include <gtest/gtest.h>

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cuda_backend.h"
#include "emulator.h"
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
      {"cusolverDnXtrtri", CUSOLVER_STATUS_EXECUTION_FAILED, absl::StatusCode::kInternal, "cusolverDnXtrtri"},
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

#if SIGMA_HAVE_CPU_BLAS
// Many pipelined uploads through tiny pinned slots, with lazily executed
// streams: a slot overwritten before its upload ran would change the data.
TEST_F(EmulatedCuda, DoubleBufferedUploadsNeverOverwriteAPendingSlot) {
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  cuda::CudaBackendOptions o;
  o.staging_slot_bytes = 700;  // a few rows per slot
  o.chunk_bytes = 9000;
  std::unique_ptr<Backend> b = Make(o);
  ASSERT_NE(b, nullptr);
  Rows r = MakeRows(333, 20, 70);
  std::vector<double> g_cpu(400, 0.0), g_gpu(400, 0.0);
  EnergyStats e_cpu, e_gpu;
  ASSERT_TRUE(cpu->AccumulateGram(r.input.rows, Preprocessing::kL2, 1.0, g_cpu.data(), &e_cpu).ok());
  absl::Status s = b->AccumulateGram(r.input.rows, Preprocessing::kL2, 1.0, g_gpu.data(), &e_gpu);
  ASSERT_TRUE(s.ok()) << s;
  for (size_t i = 0; i < g_cpu.size(); ++i) EXPECT_NEAR(g_gpu[i], g_cpu[i], 1e-12 * 333) << i;
  EXPECT_EQ(e_gpu.count, 333);
  std::vector<SealMoments> out;
  std::vector<Rows> rows = {r};
  ASSERT_TRUE(SealAll(*b, rows, &out).ok());
  SealMoments want;
  ASSERT_TRUE(cpu->SealBatch({&r.input, 1}, {&want, 1}).ok());
  EXPECT_NEAR(out[0].cholesky[2].log_det, want.cholesky[2].log_det, 1e-9 * std::fabs(want.cholesky[2].log_det));
  EXPECT_NEAR(out[0].q_mean, want.q_mean, 1e-9 * want.q_mean);
}
#endif

}  // namespace
}  // namespace sigma
