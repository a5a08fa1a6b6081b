// The device side of the CUDA backend: status conversion, growable device and
// pinned buffers charged to a MemoryBudget, and DeviceContext, which owns one
// device's streams, library handles and buffers and wraps the cuBLAS /
// cuSOLVER calls of a seal. Included by cuda_backend.cc only (CUDA types).
//
// Streams: `stream` runs every kernel and library call; `copy_stream` runs the
// host-to-device uploads of the rows, so they overlap the compute stream's
// work. Each of the two staging slots has an event pair: `uploaded` (copy
// stream, after the slot's H2D copy; the compute stream waits on it before
// converting, and the host waits on it before refilling the pinned slot) and
// `consumed` (compute stream, after the conversion read the device slot; the
// copy stream waits on it before overwriting that slot).
//
// Thread-safety: none; CudaBackend serialises every use under its mutex.
#ifndef SIGMA_KERNELS_CUDA_CUDA_DEVICE_H_
#define SIGMA_KERNELS_CUDA_CUDA_DEVICE_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "cuda_backend.h"
#include "sigma/kernels/backend.h"

namespace sigma::cuda {

// Sticky errors leave the CUDA context unusable for the rest of the process.
bool IsStickyError(cudaError_t e);
absl::Status CudaStatus(cudaError_t e, std::string_view what);
absl::Status CublasStatus(cublasStatus_t s, std::string_view what);
absl::Status CusolverStatus(cusolverStatus_t s, std::string_view what);

#define SIGMA_CU_RETURN_IF_ERROR(expr)           \
  do {                                           \
    absl::Status sigma_cu_st_ = (expr);          \
    if (!sigma_cu_st_.ok()) return sigma_cu_st_; \
  } while (0)
#define CUDA_TRY(call) SIGMA_CU_RETURN_IF_ERROR(::sigma::cuda::CudaStatus((call), #call))
#define CUBLAS_TRY(call) SIGMA_CU_RETURN_IF_ERROR(::sigma::cuda::CublasStatus((call), #call))
#define CUSOLVER_TRY(call) SIGMA_CU_RETURN_IF_ERROR(::sigma::cuda::CusolverStatus((call), #call))
#define KERNEL_TRY(launch, name) SIGMA_CU_RETURN_IF_ERROR(::sigma::cuda::CudaStatus((launch), name))

inline constexpr size_t kAlign = 256;
inline size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Offsets of one call's buffers inside the arena (256-byte aligned). Sizes
// are products the caller forms with Mul(); an overflow anywhere (in Mul or
// in the running total) makes overflowed() true, and the caller refuses the
// call (INVALID_ARGUMENT) before allocating.
class Layout {
 public:
  size_t Add(size_t bytes);
  // a * b, or SIZE_MAX (and overflowed()) when it does not fit.
  size_t Mul(size_t a, size_t b);
  size_t total() const { return total_; }
  bool overflowed() const { return overflowed_; }

 private:
  size_t total_ = 0;
  bool overflowed_ = false;
};

template <typename T>
T* At(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

// Device (cudaMalloc) or pinned host (cudaMallocHost) memory, grown on demand
// in `granularity` steps and charged to an optional MemoryBudget; Trim(keep)
// frees it when it is larger than `keep` (the backend trims after every call,
// so one large batch does not keep its peak for the life of the process).
// Growing frees the old block first: the caller must have no queued work
// using it (every public call of the backend ends with its streams idle).
class GrowableBuffer {
 public:
  enum class Kind { kDevice, kPinnedHost };
  GrowableBuffer(Kind kind, size_t granularity) : kind_(kind), granularity_(granularity) {}
  GrowableBuffer(const GrowableBuffer&) = delete;
  GrowableBuffer& operator=(const GrowableBuffer&) = delete;
  ~GrowableBuffer() { Release(); }

  void set_budget(MemoryBudget* budget) { budget_ = budget; }
  // RESOURCE_EXHAUSTED when the budget refuses or the allocation fails.
  absl::Status Reserve(size_t bytes);
  void Trim(size_t keep) {
    if (capacity_ > keep) Release();
  }
  char* base() const { return base_; }
  size_t capacity() const { return capacity_; }

 private:
  void Release();

  const Kind kind_;
  const size_t granularity_;
  MemoryBudget* budget_ = nullptr;
  char* base_ = nullptr;
  size_t capacity_ = 0;
};

// Host -> pinned copy; copies of 8 MiB or more are split over up to 8 threads
// (half the hardware threads). Never throws: a piece whose thread cannot be
// started (std::system_error) is copied on the calling thread.
void CopyToPinned(char* dst, const char* src, size_t bytes);
// The same over `threads` pieces, started with `start_thread` (tests).
using ThreadStarter = std::function<std::thread(std::function<void()>)>;
void CopyToPinned(char* dst, const char* src, size_t bytes, unsigned threads, const ThreadStarter& start_thread);

inline constexpr int kNumMarks = 6;

// The Gram method one call uses (GramAlgo with kAuto resolved).
enum class GramPath { kSyrk, kGemm, kBlocked };

struct DeviceContext {
  int ordinal = 0;
  std::string device_name;
  cudaStream_t stream = nullptr;       // kernels and library calls
  cudaStream_t copy_stream = nullptr;  // row uploads
  cublasHandle_t cublas = nullptr;
  cusolverDnHandle_t cusolver = nullptr;
  cusolverDnParams_t solver_params = nullptr;
  GrowableBuffer arena{GrowableBuffer::Kind::kDevice, size_t{2} << 20};
  GrowableBuffer staging{GrowableBuffer::Kind::kPinnedHost, size_t{1} << 16};  // two upload slots
  GrowableBuffer small{GrowableBuffer::Kind::kPinnedHost, size_t{1} << 16};    // pointer arrays in, results out
  std::vector<char> host_solver_work;
  cudaEvent_t uploaded[2] = {nullptr, nullptr};
  cudaEvent_t consumed[2] = {nullptr, nullptr};
  bool upload_pending[2] = {false, false};  // uploaded[s] recorded, not yet waited on by the host
  bool consumed_recorded[2] = {false, false};
  int next_slot = 0;
  cudaEvent_t marks[kNumMarks] = {};

  DeviceContext() = default;
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;
  ~DeviceContext();

  absl::Status Init(int device, MemoryBudget* budget);
  // Called at the start of every public call: the streams are idle then.
  void ResetSlots();
  // Waits for both streams; the first error (cudaSuccess when none).
  cudaError_t Synchronize();

  absl::Status Mark(int i, bool on);
  double Elapsed(int from, int to);

  // Bytes of one staging slot for rows of `row_bytes`: whole rows, at most
  // `slot_limit` bytes (at least one row), at most `num_rows` rows.
  static size_t SlotBytes(size_t row_bytes, int64_t num_rows, size_t slot_limit);

  // Enqueues upload (copy stream) + conversion (compute stream) of `rows`
  // (host) into x [num_rows, m] float64 and row_energy [num_rows] (device).
  // dev_slots: two device buffers of slot_bytes; the pinned staging must hold
  // 2 * slot_bytes. Non-finite elements are noted in *first_bad (see
  // LaunchConvertRows).
  absl::Status UploadRows(const RowBlock& rows, bool l2, double* x, double* row_energy,
                          unsigned long long* first_bad, char* const dev_slots[2], size_t slot_bytes);

  // g [m, m] (lower triangle) = X X^T for column-major x [m, rows] (device).
  // kBlocked: SYRK on the diagonal blocks of `block` columns, DGEMM below them.
  absl::Status Gram(const double* x, int64_t m, int64_t rows, double* g, GramPath path, int64_t block);

  // Solver workspace queries (device bytes; host bytes for Xpotrf).
  absl::Status PotrfBufferSizes(int64_t m, double* a, size_t* device_bytes, size_t* host_bytes);
  absl::Status PotriBufferBytes(int64_t m, double* a, size_t* device_bytes);

  // Factors `count` matrices mats + b*m*m in place (lower), infos to info[b].
  // Batched: one cusolverDnDpotrfBatched over a device pointer array (staged
  // through `pinned_ptrs` into `dev_ptrs`); else one cusolverDnXpotrf each.
  absl::Status Potrf(double* mats, int64_t m, int64_t count, int* info, bool batched, double** pinned_ptrs,
                     double** dev_ptrs, void* work, size_t work_bytes);

  // tr(A), tr(A^2) for A = (L L^T)^{-1} from the factor in `l` (overwritten
  // by A's lower triangle: cusolverDnDpotri, ~2 m^3/3 flops); partial [2m].
  absl::Status Traces(double* l, int64_t m, double* partial, int* info, double* trace_a, double* trace_a2,
                      void* work, size_t work_bytes);

  // q = ||L^{-1} x_j||^2 for column-major x [m, rows] (overwritten by L^{-1} x).
  absl::Status QNorms(const double* l, int64_t m, double* x, int64_t rows, double* q);
};

}  // namespace sigma::cuda

#endif  // SIGMA_KERNELS_CUDA_CUDA_DEVICE_H_
