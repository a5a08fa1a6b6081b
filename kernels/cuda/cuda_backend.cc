// The CUDA backend (spec §3, §4): cuBLAS Gram, cuSOLVER (batched) Cholesky,
// custom kernels for conversion, shifted copies and reductions.
//
// Memory: the Backend interface takes host pointers only. Inside a call the
// data lives in one growable device workspace (DeviceArena, cudaMalloc'd,
// grown when a call needs more, never shrunk) carved into the buffers of that
// call; host input is staged through two pinned slots (double buffering: the
// host copies chunk k+1 into one slot while the DMA engine uploads chunk k
// from the other). Results come back through a small pinned buffer in one
// transfer at the end of the call.
//
// Threads: one backend = one device context = one CUDA stream, cuBLAS handle
// and cuSOLVER handle, created once in MakeCudaBackend (never per request).
// Every public method takes the backend's mutex, so concurrent calls are safe
// and run one after the other; use one backend per device for parallelism.
//
// Input checks: NaN/Inf rows are detected on the device by the conversion
// kernel (no extra host pass over the data) and refused with INVALID_ARGUMENT
// before anything is written back (AccumulateGram leaves `gram` unchanged).
//
// Errors: every CUDA, cuBLAS and cuSOLVER status becomes an absl::Status:
// out of device memory (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED,
// CUSOLVER_STATUS_ALLOC_FAILED) is RESOURCE_EXHAUSTED, no device UNAVAILABLE,
// the rest INTERNAL. Nothing aborts. After an error the stream is drained; a
// sticky error (the CUDA context is corrupt, e.g. an illegal address) marks the
// backend broken and every later call returns INTERNAL with the first reason.
#include "cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "device_kernels.h"

namespace sigma::cuda {
namespace {

using kernels::CholDev;
using kernels::EnergyDev;
using kernels::ShiftTargets;
using kernels::SnapshotDev;

// ---------------------------------------------------------------------------
// The one place that decides SYRK vs GEMM for the Gram (see GramAlgo).
// UNMEASURED default: SYRK (half the flops of GEMM). bench/gpu/sigma_gpu_bench
// prints both rates per (m, n_A) on the device ("gram syrk/gemm" columns);
// change this rule to whatever wins there.
bool GramUsesGemm(GramAlgo algo, int64_t m, int64_t rows) {
  (void)m;
  (void)rows;
  switch (algo) {
    case GramAlgo::kSyrk: return false;
    case GramAlgo::kGemm: return true;
    case GramAlgo::kAuto: break;
  }
  return false;
}

constexpr size_t kAlign = 256;
size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Sticky errors leave the CUDA context unusable for the rest of the process.
bool IsStickyError(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorContextIsDestroyed:
      return true;
    default:
      return false;
  }
}

absl::Status CudaStatus(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  const std::string msg =
      absl::StrFormat("CUDA error in %s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
  switch (e) {
    case cudaErrorMemoryAllocation:
      (void)cudaGetLastError();  // not sticky: clear it
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorInvalidDevice:
      (void)cudaGetLastError();
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status CublasStatus(cublasStatus_t s, std::string_view what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrFormat("cuBLAS error in %s: %s (%s)", what, cublasGetStatusName(s),
                                          cublasGetStatusString(s));
  if (s == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (s == CUBLAS_STATUS_NOT_INITIALIZED) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

const char* CusolverStatusName(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_MAPPING_ERROR: return "CUSOLVER_STATUS_MAPPING_ERROR";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    case CUSOLVER_STATUS_INVALID_WORKSPACE: return "CUSOLVER_STATUS_INVALID_WORKSPACE";
    default: return "CUSOLVER_STATUS_(other)";
  }
}

absl::Status CusolverStatus(cusolverStatus_t s, std::string_view what) {
  if (s == CUSOLVER_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg =
      absl::StrFormat("cuSOLVER error in %s: %s (%d)", what, CusolverStatusName(s), static_cast<int>(s));
  if (s == CUSOLVER_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (s == CUSOLVER_STATUS_NOT_INITIALIZED) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

#define SIGMA_CU_RETURN_IF_ERROR(expr)   \
  do {                                   \
    absl::Status sigma_cu_st_ = (expr);  \
    if (!sigma_cu_st_.ok()) return sigma_cu_st_; \
  } while (0)
#define CUDA_TRY(call) SIGMA_CU_RETURN_IF_ERROR(CudaStatus((call), #call))
#define CUBLAS_TRY(call) SIGMA_CU_RETURN_IF_ERROR(CublasStatus((call), #call))
#define CUSOLVER_TRY(call) SIGMA_CU_RETURN_IF_ERROR(CusolverStatus((call), #call))
#define KERNEL_TRY(launch, name) SIGMA_CU_RETURN_IF_ERROR(CudaStatus((launch), name))

// Device workspace: one cudaMalloc'd block, grown on demand (never shrunk).
// Growing frees the old block, so the caller must have no queued work using
// it (every public call ends with its stream synchronized).
class DeviceArena {
 public:
  DeviceArena() = default;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena() { Release(); }

  absl::Status Reserve(size_t bytes) {
    if (bytes <= capacity_) return absl::OkStatus();
    Release();
    const size_t rounded = RoundUp(bytes, size_t{2} << 20);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, rounded);
    if (e != cudaSuccess)
      return CudaStatus(e, absl::StrFormat("cudaMalloc of a %d-byte device workspace", rounded));
    base_ = static_cast<char*>(p);
    capacity_ = rounded;
    return absl::OkStatus();
  }
  char* base() const { return base_; }
  size_t capacity() const { return capacity_; }

 private:
  void Release() {
    if (base_ != nullptr) (void)cudaFree(base_);
    base_ = nullptr;
    capacity_ = 0;
  }
  char* base_ = nullptr;
  size_t capacity_ = 0;
};

// Pinned (page-locked) host memory, grown on demand, same rule as DeviceArena.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { Release(); }

  absl::Status Reserve(size_t bytes) {
    if (bytes <= capacity_) return absl::OkStatus();
    Release();
    const size_t rounded = RoundUp(bytes, size_t{1} << 16);
    void* p = nullptr;
    const cudaError_t e = cudaMallocHost(&p, rounded);
    if (e != cudaSuccess)
      return CudaStatus(e, absl::StrFormat("cudaMallocHost of %d bytes of pinned staging", rounded));
    base_ = static_cast<char*>(p);
    capacity_ = rounded;
    return absl::OkStatus();
  }
  char* base() const { return base_; }

 private:
  void Release() {
    if (base_ != nullptr) (void)cudaFreeHost(base_);
    base_ = nullptr;
    capacity_ = 0;
  }
  char* base_ = nullptr;
  size_t capacity_ = 0;
};

// Offsets of one call's buffers inside the arena (256-byte aligned).
class Layout {
 public:
  size_t Add(size_t bytes) {
    const size_t offset = total_;
    total_ = RoundUp(total_ + std::max<size_t>(bytes, 1), kAlign);
    return offset;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

template <typename T>
T* At(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

constexpr int kNumMarks = 6;

// Host -> pinned copies of large chunks are split across threads: a single
// core copies ~5-10 GB/s, below what the DMA engine drains from pinned memory,
// so with one thread the host copy bounds the upload (it already overlaps the
// device's work on the previous chunk). Threads are spawned per chunk (tens of
// microseconds against milliseconds of copying).
constexpr size_t kParallelCopyMinBytes = size_t{8} << 20;
constexpr unsigned kMaxCopyThreads = 8;

void CopyToPinned(char* dst, const char* src, size_t bytes) {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const unsigned threads = bytes < kParallelCopyMinBytes ? 1u : std::min(kMaxCopyThreads, std::max(1u, hw / 2));
  if (threads <= 1) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const size_t piece = RoundUp((bytes + threads - 1) / threads, 4096);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (size_t off = piece; off < bytes; off += piece) {
    const size_t n = std::min(piece, bytes - off);
    pool.emplace_back([=] { std::memcpy(dst + off, src + off, n); });
  }
  std::memcpy(dst, src, std::min(piece, bytes));  // first piece on this thread
  for (std::thread& t : pool) t.join();
}

// Per-device context: created once per backend. Owns the stream, the library
// handles, the device workspace, pinned staging and events.
struct DeviceContext {
  int ordinal = 0;
  std::string device_name;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  cusolverDnHandle_t cusolver = nullptr;
  cusolverDnParams_t solver_params = nullptr;
  DeviceArena arena;
  PinnedBuffer staging;  // two upload slots
  PinnedBuffer small;    // pointer arrays in, results out
  std::vector<char> host_solver_work;
  cudaEvent_t slot_done[2] = {nullptr, nullptr};
  bool slot_pending[2] = {false, false};
  int next_slot = 0;
  cudaEvent_t marks[kNumMarks] = {};

  DeviceContext() = default;
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  ~DeviceContext() {
    if (cudaSetDevice(ordinal) != cudaSuccess) return;
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    if (solver_params != nullptr) (void)cusolverDnDestroyParams(solver_params);
    if (cusolver != nullptr) (void)cusolverDnDestroy(cusolver);
    if (cublas != nullptr) (void)cublasDestroy(cublas);
    for (cudaEvent_t& e : slot_done)
      if (e != nullptr) (void)cudaEventDestroy(e);
    for (cudaEvent_t& e : marks)
      if (e != nullptr) (void)cudaEventDestroy(e);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    (void)cudaGetLastError();
  }

  absl::Status Init(int device) {
    ordinal = device;
    CUDA_TRY(cudaSetDevice(ordinal));
    cudaDeviceProp props;
    CUDA_TRY(cudaGetDeviceProperties(&props, ordinal));
    device_name = props.name;
    CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&cublas));
    CUBLAS_TRY(cublasSetStream(cublas, stream));
    CUSOLVER_TRY(cusolverDnCreate(&cusolver));
    CUSOLVER_TRY(cusolverDnSetStream(cusolver, stream));
    CUSOLVER_TRY(cusolverDnCreateParams(&solver_params));
    for (cudaEvent_t& e : slot_done) CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    for (cudaEvent_t& e : marks) CUDA_TRY(cudaEventCreate(&e));
    SIGMA_CU_RETURN_IF_ERROR(small.Reserve(size_t{1} << 16));
    return absl::OkStatus();
  }

  // Called at the start of every public call: the stream is idle then.
  void ResetSlots() {
    slot_pending[0] = slot_pending[1] = false;
    next_slot = 0;
  }

  absl::Status Mark(int i, bool on) {
    if (!on) return absl::OkStatus();
    return CudaStatus(cudaEventRecord(marks[i], stream), "cudaEventRecord");
  }
  double Elapsed(int from, int to) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, marks[from], marks[to]) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return ms;
  }

  // Bytes of one staging slot for rows of `row_bytes`: whole rows, at most
  // `slot_limit` bytes (at least one row), at most `num_rows` rows.
  static size_t SlotBytes(size_t row_bytes, int64_t num_rows, size_t slot_limit) {
    const int64_t per = std::max<int64_t>(1, static_cast<int64_t>(slot_limit / row_bytes));
    return static_cast<size_t>(std::min(per, std::max<int64_t>(num_rows, 1))) * row_bytes;
  }

  // Enqueues upload + conversion of `rows` (host) into x [num_rows, m] float64
  // (device) and row_energy [num_rows] (device). dev_slots: two device
  // buffers of slot_bytes; the pinned staging must hold 2 * slot_bytes.
  // Non-finite elements are noted in *first_bad (see LaunchConvertRows).
  absl::Status UploadRows(const RowBlock& rows, bool l2, double* x, double* row_energy,
                          unsigned long long* first_bad, char* const dev_slots[2], size_t slot_bytes) {
    const size_t row_bytes = static_cast<size_t>(rows.m) * DTypeWidth(rows.dtype);
    const int64_t rows_per_slot = static_cast<int64_t>(slot_bytes / row_bytes);
    const char* host = static_cast<const char*>(rows.data);
    for (int64_t start = 0; start < rows.num_rows; start += rows_per_slot) {
      const int64_t count = std::min(rows_per_slot, rows.num_rows - start);
      const size_t bytes = static_cast<size_t>(count) * row_bytes;
      const int s = next_slot;
      next_slot ^= 1;
      if (slot_pending[s]) {
        CUDA_TRY(cudaEventSynchronize(slot_done[s]));  // its last upload has left the slot
        slot_pending[s] = false;
      }
      char* pinned = staging.base() + s * slot_bytes;
      CopyToPinned(pinned, host + static_cast<size_t>(start) * row_bytes, bytes);
      CUDA_TRY(cudaMemcpyAsync(dev_slots[s], pinned, bytes, cudaMemcpyHostToDevice, stream));
      CUDA_TRY(cudaEventRecord(slot_done[s], stream));
      slot_pending[s] = true;
      KERNEL_TRY(kernels::LaunchConvertRows(static_cast<int>(rows.dtype), dev_slots[s], count, rows.m,
                                            l2, x + start * rows.m, row_energy + start, start, first_bad,
                                            stream),
                 "ConvertRows kernel");
    }
    return absl::OkStatus();
  }

  // g [m, m] = beta * g + X X^T for column-major x [m, rows] (device).
  absl::Status Gram(const double* x, int64_t m, int64_t rows, double beta, double* g, bool gemm) {
    const double one = 1.0;
    const int im = static_cast<int>(m), ir = static_cast<int>(rows);
    if (gemm) {
      CUBLAS_TRY(cublasDgemm(cublas, CUBLAS_OP_N, CUBLAS_OP_T, im, im, ir, &one, x, im, x, im, &beta, g, im));
    } else {
      CUBLAS_TRY(cublasDsyrk(cublas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, im, ir, &one, x, im, &beta, g, im));
    }
    return absl::OkStatus();
  }

  absl::Status PotrfBufferSizes(int64_t m, double* a, size_t* device_bytes, size_t* host_bytes) {
    CUSOLVER_TRY(cusolverDnXpotrf_bufferSize(cusolver, solver_params, CUBLAS_FILL_MODE_LOWER, m, CUDA_R_64F,
                                             a, m, CUDA_R_64F, device_bytes, host_bytes));
    return absl::OkStatus();
  }
  absl::Status TrtriBufferSizes(int64_t m, double* a, size_t* device_bytes, size_t* host_bytes) {
    CUSOLVER_TRY(cusolverDnXtrtri_bufferSize(cusolver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, m,
                                             CUDA_R_64F, a, m, device_bytes, host_bytes));
    return absl::OkStatus();
  }

  // Factors `count` matrices mats + b*m*m in place (lower), infos to info[b].
  // Batched: one cusolverDnDpotrfBatched over a device pointer array (staged
  // through `pinned_ptrs` into `dev_ptrs`); else one cusolverDnXpotrf each.
  absl::Status Potrf(double* mats, int64_t m, int64_t count, int* info, bool batched,
                     double** pinned_ptrs, double** dev_ptrs, void* work, size_t work_bytes) {
    const size_t mm = static_cast<size_t>(m) * static_cast<size_t>(m);
    if (batched) {
      for (int64_t b = 0; b < count; ++b) pinned_ptrs[b] = mats + b * mm;
      CUDA_TRY(cudaMemcpyAsync(dev_ptrs, pinned_ptrs, count * sizeof(double*), cudaMemcpyHostToDevice, stream));
      CUSOLVER_TRY(cusolverDnDpotrfBatched(cusolver, CUBLAS_FILL_MODE_LOWER, static_cast<int>(m), dev_ptrs,
                                           static_cast<int>(m), info, static_cast<int>(count)));
    } else {
      for (int64_t b = 0; b < count; ++b) {
        CUSOLVER_TRY(cusolverDnXpotrf(cusolver, solver_params, CUBLAS_FILL_MODE_LOWER, m, CUDA_R_64F,
                                      mats + b * mm, m, CUDA_R_64F, work, work_bytes,
                                      host_solver_work.data(), host_solver_work.size(), info + b));
      }
    }
    return absl::OkStatus();
  }

  // In place L -> L^{-1} (lower, non-unit), info to *info.
  absl::Status Trtri(double* a, int64_t m, int* info, void* work, size_t work_bytes) {
    CUSOLVER_TRY(cusolverDnXtrtri(cusolver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, m, CUDA_R_64F, a, m,
                                  work, work_bytes, host_solver_work.data(), host_solver_work.size(), info));
    return absl::OkStatus();
  }

  // tr(A) into *trace_a and tr(A^2) into *trace_a2 (device) for A = (L L^T)^{-1}
  // from the factor in `l` (overwritten by L^{-1}); `scratch` [m, m] receives
  // A = L^{-T} L^{-1} (lower); `partial` [m].
  absl::Status Traces(double* l, int64_t m, double* scratch, double* partial, int* trtri_info,
                      double* trace_a, double* trace_a2, void* work, size_t work_bytes) {
    SIGMA_CU_RETURN_IF_ERROR(Trtri(l, m, trtri_info, work, work_bytes));
    // trtri leaves the strict upper triangle alone; batched potrf may have
    // used it as workspace. Zero it so the SYRK below sees a triangular L^{-1}.
    KERNEL_TRY(kernels::LaunchZeroStrictUpper(l, m, 1, stream), "ZeroStrictUpper kernel");
    KERNEL_TRY(kernels::LaunchLowerWeightedSquareSum(l, m, 1.0, partial, trace_a, stream),
               "LowerWeightedSquareSum kernel");
    const double one = 1.0, zero = 0.0;
    const int im = static_cast<int>(m);
    CUBLAS_TRY(cublasDsyrk(cublas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, im, im, &one, l, im, &zero, scratch, im));
    KERNEL_TRY(kernels::LaunchLowerWeightedSquareSum(scratch, m, 2.0, partial, trace_a2, stream),
               "LowerWeightedSquareSum kernel");
    return absl::OkStatus();
  }

  // q = ||L^{-1} x_j||^2 for column-major x [m, rows] (overwritten by L^{-1} x).
  absl::Status QNorms(const double* l, int64_t m, double* x, int64_t rows, double* q) {
    const double one = 1.0;
    CUBLAS_TRY(cublasDtrsm(cublas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
                           static_cast<int>(m), static_cast<int>(rows), &one, l, static_cast<int>(m), x,
                           static_cast<int>(m)));
    KERNEL_TRY(kernels::LaunchColumnSquaredNorms(x, m, rows, q, stream), "ColumnSquaredNorms kernel");
    return absl::OkStatus();
  }
};

// Energies above rho are violations (preprocess.cc: l2 rows have energy 1
// exactly, so they violate only rho < 1).
double ViolationLimit(double rho) { return rho; }

absl::Status NonFiniteError(unsigned long long flag, int64_t m, std::string_view where) {
  const unsigned long long index = ~flag;
  return absl::InvalidArgumentError(absl::StrFormat(
      "%snon-finite value (NaN or Inf) at row %d, column %d", where,
      static_cast<int64_t>(index / static_cast<unsigned long long>(m)),
      static_cast<int64_t>(index % static_cast<unsigned long long>(m))));
}

absl::Status CheckDims(int64_t m, int64_t rows, size_t width) {
  if (m <= 0) return absl::InvalidArgumentError(absl::StrFormat("m must be > 0, got %d", m));
  if (rows < 0) return absl::InvalidArgumentError("negative row count");
  if (m > INT_MAX || rows > INT_MAX)
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA backend: m = %d and rows = %d must each fit in 32 bits (cuBLAS)", m, rows));
  const double bytes = static_cast<double>(m) * static_cast<double>(std::max<int64_t>(rows, m)) *
                       static_cast<double>(std::max<size_t>(width, sizeof(double)));
  if (bytes > 1e18) return absl::InvalidArgumentError("CUDA backend: problem too large");
  return absl::OkStatus();
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::unique_ptr<DeviceContext> ctx, const CudaBackendOptions& options)
      : ctx_(std::move(ctx)), options_(options) {}

  std::string name() const override { return absl::StrCat("cuda:", ctx_->ordinal, " ", ctx_->device_name); }

  std::optional<PhaseTimes> last_times() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_times_;
  }

  absl::Status AccumulateGram(const RowBlock& rows, Preprocessing preprocessing, double rho, double* gram,
                              EnergyStats* energy) override {
    SIGMA_CU_RETURN_IF_ERROR(CheckDims(rows.m, rows.num_rows, DTypeWidth(rows.dtype)));
    if (rows.num_rows == 0) return absl::OkStatus();
    if (rows.data == nullptr || gram == nullptr) return absl::InvalidArgumentError("null pointer");
    return Run([&]() -> absl::Status {
      DeviceContext& c = *ctx_;
      const int64_t m = rows.m;
      const size_t mm = static_cast<size_t>(m) * m;
      const int64_t chunk_rows = std::max<int64_t>(
          1, std::min<int64_t>(rows.num_rows, static_cast<int64_t>(options_.chunk_bytes / (m * sizeof(double)))));
      const size_t row_bytes = static_cast<size_t>(m) * DTypeWidth(rows.dtype);
      const size_t slot = DeviceContext::SlotBytes(row_bytes, chunk_rows, options_.staging_slot_bytes);
      Layout lay;
      const size_t o_g = lay.Add(mm * sizeof(double));
      const size_t o_slot0 = lay.Add(slot), o_slot1 = lay.Add(slot);
      const size_t o_x = lay.Add(static_cast<size_t>(chunk_rows) * m * sizeof(double));
      const size_t o_e = lay.Add(static_cast<size_t>(chunk_rows) * sizeof(double));
      const size_t o_acc = lay.Add(sizeof(EnergyDev));
      const size_t o_bad = lay.Add(sizeof(unsigned long long));
      SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(lay.total()));
      SIGMA_CU_RETURN_IF_ERROR(c.staging.Reserve(2 * slot));
      char* base = c.arena.base();
      double* g = At<double>(base, o_g);
      char* slots[2] = {base + o_slot0, base + o_slot1};
      double* x = At<double>(base, o_x);
      double* e = At<double>(base, o_e);
      EnergyDev* acc = At<EnergyDev>(base, o_acc);
      unsigned long long* bad = At<unsigned long long>(base, o_bad);
      const bool l2 = preprocessing == Preprocessing::kL2;
      const bool gemm = GramUsesGemm(options_.gram, m, chunk_rows);

      CUDA_TRY(cudaMemcpyAsync(g, gram, mm * sizeof(double), cudaMemcpyHostToDevice, c.stream));
      CUDA_TRY(cudaMemsetAsync(acc, 0, sizeof(EnergyDev), c.stream));
      CUDA_TRY(cudaMemsetAsync(bad, 0, sizeof(unsigned long long), c.stream));
      for (int64_t start = 0; start < rows.num_rows; start += chunk_rows) {
        const int64_t count = std::min(chunk_rows, rows.num_rows - start);
        const RowBlock chunk{static_cast<const char*>(rows.data) + static_cast<size_t>(start) * row_bytes,
                             rows.dtype, count, m};
        SIGMA_CU_RETURN_IF_ERROR(c.UploadRows(chunk, l2, x, e, bad, slots, slot));
        KERNEL_TRY(kernels::LaunchEnergyReduce(e, count, ViolationLimit(rho), acc, c.stream),
                   "EnergyReduce kernel");
        SIGMA_CU_RETURN_IF_ERROR(c.Gram(x, m, count, 1.0, g, gemm));
      }
      KERNEL_TRY(kernels::LaunchSymmetrizeFromLower(g, m, c.stream), "Symmetrize kernel");
      EnergyDev* host_acc = At<EnergyDev>(c.small.base(), 0);
      unsigned long long* host_bad = At<unsigned long long>(c.small.base(), RoundUp(sizeof(EnergyDev), 64));
      CUDA_TRY(cudaMemcpyAsync(host_acc, acc, sizeof(EnergyDev), cudaMemcpyDeviceToHost, c.stream));
      CUDA_TRY(cudaMemcpyAsync(host_bad, bad, sizeof(unsigned long long), cudaMemcpyDeviceToHost, c.stream));
      CUDA_TRY(cudaStreamSynchronize(c.stream));
      // A bad batch changes nothing: refuse before `gram` is written.
      if (*host_bad != 0) return NonFiniteError(*host_bad, m, "");
      CUDA_TRY(cudaMemcpyAsync(gram, g, mm * sizeof(double), cudaMemcpyDeviceToHost, c.stream));
      CUDA_TRY(cudaStreamSynchronize(c.stream));
      if (energy != nullptr) {
        EnergyStats add;
        add.count = host_acc->count;
        add.max_energy = host_acc->max_energy;
        add.sum_energy = host_acc->sum_energy;
        add.rho_violations = host_acc->rho_violations;
        energy->Merge(add);
      }
      return absl::OkStatus();
    });
  }

  absl::Status ShiftedCholesky(const double* gram, int64_t m, absl::Span<const ShiftedMatrix> shifts,
                               absl::Span<CholeskyOutcome> outcomes, double* factors) override {
    if (outcomes.size() != shifts.size())
      return absl::InvalidArgumentError("ShiftedCholesky: outcomes size differs from shifts");
    SIGMA_CU_RETURN_IF_ERROR(CheckDims(m, m, sizeof(double)));
    if (shifts.empty()) return absl::OkStatus();
    if (gram == nullptr) return absl::InvalidArgumentError("null gram");
    const int64_t count = static_cast<int64_t>(shifts.size());
    if (count > INT_MAX / 2) return absl::InvalidArgumentError("too many shifts");
    return Run([&]() -> absl::Status {
      DeviceContext& c = *ctx_;
      const auto t0 = std::chrono::steady_clock::now();
      const bool timed = options_.record_phase_times;
      const size_t mm = static_cast<size_t>(m) * m;
      const bool batched = m <= options_.batched_potrf_max_m;
      Layout lay;
      const size_t o_g = lay.Add(mm * sizeof(double));
      const size_t o_mats = lay.Add(count * mm * sizeof(double));
      const size_t o_info = lay.Add(count * sizeof(int));
      const size_t o_ptrs = lay.Add(count * sizeof(double*));
      const size_t o_out = lay.Add(count * sizeof(CholDev));
      const size_t o_ws = lay.total();
      SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(o_ws));
      size_t ws_bytes = 0, host_bytes = 0;
      if (!batched) {
        SIGMA_CU_RETURN_IF_ERROR(c.PotrfBufferSizes(m, At<double>(c.arena.base(), o_mats), &ws_bytes, &host_bytes));
        SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(o_ws + ws_bytes));  // nothing queued yet: growing is safe
      }
      c.host_solver_work.resize(std::max<size_t>(host_bytes, 1));
      const size_t pinned_out = RoundUp(count * sizeof(double*), kAlign);
      SIGMA_CU_RETURN_IF_ERROR(c.small.Reserve(pinned_out + count * sizeof(CholDev)));
      char* base = c.arena.base();
      double* g = At<double>(base, o_g);
      double* mats = At<double>(base, o_mats);
      int* info = At<int>(base, o_info);
      CholDev* out = At<CholDev>(base, o_out);

      SIGMA_CU_RETURN_IF_ERROR(c.Mark(0, timed));
      CUDA_TRY(cudaMemcpyAsync(g, gram, mm * sizeof(double), cudaMemcpyHostToDevice, c.stream));
      SIGMA_CU_RETURN_IF_ERROR(c.Mark(1, timed));
      for (int64_t first = 0; first < count; first += 3) {
        ShiftTargets t{};
        t.count = static_cast<int>(std::min<int64_t>(3, count - first));
        for (int k = 0; k < t.count; ++k) {
          t.dst[k] = mats + (first + k) * mm;
          t.scale[k] = shifts[first + k].scale;
          t.shift[k] = shifts[first + k].shift;
        }
        KERNEL_TRY(kernels::LaunchShiftedCopies(g, m, t, c.stream), "ShiftedCopies kernel");
      }
      SIGMA_CU_RETURN_IF_ERROR(c.Potrf(mats, m, count, info, batched, At<double*>(c.small.base(), 0),
                                       At<double*>(base, o_ptrs), base + o_ws, ws_bytes));
      KERNEL_TRY(kernels::LaunchLogDiag(mats, m, count, info, out, 1, sizeof(CholDev), c.stream), "LogDiag kernel");
      SIGMA_CU_RETURN_IF_ERROR(c.Mark(2, timed));
      if (factors != nullptr) {
        KERNEL_TRY(kernels::LaunchZeroStrictUpper(mats, m, count, c.stream), "ZeroStrictUpper kernel");
        CUDA_TRY(cudaMemcpyAsync(factors, mats, count * mm * sizeof(double), cudaMemcpyDeviceToHost, c.stream));
      }
      CholDev* host_out = At<CholDev>(c.small.base(), pinned_out);
      CUDA_TRY(cudaMemcpyAsync(host_out, out, count * sizeof(CholDev), cudaMemcpyDeviceToHost, c.stream));
      CUDA_TRY(cudaStreamSynchronize(c.stream));
      for (int64_t b = 0; b < count; ++b) {
        const CholDev& d = host_out[b];
        if (d.info < 0)
          return absl::InternalError(absl::StrFormat("cuSOLVER potrf: argument %d invalid", -d.info));
        CholeskyOutcome& o = outcomes[b];
        o = CholeskyOutcome{};
        o.ok = d.ok != 0;
        o.failed_column = o.ok ? 0 : d.failed_column;
        o.log_det = o.ok ? d.log_det : 0.0;
      }
      if (timed) {
        PhaseTimes pt;
        pt.upload_convert_ms = c.Elapsed(0, 1);
        pt.cholesky_ms = c.Elapsed(1, 2);
        pt.batched_potrf = batched;
        pt.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        last_times_ = pt;
      }
      return absl::OkStatus();
    });
  }

  absl::Status MahalanobisNorms(const double* lower_factor, int64_t m, const double* x, int64_t num_rows,
                                double* q) override {
    SIGMA_CU_RETURN_IF_ERROR(CheckDims(m, num_rows, sizeof(double)));
    if (num_rows == 0) return absl::OkStatus();
    if (lower_factor == nullptr || x == nullptr || q == nullptr) return absl::InvalidArgumentError("null pointer");
    return Run([&]() -> absl::Status {
      DeviceContext& c = *ctx_;
      const size_t mm = static_cast<size_t>(m) * m;
      const int64_t chunk_rows = std::max<int64_t>(
          1, std::min<int64_t>(num_rows, static_cast<int64_t>(options_.chunk_bytes / (m * sizeof(double)))));
      const size_t row_bytes = static_cast<size_t>(m) * sizeof(double);
      const size_t slot = DeviceContext::SlotBytes(row_bytes, chunk_rows, options_.staging_slot_bytes);
      Layout lay;
      const size_t o_l = lay.Add(mm * sizeof(double));
      const size_t o_slot0 = lay.Add(slot), o_slot1 = lay.Add(slot);
      const size_t o_x = lay.Add(static_cast<size_t>(chunk_rows) * m * sizeof(double));
      const size_t o_e = lay.Add(static_cast<size_t>(chunk_rows) * sizeof(double));
      const size_t o_q = lay.Add(static_cast<size_t>(chunk_rows) * sizeof(double));
      const size_t o_bad = lay.Add(sizeof(unsigned long long));  // noted, not checked (as the CPU)
      SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(lay.total()));
      SIGMA_CU_RETURN_IF_ERROR(c.staging.Reserve(2 * slot));
      char* base = c.arena.base();
      double* l = At<double>(base, o_l);
      char* slots[2] = {base + o_slot0, base + o_slot1};
      double* xd = At<double>(base, o_x);
      double* e = At<double>(base, o_e);
      double* qd = At<double>(base, o_q);
      CUDA_TRY(cudaMemcpyAsync(l, lower_factor, mm * sizeof(double), cudaMemcpyHostToDevice, c.stream));
      for (int64_t start = 0; start < num_rows; start += chunk_rows) {
        const int64_t count = std::min(chunk_rows, num_rows - start);
        const RowBlock chunk{x + start * m, DType::kFloat64, count, m};
        SIGMA_CU_RETURN_IF_ERROR(
            c.UploadRows(chunk, /*l2=*/false, xd, e, At<unsigned long long>(base, o_bad), slots, slot));
        SIGMA_CU_RETURN_IF_ERROR(c.QNorms(l, m, xd, count, qd));
        CUDA_TRY(cudaMemcpyAsync(q + start, qd, count * sizeof(double), cudaMemcpyDeviceToHost, c.stream));
      }
      CUDA_TRY(cudaStreamSynchronize(c.stream));
      return absl::OkStatus();
    });
  }

  absl::Status InverseTraces(const double* lower_factor, int64_t m, double* trace_a, double* trace_a2) override {
    SIGMA_CU_RETURN_IF_ERROR(CheckDims(m, m, sizeof(double)));
    if (lower_factor == nullptr || trace_a == nullptr || trace_a2 == nullptr)
      return absl::InvalidArgumentError("null pointer");
    return Run([&]() -> absl::Status {
      DeviceContext& c = *ctx_;
      const size_t mm = static_cast<size_t>(m) * m;
      Layout lay;
      const size_t o_l = lay.Add(mm * sizeof(double));
      const size_t o_a = lay.Add(mm * sizeof(double));
      const size_t o_p = lay.Add(static_cast<size_t>(m) * sizeof(double));
      struct Out {
        double trace_a, trace_a2;
        int info, pad;
      };
      const size_t o_out = lay.Add(sizeof(Out));
      const size_t o_ws = lay.total();
      SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(o_ws));
      size_t ws_bytes = 0, host_bytes = 0;
      SIGMA_CU_RETURN_IF_ERROR(c.TrtriBufferSizes(m, At<double>(c.arena.base(), o_l), &ws_bytes, &host_bytes));
      SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(o_ws + ws_bytes));
      c.host_solver_work.resize(std::max<size_t>(host_bytes, 1));
      char* base = c.arena.base();
      double* l = At<double>(base, o_l);
      Out* out = At<Out>(base, o_out);
      CUDA_TRY(cudaMemsetAsync(out, 0, sizeof(Out), c.stream));
      CUDA_TRY(cudaMemcpyAsync(l, lower_factor, mm * sizeof(double), cudaMemcpyHostToDevice, c.stream));
      SIGMA_CU_RETURN_IF_ERROR(c.Traces(l, m, At<double>(base, o_a), At<double>(base, o_p), &out->info,
                                        &out->trace_a, &out->trace_a2, base + o_ws, ws_bytes));
      Out* host_out = At<Out>(c.small.base(), 0);
      CUDA_TRY(cudaMemcpyAsync(host_out, out, sizeof(Out), cudaMemcpyDeviceToHost, c.stream));
      CUDA_TRY(cudaStreamSynchronize(c.stream));
      if (host_out->info != 0)
        return absl::FailedPreconditionError(
            absl::StrFormat("trtri failed (info %d): singular factor", host_out->info));
      *trace_a = host_out->trace_a;
      *trace_a2 = host_out->trace_a2;
      return absl::OkStatus();
    });
  }

  // Spec §4 "Batched": snapshots are grouped by m (a batched factorisation
  // needs one matrix size); within a group every snapshot stays on the device
  // from upload to moments, and the 3 x #snapshots shifted matrices go through
  // ONE cusolverDnDpotrfBatched call (m <= batched_potrf_max_m) or one
  // cusolverDnXpotrf each. A group that does not fit in device memory is split
  // in halves until it does (a single snapshot that does not fit is
  // RESOURCE_EXHAUSTED). One host synchronisation per group.
  absl::Status SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) override {
    if (out.size() != inputs.size())
      return absl::InvalidArgumentError("SealBatch: output size differs from input size");
    for (const SealInput& input : inputs) {
      // Shape only: NaN/Inf are detected on the device by the conversion
      // kernel, which reads every element anyway (no O(n_A m) host scan).
      SIGMA_CU_RETURN_IF_ERROR(ValidateSealShape(input));
      SIGMA_CU_RETURN_IF_ERROR(CheckDims(input.rows.m, input.rows.num_rows, DTypeWidth(input.rows.dtype)));
    }
    if (inputs.empty()) return absl::OkStatus();
    return Run([&]() -> absl::Status {
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<std::pair<int64_t, std::vector<size_t>>> groups;  // by m, in first-seen order
      for (size_t i = 0; i < inputs.size(); ++i) {
        auto it = std::find_if(groups.begin(), groups.end(),
                               [&](const auto& g) { return g.first == inputs[i].rows.m; });
        if (it == groups.end()) {
          groups.push_back({inputs[i].rows.m, {i}});
        } else {
          it->second.push_back(i);
        }
      }
      PhaseTimes total;
      for (const auto& group : groups) {
        SIGMA_CU_RETURN_IF_ERROR(SealGroupSplitting(inputs, group.second, out, &total));
      }
      if (options_.record_phase_times) {
        total.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        last_times_ = total;
      }
      return absl::OkStatus();
    });
  }

 private:
  // Runs `body` under the lock on this backend's device; drains the stream and
  // records sticky errors on failure.
  template <typename F>
  absl::Status Run(F&& body) {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_) return absl::InternalError(absl::StrCat("CUDA backend unusable after an earlier error: ", broken_reason_));
    SIGMA_CU_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(ctx_->ordinal), "cudaSetDevice"));
    ctx_->ResetSlots();
    absl::Status s = body();
    if (!s.ok()) Drain(s);
    return s;
  }

  void Drain(const absl::Status& cause) {
    const cudaError_t sync = cudaStreamSynchronize(ctx_->stream);
    const cudaError_t last = cudaGetLastError();
    if (IsStickyError(sync) || IsStickyError(last)) {
      broken_ = true;
      broken_reason_ = std::string(cause.message());
    }
    ctx_->ResetSlots();
  }

  absl::Status SealGroupSplitting(absl::Span<const SealInput> inputs, const std::vector<size_t>& idx,
                                  absl::Span<SealMoments> out, PhaseTimes* times) {
    absl::Status s = SealGroup(inputs, idx, out, times);
    if (s.code() != absl::StatusCode::kResourceExhausted || idx.size() < 2) return s;
    Drain(s);
    if (broken_) return s;
    const size_t half = idx.size() / 2;
    const std::vector<size_t> a(idx.begin(), idx.begin() + half), b(idx.begin() + half, idx.end());
    SIGMA_CU_RETURN_IF_ERROR(SealGroupSplitting(inputs, a, out, times));
    return SealGroupSplitting(inputs, b, out, times);
  }

  // All snapshots in `idx` have the same m.
  absl::Status SealGroup(absl::Span<const SealInput> inputs, const std::vector<size_t>& idx,
                         absl::Span<SealMoments> out, PhaseTimes* times) {
    DeviceContext& c = *ctx_;
    const bool timed = options_.record_phase_times;
    const int64_t S = static_cast<int64_t>(idx.size());
    const int64_t m = inputs[idx[0]].rows.m;
    const size_t mm = static_cast<size_t>(m) * m;
    const int64_t nmats = 3 * S;
    if (nmats > INT_MAX) return absl::InvalidArgumentError("too many snapshots in one batch");
    const bool batched = m <= options_.batched_potrf_max_m;

    // ---- layout -----------------------------------------------------------
    size_t slot = 0;
    for (size_t i : idx) {
      const RowBlock& r = inputs[i].rows;
      slot = std::max(slot, DeviceContext::SlotBytes(static_cast<size_t>(m) * DTypeWidth(r.dtype), r.num_rows,
                                                     options_.staging_slot_bytes));
    }
    Layout lay;
    const size_t o_slot0 = lay.Add(slot), o_slot1 = lay.Add(slot);
    std::vector<size_t> o_x(S), o_v(S);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t n_a = inputs[idx[s]].rows.num_rows;
      o_x[s] = lay.Add(static_cast<size_t>(n_a) * m * sizeof(double));  // X_s, then L^{-1} X_s
      o_v[s] = lay.Add(static_cast<size_t>(n_a) * sizeof(double));      // row energies, then q
    }
    const size_t o_mats = lay.Add(nmats * mm * sizeof(double));  // [3S, m, m]: shifted -> factors
    const size_t o_partial = lay.Add(static_cast<size_t>(m) * sizeof(double));
    const size_t o_info = lay.Add(nmats * sizeof(int));
    const size_t o_ptrs = lay.Add(nmats * sizeof(double*));
    const size_t o_res = lay.Add(S * sizeof(SnapshotDev));
    const size_t o_ws = lay.total();  // solver workspace last: sized after the queries
    SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(o_ws));
    size_t ws = 0, host_ws = 0;
    {
      double* probe = At<double>(c.arena.base(), o_mats);
      size_t d = 0, h = 0;
      SIGMA_CU_RETURN_IF_ERROR(c.TrtriBufferSizes(m, probe, &d, &h));
      ws = std::max(ws, d);
      host_ws = std::max(host_ws, h);
      if (!batched) {
        SIGMA_CU_RETURN_IF_ERROR(c.PotrfBufferSizes(m, probe, &d, &h));
        ws = std::max(ws, d);
        host_ws = std::max(host_ws, h);
      }
    }
    SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(o_ws + ws));  // nothing queued yet: growing is safe
    c.host_solver_work.resize(std::max<size_t>(host_ws, 1));
    SIGMA_CU_RETURN_IF_ERROR(c.staging.Reserve(2 * slot));
    const size_t pinned_res = RoundUp(nmats * sizeof(double*), kAlign);
    SIGMA_CU_RETURN_IF_ERROR(c.small.Reserve(pinned_res + S * sizeof(SnapshotDev)));

    char* base = c.arena.base();
    char* slots[2] = {base + o_slot0, base + o_slot1};
    double* mats = At<double>(base, o_mats);
    double* partial = At<double>(base, o_partial);
    int* info = At<int>(base, o_info);
    SnapshotDev* res = At<SnapshotDev>(base, o_res);
    auto X = [&](int64_t s) { return At<double>(base, o_x[s]); };
    auto V = [&](int64_t s) { return At<double>(base, o_v[s]); };
    auto M = [&](int64_t s, int k) { return mats + (3 * s + k) * mm; };
    bool gemm = false;

    CUDA_TRY(cudaMemsetAsync(res, 0, S * sizeof(SnapshotDev), c.stream));
    // ---- A: upload, convert, l2, energies --------------------------------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(0, timed));
    for (int64_t s = 0; s < S; ++s) {
      const SealInput& in = inputs[idx[s]];
      const bool l2 = in.preprocessing == Preprocessing::kL2;
      SIGMA_CU_RETURN_IF_ERROR(c.UploadRows(in.rows, l2, X(s), V(s), &res[s].first_nonfinite, slots, slot));
      KERNEL_TRY(kernels::LaunchEnergyReduce(V(s), in.rows.num_rows, ViolationLimit(in.rho), &res[s].energy,
                                             c.stream),
                 "EnergyReduce kernel");
    }
    // ---- B: Gram into the slot of matrix 2 --------------------------------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(1, timed));
    for (int64_t s = 0; s < S; ++s) {
      const int64_t n_a = inputs[idx[s]].rows.num_rows;
      gemm = GramUsesGemm(options_.gram, m, n_a);
      SIGMA_CU_RETURN_IF_ERROR(c.Gram(X(s), m, n_a, 0.0, M(s, 2), gemm));
    }
    // ---- C: shifted copies, one batched Cholesky, log-diagonals ----------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(2, timed));
    for (int64_t s = 0; s < S; ++s) {
      const SealInput& in = inputs[idx[s]];
      const std::vector<ShiftedMatrix> sh = TrackShifts(in.rows.num_rows, in.corpus_size, in.delta, in.rho);
      ShiftTargets t{};
      t.count = 3;
      for (int k = 0; k < 3; ++k) {
        t.dst[k] = M(s, k);
        t.scale[k] = sh[k].scale;
        t.shift[k] = sh[k].shift;
      }
      KERNEL_TRY(kernels::LaunchShiftedCopies(M(s, 2), m, t, c.stream), "ShiftedCopies kernel");  // in place
    }
    SIGMA_CU_RETURN_IF_ERROR(c.Potrf(mats, m, nmats, info, batched, At<double*>(c.small.base(), 0),
                                     At<double*>(base, o_ptrs), base + o_ws, ws));
    KERNEL_TRY(kernels::LaunchLogDiag(mats, m, nmats, info, res, 3, sizeof(SnapshotDev), c.stream),
               "LogDiag kernel");
    // ---- D: q = ||L^{-1} x_j||^2 and its statistics ------------------------
    // No host round trip: a failed factor just yields values that the host
    // discards below (cuBLAS/cuSOLVER do not fail on them).
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(3, timed));
    for (int64_t s = 0; s < S; ++s) {
      const int64_t n_a = inputs[idx[s]].rows.num_rows;
      SIGMA_CU_RETURN_IF_ERROR(c.QNorms(M(s, 2), m, X(s), n_a, V(s)));
      KERNEL_TRY(kernels::LaunchQStats(V(s), n_a, &res[s].q_mean, c.stream), "QStats kernel");
    }
    // ---- E: tr(A), tr(A^2); matrix 0's slot is free now -------------------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(4, timed));
    for (int64_t s = 0; s < S; ++s) {
      SIGMA_CU_RETURN_IF_ERROR(c.Traces(M(s, 2), m, M(s, 0), partial, &res[s].trtri_info, &res[s].trace_a,
                                        &res[s].trace_a2, base + o_ws, ws));
    }
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(5, timed));
    SnapshotDev* host_res = At<SnapshotDev>(c.small.base(), pinned_res);
    CUDA_TRY(cudaMemcpyAsync(host_res, res, S * sizeof(SnapshotDev), cudaMemcpyDeviceToHost, c.stream));
    CUDA_TRY(cudaStreamSynchronize(c.stream));

    // ---- results ------------------------------------------------------------
    for (int64_t s = 0; s < S; ++s) {
      if (host_res[s].first_nonfinite != 0)
        return NonFiniteError(host_res[s].first_nonfinite, m, absl::StrFormat("snapshot %d: ", idx[s]));
    }
    for (int64_t s = 0; s < S; ++s) {
      const SnapshotDev& r = host_res[s];
      SealMoments& mo = out[idx[s]];
      mo = SealMoments{};
      mo.n_a = inputs[idx[s]].rows.num_rows;
      mo.m = m;
      for (int k = 0; k < 3; ++k) {
        if (r.chol[k].info < 0)
          return absl::InternalError(absl::StrFormat("cuSOLVER potrf: argument %d invalid", -r.chol[k].info));
        mo.cholesky[k].ok = r.chol[k].ok != 0;
        mo.cholesky[k].failed_column = mo.cholesky[k].ok ? 0 : r.chol[k].failed_column;
        mo.cholesky[k].log_det = mo.cholesky[k].ok ? r.chol[k].log_det : 0.0;
      }
      mo.energy.count = r.energy.count;
      mo.energy.max_energy = r.energy.max_energy;
      mo.energy.sum_energy = r.energy.sum_energy;
      mo.energy.rho_violations = r.energy.rho_violations;
      if (mo.cholesky[2].ok) {
        if (r.trtri_info != 0)
          return absl::FailedPreconditionError(
              absl::StrFormat("trtri failed (info %d): singular factor", r.trtri_info));
        mo.q_mean = r.q_mean;
        mo.q_sq_mean = r.q_sq_mean;
        mo.q_sd = r.q_sd;
        mo.trace_a = r.trace_a;
        mo.trace_a2 = r.trace_a2;
      }
    }
    if (timed) {
      times->upload_convert_ms += c.Elapsed(0, 1);
      times->gram_ms += c.Elapsed(1, 2);
      times->cholesky_ms += c.Elapsed(2, 3);
      times->q_ms += c.Elapsed(3, 4);
      times->traces_ms += c.Elapsed(4, 5);
      times->batched_potrf = batched;
      times->gram_gemm = gemm;
    }
    return absl::OkStatus();
  }

  std::unique_ptr<DeviceContext> ctx_;
  const CudaBackendOptions options_;
  mutable std::mutex mu_;
  bool broken_ = false;
  std::string broken_reason_;
  std::optional<PhaseTimes> last_times_;
};

}  // namespace

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal) {
  return MakeCudaBackend(ordinal, CudaBackendOptions{});
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal, const CudaBackendOptions& options) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::UnavailableError(
        absl::StrFormat("no CUDA device (cudaGetDeviceCount: %s)", cudaGetErrorString(e)));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device (cudaGetDeviceCount returned 0)");
  if (ordinal < 0 || ordinal >= count)
    return absl::UnavailableError(absl::StrFormat("no CUDA device %d (%d present)", ordinal, count));
  if (options.staging_slot_bytes == 0 || options.chunk_bytes == 0)
    return absl::InvalidArgumentError("staging_slot_bytes and chunk_bytes must be > 0");
  auto ctx = std::make_unique<DeviceContext>();
  if (absl::Status s = ctx->Init(ordinal); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(std::move(ctx), options));
}

std::optional<PhaseTimes> LastPhaseTimes(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  if (cuda == nullptr) return std::nullopt;
  return cuda->last_times();
}

}  // namespace sigma::cuda
