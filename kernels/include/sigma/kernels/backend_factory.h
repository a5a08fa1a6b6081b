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
#include "sigma/kernels/routed_backend.h"

namespace sigma {

enum class BackendKind { kAuto, kCpu, kCuda };

std::optional<BackendKind> ParseBackendKind(std::string_view name);

struct BackendOptions {
  BackendKind kind = BackendKind::kAuto;
  // First CUDA device used; kCuda/kAuto use the devices device_ordinal,
  // device_ordinal + 1, ... (at most max_devices of them).
  int device_ordinal = 0;
  // kAuto with at least one device: snapshots with m below this are sealed on
  // the CPU backend, the others on the devices (routed_backend.h). Default
  // kDefaultGpuMinM = 256: NOT measured on a GPU yet (docs/benchmarks.md has
  // CPU figures only); tests/gpu/device_check.sh measures the crossover. 0
  // sends everything to the devices. Ignored by kCpu and kCuda.
  int64_t gpu_min_m = kDefaultGpuMinM;
  // kCuda/kAuto: use at most this many devices (0 = all the runtime sees), one
  // backend with its own context per device, snapshots placed by job
  // (SealInput::placement_key).
  int max_devices = 0;
  // kCuda/kAuto: each CUDA backend charges its device workspace and pinned
  // staging to this budget (sigmad: its --max-memory-bytes accounting); a
  // seal whose workspace the budget refuses fails RESOURCE_EXHAUSTED after
  // the batch was split. Not owned; must outlive the backend. Null: no limit
  // but the device's memory.
  MemoryBudget* memory_budget = nullptr;
};

// kCpu: the CPU backend (UNAVAILABLE in a build without it).
// kCuda: the devices only, no CPU routing: one device -> its CUDA backend
// ("cuda:0 <name>"); several -> a RoutedBackend over them. UNAVAILABLE when the
// build has no CUDA, no device is present or a device fails to initialise
// (message says which).
// kAuto: with at least one usable device, a RoutedBackend over the devices plus
// the CPU backend for m < gpu_min_m (without the CPU part when gpu_min_m = 0
// or the build has no CPU backend; then one device is returned bare); with no
// usable device, the CPU backend. `fallback_reason` (if not null) receives why
// CUDA was not used, or which devices were skipped because they failed to
// initialise (the others are used).
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options,
                                                     std::string* fallback_reason = nullptr);

// True when this build includes the CUDA backend.
bool BuiltWithCuda();

// Number of usable CUDA devices (0 without CUDA build or device).
int CudaDeviceCount();

namespace internal {
// Opens the CUDA backend module at `path` and checks its entry points and its
// ABI fingerprint (kernels/cuda/cuda_module_abi.h) the way MakeBackend does on
// first use, without making it the module MakeBackend uses. For tests.
absl::Status ProbeCudaModule(const std::string& path);
}  // namespace internal

}  // namespace sigma

#endif  // SIGMA_KERNELS_BACKEND_FACTORY_H_
