// Private glue between the runtime emulation (cuda_runtime_emulator.cc, which
// owns the global state: lock, allocations, streams, counters, injected
// failures) and the cuBLAS/cuSOLVER emulation (cuda_libraries_emulator.cc).
// Not for tests or the kernel emulation: they use emulator.h.
//
// Thread-safety: every function here requires internal::Mutex() to be held
// by the caller (it is recursive, so taking it again is fine), except
// Mutex() itself.
#ifndef SIGMA_TESTS_GPU_EMULATOR_EMULATOR_INTERNAL_H_
#define SIGMA_TESTS_GPU_EMULATOR_EMULATOR_INTERNAL_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "emulator.h"

namespace sigma::cuda_emulator::internal {

// The one lock around all emulator state (see emulator.h). Recursive: work
// run at a synchronisation calls back into IsDeviceRange/ReportViolation.
std::recursive_mutex& Mutex();

// Consumes and returns the failure injected by FailNextCall for `function`
// (exact name), if any. Does not poison: the caller decides by family.
std::optional<int> TakeInjectedFailure(std::string_view function);

// The live counters (emulator.h); the caller holds Mutex().
Counters& MutableCounters();

// Records misuse refused at call time (a bad range or argument found before
// anything was queued): prints "[cuda emulator] VIOLATION: ..." and counts
// it, but does NOT poison the context (the call returns an ordinary error,
// as the real API does for invalid arguments).
void NoteMisuse(const std::string& what);

// The sticky error of a poisoned context, or cudaSuccess.
cudaError_t StickyError();

// True when SetDeviceCount(n) with n > 0 is in effect.
bool DevicePresent();

// "0x... (+N bytes)" plus which live allocation (if any) contains it, for
// violation messages.
std::string DescribeRange(const void* p, size_t bytes);

}  // namespace sigma::cuda_emulator::internal

#endif  // SIGMA_TESTS_GPU_EMULATOR_EMULATOR_INTERNAL_H_
