// The contract between kernels/src/backend_factory.cc and the CUDA backend
// module libsigma_cuda_backend.so (cuda_module.cc), which it dlopens. C++
// objects (absl::StatusOr, std::unique_ptr<Backend>, MemoryBudget) cross the
// extern "C" entry points, so both sides must agree on their layout: each
// computes CudaModuleAbiFingerprint() from this header, and the factory
// refuses a module whose fingerprint differs (UNAVAILABLE, naming both).
//
// Entry points of the module (extern "C", default visibility):
//   const char* SigmaCudaModuleAbi();  // its CudaModuleAbiFingerprint()
//   int SigmaCudaDeviceCount();
//   void SigmaMakeCudaBackend(int ordinal, const sigma::cuda::CudaModuleOptions* options,
//                             absl::StatusOr<std::unique_ptr<sigma::Backend>>* out);
#ifndef SIGMA_KERNELS_CUDA_CUDA_MODULE_ABI_H_
#define SIGMA_KERNELS_CUDA_CUDA_MODULE_ABI_H_

#include <memory>
#include <string>

#include "absl/base/config.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "sigma/kernels/backend.h"

namespace sigma::cuda {

// Bump on any change to the entry points or to the types that cross them.
inline constexpr int kCudaModuleAbiVersion = 2;

// What the factory passes to SigmaMakeCudaBackend.
struct CudaModuleOptions {
  MemoryBudget* memory_budget = nullptr;  // not owned; may be null
};

// Version, compiler, Abseil release and the sizes of the crossing types.
inline std::string CudaModuleAbiFingerprint() {
  return absl::StrCat("sigma cuda module abi ", kCudaModuleAbiVersion,
#ifdef __VERSION__
                      "; compiler ", __VERSION__,
#endif
#ifdef ABSL_LTS_RELEASE_VERSION
                      "; abseil ", ABSL_LTS_RELEASE_VERSION,
#endif
                      "; sizes ", sizeof(absl::StatusOr<std::unique_ptr<Backend>>), "/", sizeof(absl::Status),
                      "/", sizeof(SealInput), "/", sizeof(SealMoments), "/", sizeof(CudaModuleOptions));
}

}  // namespace sigma::cuda

#endif  // SIGMA_KERNELS_CUDA_CUDA_MODULE_ABI_H_
