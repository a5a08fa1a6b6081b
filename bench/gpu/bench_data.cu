// Seeded benchmark data made on the device, identical to bench/gpu/torch_seal.py:
//   u = splitmix64(idx ^ splitmix64(seed)), idx = row * m + col (uint64)
//   v = (u >> 11) * 2^-53 - 0.5                 (float64, exact)
//   element = bf16(float32(v))                  (round to nearest even, twice)
// and the float64 value of that element for the raw DGEMM timing.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

// Every launch goes through this macro: nvcc's <<<>>> here; the host CUDA
// emulator (tests/gpu/emulator/device_shim.h) defines it to run the same
// kernels on the CPU in tests.
#ifndef SIGMA_LAUNCH_KERNEL
#define SIGMA_LAUNCH_KERNEL(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#endif

namespace sigma::bench {
namespace {

// splitmix64 on the device. ingest_rules.h's sigma::SplitMix64 is the one
// definition, but this file goes through nvcc as C++17 (kernels/cuda's
// CMakeLists: CMake 3.25 gives nvcc no C++20 flag) and that header needs
// C++20 (<bit>) and its functions are host-only, so this device copy stays:
// keep it equal to sigma::SplitMix64 (torch_seal.py replicates it too). The
// host side (seed_mix) uses the header (sigma_gpu_bench.cc).
__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ __nv_bfloat16 Element(uint64_t idx, uint64_t seed_mix) {
  const uint64_t u = SplitMix64(idx ^ seed_mix);
  const double v = static_cast<double>(u >> 11) * 0x1.0p-53 - 0.5;
  return __float2bfloat16_rn(__double2float_rn(v));
}

__global__ void FillBf16(uint16_t* out, uint64_t count, uint64_t seed_mix) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    out[i] = __bfloat16_as_ushort(Element(i, seed_mix));
  }
}

__global__ void FillF64(double* out, uint64_t count, uint64_t seed_mix) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<double>(__bfloat162float(Element(i, seed_mix)));
  }
}

}  // namespace

// seed_mix = splitmix64(seed), computed on the host by the caller
// (sigma::SplitMix64, ingest_rules.h).
cudaError_t FillBenchBf16(uint16_t* device_out, uint64_t count, uint64_t seed_mix, cudaStream_t stream) {
  SIGMA_LAUNCH_KERNEL(FillBf16, 4096, 256, stream)(device_out, count, seed_mix);
  return cudaGetLastError();
}

cudaError_t FillBenchF64(double* device_out, uint64_t count, uint64_t seed_mix, cudaStream_t stream) {
  SIGMA_LAUNCH_KERNEL(FillF64, 4096, 256, stream)(device_out, count, seed_mix);
  return cudaGetLastError();
}

}  // namespace sigma::bench
