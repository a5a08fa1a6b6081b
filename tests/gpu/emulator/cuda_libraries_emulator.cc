// Host emulation of the cuBLAS and cuSOLVER (dense) subset used by
// kernels/cuda, on CBLAS/LAPACKE (OpenBLAS). The functions are declared by
// <cublas_v2.h> / <cusolverDn.h> with C linkage (cublas_v2.h maps cublasCreate
// to cublasCreate_v2 etc.; the _v2 symbols are the ones defined here); link
// this file INSTEAD of libcublas/libcusolver.
//
// Every compute call, in this order: consumes an injected failure
// (FailNextCall, by the header name, e.g. "cublasDsyrk_v2"; the name without
// "_v2" is accepted too), validates its arguments as NVIDIA documents them,
// checks that every device operand lies inside a live device allocation
// (refused with INVALID_VALUE and counted as a violation), reads alpha/beta
// (host pointer mode only) and queues the computation on the handle's stream.
// The computation re-checks its operands when it runs (ReportViolation, which
// poisons the context, on failure) and then calls CBLAS/LAPACKE on the
// "device" memory (host memory, see cuda_runtime_emulator.cc).
//
// cuSOLVER potrf (Xpotrf and DpotrfBatched) writes a quiet NaN into every
// element of the strict triangle OPPOSITE to `uplo` and fills the device
// workspace with 0xFF bytes: the documented contract leaves both undefined,
// so code that relies on them fails loudly here.
//
// Memory: handles and params are heap objects owned by the caller through
// the opaque handle (Create/Destroy). Thread-safety: every entry point takes
// the emulator's global lock (internal::Mutex()).
#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <lapacke.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "emulator.h"
#include "emulator_internal.h"

namespace sigma::cuda_emulator {
namespace {

namespace in = internal;

// A cuBLAS or cuSOLVER handle: remembers its stream (nullptr = legacy default).
struct LibraryHandle {
  cudaStream_t stream = nullptr;
  cublasMath_t math_mode = CUBLAS_DEFAULT_MATH;
};
struct SolverParams {};

// Live handles and params objects, so a destroyed or foreign handle is
// refused, not dereferenced. Guarded by in::Mutex().
std::set<const void*>& LiveHandles() {
  static auto* const live = new std::set<const void*>();
  return *live;
}
std::set<const void*>& LiveParams() {
  static auto* const live = new std::set<const void*>();
  return *live;
}

LibraryHandle* AsHandle(const void* h) {
  if (h == nullptr || LiveHandles().count(h) == 0) return nullptr;
  return static_cast<LibraryHandle*>(const_cast<void*>(h));
}

// Consumes an injected failure for `name` or its spelling without "_v2".
std::optional<int> Injected(std::string_view name) {
  if (auto s = in::TakeInjectedFailure(name)) return s;
  if (name.size() > 3 && name.substr(name.size() - 3) == "_v2")
    return in::TakeInjectedFailure(name.substr(0, name.size() - 3));
  return std::nullopt;
}

using Lock = std::lock_guard<std::recursive_mutex>;

// Bytes of a column-major rows x cols operand with leading dimension ld
// (what the call touches: ld * (cols - 1) + rows elements); 0 if empty.
size_t OperandBytes(int64_t rows, int64_t cols, int64_t ld) {
  if (rows <= 0 || cols <= 0) return 0;
  return static_cast<size_t>(ld * (cols - 1) + rows) * sizeof(double);
}

// One device operand of a call: where, how big, and what to call it.
struct Operand {
  const void* p;
  size_t bytes;
  const char* name;
};

// Call-time check of device operands: the first one outside every live
// allocation is noted as misuse; returns false then.
bool CheckOperandsAtCall(const char* api, std::initializer_list<Operand> ops) {
  for (const Operand& op : ops) {
    if (op.bytes == 0) continue;
    if (!IsDeviceRange(op.p, op.bytes)) {
      in::NoteMisuse(std::string(api) + ": " + op.name + " " + in::DescribeRange(op.p, op.bytes) +
                     " is not inside one live device allocation");
      return false;
    }
  }
  return true;
}

// Execution-time re-check (allocations may have been freed since the call).
bool CheckOperandsAtRun(const std::string& what, const std::vector<Operand>& ops) {
  for (const Operand& op : ops) {
    if (op.bytes == 0) continue;
    if (!IsDeviceRange(op.p, op.bytes)) {
      ReportViolation(what + ": " + op.name + " " + in::DescribeRange(op.p, op.bytes) +
                      " is no longer inside a live device allocation");
      return false;
    }
  }
  return true;
}

bool ValidFill(cublasFillMode_t uplo) { return uplo == CUBLAS_FILL_MODE_LOWER || uplo == CUBLAS_FILL_MODE_UPPER; }
bool ValidOp(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }
bool ValidDiag(cublasDiagType_t d) { return d == CUBLAS_DIAG_NON_UNIT || d == CUBLAS_DIAG_UNIT; }
bool ValidSide(cublasSideMode_t s) { return s == CUBLAS_SIDE_LEFT || s == CUBLAS_SIDE_RIGHT; }

CBLAS_UPLO ToCblas(cublasFillMode_t uplo) { return uplo == CUBLAS_FILL_MODE_LOWER ? CblasLower : CblasUpper; }
// For real matrices CUBLAS_OP_C is the transpose.
CBLAS_TRANSPOSE ToCblas(cublasOperation_t op) { return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }
CBLAS_DIAG ToCblas(cublasDiagType_t d) { return d == CUBLAS_DIAG_UNIT ? CblasUnit : CblasNonUnit; }
CBLAS_SIDE ToCblas(cublasSideMode_t s) { return s == CUBLAS_SIDE_LEFT ? CblasLeft : CblasRight; }
char ToLapack(cublasFillMode_t uplo) { return uplo == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U'; }
char ToLapack(cublasDiagType_t d) { return d == CUBLAS_DIAG_UNIT ? 'U' : 'N'; }

// cuBLAS maps a failed launch to EXECUTION_FAILED.
cublasStatus_t QueueBlas(const LibraryHandle& h, std::function<void()> work, const std::string& what) {
  return Enqueue(h.stream, std::move(work), what) == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                                                 : CUBLAS_STATUS_EXECUTION_FAILED;
}
cusolverStatus_t QueueSolver(const LibraryHandle& h, std::function<void()> work, const std::string& what) {
  return Enqueue(h.stream, std::move(work), what) == cudaSuccess ? CUSOLVER_STATUS_SUCCESS
                                                                 : CUSOLVER_STATUS_EXECUTION_FAILED;
}

// ---- cuSOLVER workspace sizes (nonzero, n-dependent; host side 0) ----

size_t PotrfDeviceBytes(int64_t n) { return static_cast<size_t>(n) * static_cast<size_t>(n) * 2 + 4096; }
size_t PotriDeviceBytes(int64_t n) { return static_cast<size_t>(n) * 3 + 1024; }
size_t TrtriDeviceBytes(int64_t n) { return static_cast<size_t>(n) * static_cast<size_t>(n) + 8192; }

// Writes a quiet NaN into the strict triangle opposite to `uplo` of the
// n x n column-major matrix a (lda).
void ScribbleOppositeTriangle(double* a, int64_t n, int64_t lda, cublasFillMode_t uplo) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t j = 0; j < n; ++j) {
    if (uplo == CUBLAS_FILL_MODE_LOWER) {
      for (int64_t i = 0; i < j; ++i) a[i + j * lda] = nan;  // strict upper
    } else {
      for (int64_t i = j + 1; i < n; ++i) a[i + j * lda] = nan;  // strict lower
    }
  }
}

// Factors one matrix as cuSOLVER potrf does here; returns LAPACK's info.
int FactorOne(double* a, int64_t n, int64_t lda, cublasFillMode_t uplo) {
  const lapack_int info = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, ToLapack(uplo), static_cast<lapack_int>(n), a,
                                              static_cast<lapack_int>(lda));
  ScribbleOppositeTriangle(a, n, lda, uplo);
  return static_cast<int>(info);
}

std::string Num(int64_t v) { return std::to_string(v); }

// cuBLAS and cuSOLVER handles behave alike (create, destroy, set stream);
// only the status enums differ.
template <typename Status>
struct HandleStatuses {
  Status ok, invalid_value, not_initialized;
};
constexpr HandleStatuses<cublasStatus_t> kBlasStatuses{CUBLAS_STATUS_SUCCESS, CUBLAS_STATUS_INVALID_VALUE,
                                                       CUBLAS_STATUS_NOT_INITIALIZED};
constexpr HandleStatuses<cusolverStatus_t> kSolverStatuses{CUSOLVER_STATUS_SUCCESS, CUSOLVER_STATUS_INVALID_VALUE,
                                                           CUSOLVER_STATUS_NOT_INITIALIZED};

template <typename Status, typename Handle>
Status CreateHandle(const char* function, Handle* handle, const HandleStatuses<Status>& st) {
  Lock lock(in::Mutex());
  if (auto s = Injected(function)) return static_cast<Status>(*s);
  if (handle == nullptr) return st.invalid_value;
  if (!in::DevicePresent()) return st.not_initialized;
  auto* h = new LibraryHandle();
  LiveHandles().insert(h);
  *handle = reinterpret_cast<Handle>(h);
  return st.ok;
}

template <typename Status, typename Handle>
Status DestroyHandle(const char* function, Handle handle, const HandleStatuses<Status>& st) {
  Lock lock(in::Mutex());
  if (auto s = Injected(function)) return static_cast<Status>(*s);
  LibraryHandle* h = AsHandle(handle);
  if (h == nullptr) return st.not_initialized;
  LiveHandles().erase(h);
  delete h;
  return st.ok;
}

template <typename Status, typename Handle>
Status SetHandleStream(const char* function, Handle handle, cudaStream_t stream, const HandleStatuses<Status>& st) {
  Lock lock(in::Mutex());
  if (auto s = Injected(function)) return static_cast<Status>(*s);
  LibraryHandle* h = AsHandle(handle);
  if (h == nullptr) return st.not_initialized;
  h->stream = stream;
  return st.ok;
}

}  // namespace
}  // namespace sigma::cuda_emulator

namespace emu = sigma::cuda_emulator;

// ============================== cuBLAS =======================================

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  return emu::CreateHandle("cublasCreate_v2", handle, emu::kBlasStatuses);
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  return emu::DestroyHandle("cublasDestroy_v2", handle, emu::kBlasStatuses);
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  return emu::SetHandleStream("cublasSetStream_v2", handle, stream, emu::kBlasStatuses);
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  emu::Lock lock(emu::in::Mutex());
  if (auto s = emu::Injected("cublasGetStream_v2")) return static_cast<cublasStatus_t>(*s);
  emu::LibraryHandle* h = emu::AsHandle(handle);
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = h->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  emu::Lock lock(emu::in::Mutex());
  if (auto s = emu::Injected("cublasSetMathMode")) return static_cast<cublasStatus_t>(*s);
  emu::LibraryHandle* h = emu::AsHandle(handle);
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->math_mode = mode;  // recorded only: the emulation always computes in FP64
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
  }
  return "unknown error";
}

// C = alpha op(A) op(A)^T + beta C, only the `uplo` triangle of C.
cublasStatus_t cublasDsyrk_v2(cublasHandle_t handle, cublasFillMode_t uplo, cublasOperation_t trans, int n, int k,
                              const double* alpha, const double* A, int lda, const double* beta, double* C, int ldc) {
  emu::Lock lock(emu::in::Mutex());
  ++emu::in::MutableCounters().syrk_calls;
  if (auto s = emu::Injected("cublasDsyrk_v2")) return static_cast<cublasStatus_t>(*s);
  const emu::LibraryHandle* h = emu::AsHandle(handle);
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int a_rows = trans == CUBLAS_OP_N ? n : k;
  if (!emu::ValidFill(uplo) || !emu::ValidOp(trans) || n < 0 || k < 0 || lda < std::max(1, a_rows) ||
      ldc < std::max(1, n))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (n == 0) return CUBLAS_STATUS_SUCCESS;
  if (alpha == nullptr || beta == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  const int a_cols = trans == CUBLAS_OP_N ? k : n;
  const std::vector<emu::Operand> ops = {{A, emu::OperandBytes(a_rows, a_cols, lda), "A"},
                                         {C, emu::OperandBytes(n, n, ldc), "C"}};
  if (!emu::CheckOperandsAtCall("cublasDsyrk_v2", {ops[0], ops[1]})) return CUBLAS_STATUS_INVALID_VALUE;
  const double a = *alpha, b = *beta;
  const std::string what = "cublasDsyrk_v2 n=" + emu::Num(n) + " k=" + emu::Num(k);
  return emu::QueueBlas(
      *h,
      [=] {
        if (!emu::CheckOperandsAtRun(what, ops)) return;
        cblas_dsyrk(CblasColMajor, emu::ToCblas(uplo), emu::ToCblas(trans), n, k, a, A, lda, b, C, ldc);
      },
      what);
}

// C = alpha op(A) op(B) + beta C.
cublasStatus_t cublasDgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const double* alpha, const double* A, int lda, const double* B, int ldb,
                              const double* beta, double* C, int ldc) {
  emu::Lock lock(emu::in::Mutex());
  ++emu::in::MutableCounters().gemm_calls;
  if (auto s = emu::Injected("cublasDgemm_v2")) return static_cast<cublasStatus_t>(*s);
  const emu::LibraryHandle* h = emu::AsHandle(handle);
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  if (!emu::ValidOp(transa) || !emu::ValidOp(transb) || m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) ||
      ldb < std::max(1, b_rows) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (alpha == nullptr || beta == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  const std::vector<emu::Operand> ops = {{A, emu::OperandBytes(a_rows, a_cols, lda), "A"},
                                         {B, emu::OperandBytes(b_rows, b_cols, ldb), "B"},
                                         {C, emu::OperandBytes(m, n, ldc), "C"}};
  if (!emu::CheckOperandsAtCall("cublasDgemm_v2", {ops[0], ops[1], ops[2]})) return CUBLAS_STATUS_INVALID_VALUE;
  const double a = *alpha, b = *beta;
  const std::string what = "cublasDgemm_v2 m=" + emu::Num(m) + " n=" + emu::Num(n) + " k=" + emu::Num(k);
  return emu::QueueBlas(
      *h,
      [=] {
        if (!emu::CheckOperandsAtRun(what, ops)) return;
        cblas_dgemm(CblasColMajor, emu::ToCblas(transa), emu::ToCblas(transb), m, n, k, a, A, lda, B, ldb, b, C, ldc);
      },
      what);
}

// Solves op(A) X = alpha B (left) or X op(A) = alpha B (right); X overwrites B.
cublasStatus_t cublasDtrsm_v2(cublasHandle_t handle, cublasSideMode_t side, cublasFillMode_t uplo,
                              cublasOperation_t trans, cublasDiagType_t diag, int m, int n, const double* alpha,
                              const double* A, int lda, double* B, int ldb) {
  emu::Lock lock(emu::in::Mutex());
  ++emu::in::MutableCounters().trsm_calls;
  if (auto s = emu::Injected("cublasDtrsm_v2")) return static_cast<cublasStatus_t>(*s);
  const emu::LibraryHandle* h = emu::AsHandle(handle);
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int a_dim = side == CUBLAS_SIDE_LEFT ? m : n;
  if (!emu::ValidSide(side) || !emu::ValidFill(uplo) || !emu::ValidOp(trans) || !emu::ValidDiag(diag) || m < 0 ||
      n < 0 || lda < std::max(1, a_dim) || ldb < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (alpha == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  const std::vector<emu::Operand> ops = {{A, emu::OperandBytes(a_dim, a_dim, lda), "A"},
                                         {B, emu::OperandBytes(m, n, ldb), "B"}};
  if (!emu::CheckOperandsAtCall("cublasDtrsm_v2", {ops[0], ops[1]})) return CUBLAS_STATUS_INVALID_VALUE;
  const double a = *alpha;
  const std::string what = "cublasDtrsm_v2 m=" + emu::Num(m) + " n=" + emu::Num(n);
  return emu::QueueBlas(
      *h,
      [=] {
        if (!emu::CheckOperandsAtRun(what, ops)) return;
        cblas_dtrsm(CblasColMajor, emu::ToCblas(side), emu::ToCblas(uplo), emu::ToCblas(trans), emu::ToCblas(diag), m,
                    n, a, A, lda, B, ldb);
      },
      what);
}

// ============================== cuSOLVER =====================================

cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t* handle) {
  return emu::CreateHandle("cusolverDnCreate", handle, emu::kSolverStatuses);
}

cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t handle) {
  return emu::DestroyHandle("cusolverDnDestroy", handle, emu::kSolverStatuses);
}

cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t handle, cudaStream_t stream) {
  return emu::SetHandleStream("cusolverDnSetStream", handle, stream, emu::kSolverStatuses);
}

cusolverStatus_t cusolverDnCreateParams(cusolverDnParams_t* params) {
  emu::Lock lock(emu::in::Mutex());
  if (auto s = emu::Injected("cusolverDnCreateParams")) return static_cast<cusolverStatus_t>(*s);
  if (params == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  auto* p = new emu::SolverParams();
  emu::LiveParams().insert(p);
  *params = reinterpret_cast<cusolverDnParams_t>(p);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnDestroyParams(cusolverDnParams_t params) {
  emu::Lock lock(emu::in::Mutex());
  if (auto s = emu::Injected("cusolverDnDestroyParams")) return static_cast<cusolverStatus_t>(*s);
  if (params == nullptr || emu::LiveParams().count(params) == 0) return CUSOLVER_STATUS_INVALID_VALUE;
  emu::LiveParams().erase(params);
  delete reinterpret_cast<emu::SolverParams*>(params);
  return CUSOLVER_STATUS_SUCCESS;
}

namespace sigma::cuda_emulator {
namespace {

// Argument checks shared by Xpotrf and its _bufferSize.
cusolverStatus_t CheckPotrfArgs(cusolverDnHandle_t handle, cusolverDnParams_t params, cublasFillMode_t uplo, int64_t n,
                                cudaDataType type_a, int64_t lda, cudaDataType compute_type) {
  if (AsHandle(handle) == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (params == nullptr || LiveParams().count(params) == 0) return CUSOLVER_STATUS_INVALID_VALUE;
  if (!ValidFill(uplo) || n < 0 || lda < std::max<int64_t>(1, n)) return CUSOLVER_STATUS_INVALID_VALUE;
  if (type_a != CUDA_R_64F || compute_type != CUDA_R_64F) return CUSOLVER_STATUS_NOT_SUPPORTED;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CheckTrtriArgs(cusolverDnHandle_t handle, cublasFillMode_t uplo, cublasDiagType_t diag, int64_t n,
                                cudaDataType type_a, int64_t lda) {
  if (AsHandle(handle) == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (!ValidFill(uplo) || !ValidDiag(diag) || n < 0 || lda < std::max<int64_t>(1, n))
    return CUSOLVER_STATUS_INVALID_VALUE;
  if (type_a != CUDA_R_64F) return CUSOLVER_STATUS_NOT_SUPPORTED;
  return CUSOLVER_STATUS_SUCCESS;
}

// Call-time checks shared by Xpotrf and Xtrtri: the device workspace is at
// least what `call`_bufferSize reports (`needed`), and the matrix `a` [n, lda],
// the info word and the workspace are device memory. Returns the operands for
// the run-time check, or nullopt (misuse noted: INVALID_VALUE).
std::optional<std::vector<Operand>> SolverOperands(const char* call, int64_t n, void* a, int64_t lda, int* info,
                                                   const char* info_name, void* workspace, size_t workspace_bytes,
                                                   size_t needed) {
  if (workspace_bytes < needed) {
    in::NoteMisuse(std::string(call) + " n=" + Num(n) + ": device workspace of " + std::to_string(workspace_bytes) +
                   " bytes, " + call + "_bufferSize says " + std::to_string(needed));
    return std::nullopt;
  }
  std::vector<Operand> ops = {
      {a, OperandBytes(n, n, lda), "A"}, {info, sizeof(int), info_name}, {workspace, workspace_bytes, "bufferOnDevice"}};
  if (!CheckOperandsAtCall(call, {ops[0], ops[1], ops[2]})) return std::nullopt;
  return ops;
}

}  // namespace
}  // namespace sigma::cuda_emulator

cusolverStatus_t cusolverDnXpotrf_bufferSize(cusolverDnHandle_t handle, cusolverDnParams_t params,
                                             cublasFillMode_t uplo, int64_t n, cudaDataType dataTypeA, const void* A,
                                             int64_t lda, cudaDataType computeType, size_t* workspaceInBytesOnDevice,
                                             size_t* workspaceInBytesOnHost) {
  (void)A;  // a size query does not touch A
  emu::Lock lock(emu::in::Mutex());
  if (auto s = emu::Injected("cusolverDnXpotrf_bufferSize")) return static_cast<cusolverStatus_t>(*s);
  if (const cusolverStatus_t s = emu::CheckPotrfArgs(handle, params, uplo, n, dataTypeA, lda, computeType);
      s != CUSOLVER_STATUS_SUCCESS)
    return s;
  if (workspaceInBytesOnDevice == nullptr || workspaceInBytesOnHost == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *workspaceInBytesOnDevice = emu::PotrfDeviceBytes(n);
  *workspaceInBytesOnHost = 0;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnXpotrf(cusolverDnHandle_t handle, cusolverDnParams_t params, cublasFillMode_t uplo,
                                  int64_t n, cudaDataType dataTypeA, void* A, int64_t lda, cudaDataType computeType,
                                  void* bufferOnDevice, size_t workspaceInBytesOnDevice, void* bufferOnHost,
                                  size_t workspaceInBytesOnHost, int* info) {
  (void)bufferOnHost;  // the host workspace size is 0
  (void)workspaceInBytesOnHost;
  emu::Lock lock(emu::in::Mutex());
  ++emu::in::MutableCounters().potrf_calls;
  if (auto s = emu::Injected("cusolverDnXpotrf")) return static_cast<cusolverStatus_t>(*s);
  if (const cusolverStatus_t s = emu::CheckPotrfArgs(handle, params, uplo, n, dataTypeA, lda, computeType);
      s != CUSOLVER_STATUS_SUCCESS)
    return s;
  const std::optional<std::vector<emu::Operand>> checked =
      emu::SolverOperands("cusolverDnXpotrf", n, A, lda, info, "info", bufferOnDevice, workspaceInBytesOnDevice,
                          emu::PotrfDeviceBytes(n));
  if (!checked) return CUSOLVER_STATUS_INVALID_VALUE;
  const std::vector<emu::Operand> ops = *checked;
  const std::string what = "cusolverDnXpotrf n=" + emu::Num(n);
  const emu::LibraryHandle* h = emu::AsHandle(handle);
  return emu::QueueSolver(
      *h,
      [=] {
        if (!emu::CheckOperandsAtRun(what, ops)) return;
        *info = n == 0 ? 0 : emu::FactorOne(static_cast<double*>(A), n, lda, uplo);
        std::memset(bufferOnDevice, 0xFF, workspaceInBytesOnDevice);
      },
      what);
}

cusolverStatus_t cusolverDnDpotrfBatched(cusolverDnHandle_t handle, cublasFillMode_t uplo, int n, double* Aarray[],
                                         int lda, int* infoArray, int batchSize) {
  emu::Lock lock(emu::in::Mutex());
  emu::Counters& counters = emu::in::MutableCounters();
  ++counters.potrf_batched_calls;
  counters.potrf_batched_matrices += std::max(batchSize, 0);
  if (auto s = emu::Injected("cusolverDnDpotrfBatched")) return static_cast<cusolverStatus_t>(*s);
  const emu::LibraryHandle* h = emu::AsHandle(handle);
  if (h == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (!emu::ValidFill(uplo) || n < 0 || lda < std::max(1, n) || batchSize < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  if (batchSize == 0) return CUSOLVER_STATUS_SUCCESS;
  const size_t batch = static_cast<size_t>(batchSize);
  // The matrices themselves are checked when the call runs: Aarray is device
  // memory that queued copies may still be filling.
  const std::vector<emu::Operand> ops = {{Aarray, batch * sizeof(double*), "Aarray"},
                                         {infoArray, batch * sizeof(int), "infoArray"}};
  if (!emu::CheckOperandsAtCall("cusolverDnDpotrfBatched", {ops[0], ops[1]})) return CUSOLVER_STATUS_INVALID_VALUE;
  const std::string what = "cusolverDnDpotrfBatched n=" + emu::Num(n) + " batch=" + emu::Num(batchSize);
  return emu::QueueSolver(
      *h,
      [=] {
        if (!emu::CheckOperandsAtRun(what, ops)) return;
        const size_t bytes = emu::OperandBytes(n, n, lda);
        // Check every matrix before touching any (a fault aborts the whole call).
        for (size_t b = 0; b < batch; ++b) {
          if (bytes != 0 && !sigma::cuda_emulator::IsDeviceRange(Aarray[b], bytes)) {
            sigma::cuda_emulator::ReportViolation(what + ": matrix " + std::to_string(b) + " at " +
                                                  emu::in::DescribeRange(Aarray[b], bytes) +
                                                  " is not inside one live device allocation");
            return;
          }
        }
        for (size_t b = 0; b < batch; ++b) infoArray[b] = n == 0 ? 0 : emu::FactorOne(Aarray[b], n, lda, uplo);
      },
      what);
}

cusolverStatus_t cusolverDnXtrtri_bufferSize(cusolverDnHandle_t handle, cublasFillMode_t uplo, cublasDiagType_t diag,
                                             int64_t n, cudaDataType dataTypeA, void* A, int64_t lda,
                                             size_t* workspaceInBytesOnDevice, size_t* workspaceInBytesOnHost) {
  (void)A;  // a size query does not touch A
  emu::Lock lock(emu::in::Mutex());
  if (auto s = emu::Injected("cusolverDnXtrtri_bufferSize")) return static_cast<cusolverStatus_t>(*s);
  if (const cusolverStatus_t s = emu::CheckTrtriArgs(handle, uplo, diag, n, dataTypeA, lda);
      s != CUSOLVER_STATUS_SUCCESS)
    return s;
  if (workspaceInBytesOnDevice == nullptr || workspaceInBytesOnHost == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *workspaceInBytesOnDevice = emu::TrtriDeviceBytes(n);
  *workspaceInBytesOnHost = 0;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnXtrtri(cusolverDnHandle_t handle, cublasFillMode_t uplo, cublasDiagType_t diag, int64_t n,
                                  cudaDataType dataTypeA, void* A, int64_t lda, void* bufferOnDevice,
                                  size_t workspaceInBytesOnDevice, void* bufferOnHost, size_t workspaceInBytesOnHost,
                                  int* devInfo) {
  (void)bufferOnHost;  // the host workspace size is 0
  (void)workspaceInBytesOnHost;
  emu::Lock lock(emu::in::Mutex());
  ++emu::in::MutableCounters().trtri_calls;
  if (auto s = emu::Injected("cusolverDnXtrtri")) return static_cast<cusolverStatus_t>(*s);
  if (const cusolverStatus_t s = emu::CheckTrtriArgs(handle, uplo, diag, n, dataTypeA, lda);
      s != CUSOLVER_STATUS_SUCCESS)
    return s;
  const std::optional<std::vector<emu::Operand>> checked =
      emu::SolverOperands("cusolverDnXtrtri", n, A, lda, devInfo, "devInfo", bufferOnDevice, workspaceInBytesOnDevice,
                          emu::TrtriDeviceBytes(n));
  if (!checked) return CUSOLVER_STATUS_INVALID_VALUE;
  const std::vector<emu::Operand> ops = *checked;
  const std::string what = "cusolverDnXtrtri n=" + emu::Num(n);
  const emu::LibraryHandle* h = emu::AsHandle(handle);
  return emu::QueueSolver(
      *h,
      [=] {
        if (!emu::CheckOperandsAtRun(what, ops)) return;
        // LAPACK trtri reads and writes only the `uplo` triangle.
        *devInfo = n == 0 ? 0
                          : static_cast<int>(LAPACKE_dtrtri_work(
                                LAPACK_COL_MAJOR, emu::ToLapack(uplo), emu::ToLapack(diag), static_cast<lapack_int>(n),
                                static_cast<double*>(A), static_cast<lapack_int>(lda)));
        std::memset(bufferOnDevice, 0xFF, workspaceInBytesOnDevice);
      },
      what);
}

// Legacy API: lwork is in elements (doubles), as cuSOLVER documents.
cusolverStatus_t cusolverDnDpotri_bufferSize(cusolverDnHandle_t handle, cublasFillMode_t uplo, int n, double* A,
                                             int lda, int* lwork) {
  (void)A;  // a size query does not touch A
  emu::Lock lock(emu::in::Mutex());
  if (auto s = emu::Injected("cusolverDnDpotri_bufferSize")) return static_cast<cusolverStatus_t>(*s);
  if (emu::AsHandle(handle) == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (!emu::ValidFill(uplo) || n < 0 || lda < std::max(1, n) || lwork == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = static_cast<int>(emu::PotriDeviceBytes(n) / sizeof(double));
  return CUSOLVER_STATUS_SUCCESS;
}

// A^{-1} from its Cholesky factor, in the `uplo` triangle (LAPACK dpotri: the
// other triangle is not referenced); the workspace is scribbled over.
cusolverStatus_t cusolverDnDpotri(cusolverDnHandle_t handle, cublasFillMode_t uplo, int n, double* A, int lda,
                                  double* work, int lwork, int* devInfo) {
  emu::Lock lock(emu::in::Mutex());
  ++emu::in::MutableCounters().potri_calls;
  if (auto s = emu::Injected("cusolverDnDpotri")) return static_cast<cusolverStatus_t>(*s);
  if (emu::AsHandle(handle) == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (!emu::ValidFill(uplo) || n < 0 || lda < std::max(1, n) || lwork < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  const size_t work_bytes = static_cast<size_t>(lwork) * sizeof(double);
  const std::optional<std::vector<emu::Operand>> checked = emu::SolverOperands(
      "cusolverDnDpotri", n, A, lda, devInfo, "devInfo", work, work_bytes,
      emu::PotriDeviceBytes(n) / sizeof(double) * sizeof(double));
  if (!checked) return CUSOLVER_STATUS_INVALID_VALUE;
  const std::vector<emu::Operand> ops = *checked;
  const std::string what = "cusolverDnDpotri n=" + emu::Num(n);
  const emu::LibraryHandle* h = emu::AsHandle(handle);
  return emu::QueueSolver(
      *h,
      [=] {
        if (!emu::CheckOperandsAtRun(what, ops)) return;
        *devInfo = n == 0 ? 0
                          : static_cast<int>(LAPACKE_dpotri_work(LAPACK_COL_MAJOR, emu::ToLapack(uplo),
                                                                 static_cast<lapack_int>(n), A,
                                                                 static_cast<lapack_int>(lda)));
        std::memset(work, 0xFF, work_bytes);
      },
      what);
}
