// The C entry points of libsigma_cuda_backend.so, looked up with dlsym by
// kernels/src/backend_factory.cc (the only caller); the contract and its ABI
// check are in cuda_module_abi.h.
#include <string>

#include "cuda_backend.h"
#include "cuda_module_abi.h"

extern "C" {

// The module's ABI fingerprint (static storage). SIGMA_CUDA_MODULE_ABI_SKEW:
// tests only, a module that claims another ABI (tests/gpu/CMakeLists.txt).
__attribute__((visibility("default"))) const char* SigmaCudaModuleAbi() {
#ifdef SIGMA_CUDA_MODULE_ABI_SKEW
  static const std::string abi = sigma::cuda::CudaModuleAbiFingerprint() + " " SIGMA_CUDA_MODULE_ABI_SKEW;
#else
  static const std::string abi = sigma::cuda::CudaModuleAbiFingerprint();
#endif
  return abi.c_str();
}

// Number of CUDA devices the runtime sees (0 when none or no driver).
__attribute__((visibility("default"))) int SigmaCudaDeviceCount() { return sigma::cuda::DeviceCount(); }

// *out = sigma::cuda::MakeCudaBackend(ordinal, options from *module_options).
__attribute__((visibility("default"))) void SigmaMakeCudaBackend(
    int ordinal, const sigma::cuda::CudaModuleOptions* module_options,
    absl::StatusOr<std::unique_ptr<sigma::Backend>>* out) {
  sigma::cuda::CudaBackendOptions options;
  if (module_options != nullptr) options.memory_budget = module_options->memory_budget;
  *out = sigma::cuda::MakeCudaBackend(ordinal, options);
}

}  // extern "C"
