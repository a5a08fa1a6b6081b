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

uint64_t HostSplitMix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

cudaError_t FillBenchBf16(uint16_t* device_out, uint64_t count, uint64_t seed, cudaStream_t stream) {
  SIGMA_LAUNCH_KERNEL(FillBf16, 4096, 256, stream)(device_out, count, HostSplitMix64(seed));
  return cudaGetLastError();
}

cudaError_t FillBenchF64(double* device_out, uint64_t count, uint64_t seed, cudaStream_t stream) {
  SIGMA_LAUNCH_KERNEL(FillF64, 4096, 256, stream)(device_out, count, HostSplitMix64(seed));
  return cudaGetLastError();
}

}  // namespace sigma::bench
