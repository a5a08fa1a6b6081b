// The device side of the CUDA backend (cuda_device.h): status conversion,
// buffers, and the library calls of a seal on one device context.
#include "cuda_device.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "device_kernels.h"

namespace sigma::cuda {

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
    // The driver reports faults it cannot classify as cudaErrorUnknown; the
    // context cannot be trusted after one.
    case cudaErrorUnknown:
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

namespace {
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

}  // namespace

absl::Status CusolverStatus(cusolverStatus_t s, std::string_view what) {
  if (s == CUSOLVER_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg =
      absl::StrFormat("cuSOLVER error in %s: %s (%d)", what, CusolverStatusName(s), static_cast<int>(s));
  if (s == CUSOLVER_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (s == CUSOLVER_STATUS_NOT_INITIALIZED) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}


size_t Layout::Add(size_t bytes) {
  const size_t offset = total_;
  const size_t b = std::max<size_t>(bytes, 1);
  if (b > std::numeric_limits<size_t>::max() / 2 - total_) {
    overflowed_ = true;
    return 0;
  }
  total_ = RoundUp(total_ + b, kAlign);
  return offset;
}

size_t Layout::Mul(size_t a, size_t b) {
  size_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    overflowed_ = true;
    return std::numeric_limits<size_t>::max();
  }
  return product;
}

absl::Status GrowableBuffer::Reserve(size_t bytes) {
  if (bytes <= capacity_) return absl::OkStatus();
  Release();
  const size_t rounded = RoundUp(bytes, granularity_);
  const char* what = kind_ == Kind::kDevice ? "device workspace" : "pinned host staging";
  if (rounded > static_cast<size_t>(std::numeric_limits<int64_t>::max()))
    return absl::ResourceExhaustedError(absl::StrFormat("%s of %d bytes is too large", what, rounded));
  if (budget_ != nullptr && !budget_->TryCharge(static_cast<int64_t>(rounded)))
    return absl::ResourceExhaustedError(
        absl::StrFormat("a %d-byte %s would exceed the memory budget (--max-memory-bytes)", rounded, what));
  void* p = nullptr;
  const cudaError_t e = kind_ == Kind::kDevice ? cudaMalloc(&p, rounded) : cudaMallocHost(&p, rounded);
  if (e != cudaSuccess) {
    if (budget_ != nullptr) budget_->Release(static_cast<int64_t>(rounded));
    return CudaStatus(e, absl::StrFormat("%s of a %d-byte %s", kind_ == Kind::kDevice ? "cudaMalloc" : "cudaMallocHost",
                                         rounded, what));
  }
  base_ = static_cast<char*>(p);
  capacity_ = rounded;
  return absl::OkStatus();
}

void GrowableBuffer::Release() {
  if (base_ == nullptr) return;
  (void)(kind_ == Kind::kDevice ? cudaFree(base_) : cudaFreeHost(base_));
  if (budget_ != nullptr) budget_->Release(static_cast<int64_t>(capacity_));
  base_ = nullptr;
  capacity_ = 0;
}

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
  CopyToPinned(dst, src, bytes, threads, [](std::function<void()> fn) { return std::thread(std::move(fn)); });
}

void CopyToPinned(char* dst, const char* src, size_t bytes, unsigned threads, const ThreadStarter& start_thread) {
  if (threads <= 1) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const size_t piece = RoundUp((bytes + threads - 1) / threads, 4096);
  std::vector<std::thread> pool;
  size_t off = piece;  // pieces from here on are not handed to a thread yet
  try {
    pool.reserve(threads);
    for (; off < bytes; off += piece) {
      const size_t n = std::min(piece, bytes - off);
      pool.push_back(start_thread([=] { std::memcpy(dst + off, src + off, n); }));
    }
  } catch (const std::exception&) {
    // std::system_error (thread limit) or bad_alloc: the rest is copied here.
  }
  if (off < bytes) std::memcpy(dst + off, src + off, bytes - off);
  std::memcpy(dst, src, std::min(piece, bytes));  // first piece on this thread
  for (std::thread& t : pool) t.join();
}


// ---- DeviceContext -----------------------------------------------------------

DeviceContext::~DeviceContext() {
  if (cudaSetDevice(ordinal) != cudaSuccess) return;
  (void)Synchronize();
  if (solver_params != nullptr) (void)cusolverDnDestroyParams(solver_params);
  if (cusolver != nullptr) (void)cusolverDnDestroy(cusolver);
  if (cublas != nullptr) (void)cublasDestroy(cublas);
  for (cudaEvent_t* group : {uploaded, consumed})
    for (int i = 0; i < 2; ++i)
      if (group[i] != nullptr) (void)cudaEventDestroy(group[i]);
  for (cudaEvent_t& e : marks)
    if (e != nullptr) (void)cudaEventDestroy(e);
  if (copy_stream != nullptr) (void)cudaStreamDestroy(copy_stream);
  if (stream != nullptr) (void)cudaStreamDestroy(stream);
  (void)cudaGetLastError();
}

absl::Status DeviceContext::Init(int device, MemoryBudget* budget) {
  ordinal = device;
  arena.set_budget(budget);
  staging.set_budget(budget);
  small.set_budget(budget);
  CUDA_TRY(cudaSetDevice(ordinal));
  cudaDeviceProp props;
  CUDA_TRY(cudaGetDeviceProperties(&props, ordinal));
  device_name = props.name;
  CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_TRY(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
  CUBLAS_TRY(cublasCreate(&cublas));
  CUBLAS_TRY(cublasSetStream(cublas, stream));
  CUSOLVER_TRY(cusolverDnCreate(&cusolver));
  CUSOLVER_TRY(cusolverDnSetStream(cusolver, stream));
  CUSOLVER_TRY(cusolverDnCreateParams(&solver_params));
  for (cudaEvent_t* group : {uploaded, consumed})
    for (int i = 0; i < 2; ++i) CUDA_TRY(cudaEventCreateWithFlags(&group[i], cudaEventDisableTiming));
  for (cudaEvent_t& e : marks) CUDA_TRY(cudaEventCreate(&e));
  SIGMA_CU_RETURN_IF_ERROR(small.Reserve(size_t{1} << 16));
  return absl::OkStatus();
}

void DeviceContext::ResetSlots() {
  for (int i = 0; i < 2; ++i) upload_pending[i] = consumed_recorded[i] = false;
  next_slot = 0;
}

cudaError_t DeviceContext::Synchronize() {
  const cudaError_t copy = copy_stream != nullptr ? cudaStreamSynchronize(copy_stream) : cudaSuccess;
  const cudaError_t compute = stream != nullptr ? cudaStreamSynchronize(stream) : cudaSuccess;
  return copy != cudaSuccess ? copy : compute;
}

absl::Status DeviceContext::Mark(int i, bool on) {
  if (!on) return absl::OkStatus();
  return CudaStatus(cudaEventRecord(marks[i], stream), "cudaEventRecord");
}

double DeviceContext::Elapsed(int from, int to) {
  float ms = 0;
  if (cudaEventElapsedTime(&ms, marks[from], marks[to]) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return ms;
}

size_t DeviceContext::SlotBytes(size_t row_bytes, int64_t num_rows, size_t slot_limit) {
  const int64_t per = std::max<int64_t>(1, static_cast<int64_t>(slot_limit / row_bytes));
  return static_cast<size_t>(std::min(per, std::max<int64_t>(num_rows, 1))) * row_bytes;
}

absl::Status DeviceContext::UploadRows(const RowBlock& rows, bool l2, double* x, double* row_energy,
                                       unsigned long long* first_bad, char* const dev_slots[2], size_t slot_bytes) {
  const size_t row_bytes = static_cast<size_t>(rows.m) * DTypeWidth(rows.dtype);
  const int64_t rows_per_slot = static_cast<int64_t>(slot_bytes / row_bytes);
  const char* host = static_cast<const char*>(rows.data);
  for (int64_t start = 0; start < rows.num_rows; start += rows_per_slot) {
    const int64_t count = std::min(rows_per_slot, rows.num_rows - start);
    const size_t bytes = static_cast<size_t>(count) * row_bytes;
    const int s = next_slot;
    next_slot ^= 1;
    if (upload_pending[s]) {
      CUDA_TRY(cudaEventSynchronize(uploaded[s]));  // the pinned slot's last upload has left it
      upload_pending[s] = false;
    }
    char* pinned = staging.base() + s * slot_bytes;
    CopyToPinned(pinned, host + static_cast<size_t>(start) * row_bytes, bytes);
    // The device slot is free once the conversion that last read it ran.
    if (consumed_recorded[s]) CUDA_TRY(cudaStreamWaitEvent(copy_stream, consumed[s], 0));
    CUDA_TRY(cudaMemcpyAsync(dev_slots[s], pinned, bytes, cudaMemcpyHostToDevice, copy_stream));
    CUDA_TRY(cudaEventRecord(uploaded[s], copy_stream));
    upload_pending[s] = true;
    CUDA_TRY(cudaStreamWaitEvent(stream, uploaded[s], 0));
    KERNEL_TRY(kernels::LaunchConvertRows(static_cast<int>(rows.dtype), dev_slots[s], count, rows.m, l2,
                                          x + start * rows.m, row_energy + start, start, first_bad, stream),
               "ConvertRows kernel");
    CUDA_TRY(cudaEventRecord(consumed[s], stream));
    consumed_recorded[s] = true;
  }
  return absl::OkStatus();
}

absl::Status DeviceContext::Gram(const double* x, int64_t m, int64_t rows, double* g, GramPath path,
                                 int64_t block) {
  const double one = 1.0, zero = 0.0;
  const int im = static_cast<int>(m), ir = static_cast<int>(rows);
  switch (path) {
    case GramPath::kGemm:
      CUBLAS_TRY(cublasDgemm(cublas, CUBLAS_OP_N, CUBLAS_OP_T, im, im, ir, &one, x, im, x, im, &zero, g, im));
      return absl::OkStatus();
    case GramPath::kSyrk:
      CUBLAS_TRY(cublasDsyrk(cublas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, im, ir, &one, x, im, &zero, g, im));
      return absl::OkStatus();
    case GramPath::kBlocked:
      break;
  }
  // Column block [j0, j0 + jb): its diagonal block by SYRK (jb^2 n_A useful
  // flops), the rows below it by one DGEMM (2 (m - j0 - jb) jb n_A).
  const int64_t b = std::max<int64_t>(1, block);
  for (int64_t j0 = 0; j0 < m; j0 += b) {
    const int jb = static_cast<int>(std::min(b, m - j0));
    double* diag = g + j0 * m + j0;
    CUBLAS_TRY(cublasDsyrk(cublas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, jb, ir, &one, x + j0, im, &zero, diag, im));
    const int below = static_cast<int>(m - j0 - jb);
    if (below > 0)
      CUBLAS_TRY(cublasDgemm(cublas, CUBLAS_OP_N, CUBLAS_OP_T, below, jb, ir, &one, x + j0 + jb, im, x + j0, im,
                             &zero, diag + jb, im));
  }
  return absl::OkStatus();
}

absl::Status DeviceContext::PotrfBufferSizes(int64_t m, double* a, size_t* device_bytes, size_t* host_bytes) {
  CUSOLVER_TRY(cusolverDnXpotrf_bufferSize(cusolver, solver_params, CUBLAS_FILL_MODE_LOWER, m, CUDA_R_64F, a, m,
                                           CUDA_R_64F, device_bytes, host_bytes));
  return absl::OkStatus();
}

absl::Status DeviceContext::PotriBufferBytes(int64_t m, double* a, size_t* device_bytes) {
  int lwork = 0;
  CUSOLVER_TRY(cusolverDnDpotri_bufferSize(cusolver, CUBLAS_FILL_MODE_LOWER, static_cast<int>(m), a,
                                           static_cast<int>(m), &lwork));
  *device_bytes = static_cast<size_t>(std::max(lwork, 0)) * sizeof(double);
  return absl::OkStatus();
}

absl::Status DeviceContext::Potrf(double* mats, int64_t m, int64_t count, int* info, bool batched,
                                  double** pinned_ptrs, double** dev_ptrs, void* work, size_t work_bytes) {
  const size_t mm = static_cast<size_t>(m) * static_cast<size_t>(m);
  if (batched) {
    for (int64_t b = 0; b < count; ++b) pinned_ptrs[b] = mats + b * mm;
    CUDA_TRY(cudaMemcpyAsync(dev_ptrs, pinned_ptrs, count * sizeof(double*), cudaMemcpyHostToDevice, stream));
    CUSOLVER_TRY(cusolverDnDpotrfBatched(cusolver, CUBLAS_FILL_MODE_LOWER, static_cast<int>(m), dev_ptrs,
                                         static_cast<int>(m), info, static_cast<int>(count)));
    return absl::OkStatus();
  }
  for (int64_t b = 0; b < count; ++b) {
    CUSOLVER_TRY(cusolverDnXpotrf(cusolver, solver_params, CUBLAS_FILL_MODE_LOWER, m, CUDA_R_64F, mats + b * mm, m,
                                  CUDA_R_64F, work, work_bytes, host_solver_work.data(), host_solver_work.size(),
                                  info + b));
  }
  return absl::OkStatus();
}

absl::Status DeviceContext::Traces(double* l, int64_t m, double* partial, int* info, double* trace_a,
                                   double* trace_a2, void* work, size_t work_bytes) {
  // potri reads and writes the lower triangle only (batched potrf may have
  // left anything in the strict upper one).
  CUSOLVER_TRY(cusolverDnDpotri(cusolver, CUBLAS_FILL_MODE_LOWER, static_cast<int>(m), l, static_cast<int>(m),
                                static_cast<double*>(work), static_cast<int>(work_bytes / sizeof(double)), info));
  KERNEL_TRY(kernels::LaunchInverseTraces(l, m, partial, trace_a, trace_a2, stream), "InverseTraces kernel");
  return absl::OkStatus();
}

absl::Status DeviceContext::QNorms(const double* l, int64_t m, double* x, int64_t rows, double* q) {
  const double one = 1.0;
  CUBLAS_TRY(cublasDtrsm(cublas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
                         static_cast<int>(m), static_cast<int>(rows), &one, l, static_cast<int>(m), x,
                         static_cast<int>(m)));
  KERNEL_TRY(kernels::LaunchColumnSquaredNorms(x, m, rows, q, stream), "ColumnSquaredNorms kernel");
  return absl::OkStatus();
}

}  // namespace sigma::cuda
