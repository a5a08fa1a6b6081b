// A host (CPU) emulation of the parts of the CUDA runtime, cuBLAS, cuSOLVER and
// the CUDA execution model that kernels/cuda uses, so the CUDA backend's host
// orchestration AND its custom kernels run, unchanged, on a machine without a
// GPU (this one, CI). It is test infrastructure, not a backend: figures from it
// say nothing about GPU speed, and it cannot show that the real libraries
// behave as documented; it shows that our code uses them as documented.
//
// What it models (and so what the emulated tests can catch):
//  - "Device" memory is host memory from cudaMalloc, tracked as allocations;
//    every memcpy/memset and every matrix operand of a cuBLAS/cuSOLVER call is
//    range-checked against the live allocations (a violation is reported on
//    stderr, counted, and surfaces as cudaErrorIllegalAddress, sticky, like
//    the real thing).
//  - Streams are queues executed LAZILY: asynchronous work (copies, memsets,
//    kernels, library calls) runs only when the host synchronises
//    (cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize,
//    cudaFree/cudaFreeHost, a synchronous cudaMemcpy). A missing
//    synchronisation therefore reads stale data instead of passing by luck.
//  - cudaStreamWaitEvent is a marker that runs the event's stream up to the
//    event when it runs, so cross-stream order is exactly what the caller
//    asked for (the backend's copy stream and compute stream).
//  - Library calls validate their arguments as documented (lda >= max(1, n),
//    workspace at least what *_bufferSize returned, ...). cuSOLVER potrf
//    scribbles NaN over the strict upper triangle and fills its workspace with
//    NaN (the documented contract leaves both undefined).
//  - Kernels run on one host thread as cooperative fibers, one per CUDA
//    thread, block after block: __syncthreads and warp shuffles are real
//    barriers, __shared__ is shared per block.
//  - Device memory is limited (SetDeviceMemoryLimit) so out-of-memory paths
//    run; errors can be injected into any API call (FailNextCall).
//
// Thread-safety: every entry point takes one global lock; work from several
// host threads is serialised (as on one device).
#ifndef SIGMA_TESTS_GPU_EMULATOR_EMULATOR_H_
#define SIGMA_TESTS_GPU_EMULATOR_EMULATOR_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace sigma::cuda_emulator {

// ---- control (tests) -------------------------------------------------------

// Device memory limit for cudaMalloc (sum of live allocations). Default: the
// environment variable SIGMA_CUDA_EMULATOR_MEMORY (bytes) or 4 GiB.
void SetDeviceMemoryLimit(size_t bytes);
size_t DeviceBytesInUse();
// Number of devices cudaGetDeviceCount reports (default: the environment
// variable SIGMA_CUDA_EMULATOR_DEVICES or 1; 0 = "no device"). All share one
// memory pool and one lock.
void SetDeviceCount(int count);

// The next call of the API function named `function` (as spelled in the
// headers after macro expansion, e.g. "cudaMalloc", "cublasDsyrk_v2",
// "cusolverDnDpotrfBatched") returns `status` (a cudaError_t, cublasStatus_t
// or cusolverStatus_t value, by the function's family) without doing
// anything. A sticky cudaError_t (cudaErrorIllegalAddress, ...) injected this
// way poisons the context: every later runtime call returns it until Reset().
void FailNextCall(std::string_view function, int status);

// What cudaRuntimeGetVersion and cudaDriverGetVersion report (default: the
// CUDART_VERSION of the headers), to test the backend's version check.
void SetRuntimeVersion(int version);

// Counts since the last Reset(), for tests of HOW the backend uses the device.
struct Counters {
  int64_t malloc_calls = 0;       // cudaMalloc
  int64_t malloc_host_calls = 0;  // cudaMallocHost
  int64_t kernel_launches = 0;
  int64_t syrk_calls = 0, gemm_calls = 0, trsm_calls = 0;
  int64_t potrf_calls = 0;          // cusolverDnXpotrf
  int64_t potrf_batched_calls = 0;  // cusolverDnDpotrfBatched
  int64_t potrf_batched_matrices = 0;
  int64_t trtri_calls = 0;
  int64_t potri_calls = 0;  // cusolverDnDpotri
  int64_t bytes_h2d = 0, bytes_d2h = 0;
  // Host-to-device bytes queued on streams that never ran a kernel or library
  // call (copy streams, whose uploads can overlap the compute stream's work).
  int64_t bytes_h2d_on_copy_only_streams = 0;
  int64_t stream_waits = 0;  // cudaStreamWaitEvent
  int64_t host_syncs = 0;    // cudaStreamSynchronize/EventSynchronize/DeviceSynchronize
  int64_t stream_syncs = 0;  // cudaStreamSynchronize only
  int64_t violations = 0;    // out-of-range device accesses and misuse found
};
Counters GetCounters();
// Clears counters, injected failures and sticky errors; frees nothing.
void Reset();

// ---- internal: between the runtime emulation and the kernel emulation -------

// Queues `work` on `stream` (nullptr = the legacy default stream) to run at
// the next synchronisation covering it. Returns the launch's error
// (cudaSuccess, or the sticky error of a poisoned context).
cudaError_t Enqueue(cudaStream_t stream, std::function<void()> work, std::string_view what);
// The sticky-or-not last error (what cudaGetLastError returns and clears).
void SetLastError(cudaError_t error);
// Counts a kernel launch; returns an injected failure for `kernel_name` or
// "cudaLaunchKernel" if any, else cudaSuccess.
cudaError_t NoteKernelLaunch(std::string_view kernel_name);
// Records a violation found while work runs (prints `what`); the context
// becomes poisoned with cudaErrorIllegalAddress.
void ReportViolation(const std::string& what);
// True if [p, p + bytes) lies inside one live device allocation.
bool IsDeviceRange(const void* p, size_t bytes);

}  // namespace sigma::cuda_emulator

#endif  // SIGMA_TESTS_GPU_EMULATOR_EMULATOR_H_
