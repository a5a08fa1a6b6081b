// Tests of the kernel emulation (simt.h) itself: kernels written as CUDA
// device code (this file is compiled with device_shim.h force-included, like
// the emulated .cu files) must see CUDA's execution model: thread/block
// coordinates, __syncthreads and __shared__ as a block barrier and block
// storage, warp shuffles, launch-configuration errors; divergent barriers are
// reported, not hung on.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "emulator.h"

namespace {

namespace emu = sigma::cuda_emulator;

// Block sum: shuffles inside warps, then warp 0 over the per-warp partials in
// shared memory. out[blockIdx.x] = sum of in over the block's elements.
__global__ void BlockSumKernel(const double* in, int64_t n, double* out) {
  __shared__ double partial[32];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  double v = i < n ? in[i] : 0.0;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>((blockDim.x + 31) / 32) ? partial[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// Every thread writes its linear 3-D coordinates.
__global__ void CoordinatesKernel(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[block * threads + thread] = block * 1000 + thread;
}

// Only thread 0 reaches the barrier, after the others exited: undefined on a
// GPU, reported here.
__global__ void DivergentBarrierKernel(int* out) {
  if (threadIdx.x == 0) __syncthreads();
  out[threadIdx.x] = 1;
}

// Lanes 16..31 exit, then the rest shuffle with a full mask.
__global__ void ShuffleAfterExitKernel(int* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

template <typename T>
T* DeviceAlloc(size_t count) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, count * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}

class SimtTest : public testing::Test {
 protected:
  void SetUp() override { emu::Reset(); }
  void TearDown() override { emu::Reset(); }
};

TEST_F(SimtTest, BlockReductionWithSharedMemoryAndShuffles) {
  for (unsigned threads : {32u, 96u, 256u, 1024u}) {
    SCOPED_TRACE(threads);
    const int64_t n = 5000;
    std::vector<double> host(n);
    for (int64_t i = 0; i < n; ++i) host[i] = static_cast<double>(i % 97) - 40.0;
    const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
    double* in = DeviceAlloc<double>(n);
    double* out = DeviceAlloc<double>(blocks);
    ASSERT_EQ(cudaMemcpy(in, host.data(), n * sizeof(double), cudaMemcpyHostToDevice), cudaSuccess);
    SIGMA_LAUNCH_KERNEL(BlockSumKernel, blocks, threads, nullptr)(in, n, out);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    std::vector<double> sums(blocks);
    ASSERT_EQ(cudaMemcpy(sums.data(), out, blocks * sizeof(double), cudaMemcpyDeviceToHost), cudaSuccess);
    for (unsigned b = 0; b < blocks; ++b) {
      double want = 0;
      for (int64_t i = b * int64_t{threads}; i < std::min<int64_t>(n, (b + 1) * int64_t{threads}); ++i)
        want += host[i];
      EXPECT_EQ(sums[b], want) << "block " << b;
    }
    cudaFree(in);
    cudaFree(out);
  }
  EXPECT_EQ(emu::GetCounters().violations, 0);
  EXPECT_EQ(emu::GetCounters().kernel_launches, 4);
}

TEST_F(SimtTest, ThreeDimensionalCoordinates) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const unsigned total = 12 * 24;
  unsigned* out = DeviceAlloc<unsigned>(total);
  SIGMA_LAUNCH_KERNEL(CoordinatesKernel, grid, block, nullptr)(out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<unsigned> host(total);
  ASSERT_EQ(cudaMemcpy(host.data(), out, total * sizeof(unsigned), cudaMemcpyDeviceToHost), cudaSuccess);
  for (unsigned b = 0; b < 12; ++b)
    for (unsigned t = 0; t < 24; ++t) EXPECT_EQ(host[b * 24 + t], b * 1000 + t);
  cudaFree(out);
}

TEST_F(SimtTest, LaunchConfigurationErrors) {
  int* out = DeviceAlloc<int>(64);
  SIGMA_LAUNCH_KERNEL(DivergentBarrierKernel, 1, 2048, nullptr)(out);  // > 1024 threads
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  SIGMA_LAUNCH_KERNEL(DivergentBarrierKernel, 0, 32, nullptr)(out);  // empty grid
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read and cleared
  EXPECT_EQ(emu::GetCounters().kernel_launches, 0);
  cudaFree(out);
}

TEST_F(SimtTest, DivergentBarrierIsReportedNotHung) {
  int* out = DeviceAlloc<int>(64);
  SIGMA_LAUNCH_KERNEL(DivergentBarrierKernel, 1, 64, nullptr)(out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);  // launching is fine; running is not
  EXPECT_NE(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_GE(emu::GetCounters().violations, 1);
}

TEST_F(SimtTest, ShuffleWithExitedLanesIsReported) {
  int* out = DeviceAlloc<int>(32);
  SIGMA_LAUNCH_KERNEL(ShuffleAfterExitKernel, 1, 32, nullptr)(out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_NE(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_GE(emu::GetCounters().violations, 1);
}

TEST_F(SimtTest, InjectedLaunchFailure) {
  int* out = DeviceAlloc<int>(32);
  emu::FailNextCall("CoordinatesKernel", cudaErrorLaunchOutOfResources);
  SIGMA_LAUNCH_KERNEL(CoordinatesKernel, 1, 32, nullptr)(reinterpret_cast<unsigned*>(out));
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
  SIGMA_LAUNCH_KERNEL(CoordinatesKernel, 1, 32, nullptr)(reinterpret_cast<unsigned*>(out));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(out);
}

}  // namespace
