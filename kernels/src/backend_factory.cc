// The only place that knows whether the CUDA backend was built.
#include "sigma/kernels/backend_factory.h"

#include "absl/strings/str_cat.h"
#if SIGMA_HAVE_CPU_BLAS
#include "sigma/kernels/cpu_backend.h"
#endif
#if SIGMA_HAVE_CUDA
#include "cuda_backend.h"  // kernels/cuda/, private to this library
#endif

namespace sigma {

std::optional<BackendKind> ParseBackendKind(std::string_view name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return std::nullopt;
}

bool BuiltWithCuda() { return SIGMA_HAVE_CUDA != 0; }

int CudaDeviceCount() {
#if SIGMA_HAVE_CUDA
  return cuda::DeviceCount();
#else
  return 0;
#endif
}

namespace {

absl::StatusOr<std::unique_ptr<Backend>> MakeCuda(int ordinal) {
#if SIGMA_HAVE_CUDA
  return cuda::MakeCudaBackend(ordinal);
#else
  (void)ordinal;
  return absl::UnavailableError("this build has no CUDA backend (SIGMA_WITH_CUDA=OFF or no toolkit)");
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCpu() {
#if SIGMA_HAVE_CPU_BLAS
  return MakeCpuBackend();
#else
  return absl::UnavailableError("this build has no CPU backend (OpenBLAS/LAPACKE not found)");
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options,
                                                     std::string* fallback_reason) {
  switch (options.kind) {
    case BackendKind::kCpu:
      return MakeCpu();
    case BackendKind::kCuda:
      return MakeCuda(options.device_ordinal);
    case BackendKind::kAuto: {
      absl::StatusOr<std::unique_ptr<Backend>> cuda = MakeCuda(options.device_ordinal);
      if (cuda.ok()) return cuda;
      if (fallback_reason != nullptr) *fallback_reason = std::string(cuda.status().message());
      return MakeCpu();
    }
  }
  return absl::InvalidArgumentError("unknown backend kind");
}

}  // namespace sigma
