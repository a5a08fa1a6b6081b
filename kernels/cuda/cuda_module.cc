// The C entry points of libsigma_cuda_backend.so, looked up with dlsym by
// kernels/src/backend_factory.cc (the only caller). C++ types cross the
// boundary through out-parameters: host and module are built by the same
// compiler against the same shared Abseil.
#include "cuda_backend.h"

extern "C" {

// Number of CUDA devices the runtime sees (0 when none or no driver).
__attribute__((visibility("default"))) int SigmaCudaDeviceCount() {
  return sigma::cuda::DeviceCount();
}

// *out = sigma::cuda::MakeCudaBackend(ordinal).
__attribute__((visibility("default"))) void SigmaMakeCudaBackend(
    int ordinal, absl::StatusOr<std::unique_ptr<sigma::Backend>>* out) {
  *out = sigma::cuda::MakeCudaBackend(ordinal);
}

}  // extern "C"
