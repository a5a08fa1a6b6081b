// Host emulation of the CUDA runtime API subset used by kernels/cuda (see
// emulator.h for the model). The functions below are declared by
// <cuda_runtime_api.h> with C linkage, so defining them here replaces
// libcudart at link time; link this file INSTEAD of libcudart.
//
// Memory: "device" allocations are host memory from aligned_alloc, tracked in
// State::device (base -> size); pinned host memory (cudaMallocHost) is host
// memory tracked in State::pinned. Fresh device and pinned memory is filled
// with 0xFF bytes (a NaN for every double) so reads of memory never written
// show up.
//
// Streams: each stream is a FIFO of pending work (State::Stream::queue),
// executed lazily at a synchronisation that covers it. Every queued item gets
// a global sequence number; the legacy default stream (nullptr,
// cudaStreamLegacy, cudaStreamPerThread) is ordered against blocking streams
// (created without cudaStreamNonBlocking) as in CUDA: before a legacy item
// runs, earlier items of every blocking stream run, and vice versa.
//
// Thread-safety: every entry point takes internal::Mutex() (recursive), so
// calls from several host threads are serialised; queued work runs on the
// thread that synchronises, under the same lock.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "emulator.h"
#include "emulator_internal.h"

namespace sigma::cuda_emulator {
namespace {

constexpr size_t kDeviceAlign = 256;
constexpr unsigned char kPoisonByte = 0xFF;  // 0xFF..FF is a NaN as a double
constexpr int kEmulatedVersion = CUDART_VERSION;

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

size_t DefaultMemoryLimit() {
  if (const char* env = std::getenv("SIGMA_CUDA_EMULATOR_MEMORY"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end != env) return static_cast<size_t>(v);
  }
  return size_t{4} << 30;
}

int DefaultDeviceCount() {
  if (const char* env = std::getenv("SIGMA_CUDA_EMULATOR_DEVICES"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && v >= 0 && v <= 64) return static_cast<int>(v);
  }
  return 1;
}

bool IsSticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorContextIsDestroyed: return true;
    default: return false;
  }
}

// One queued piece of work.
struct Work {
  uint64_t seq = 0;
  std::function<void()> fn;
  std::string what;
};

// A stream: its pending work, in order. Held by shared_ptr so events recorded
// on it and streams destroyed with work pending stay valid until that work ran.
struct Stream {
  bool legacy = false;   // the legacy default stream
  bool blocking = true;  // synchronises with the legacy stream
  unsigned flags = 0;
  std::deque<Work> queue;
  bool compute = false;   // a kernel or library call was queued here (Enqueue)
  int64_t h2d_bytes = 0;  // host-to-device bytes queued here since Reset()
};

// An event: the marker of its latest record. Completion is set when the
// marker runs (State::RunUntil); `generation` tells markers of older records
// apart.
struct Event {
  unsigned flags = 0;
  bool recorded = false;   // cudaEventRecord called at least once
  bool completed = false;  // the latest record's marker has run
  uint64_t generation = 0;
  uint64_t record_seq = 0;         // sequence number of the latest marker
  std::shared_ptr<Stream> stream;  // where the latest marker was queued
  std::chrono::steady_clock::time_point time;
};

// All emulator state. Lives for the whole process (never destroyed, so static
// destructors elsewhere may still call the runtime); guarded by `mu`.
struct State {
  std::recursive_mutex mu;
  size_t memory_limit = DefaultMemoryLimit();
  size_t bytes_in_use = 0;
  int device_count = DefaultDeviceCount();
  int runtime_version = kEmulatedVersion;  // cudaRuntimeGetVersion, cudaDriverGetVersion
  std::map<uintptr_t, size_t> device;  // live cudaMalloc blocks: base -> size
  std::map<uintptr_t, size_t> pinned;  // live cudaMallocHost blocks
  std::map<std::string, int, std::less<>> injected;
  Counters counters;
  cudaError_t sticky = cudaSuccess;
  cudaError_t last_error = cudaSuccess;
  uint64_t next_seq = 1;
  std::shared_ptr<Stream> legacy = std::make_shared<Stream>();
  std::map<cudaStream_t, std::shared_ptr<Stream>> streams;  // user streams
  std::vector<std::shared_ptr<Stream>> retired;             // destroyed with work pending
  std::map<cudaEvent_t, std::shared_ptr<Event>> events;
  const std::string* running = nullptr;  // description of the executing work

  State() {
    legacy->legacy = true;
    legacy->blocking = false;
  }
};

State& S() {
  static State* const state = new State();
  return *state;
}

thread_local int current_device = 0;

// ---- state helpers (caller holds S().mu) ------------------------------------

// Abandons all pending work (a poisoned context executes nothing more).
void DropAllWork() {
  State& s = S();
  s.legacy->queue.clear();
  for (auto& [handle, stream] : s.streams) stream->queue.clear();
  s.retired.clear();
}

void Poison(cudaError_t e) {
  State& s = S();
  if (s.sticky == cudaSuccess) s.sticky = e;
  DropAllWork();
}

// Records a returned error as the last error (sticky ones poison); returns it.
cudaError_t Finish(cudaError_t e) {
  if (e == cudaSuccess || e == cudaErrorNotReady) return e;
  if (IsSticky(e)) {
    Poison(e);
    return S().sticky;
  }
  S().last_error = e;
  return e;
}

// Common prologue of an API call: an injected failure for `name` (consumed),
// else the sticky error of a poisoned context, else (when `needs_device`)
// cudaErrorNoDevice without a device. nullopt: go ahead.
std::optional<cudaError_t> Begin(std::string_view name, bool needs_device = true) {
  State& s = S();
  if (auto it = s.injected.find(name); it != s.injected.end()) {
    const auto e = static_cast<cudaError_t>(it->second);
    s.injected.erase(it);
    return Finish(e);
  }
  if (s.sticky != cudaSuccess) return s.sticky;
  if (needs_device && s.device_count <= 0) return Finish(cudaErrorNoDevice);
  return std::nullopt;
}

// The allocation containing address `p`, if any.
std::optional<std::pair<uintptr_t, size_t>> FindAllocation(const void* p) {
  const auto& device = S().device;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = device.upper_bound(a);
  if (it == device.begin()) return std::nullopt;
  --it;
  if (a >= it->first && a < it->first + it->second) return *it;
  return std::nullopt;
}

bool IsLegacyHandle(cudaStream_t stream) {
  return stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread;
}

// The stream behind a handle, or nullptr for an unknown (destroyed) handle.
std::shared_ptr<Stream> FindStream(cudaStream_t stream) {
  State& s = S();
  if (IsLegacyHandle(stream)) return s.legacy;
  auto it = s.streams.find(stream);
  return it == s.streams.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Stream>> AllStreams() {
  State& s = S();
  std::vector<std::shared_ptr<Stream>> all{s.legacy};
  for (auto& [handle, stream] : s.streams) all.push_back(stream);
  for (auto& stream : s.retired) all.push_back(stream);
  return all;
}

// Runs `stream`'s queued work with sequence numbers <= `limit`, in order,
// first running what the legacy-stream ordering says must precede each item.
void RunUntil(const std::shared_ptr<Stream>& stream, uint64_t limit) {
  State& s = S();
  while (!stream->queue.empty() && stream->queue.front().seq <= limit) {
    if (s.sticky != cudaSuccess) {
      DropAllWork();
      return;
    }
    Work w = std::move(stream->queue.front());
    stream->queue.pop_front();
    if (stream->legacy) {
      for (const auto& other : AllStreams())
        if (other->blocking) RunUntil(other, w.seq - 1);
    } else if (stream->blocking) {
      RunUntil(s.legacy, w.seq - 1);
    }
    if (s.sticky != cudaSuccess) {
      DropAllWork();
      return;
    }
    const std::string* outer = s.running;
    s.running = &w.what;
    w.fn();
    s.running = outer;
  }
}

// Runs all queued work of every stream, oldest first.
void RunAll() {
  State& s = S();
  for (;;) {
    std::shared_ptr<Stream> next;
    for (const auto& stream : AllStreams()) {
      if (!stream->queue.empty() && (next == nullptr || stream->queue.front().seq < next->queue.front().seq))
        next = stream;
    }
    if (next == nullptr) break;
    RunUntil(next, next->queue.front().seq);
  }
  s.retired.clear();  // all empty now
}

// Queues work on an already resolved stream.
void Push(const std::shared_ptr<Stream>& stream, std::function<void()> fn, std::string what) {
  stream->queue.push_back(Work{S().next_seq++, std::move(fn), std::move(what)});
}

std::string Hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%p", p);
  return buf;
}

const char* KindName(cudaMemcpyKind kind) {
  switch (kind) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    case cudaMemcpyDefault: return "Default";
  }
  return "(invalid kind)";
}

// Which sides of a copy must be device memory.
struct CopySides {
  bool dst_device = false, src_device = false;
};
CopySides SidesOf(void* dst, const void* src, cudaMemcpyKind kind) {
  switch (kind) {
    case cudaMemcpyHostToDevice: return {true, false};
    case cudaMemcpyDeviceToHost: return {false, true};
    case cudaMemcpyDeviceToDevice: return {true, true};
    case cudaMemcpyDefault:
      // Unified addressing: whichever pointer lies in a device allocation.
      return {FindAllocation(dst).has_value(), FindAllocation(src).has_value()};
    default: return {false, false};
  }
}

// Checks the device sides of a copy; returns a description of the first
// problem, or an empty string.
std::string CheckCopy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  const CopySides sides = SidesOf(dst, src, kind);
  if (sides.dst_device && !IsDeviceRange(dst, count))
    return "destination " + internal::DescribeRange(dst, count) + " is not inside one live device allocation";
  if (sides.src_device && !IsDeviceRange(src, count))
    return "source " + internal::DescribeRange(src, count) + " is not inside one live device allocation";
  if ((!sides.dst_device && dst == nullptr) || (!sides.src_device && src == nullptr)) return "null host pointer";
  return "";
}

void CountCopy(cudaMemcpyKind kind, void* dst, const void* src, size_t count) {
  const CopySides sides = SidesOf(dst, src, kind);
  Counters& c = S().counters;
  if (sides.dst_device && !sides.src_device) c.bytes_h2d += static_cast<int64_t>(count);
  if (sides.src_device && !sides.dst_device) c.bytes_d2h += static_cast<int64_t>(count);
}

bool ValidKind(cudaMemcpyKind kind) {
  return kind == cudaMemcpyHostToHost || kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToHost ||
         kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyDefault;
}

// Shared by cudaMemcpyAsync and cudaMemcpy: validates and queues the copy.
cudaError_t QueueCopy(const char* api, void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                      const std::shared_ptr<Stream>& stream) {
  if (!ValidKind(kind)) return Finish(cudaErrorInvalidMemcpyDirection);
  if (count == 0) return cudaSuccess;
  if (const std::string problem = CheckCopy(dst, src, count, kind); !problem.empty()) {
    internal::NoteMisuse(std::string(api) + " " + KindName(kind) + " of " + std::to_string(count) +
                         " bytes: " + problem);
    return Finish(cudaErrorInvalidValue);
  }
  CountCopy(kind, dst, src, count);
  if (SidesOf(dst, src, kind).dst_device && !SidesOf(dst, src, kind).src_device)
    stream->h2d_bytes += static_cast<int64_t>(count);
  std::string what =
      std::string(api) + " " + KindName(kind) + " " + std::to_string(count) + " bytes " + Hex(src) + " -> " + Hex(dst);
  Push(
      stream,
      [dst, src, count, kind, what] {
        // Re-check: an allocation may have been freed since the call.
        if (const std::string problem = CheckCopy(dst, src, count, kind); !problem.empty()) {
          ReportViolation(what + ": " + problem);
          return;
        }
        std::memmove(dst, src, count);
      },
      what);
  return cudaSuccess;
}

cudaError_t QueueMemset(const char* api, void* p, int value, size_t count, const std::shared_ptr<Stream>& stream) {
  if (count == 0) return cudaSuccess;
  if (!IsDeviceRange(p, count)) {
    internal::NoteMisuse(std::string(api) + ": " + internal::DescribeRange(p, count) +
                         " is not inside one live device allocation");
    return Finish(cudaErrorInvalidValue);
  }
  std::string what = std::string(api) + " " + std::to_string(count) + " bytes at " + Hex(p);
  Push(
      stream,
      [p, value, count, what] {
        if (!IsDeviceRange(p, count)) {
          ReportViolation(what + ": " + internal::DescribeRange(p, count) + " no longer inside a live allocation");
          return;
        }
        std::memset(p, value & 0xFF, count);
      },
      what);
  return cudaSuccess;
}

// A stream handle that must exist; on failure returns the error to return.
std::shared_ptr<Stream> ResolveStream(const char* api, cudaStream_t handle, cudaError_t* error) {
  std::shared_ptr<Stream> stream = FindStream(handle);
  if (stream == nullptr) {
    internal::NoteMisuse(std::string(api) + ": unknown (destroyed?) stream " + Hex(handle));
    *error = Finish(cudaErrorInvalidResourceHandle);
  }
  return stream;
}

std::shared_ptr<Event> FindEvent(cudaEvent_t handle) {
  auto& events = S().events;
  auto it = events.find(handle);
  return it == events.end() ? nullptr : it->second;
}

// ---- error strings ----------------------------------------------------------

struct ErrorText {
  cudaError_t error;
  const char* name;
  const char* text;
};

#define SIGMA_EMU_ERR(e, text) \
  { e, #e, text }
constexpr ErrorText kErrorTexts[] = {
    SIGMA_EMU_ERR(cudaSuccess, "no error"),
    SIGMA_EMU_ERR(cudaErrorInvalidValue, "invalid argument"),
    SIGMA_EMU_ERR(cudaErrorMemoryAllocation, "out of memory"),
    SIGMA_EMU_ERR(cudaErrorInitializationError, "initialization error"),
    SIGMA_EMU_ERR(cudaErrorCudartUnloading, "driver shutting down"),
    SIGMA_EMU_ERR(cudaErrorInvalidConfiguration, "invalid configuration argument"),
    SIGMA_EMU_ERR(cudaErrorInvalidPitchValue, "invalid pitch argument"),
    SIGMA_EMU_ERR(cudaErrorInvalidSymbol, "invalid device symbol"),
    SIGMA_EMU_ERR(cudaErrorInvalidHostPointer, "invalid host pointer"),
    SIGMA_EMU_ERR(cudaErrorInvalidDevicePointer, "invalid device pointer"),
    SIGMA_EMU_ERR(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy"),
    SIGMA_EMU_ERR(cudaErrorSynchronizationError, "incorrect use of __syncthreads()"),
    SIGMA_EMU_ERR(cudaErrorNotYetImplemented, "feature not yet implemented"),
    SIGMA_EMU_ERR(cudaErrorStubLibrary, "CUDA driver is a stub library"),
    SIGMA_EMU_ERR(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version"),
    SIGMA_EMU_ERR(cudaErrorCallRequiresNewerDriver, "API call is not supported in the installed CUDA driver"),
    SIGMA_EMU_ERR(cudaErrorDevicesUnavailable, "CUDA-capable device(s) is/are busy or unavailable"),
    SIGMA_EMU_ERR(cudaErrorMissingConfiguration, "__global__ function call is not configured"),
    SIGMA_EMU_ERR(cudaErrorPriorLaunchFailure, "unspecified launch failure in prior launch"),
    SIGMA_EMU_ERR(cudaErrorInvalidDeviceFunction, "invalid device function"),
    SIGMA_EMU_ERR(cudaErrorNoDevice, "no CUDA-capable device is detected"),
    SIGMA_EMU_ERR(cudaErrorInvalidDevice, "invalid device ordinal"),
    SIGMA_EMU_ERR(cudaErrorStartupFailure, "device kernel image is invalid"),
    SIGMA_EMU_ERR(cudaErrorInvalidKernelImage, "device kernel image is invalid"),
    SIGMA_EMU_ERR(cudaErrorDeviceUninitialized, "invalid device context"),
    SIGMA_EMU_ERR(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device"),
    SIGMA_EMU_ERR(cudaErrorECCUncorrectable, "uncorrectable ECC error encountered"),
    SIGMA_EMU_ERR(cudaErrorUnsupportedLimit, "limit is not supported on this architecture"),
    SIGMA_EMU_ERR(cudaErrorInvalidPtx, "a PTX JIT compilation failed"),
    SIGMA_EMU_ERR(cudaErrorNvlinkUncorrectable, "uncorrectable NVLink error detected during the execution"),
    SIGMA_EMU_ERR(cudaErrorInvalidSource, "device kernel image is invalid"),
    SIGMA_EMU_ERR(cudaErrorFileNotFound, "file not found"),
    SIGMA_EMU_ERR(cudaErrorOperatingSystem, "OS call failed or operation not supported on this OS"),
    SIGMA_EMU_ERR(cudaErrorInvalidResourceHandle, "invalid resource handle"),
    SIGMA_EMU_ERR(cudaErrorIllegalState, "the operation cannot be performed in the present state"),
    SIGMA_EMU_ERR(cudaErrorSymbolNotFound, "named symbol not found"),
    SIGMA_EMU_ERR(cudaErrorNotReady, "device not ready"),
    SIGMA_EMU_ERR(cudaErrorIllegalAddress, "an illegal memory access was encountered"),
    SIGMA_EMU_ERR(cudaErrorLaunchOutOfResources, "too many resources requested for launch"),
    SIGMA_EMU_ERR(cudaErrorLaunchTimeout, "the launch timed out and was terminated"),
    SIGMA_EMU_ERR(cudaErrorContextIsDestroyed, "context is destroyed"),
    SIGMA_EMU_ERR(cudaErrorAssert, "device-side assert triggered"),
    SIGMA_EMU_ERR(cudaErrorHardwareStackError, "hardware stack error"),
    SIGMA_EMU_ERR(cudaErrorIllegalInstruction, "an illegal instruction was encountered"),
    SIGMA_EMU_ERR(cudaErrorMisalignedAddress, "misaligned address"),
    SIGMA_EMU_ERR(cudaErrorInvalidAddressSpace, "operation not supported on global/shared address space"),
    SIGMA_EMU_ERR(cudaErrorInvalidPc, "invalid program counter"),
    SIGMA_EMU_ERR(cudaErrorLaunchFailure, "unspecified launch failure"),
    SIGMA_EMU_ERR(cudaErrorCooperativeLaunchTooLarge, "too many blocks in cooperative launch"),
    SIGMA_EMU_ERR(cudaErrorNotPermitted, "operation not permitted"),
    SIGMA_EMU_ERR(cudaErrorNotSupported, "operation not supported"),
    SIGMA_EMU_ERR(cudaErrorSystemNotReady, "system not yet initialized"),
    SIGMA_EMU_ERR(cudaErrorSystemDriverMismatch, "system has unsupported display driver / cuda driver combination"),
    SIGMA_EMU_ERR(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing"),
    SIGMA_EMU_ERR(cudaErrorTimeout, "wait operation timed out"),
    SIGMA_EMU_ERR(cudaErrorUnknown, "unknown error"),
};
#undef SIGMA_EMU_ERR

// cudaFree / cudaFreeHost of `ptr`, a block of `blocks` (`what` names that
// kind in the misuse message). Like the real calls they wait for all queued
// work first (in a poisoned context that work is dropped). Memory is released
// even when poisoned: the emulated "device" outlives a poisoned context.
// Returns the released block's size through *released (0 when none).
cudaError_t FreeBlock(const char* call, std::map<uintptr_t, size_t>& blocks, void* ptr, const char* what,
                      size_t* released) {
  State& s = S();
  *released = 0;
  if (std::optional<int> injected = internal::TakeInjectedFailure(call))
    return Finish(static_cast<cudaError_t>(*injected));
  RunAll();
  if (ptr == nullptr) return s.sticky;
  auto it = blocks.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == blocks.end()) {
    if (s.sticky != cudaSuccess) return s.sticky;
    internal::NoteMisuse(std::string(call) + " of " + Hex(ptr) + ", which is not " + what);
    return Finish(cudaErrorInvalidValue);
  }
  *released = it->second;
  std::free(ptr);
  blocks.erase(it);
  return s.sticky;
}

const ErrorText* FindErrorText(cudaError_t e) {
  for (const ErrorText& t : kErrorTexts)
    if (t.error == e) return &t;
  return nullptr;
}

}  // namespace

// ---- internal ---------------------------------------------------------------

namespace internal {

std::recursive_mutex& Mutex() { return S().mu; }

std::optional<int> TakeInjectedFailure(std::string_view function) {
  auto& injected = S().injected;
  auto it = injected.find(function);
  if (it == injected.end()) return std::nullopt;
  const int status = it->second;
  injected.erase(it);
  return status;
}

Counters& MutableCounters() { return S().counters; }

void NoteMisuse(const std::string& what) {
  std::fprintf(stderr, "[cuda emulator] VIOLATION: %s\n", what.c_str());
  ++S().counters.violations;
}

cudaError_t StickyError() { return S().sticky; }

bool DevicePresent() { return S().device_count > 0; }

std::string DescribeRange(const void* p, size_t bytes) {
  std::string out = "[" + Hex(p) + ", +" + std::to_string(bytes) + " bytes)";
  if (auto a = FindAllocation(p); a.has_value()) {
    const uintptr_t off = reinterpret_cast<uintptr_t>(p) - a->first;
    out += " (starts at offset " + std::to_string(off) + " of the " + std::to_string(a->second) +
           "-byte allocation at " + Hex(reinterpret_cast<void*>(a->first));
    if (bytes > a->second - off) out += ", runs " + std::to_string(bytes - (a->second - off)) + " bytes past its end";
    out += ")";
  } else {
    out += " (in no live device allocation)";
  }
  return out;
}

}  // namespace internal

// ---- control ------------------------------------------------------------------

void SetDeviceMemoryLimit(size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  S().memory_limit = bytes;
}

size_t DeviceBytesInUse() {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  return S().bytes_in_use;
}

void SetDeviceCount(int count) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  S().device_count = std::max(0, count);
}

void FailNextCall(std::string_view function, int status) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  S().injected.insert_or_assign(std::string(function), status);
}

Counters GetCounters() {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  Counters c = S().counters;
  for (const auto& stream : AllStreams())
    if (!stream->compute) c.bytes_h2d_on_copy_only_streams += stream->h2d_bytes;
  return c;
}

void SetRuntimeVersion(int version) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  S().runtime_version = version;
}

void Reset() {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  State& s = S();
  s.counters = Counters{};
  for (const auto& stream : AllStreams()) stream->h2d_bytes = 0;
  s.runtime_version = kEmulatedVersion;
  s.injected.clear();
  s.sticky = cudaSuccess;
  s.last_error = cudaSuccess;
}

cudaError_t Enqueue(cudaStream_t stream, std::function<void()> work, std::string_view what) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  if (S().sticky != cudaSuccess) return S().sticky;
  cudaError_t error = cudaSuccess;
  std::shared_ptr<Stream> s = ResolveStream("Enqueue", stream, &error);
  if (s == nullptr) return error;
  s->compute = true;
  Push(s, std::move(work), std::string(what));
  return cudaSuccess;
}

void SetLastError(cudaError_t error) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  if (error == cudaSuccess) {
    S().last_error = cudaSuccess;
    return;
  }
  (void)Finish(error);
}

cudaError_t NoteKernelLaunch(std::string_view kernel_name) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  State& s = S();
  ++s.counters.kernel_launches;
  for (std::string_view name : {kernel_name, std::string_view("cudaLaunchKernel")}) {
    if (std::optional<int> injected = internal::TakeInjectedFailure(name); injected.has_value())
      return Finish(static_cast<cudaError_t>(*injected));
  }
  return cudaSuccess;
}

void ReportViolation(const std::string& what) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  State& s = S();
  if (s.running != nullptr && what.find(*s.running) == std::string::npos) {
    std::fprintf(stderr, "[cuda emulator] VIOLATION: %s (while running: %s)\n", what.c_str(), s.running->c_str());
  } else {
    std::fprintf(stderr, "[cuda emulator] VIOLATION: %s\n", what.c_str());
  }
  ++s.counters.violations;
  Poison(cudaErrorIllegalAddress);
}

bool IsDeviceRange(const void* p, size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(S().mu);
  if (p == nullptr) return false;
  const auto a = FindAllocation(p);
  if (!a.has_value()) return false;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
  return bytes <= a->first + a->second - begin;
}

}  // namespace sigma::cuda_emulator

// ---- the CUDA runtime API (C linkage from <cuda_runtime_api.h>) ----------------

namespace emu = sigma::cuda_emulator;

#define SIGMA_EMU_LOCK() std::lock_guard<std::recursive_mutex> sigma_emu_lock_(emu::S().mu)
#define SIGMA_EMU_BEGIN(...)                                                                                   \
  do {                                                                                                         \
    if (std::optional<cudaError_t> sigma_emu_e_ = emu::Begin(__VA_ARGS__); sigma_emu_e_) return *sigma_emu_e_; \
  } while (0)

// ---- devices ----

cudaError_t cudaGetDeviceCount(int* count) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaGetDeviceCount", /*needs_device=*/false);
  if (count == nullptr) return emu::Finish(cudaErrorInvalidValue);
  *count = emu::S().device_count;
  if (*count == 0) return emu::Finish(cudaErrorNoDevice);
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaSetDevice");
  if (device < 0 || device >= emu::S().device_count) return emu::Finish(cudaErrorInvalidDevice);
  emu::current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaGetDevice");
  if (device == nullptr) return emu::Finish(cudaErrorInvalidValue);
  *device = emu::current_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaGetDeviceProperties");
  if (prop == nullptr) return emu::Finish(cudaErrorInvalidValue);
  if (device < 0 || device >= emu::S().device_count) return emu::Finish(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "%s", "SIGMA CUDA emulator (host)");
  prop->totalGlobalMem = emu::S().memory_limit;
  prop->sharedMemPerBlock = 48 << 10;
  prop->sharedMemPerBlockOptin = 227 << 10;
  prop->sharedMemPerMultiprocessor = 228 << 10;
  prop->regsPerBlock = 65536;
  prop->regsPerMultiprocessor = 65536;
  prop->warpSize = 32;
  prop->memPitch = size_t{1} << 31;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->totalConstMem = 64 << 10;
  prop->major = 9;
  prop->minor = 0;
  prop->textureAlignment = 512;
  prop->texturePitchAlignment = 32;
  prop->multiProcessorCount = 1;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->concurrentKernels = 1;
  prop->asyncEngineCount = 1;
  prop->unifiedAddressing = 1;
  prop->canMapHostMemory = 1;
  prop->managedMemory = 0;
  prop->memoryBusWidth = 64;
  prop->l2CacheSize = 1 << 20;
  prop->streamPrioritiesSupported = 0;
  prop->globalL1CacheSupported = 1;
  prop->localL1CacheSupported = 1;
  prop->computePreemptionSupported = 0;
  prop->cooperativeLaunch = 0;
  prop->pciBusID = device;
  prop->hostNumaId = -1;
  prop->deviceNumaId = -1;
  prop->uuid.bytes[0] = static_cast<char>(0x5A);
  prop->uuid.bytes[15] = static_cast<char>(device);
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* driver_version) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaDriverGetVersion", /*needs_device=*/false);
  if (driver_version == nullptr) return emu::Finish(cudaErrorInvalidValue);
  *driver_version = emu::S().runtime_version;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* runtime_version) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaRuntimeGetVersion", /*needs_device=*/false);
  if (runtime_version == nullptr) return emu::Finish(cudaErrorInvalidValue);
  *runtime_version = emu::S().runtime_version;
  return cudaSuccess;
}

// ---- memory ----

cudaError_t cudaMalloc(void** dev_ptr, size_t size) {
  SIGMA_EMU_LOCK();
  emu::State& s = emu::S();
  ++s.counters.malloc_calls;
  SIGMA_EMU_BEGIN("cudaMalloc");
  if (dev_ptr == nullptr) return emu::Finish(cudaErrorInvalidValue);
  *dev_ptr = nullptr;
  if (size == 0) return cudaSuccess;
  if (size > s.memory_limit || s.bytes_in_use > s.memory_limit - size) return emu::Finish(cudaErrorMemoryAllocation);
  void* p = std::aligned_alloc(emu::kDeviceAlign, emu::RoundUp(size, emu::kDeviceAlign));
  if (p == nullptr) return emu::Finish(cudaErrorMemoryAllocation);
  std::memset(p, emu::kPoisonByte, size);
  s.device.emplace(reinterpret_cast<uintptr_t>(p), size);
  s.bytes_in_use += size;
  *dev_ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* dev_ptr) {
  SIGMA_EMU_LOCK();
  emu::State& s = emu::S();
  size_t released = 0;
  const cudaError_t e =
      emu::FreeBlock("cudaFree", s.device, dev_ptr, "the start of a live device allocation", &released);
  s.bytes_in_use -= released;
  return e;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  SIGMA_EMU_LOCK();
  emu::State& s = emu::S();
  ++s.counters.malloc_host_calls;
  SIGMA_EMU_BEGIN("cudaMallocHost");
  if (ptr == nullptr) return emu::Finish(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  void* p = std::aligned_alloc(4096, emu::RoundUp(size, 4096));
  if (p == nullptr) return emu::Finish(cudaErrorMemoryAllocation);
  std::memset(p, emu::kPoisonByte, size);
  s.pinned.emplace(reinterpret_cast<uintptr_t>(p), size);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  SIGMA_EMU_LOCK();
  size_t released = 0;
  return emu::FreeBlock("cudaFreeHost", emu::S().pinned, ptr, "a live cudaMallocHost block", &released);
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaMemGetInfo");
  if (free_bytes == nullptr || total_bytes == nullptr) return emu::Finish(cudaErrorInvalidValue);
  const emu::State& s = emu::S();
  *total_bytes = s.memory_limit;
  *free_bytes = s.memory_limit > s.bytes_in_use ? s.memory_limit - s.bytes_in_use : 0;
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaMemcpyAsync");
  cudaError_t error = cudaSuccess;
  const std::shared_ptr<emu::Stream> s = emu::ResolveStream("cudaMemcpyAsync", stream, &error);
  if (s == nullptr) return error;
  return emu::QueueCopy("cudaMemcpyAsync", dst, src, count, kind, s);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaMemcpy");
  emu::RunAll();  // a synchronous copy waits for all earlier work
  if (emu::S().sticky != cudaSuccess) return emu::S().sticky;
  if (const cudaError_t e = emu::QueueCopy("cudaMemcpy", dst, src, count, kind, emu::S().legacy); e != cudaSuccess)
    return e;
  emu::RunAll();
  return emu::S().sticky;
}

cudaError_t cudaMemsetAsync(void* dev_ptr, int value, size_t count, cudaStream_t stream) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaMemsetAsync");
  cudaError_t error = cudaSuccess;
  const std::shared_ptr<emu::Stream> s = emu::ResolveStream("cudaMemsetAsync", stream, &error);
  if (s == nullptr) return error;
  return emu::QueueMemset("cudaMemsetAsync", dev_ptr, value, count, s);
}

cudaError_t cudaMemset(void* dev_ptr, int value, size_t count) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaMemset");
  emu::RunAll();
  if (emu::S().sticky != cudaSuccess) return emu::S().sticky;
  if (const cudaError_t e = emu::QueueMemset("cudaMemset", dev_ptr, value, count, emu::S().legacy); e != cudaSuccess)
    return e;
  emu::RunAll();
  return emu::S().sticky;
}

// ---- streams ----

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaStreamCreateWithFlags");
  if (stream == nullptr || (flags & ~static_cast<unsigned>(cudaStreamNonBlocking)) != 0)
    return emu::Finish(cudaErrorInvalidValue);
  auto s = std::make_shared<emu::Stream>();
  s->flags = flags;
  s->blocking = (flags & cudaStreamNonBlocking) == 0;
  // The handle is just a unique address (never dereferenced by anyone).
  auto* handle = reinterpret_cast<cudaStream_t>(new char);
  emu::S().streams.emplace(handle, std::move(s));
  *stream = handle;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaStreamCreate");
  if (stream == nullptr) return emu::Finish(cudaErrorInvalidValue);
  auto s = std::make_shared<emu::Stream>();
  auto* handle = reinterpret_cast<cudaStream_t>(new char);
  emu::S().streams.emplace(handle, std::move(s));
  *stream = handle;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  SIGMA_EMU_LOCK();
  emu::State& s = emu::S();
  if (std::optional<int> injected = sigma::cuda_emulator::internal::TakeInjectedFailure("cudaStreamDestroy"))
    return emu::Finish(static_cast<cudaError_t>(*injected));
  auto it = s.streams.find(stream);
  if (it == s.streams.end()) {
    if (s.sticky != cudaSuccess) return s.sticky;
    sigma::cuda_emulator::internal::NoteMisuse("cudaStreamDestroy of unknown stream " + emu::Hex(stream));
    return emu::Finish(cudaErrorInvalidResourceHandle);
  }
  // As in CUDA, pending work still runs (at a later device-wide sync).
  if (!it->second->queue.empty()) s.retired.push_back(it->second);
  delete reinterpret_cast<char*>(stream);
  s.streams.erase(it);
  return s.sticky;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  SIGMA_EMU_LOCK();
  emu::State& s = emu::S();
  ++s.counters.host_syncs;
  ++s.counters.stream_syncs;
  SIGMA_EMU_BEGIN("cudaStreamSynchronize");
  cudaError_t error = cudaSuccess;
  const std::shared_ptr<emu::Stream> st = emu::ResolveStream("cudaStreamSynchronize", stream, &error);
  if (st == nullptr) return error;
  if (!st->queue.empty()) emu::RunUntil(st, st->queue.back().seq);
  return s.sticky;
}

cudaError_t cudaDeviceSynchronize() {
  SIGMA_EMU_LOCK();
  ++emu::S().counters.host_syncs;
  SIGMA_EMU_BEGIN("cudaDeviceSynchronize");
  emu::RunAll();
  return emu::S().sticky;
}

// ---- events ----

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaEventCreateWithFlags");
  constexpr unsigned kKnown = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
  if (event == nullptr || (flags & ~kKnown) != 0) return emu::Finish(cudaErrorInvalidValue);
  auto e = std::make_shared<emu::Event>();
  e->flags = flags;
  auto* handle = reinterpret_cast<cudaEvent_t>(new char);
  emu::S().events.emplace(handle, std::move(e));
  *event = handle;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaEventCreate");
  if (event == nullptr) return emu::Finish(cudaErrorInvalidValue);
  auto* handle = reinterpret_cast<cudaEvent_t>(new char);
  emu::S().events.emplace(handle, std::make_shared<emu::Event>());
  *event = handle;
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  SIGMA_EMU_LOCK();
  emu::State& s = emu::S();
  if (std::optional<int> injected = sigma::cuda_emulator::internal::TakeInjectedFailure("cudaEventDestroy"))
    return emu::Finish(static_cast<cudaError_t>(*injected));
  auto it = s.events.find(event);
  if (it == s.events.end()) {
    if (s.sticky != cudaSuccess) return s.sticky;
    sigma::cuda_emulator::internal::NoteMisuse("cudaEventDestroy of unknown event " + emu::Hex(event));
    return emu::Finish(cudaErrorInvalidResourceHandle);
  }
  // A pending marker keeps the Event alive through its shared_ptr.
  delete reinterpret_cast<char*>(event);
  s.events.erase(it);
  return s.sticky;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaEventRecord");
  const std::shared_ptr<emu::Event> e = emu::FindEvent(event);
  if (e == nullptr) {
    sigma::cuda_emulator::internal::NoteMisuse("cudaEventRecord of unknown event " + emu::Hex(event));
    return emu::Finish(cudaErrorInvalidResourceHandle);
  }
  cudaError_t error = cudaSuccess;
  const std::shared_ptr<emu::Stream> s = emu::ResolveStream("cudaEventRecord", stream, &error);
  if (s == nullptr) return error;
  const uint64_t generation = ++e->generation;
  e->recorded = true;
  e->completed = false;
  e->stream = s;
  e->record_seq = emu::S().next_seq;
  emu::Push(
      s,
      [e, generation] {
        if (e->generation != generation) return;  // re-recorded since
        e->completed = true;
        e->time = std::chrono::steady_clock::now();
      },
      "cudaEventRecord marker");
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  SIGMA_EMU_LOCK();
  ++emu::S().counters.host_syncs;
  SIGMA_EMU_BEGIN("cudaEventSynchronize");
  const std::shared_ptr<emu::Event> e = emu::FindEvent(event);
  if (e == nullptr) {
    sigma::cuda_emulator::internal::NoteMisuse("cudaEventSynchronize of unknown event " + emu::Hex(event));
    return emu::Finish(cudaErrorInvalidResourceHandle);
  }
  if (e->recorded && !e->completed) emu::RunUntil(e->stream, e->record_seq);
  return emu::S().sticky;
}

// The wait is a marker on `stream` that, when it runs, first runs the event's
// stream up to the event's latest record: lazily executed streams then see
// exactly the cross-stream order the caller asked for, and no more (a missing
// wait reads stale data).
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaStreamWaitEvent");
  if (flags != 0 && flags != cudaEventWaitDefault) return emu::Finish(cudaErrorInvalidValue);
  const std::shared_ptr<emu::Event> e = emu::FindEvent(event);
  if (e == nullptr) {
    sigma::cuda_emulator::internal::NoteMisuse("cudaStreamWaitEvent of unknown event " + emu::Hex(event));
    return emu::Finish(cudaErrorInvalidResourceHandle);
  }
  cudaError_t error = cudaSuccess;
  const std::shared_ptr<emu::Stream> s = emu::ResolveStream("cudaStreamWaitEvent", stream, &error);
  if (s == nullptr) return error;
  ++emu::S().counters.stream_waits;
  if (!e->recorded || e->completed) return cudaSuccess;  // nothing to wait for
  const std::shared_ptr<emu::Stream> source = e->stream;
  const uint64_t until = e->record_seq;
  emu::Push(s, [source, until] { emu::RunUntil(source, until); }, "cudaStreamWaitEvent marker");
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  SIGMA_EMU_LOCK();
  SIGMA_EMU_BEGIN("cudaEventElapsedTime");
  if (ms == nullptr) return emu::Finish(cudaErrorInvalidValue);
  const std::shared_ptr<emu::Event> a = emu::FindEvent(start), b = emu::FindEvent(end);
  if (a == nullptr || b == nullptr) return emu::Finish(cudaErrorInvalidResourceHandle);
  if (((a->flags | b->flags) & cudaEventDisableTiming) != 0) return emu::Finish(cudaErrorInvalidResourceHandle);
  if (!a->recorded || !b->recorded) return emu::Finish(cudaErrorInvalidResourceHandle);
  if (!a->completed || !b->completed) return cudaErrorNotReady;  // not recorded as the last error (as CUDA)
  *ms = std::chrono::duration<float, std::milli>(b->time - a->time).count();
  return cudaSuccess;
}

// ---- errors ----

cudaError_t cudaGetLastError() {
  SIGMA_EMU_LOCK();
  emu::State& s = emu::S();
  if (s.sticky != cudaSuccess) return s.sticky;
  const cudaError_t e = s.last_error;
  s.last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  SIGMA_EMU_LOCK();
  const emu::State& s = emu::S();
  return s.sticky != cudaSuccess ? s.sticky : s.last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
  const emu::ErrorText* t = emu::FindErrorText(error);
  return t != nullptr ? t->name : "cudaErrorUnknown (unrecognized error code)";
}

const char* cudaGetErrorString(cudaError_t error) {
  const emu::ErrorText* t = emu::FindErrorText(error);
  return t != nullptr ? t->text : "unrecognized error code";
}
