// Kernel execution for the CUDA emulator (emulator.h): a grid runs on the
// calling host thread, block after block; the threads of a block are
// cooperative fibers (ucontext), so __syncthreads and warp shuffles are real
// barriers and a kernel's result does not depend on which thread runs first.
//
// Thread-safety: RunGrid serialises itself (one grid at a time per process;
// __shared__ variables are `static` in the emulated build and so belong to the
// one block that is running). The Current*() accessors and the barriers may
// only be called from inside a kernel body run by RunGrid.
#ifndef SIGMA_TESTS_GPU_EMULATOR_SIMT_H_
#define SIGMA_TESTS_GPU_EMULATOR_SIMT_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emulator.h"

namespace sigma::cuda_emulator {

inline constexpr int kWarpSize = 32;

// Runs `body` once for every thread of `grid` x `block`. Returns false (after
// ReportViolation) when the kernel deadlocked (threads of a block waiting at
// different barriers), reached __syncthreads after some of its block's threads
// exited, or shuffled with exited lanes.
bool RunGrid(dim3 grid, dim3 block, std::string_view kernel_name, const std::function<void()>& body);

uint3 CurrentThreadIdx();
uint3 CurrentBlockIdx();
dim3 CurrentBlockDim();
dim3 CurrentGridDim();

// __syncthreads(): every thread of the block that has not exited arrives.
void SyncThreads();
// __shfl_xor_sync(mask, value, lane_mask) on 64 bits: the value of lane
// (lane ^ lane_mask). `mask` must name every lane of the warp that is running
// (the emulated kernels use full warps); a source lane that has exited is a
// violation.
uint64_t ShuffleXor64(unsigned mask, uint64_t bits, int lane_mask);

// The launch itself: SIGMA_LAUNCH_KERNEL(k, grid, block, stream)(args...)
// expands to KernelLauncher(...)(args...) in the emulated build. Checks the
// configuration like cudaLaunchKernel (cudaErrorInvalidConfiguration into the
// last error), counts the launch, and queues the grid on `stream`; arguments
// are copied at launch, as CUDA copies kernel parameters.
template <typename... Params>
class KernelLaunch {
 public:
  KernelLaunch(const char* name, dim3 grid, dim3 block, cudaStream_t stream, void (*kernel)(Params...))
      : name_(name), grid_(grid), block_(block), stream_(stream), kernel_(kernel) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    const uint64_t threads = uint64_t{block_.x} * block_.y * block_.z;
    if (threads == 0 || threads > 1024 || grid_.x == 0 || grid_.y == 0 || grid_.z == 0 || grid_.y > 65535 ||
        grid_.z > 65535 || grid_.x > 0x7fffffffu || block_.z > 64) {
      SetLastError(cudaErrorInvalidConfiguration);
      return;
    }
    if (cudaError_t e = NoteKernelLaunch(name_); e != cudaSuccess) {
      SetLastError(e);
      return;
    }
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    cudaError_t e = Enqueue(
        stream_,
        [kernel = kernel_, grid = grid_, block = block_, name = name_, params] {
          RunGrid(grid, block, name, [&] { std::apply(kernel, params); });
        },
        name_);
    if (e != cudaSuccess) SetLastError(e);
  }

 private:
  const char* name_;  // the kernel's name as written at the launch (#kernel): static storage
  dim3 grid_, block_;
  cudaStream_t stream_;
  void (*kernel_)(Params...);
};

template <typename... Params>
KernelLaunch<Params...> KernelLauncher(const char* name, dim3 grid, dim3 block, cudaStream_t stream,
                                       void (*kernel)(Params...)) {
  return KernelLaunch<Params...>(name, grid, block, stream, kernel);
}

template <typename T>
T ShuffleXor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = ShuffleXor64(mask, bits, lane_mask);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace sigma::cuda_emulator

#endif  // SIGMA_TESTS_GPU_EMULATOR_SIMT_H_
