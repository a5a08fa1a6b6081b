// The only place that knows whether the CUDA backend was built.
#include "sigma/kernels/backend_factory.h"

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#if SIGMA_HAVE_CPU_BLAS
#include "sigma/kernels/cpu_backend.h"
#endif
#if SIGMA_HAVE_CUDA
#include <dlfcn.h>
#include <unistd.h>

#include <mutex>
#include <vector>

#include "cuda_module_abi.h"  // kernels/cuda
#endif

namespace sigma {

std::optional<BackendKind> ParseBackendKind(std::string_view name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return std::nullopt;
}

bool BuiltWithCuda() { return SIGMA_HAVE_CUDA != 0; }

namespace {

#if SIGMA_HAVE_CUDA
// The CUDA backend lives in a module (libsigma_cuda_backend.so, see
// kernels/cuda/CMakeLists.txt for why) loaded once, on first use, and never
// unloaded. Search order: $SIGMA_CUDA_MODULE; next to the executable; ../lib
// relative to it; the build tree; the dynamic linker's default path.
struct CudaModule {
  int (*device_count)() = nullptr;
  void (*make_backend)(int, const cuda::CudaModuleOptions*, absl::StatusOr<std::unique_ptr<Backend>>*) = nullptr;
  std::string error;  // why it could not be loaded
};

std::string ExecutableDir() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return "";
  std::string exe(path, static_cast<size_t>(n));
  return exe.substr(0, exe.find_last_of('/'));
}

// dlopens `path` and fills *module when its entry points are there and its
// ABI fingerprint is ours; else the reason. Never unloads a module it opened.
absl::Status OpenCudaModule(const std::string& path, CudaModule* module) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return absl::UnavailableError(dlerror());
  auto abi = reinterpret_cast<const char* (*)()>(dlsym(handle, "SigmaCudaModuleAbi"));
  if (abi == nullptr)
    return absl::UnavailableError(absl::StrCat(path, ": no SigmaCudaModuleAbi (a module older than ABI checks)"));
  const std::string ours = cuda::CudaModuleAbiFingerprint();
  if (const std::string theirs = abi(); theirs != ours)
    return absl::UnavailableError(absl::StrCat(path, ": ABI mismatch: the module is '", theirs,
                                               "', this binary is '", ours, "' (rebuild them together)"));
  module->device_count = reinterpret_cast<int (*)()>(dlsym(handle, "SigmaCudaDeviceCount"));
  module->make_backend =
      reinterpret_cast<void (*)(int, const cuda::CudaModuleOptions*, absl::StatusOr<std::unique_ptr<Backend>>*)>(
          dlsym(handle, "SigmaMakeCudaBackend"));
  if (module->device_count == nullptr || module->make_backend == nullptr) {
    *module = CudaModule{};
    return absl::UnavailableError(absl::StrCat(path, ": entry points missing"));
  }
  return absl::OkStatus();
}

const CudaModule& LoadCudaModule() {
  static CudaModule module;
  static std::once_flag once;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("SIGMA_CUDA_MODULE"); env != nullptr && *env)
      candidates.push_back(env);
    const std::string dir = ExecutableDir();
    if (!dir.empty()) {
      candidates.push_back(dir + "/" SIGMA_CUDA_MODULE_NAME);
      candidates.push_back(dir + "/../lib/" SIGMA_CUDA_MODULE_NAME);
    }
    candidates.push_back(SIGMA_CUDA_MODULE_BUILD_PATH);
    candidates.push_back(SIGMA_CUDA_MODULE_NAME);  // LD_LIBRARY_PATH, ld.so.cache
    std::string errors;
    for (const std::string& path : candidates) {
      if (path.find('/') != std::string::npos && access(path.c_str(), F_OK) != 0) continue;
      const absl::Status s = OpenCudaModule(path, &module);
      if (s.ok()) return;
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", s.message());
    }
    module.error = absl::StrCat("the CUDA backend module " SIGMA_CUDA_MODULE_NAME
                                " could not be loaded (set SIGMA_CUDA_MODULE): ",
                                errors.empty() ? "not found" : errors);
  });
  return module;
}
#endif  // SIGMA_HAVE_CUDA

absl::StatusOr<std::unique_ptr<Backend>> MakeCuda(int ordinal, MemoryBudget* budget) {
#if SIGMA_HAVE_CUDA
  const CudaModule& module = LoadCudaModule();
  if (module.make_backend == nullptr) return absl::UnavailableError(module.error);
  absl::StatusOr<std::unique_ptr<Backend>> backend = absl::UnavailableError("not created");
  cuda::CudaModuleOptions options;
  options.memory_budget = budget;
  module.make_backend(ordinal, &options, &backend);
  return backend;
#else
  (void)ordinal;
  (void)budget;
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

namespace internal {

absl::Status ProbeCudaModule(const std::string& path) {
#if SIGMA_HAVE_CUDA
  CudaModule module;
  return OpenCudaModule(path, &module);
#else
  (void)path;
  return absl::UnavailableError("this build has no CUDA backend");
#endif
}

}  // namespace internal

int CudaDeviceCount() {
#if SIGMA_HAVE_CUDA
  const CudaModule& module = LoadCudaModule();
  return module.device_count != nullptr ? module.device_count() : 0;
#else
  return 0;
#endif
}

namespace {

// One CUDA backend (its own context) per device device_ordinal, +1, ..., at
// most max_devices (0: all). Devices that fail to initialise are skipped and
// described in *skipped. Empty with *error set when none is usable.
std::vector<std::unique_ptr<Backend>> MakeCudaDevices(const BackendOptions& options, std::string* skipped,
                                                      absl::Status* error) {
  std::vector<std::unique_ptr<Backend>> devices;
  const int present = CudaDeviceCount();
  int last = present;  // exclusive
  if (options.max_devices > 0 && options.device_ordinal + options.max_devices < last)
    last = options.device_ordinal + options.max_devices;
  if (options.device_ordinal >= last) {
    // No device in range: let the single-device path say why (no module, no
    // device, ordinal out of range).
    absl::StatusOr<std::unique_ptr<Backend>> one = MakeCuda(options.device_ordinal, options.memory_budget);
    if (one.ok()) {
      devices.push_back(std::move(*one));
    } else {
      *error = one.status();
    }
    return devices;
  }
  absl::Status first_error;
  for (int ordinal = options.device_ordinal; ordinal < last; ++ordinal) {
    absl::StatusOr<std::unique_ptr<Backend>> b = MakeCuda(ordinal, options.memory_budget);
    if (b.ok()) {
      devices.push_back(std::move(*b));
      continue;
    }
    if (first_error.ok()) first_error = b.status();
    absl::StrAppend(skipped, skipped->empty() ? "" : "; ", "CUDA device ", ordinal, " not used: ",
                    b.status().message());
  }
  if (devices.empty()) *error = first_error;
  return devices;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options,
                                                     std::string* fallback_reason) {
  if (options.gpu_min_m < 0)
    return absl::InvalidArgumentError(absl::StrCat("gpu_min_m must be >= 0, got ", options.gpu_min_m));
  if (options.max_devices < 0)
    return absl::InvalidArgumentError(absl::StrCat("max_devices must be >= 0, got ", options.max_devices));
  if (options.device_ordinal < 0)
    return absl::InvalidArgumentError(absl::StrCat("device_ordinal must be >= 0, got ", options.device_ordinal));
  switch (options.kind) {
    case BackendKind::kCpu:
      return MakeCpu();
    case BackendKind::kCuda: {
      // Devices only; any device that does not initialise is an error here.
      std::string skipped;
      absl::Status error;
      std::vector<std::unique_ptr<Backend>> devices = MakeCudaDevices(options, &skipped, &error);
      if (devices.empty()) return error;
      if (!skipped.empty()) return absl::UnavailableError(skipped);
      if (devices.size() == 1) return std::move(devices[0]);
      absl::StatusOr<std::unique_ptr<RoutedBackend>> routed =
          RoutedBackend::Create(nullptr, std::move(devices), options.gpu_min_m);
      if (!routed.ok()) return routed.status();
      return std::unique_ptr<Backend>(std::move(*routed));
    }
    case BackendKind::kAuto: {
      std::string skipped;
      absl::Status error;
      std::vector<std::unique_ptr<Backend>> devices = MakeCudaDevices(options, &skipped, &error);
      if (devices.empty()) {
        if (fallback_reason != nullptr) *fallback_reason = std::string(error.message());
        return MakeCpu();
      }
      if (fallback_reason != nullptr) *fallback_reason = skipped;
      // Small snapshots to the CPU backend, when there is one (a device-only
      // build, e.g. the device check's, has none: then everything goes to the devices).
      std::unique_ptr<Backend> cpu;
      if (options.gpu_min_m > 0) {
        absl::StatusOr<std::unique_ptr<Backend>> c = MakeCpu();
        if (c.ok()) cpu = std::move(*c);
      }
      if (cpu == nullptr && devices.size() == 1) return std::move(devices[0]);
      absl::StatusOr<std::unique_ptr<RoutedBackend>> routed =
          RoutedBackend::Create(std::move(cpu), std::move(devices), options.gpu_min_m);
      if (!routed.ok()) return routed.status();
      return std::unique_ptr<Backend>(std::move(*routed));
    }
  }
  return absl::InvalidArgumentError("unknown backend kind");
}

}  // namespace sigma
