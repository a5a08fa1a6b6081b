// Placeholder until the CUDA backend lands: reports devices, creates none.
#include "cuda_backend.h"

#include <cuda_runtime.h>

namespace sigma::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal) {
  if (DeviceCount() <= ordinal) return absl::UnavailableError("no CUDA device");
  return absl::UnimplementedError("CUDA backend not implemented yet");
}

}  // namespace sigma::cuda
