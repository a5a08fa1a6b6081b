// Force-included (-include) into .cu files compiled as host C++ for the CUDA
// emulator (emulator.h): the CUDA headers as a host compiler sees them, then
// the device built-ins the kernels use, implemented on simt.h. The kernel
// sources are unchanged apart from launching through SIGMA_LAUNCH_KERNEL.
#ifndef SIGMA_TESTS_GPU_EMULATOR_DEVICE_SHIM_H_
#define SIGMA_TESTS_GPU_EMULATOR_DEVICE_SHIM_H_

// Shared memory is one block's at a time (simt.h runs blocks in turn).
#define __shared__ static

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "simt.h"

#define SIGMA_LAUNCH_KERNEL(kernel, grid, block, stream) \
  ::sigma::cuda_emulator::KernelLauncher(#kernel, (grid), (block), (stream), kernel)

// nvcc's register cap for a block size; nothing to cap on the host (the CUDA
// headers define it only for nvcc).
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#define threadIdx (::sigma::cuda_emulator::CurrentThreadIdx())
#define blockIdx (::sigma::cuda_emulator::CurrentBlockIdx())
#define blockDim (::sigma::cuda_emulator::CurrentBlockDim())
#define gridDim (::sigma::cuda_emulator::CurrentGridDim())

inline void __syncthreads() { ::sigma::cuda_emulator::SyncThreads(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return ::sigma::cuda_emulator::ShuffleXor(mask, value, lane_mask);
}

// Fibers of one grid run on one host thread and grids are serialised, so a
// plain read-modify-write is atomic here.
inline unsigned long long atomicMax(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  if (value > old) *address = value;
  return old;
}

// IEEE round-to-nearest without contraction (compile with -ffp-contract=off).
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __double2float_rn(double a) { return static_cast<float>(a); }
inline float __uint_as_float(unsigned int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

using std::fabs;
using std::fma;
using std::fmax;
using std::ilogb;
using std::isfinite;
using std::ldexp;
using std::log;
using std::sqrt;

#endif  // SIGMA_TESTS_GPU_EMULATOR_DEVICE_SHIM_H_
