// Creates backends. This is the only place that knows whether CUDA was built.
#ifndef SIGMA_KERNELS_BACKEND_FACTORY_H_
#define SIGMA_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "sigma/kernels/backend.h"

namespace sigma {

enum class BackendKind { kAuto, kCpu, kCuda };

std::optional<BackendKind> ParseBackendKind(std::string_view name);

struct BackendOptions {
  BackendKind kind = BackendKind::kAuto;
  int device_ordinal = 0;  // CUDA device
};

// kCpu: always succeeds. kCuda: UNAVAILABLE when the build has no CUDA or no
// device is present (message says which). kAuto: CUDA when available, else CPU;
// `fallback_reason` (if not null) receives why CUDA was not used.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options,
                                                     std::string* fallback_reason = nullptr);

// True when this build includes the CUDA backend.
bool BuiltWithCuda();

// Number of usable CUDA devices (0 without CUDA build or device).
int CudaDeviceCount();

}  // namespace sigma

#endif  // SIGMA_KERNELS_BACKEND_FACTORY_H_
