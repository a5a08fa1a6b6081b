// Tests of the CUDA runtime / cuBLAS / cuSOLVER host emulation itself
// (emulator.h): lazy stream execution, range checks, memory limit, injected
// failures, sticky errors, and the library results against direct
// CBLAS/LAPACKE calls on the same (fixed-seed random) inputs.
//
// Memory: "device" buffers come from the emulated cudaMalloc; every test
// frees what it allocates (the fixture checks DeviceBytesInUse() == 0).
#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <gtest/gtest.h>
#include <lapacke.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "emulator.h"

namespace sigma::cuda_emulator {
namespace {

class EmulatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Reset();
    SetDeviceCount(1);
    SetDeviceMemoryLimit(size_t{256} << 20);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override {
    Reset();  // un-poison so the cleanup below succeeds
    EXPECT_EQ(cudaStreamDestroy(stream_), cudaSuccess);
    for (void* p : device_) EXPECT_EQ(cudaFree(p), cudaSuccess);
    EXPECT_EQ(DeviceBytesInUse(), 0u);
    Reset();
  }

  // A device buffer freed at TearDown.
  template <typename T>
  T* Device(size_t count) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, count * sizeof(T)), cudaSuccess);
    device_.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  T* Upload(const std::vector<T>& host) {
    T* d = Device<T>(host.size());
    EXPECT_EQ(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
  }
  template <typename T>
  std::vector<T> Download(const T* d, size_t count) {
    std::vector<T> host(count);
    EXPECT_EQ(cudaMemcpy(host.data(), d, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
  void Free(void* p) {
    std::erase(device_, p);
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  }

  cudaStream_t stream_ = nullptr;
  std::vector<void*> device_;
};

std::vector<double> Random(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

// A random symmetric positive definite n x n matrix (column-major, full).
std::vector<double> RandomSpd(int n, uint32_t seed) {
  const std::vector<double> x = Random(static_cast<size_t>(n) * n, seed);
  std::vector<double> a(static_cast<size_t>(n) * n, 0.0);
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0, x.data(), n, x.data(), n, 0.0, a.data(), n);
  for (int i = 0; i < n; ++i) a[i + static_cast<size_t>(i) * n] += n;
  return a;
}

bool SameBits(double a, double b) { return std::memcmp(&a, &b, sizeof(double)) == 0; }

// ---- devices, errors -------------------------------------------------------

TEST_F(EmulatorTest, DevicesAndProperties) {
  int count = -1;
  EXPECT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  EXPECT_EQ(count, 1);
  EXPECT_EQ(cudaSetDevice(1), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_STREQ(prop.name, "SIGMA CUDA emulator (host)");
  EXPECT_EQ(prop.totalGlobalMem, size_t{256} << 20);
  EXPECT_EQ(prop.major, 9);
  EXPECT_EQ(prop.warpSize, 32);
  EXPECT_EQ(prop.maxThreadsPerBlock, 1024);
  int version = 0;
  EXPECT_EQ(cudaRuntimeGetVersion(&version), cudaSuccess);
  EXPECT_EQ(version, CUDART_VERSION);

  SetDeviceCount(0);
  count = -1;
  EXPECT_EQ(cudaGetDeviceCount(&count), cudaErrorNoDevice);
  EXPECT_EQ(count, 0);
  EXPECT_EQ(cudaGetLastError(), cudaErrorNoDevice);
  SetDeviceCount(2);
  EXPECT_EQ(cudaSetDevice(1), cudaSuccess);
  int device = -1;
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(device, 1);
  EXPECT_EQ(cudaSetDevice(0), cudaSuccess);
  SetDeviceCount(1);
}

TEST_F(EmulatorTest, ErrorNamesAndStrings) {
  EXPECT_STREQ(cudaGetErrorName(cudaSuccess), "cudaSuccess");
  EXPECT_STREQ(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation");
  EXPECT_STREQ(cudaGetErrorName(cudaErrorIllegalAddress), "cudaErrorIllegalAddress");
  EXPECT_STREQ(cudaGetErrorString(cudaErrorIllegalAddress), "an illegal memory access was encountered");
  // Every code the backend maps has a real name, not the fallback.
  for (cudaError_t e : {cudaErrorAssert, cudaErrorContextIsDestroyed, cudaErrorDevicesUnavailable,
                        cudaErrorECCUncorrectable, cudaErrorHardwareStackError, cudaErrorIllegalInstruction,
                        cudaErrorInsufficientDriver, cudaErrorInvalidAddressSpace, cudaErrorInvalidDevice,
                        cudaErrorInvalidPc, cudaErrorLaunchFailure, cudaErrorLaunchTimeout, cudaErrorMisalignedAddress,
                        cudaErrorNoDevice, cudaErrorNotReady, cudaErrorInvalidResourceHandle, cudaErrorInvalidValue}) {
    EXPECT_EQ(std::string(cudaGetErrorName(e)).find("unrecognized"), std::string::npos) << e;
  }
  EXPECT_NE(std::string(cudaGetErrorString(static_cast<cudaError_t>(12345))), "");
  EXPECT_STREQ(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
  EXPECT_NE(std::string(cublasGetStatusString(CUBLAS_STATUS_ALLOC_FAILED)), "");
}

// ---- lazy execution --------------------------------------------------------

TEST_F(EmulatorTest, AsyncCopyLandsOnlyAtStreamSynchronize) {
  const std::vector<double> src = Random(64, 1);
  double* d = Device<double>(64);
  std::vector<double> back(64, 0.0);
  ASSERT_EQ(cudaMemcpyAsync(d, src.data(), 64 * sizeof(double), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(back.data(), d, 64 * sizeof(double), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  for (double v : back) EXPECT_EQ(v, 0.0);  // nothing has run yet
  // Fresh device memory reads as NaN (0xFF bytes).
  EXPECT_TRUE(std::isnan(d[0]));
  const Counters before = GetCounters();
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(back, src);
  const Counters after = GetCounters();
  EXPECT_EQ(after.host_syncs, before.host_syncs + 1);
  EXPECT_EQ(after.bytes_h2d, int64_t{64 * sizeof(double)});
  EXPECT_EQ(after.bytes_d2h, int64_t{64 * sizeof(double)});
}

TEST_F(EmulatorTest, StreamSynchronizeRunsOnlyThatStream) {
  cudaStream_t other = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
  int* d = Device<int>(2);
  int host[2] = {0, 0};
  const int one = 1, two = 2;
  ASSERT_EQ(cudaMemcpyAsync(d, &one, sizeof(int), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(&host[0], d, sizeof(int), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d + 1, &two, sizeof(int), cudaMemcpyHostToDevice, other), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(&host[1], d + 1, sizeof(int), cudaMemcpyDeviceToHost, other), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(other), cudaSuccess);
  EXPECT_EQ(host[0], 0);
  EXPECT_EQ(host[1], 2);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(host[0], 1);
  EXPECT_EQ(cudaStreamDestroy(other), cudaSuccess);
}

TEST_F(EmulatorTest, EventSynchronizeRunsUpToTheEventOnly) {
  cudaEvent_t event = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), cudaSuccess);
  int* d = Device<int>(2);
  ASSERT_EQ(cudaMemset(d, 0, 2 * sizeof(int)), cudaSuccess);
  int host[2] = {-1, -1};
  ASSERT_EQ(cudaMemsetAsync(d, 0x01, sizeof(int), stream_), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(&host[0], d, sizeof(int), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(event, stream_), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(&host[1], d + 1, sizeof(int), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  ASSERT_EQ(cudaEventSynchronize(event), cudaSuccess);
  EXPECT_EQ(host[0], 0x01010101);
  EXPECT_EQ(host[1], -1);  // after the event: not run yet
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(host[1], 0);
  EXPECT_EQ(cudaEventDestroy(event), cudaSuccess);
}

TEST_F(EmulatorTest, LegacyDefaultStreamIsAStream) {
  double* d = Device<double>(4);
  const std::vector<double> src = Random(4, 2);
  std::vector<double> back(4, 0.0);
  ASSERT_EQ(cudaMemcpyAsync(d, src.data(), 4 * sizeof(double), cudaMemcpyHostToDevice, nullptr), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(back.data(), d, 4 * sizeof(double), cudaMemcpyDeviceToHost, nullptr), cudaSuccess);
  EXPECT_EQ(back[0], 0.0);
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  EXPECT_EQ(back, src);
}

TEST_F(EmulatorTest, LegacyStreamWaitsForEarlierBlockingStreamWork) {
  cudaStream_t blocking = nullptr;
  ASSERT_EQ(cudaStreamCreate(&blocking), cudaSuccess);
  int* d = Device<int>(1);
  int host = 0;
  const int seven = 7;
  ASSERT_EQ(cudaMemcpyAsync(d, &seven, sizeof(int), cudaMemcpyHostToDevice, blocking), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(&host, d, sizeof(int), cudaMemcpyDeviceToHost, nullptr), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  EXPECT_EQ(host, 7);
  EXPECT_EQ(cudaStreamDestroy(blocking), cudaSuccess);
}

TEST_F(EmulatorTest, FreeRunsPendingWorkFirst) {
  double* d = Device<double>(8);
  const std::vector<double> src = Random(8, 3);
  std::vector<double> back(8, 0.0);
  ASSERT_EQ(cudaMemcpyAsync(d, src.data(), 8 * sizeof(double), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(back.data(), d, 8 * sizeof(double), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  Free(d);
  EXPECT_EQ(back, src);
  EXPECT_EQ(GetCounters().violations, 0);
}

TEST_F(EmulatorTest, EnqueueRunsLazilyInStreamOrder) {
  std::vector<int> order;
  ASSERT_EQ(Enqueue(
                stream_, [&] { order.push_back(1); }, "first"),
            cudaSuccess);
  ASSERT_EQ(Enqueue(
                stream_, [&] { order.push_back(2); }, "second"),
            cudaSuccess);
  EXPECT_TRUE(order.empty());
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

// ---- events ----------------------------------------------------------------

TEST_F(EmulatorTest, EventElapsedTime) {
  cudaEvent_t a = nullptr, b = nullptr, untimed = nullptr, never = nullptr;
  ASSERT_EQ(cudaEventCreate(&a), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&b), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&never), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(a, stream_), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(untimed, stream_), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(b, stream_), cudaSuccess);
  float ms = -1;
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaErrorNotReady);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // NotReady is not an error
  ASSERT_EQ(cudaEventSynchronize(b), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, untimed), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, never), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventSynchronize(never), cudaSuccess);  // never recorded: nothing to wait for
  // Re-recording makes the event pending again.
  ASSERT_EQ(cudaEventRecord(b, stream_), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaErrorNotReady);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
  for (cudaEvent_t e : {a, b, untimed, never}) EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
}

// ---- range checks ------------------------------------------------------------

TEST_F(EmulatorTest, CopyPastTheEndIsRefusedAndCounted) {
  double* d = Device<double>(16);
  std::vector<double> host(17, 1.0);
  EXPECT_EQ(cudaMemcpyAsync(d, host.data(), 17 * sizeof(double), cudaMemcpyHostToDevice, stream_),
            cudaErrorInvalidValue);
  EXPECT_EQ(GetCounters().violations, 1);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(host.data(), d + 1, 16 * sizeof(double), cudaMemcpyDeviceToHost, stream_),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemsetAsync(d + 8, 0, 9 * sizeof(double), stream_), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, host.data(), 17 * sizeof(double), cudaMemcpyDefault), cudaErrorInvalidValue);
  EXPECT_EQ(GetCounters().violations, 4);
  // In range: fine; not sticky.
  EXPECT_EQ(cudaMemcpyAsync(d, host.data(), 16 * sizeof(double), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_TRUE(IsDeviceRange(d, 16 * sizeof(double)));
  EXPECT_FALSE(IsDeviceRange(d, 16 * sizeof(double) + 1));
  EXPECT_FALSE(IsDeviceRange(host.data(), 8));
}

TEST_F(EmulatorTest, UseAfterFreeIsRefused) {
  double* d = Device<double>(16);
  Free(d);
  double host[16] = {};
  EXPECT_EQ(cudaMemcpyAsync(host, d, sizeof(host), cudaMemcpyDeviceToHost, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(GetCounters().violations, 1);
  EXPECT_EQ(cudaFree(d), cudaErrorInvalidValue);  // double free
  EXPECT_EQ(GetCounters().violations, 2);
  (void)cudaGetLastError();
}

TEST_F(EmulatorTest, ViolationWhileRunningPoisonsUntilReset) {
  int* d = Device<int>(4);
  ASSERT_EQ(Enqueue(
                stream_, [] { ReportViolation("test fault"); }, "faulting work"),
            cudaSuccess);
  int host = 0;
  const int five = 5;
  ASSERT_EQ(cudaMemcpyAsync(d, &five, sizeof(int), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(&host, d, sizeof(int), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaErrorIllegalAddress);
  EXPECT_EQ(host, 0);  // work after the fault was dropped
  EXPECT_EQ(GetCounters().violations, 1);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorIllegalAddress);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);  // sticky: not cleared
  EXPECT_EQ(Enqueue(
                stream_, [] {}, "refused"),
            cudaErrorIllegalAddress);
  Reset();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(d, &five, sizeof(int), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(&host, d, sizeof(int), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(host, 5);
}

// ---- memory limit --------------------------------------------------------------

TEST_F(EmulatorTest, MemoryLimitThenRecovery) {
  SetDeviceMemoryLimit(1 << 20);
  void* big = nullptr;
  EXPECT_EQ(cudaMalloc(&big, (1 << 20) + 1), cudaErrorMemoryAllocation);
  EXPECT_EQ(big, nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not sticky
  char* a = Device<char>(600 << 10);
  EXPECT_EQ(DeviceBytesInUse(), size_t{600} << 10);
  size_t free_bytes = 0, total = 0;
  EXPECT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  EXPECT_EQ(total, size_t{1} << 20);
  EXPECT_EQ(free_bytes, (size_t{1} << 20) - (size_t{600} << 10));
  void* second = nullptr;
  EXPECT_EQ(cudaMalloc(&second, 600 << 10), cudaErrorMemoryAllocation);
  (void)cudaGetLastError();
  Free(a);
  EXPECT_EQ(DeviceBytesInUse(), 0u);
  EXPECT_EQ(cudaMalloc(&second, 600 << 10), cudaSuccess);
  EXPECT_EQ(cudaFree(second), cudaSuccess);
  EXPECT_EQ(GetCounters().malloc_calls, 4);
}

TEST_F(EmulatorTest, PinnedMemory) {
  void* p = nullptr;
  ASSERT_EQ(cudaMallocHost(&p, 1000), cudaSuccess);
  EXPECT_FALSE(IsDeviceRange(p, 1));  // host memory
  EXPECT_EQ(GetCounters().malloc_host_calls, 1);
  EXPECT_EQ(cudaFreeHost(p), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(p), cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

// ---- injected failures -------------------------------------------------------------

TEST_F(EmulatorTest, FailNextCallRuntime) {
  FailNextCall("cudaMalloc", cudaErrorMemoryAllocation);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);  // consumed
  EXPECT_EQ(cudaFree(p), cudaSuccess);

  FailNextCall("cudaMemcpyAsync", cudaErrorInvalidValue);
  int host = 3;
  int* d = Device<int>(1);
  EXPECT_EQ(cudaMemcpyAsync(d, &host, sizeof(int), cudaMemcpyHostToDevice, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_NE(Download(d, 1)[0], 3);  // nothing was queued

  FailNextCall("MyKernel", cudaErrorLaunchOutOfResources);
  EXPECT_EQ(NoteKernelLaunch("OtherKernel"), cudaSuccess);
  EXPECT_EQ(NoteKernelLaunch("MyKernel"), cudaErrorLaunchOutOfResources);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
  FailNextCall("cudaLaunchKernel", cudaErrorInvalidConfiguration);
  EXPECT_EQ(NoteKernelLaunch("AnyKernel"), cudaErrorInvalidConfiguration);
  EXPECT_EQ(GetCounters().kernel_launches, 3);
  (void)cudaGetLastError();
}

TEST_F(EmulatorTest, InjectedStickyErrorPoisonsUntilReset) {
  FailNextCall("cudaStreamSynchronize", cudaErrorLaunchFailure);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaErrorLaunchFailure);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 8), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  Reset();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// ---- cuBLAS ----------------------------------------------------------------------

class LibraryTest : public EmulatorTest {
 protected:
  void SetUp() override {
    EmulatorTest::SetUp();
    ASSERT_EQ(cublasCreate(&blas_), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasSetStream(blas_, stream_), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cusolverDnCreate(&solver_), CUSOLVER_STATUS_SUCCESS);
    ASSERT_EQ(cusolverDnSetStream(solver_, stream_), CUSOLVER_STATUS_SUCCESS);
    ASSERT_EQ(cusolverDnCreateParams(&params_), CUSOLVER_STATUS_SUCCESS);
  }
  void TearDown() override {
    EXPECT_EQ(cusolverDnDestroyParams(params_), CUSOLVER_STATUS_SUCCESS);
    EXPECT_EQ(cusolverDnDestroy(solver_), CUSOLVER_STATUS_SUCCESS);
    EXPECT_EQ(cublasDestroy(blas_), CUBLAS_STATUS_SUCCESS);
    EmulatorTest::TearDown();
  }
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  cusolverDnParams_t params_ = nullptr;
};

TEST_F(LibraryTest, HandlesRememberTheirStream) {
  cudaStream_t s = nullptr;
  EXPECT_EQ(cublasGetStream(blas_, &s), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(s, stream_);
  EXPECT_EQ(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasSetStream(nullptr, stream_), CUBLAS_STATUS_NOT_INITIALIZED);
  EXPECT_EQ(cusolverDnSetStream(nullptr, stream_), CUSOLVER_STATUS_NOT_INITIALIZED);
}

TEST_F(LibraryTest, DsyrkMatchesCblasAndTouchesOnlyUplo) {
  const int n = 13, k = 7;
  for (cublasFillMode_t uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER}) {
    for (cublasOperation_t trans : {CUBLAS_OP_N, CUBLAS_OP_T}) {
      const int lda = (trans == CUBLAS_OP_N ? n : k) + 2;
      const std::vector<double> a = Random(static_cast<size_t>(lda) * (trans == CUBLAS_OP_N ? k : n), 10);
      for (double beta : {0.0, 0.5}) {
        // beta == 0: C is not read (NaN must not propagate).
        std::vector<double> c = beta == 0.0 ? std::vector<double>(n * n, std::nan("")) : Random(n * n, 11);
        double* da = Upload(a);
        double* dc = Upload(c);
        const double alpha = 1.5;
        ASSERT_EQ(cublasDsyrk(blas_, uplo, trans, n, k, &alpha, da, lda, &beta, dc, n), CUBLAS_STATUS_SUCCESS);
        // Lazy: nothing computed before a synchronisation.
        std::vector<double> untouched(n * n);
        std::memcpy(untouched.data(), dc, untouched.size() * sizeof(double));
        for (size_t i = 0; i < c.size(); ++i) EXPECT_TRUE(SameBits(untouched[i], c[i]));
        ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
        const std::vector<double> got = Download(dc, c.size());
        cblas_dsyrk(CblasColMajor, uplo == CUBLAS_FILL_MODE_LOWER ? CblasLower : CblasUpper,
                    trans == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, n, k, alpha, a.data(), lda, beta, c.data(), n);
        for (int j = 0; j < n; ++j) {
          for (int i = 0; i < n; ++i) {
            const size_t at = i + static_cast<size_t>(j) * n;
            EXPECT_TRUE(SameBits(got[at], c[at])) << i << "," << j;
            const bool in_uplo = uplo == CUBLAS_FILL_MODE_LOWER ? i >= j : i <= j;
            if (in_uplo) {
              EXPECT_TRUE(std::isfinite(got[at]));
            }
          }
        }
        Free(da);
        Free(dc);
      }
    }
  }
  EXPECT_EQ(GetCounters().syrk_calls, 8);
  EXPECT_EQ(GetCounters().violations, 0);
}

TEST_F(LibraryTest, DgemmMatchesCblas) {
  const int m = 9, n = 6, k = 5;
  for (cublasOperation_t ta : {CUBLAS_OP_N, CUBLAS_OP_T}) {
    for (cublasOperation_t tb : {CUBLAS_OP_N, CUBLAS_OP_T}) {
      const int lda = ta == CUBLAS_OP_N ? m : k, ldb = tb == CUBLAS_OP_N ? k : n;
      const std::vector<double> a = Random(static_cast<size_t>(lda) * (ta == CUBLAS_OP_N ? k : m), 20);
      const std::vector<double> b = Random(static_cast<size_t>(ldb) * (tb == CUBLAS_OP_N ? n : k), 21);
      std::vector<double> c = Random(static_cast<size_t>(m) * n, 22);
      double* da = Upload(a);
      double* db = Upload(b);
      double* dc = Upload(c);
      const double alpha = -0.75, beta = 2.0;
      ASSERT_EQ(cublasDgemm(blas_, ta, tb, m, n, k, &alpha, da, lda, db, ldb, &beta, dc, m), CUBLAS_STATUS_SUCCESS);
      ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      cblas_dgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                  tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta,
                  c.data(), m);
      EXPECT_EQ(Download(dc, c.size()), c);
      Free(da);
      Free(db);
      Free(dc);
    }
  }
  EXPECT_EQ(GetCounters().gemm_calls, 4);
}

TEST_F(LibraryTest, DtrsmMatchesCblas) {
  const int m = 8, n = 5;
  std::vector<double> l = RandomSpd(m, 30);
  ASSERT_EQ(LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', m, l.data(), m), 0);
  std::vector<double> b = Random(static_cast<size_t>(m) * n, 31);
  double* dl = Upload(l);
  double* db = Upload(b);
  const double alpha = 1.0;
  ASSERT_EQ(cublasDtrsm(blas_, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, m, n,
                        &alpha, dl, m, db, m),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  cblas_dtrsm(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, m, n, alpha, l.data(), m, b.data(), m);
  EXPECT_EQ(Download(db, b.size()), b);
  EXPECT_EQ(GetCounters().trsm_calls, 1);
}

TEST_F(LibraryTest, BlasArgumentChecks) {
  double* a = Device<double>(16);
  double* c = Device<double>(16);
  const double one = 1.0;
  EXPECT_EQ(cublasDsyrk(nullptr, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 4, 4, &one, a, 4, &one, c, 4),
            CUBLAS_STATUS_NOT_INITIALIZED);
  EXPECT_EQ(cublasDsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 4, 4, &one, a, 3, &one, c, 4),
            CUBLAS_STATUS_INVALID_VALUE);  // lda < n
  EXPECT_EQ(cublasDsyrk(blas_, CUBLAS_FILL_MODE_FULL, CUBLAS_OP_N, 4, 4, &one, a, 4, &one, c, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasDsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, -1, 4, &one, a, 4, &one, c, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasDgemm(blas_, CUBLAS_OP_N, static_cast<cublasOperation_t>(9), 4, 4, 4, &one, a, 4, a, 4, &one, c, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 0);
  // Operand past the end of its allocation: refused and counted.
  EXPECT_EQ(cublasDsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 4, 5, &one, a, 4, &one, c, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 1);
  double host_c[16];
  EXPECT_EQ(cublasDgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, a, 4, a, 4, &one, host_c, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 2);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);  // nothing was queued, nothing poisoned
}

TEST_F(LibraryTest, FailNextCallLibraries) {
  double* a = Device<double>(16);
  double* c = Device<double>(16);
  ASSERT_EQ(cudaMemset(c, 0, 16 * sizeof(double)), cudaSuccess);
  const double one = 1.0;
  FailNextCall("cublasDsyrk_v2", CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_EQ(cublasDsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 4, 4, &one, a, 4, &one, c, 4),
            CUBLAS_STATUS_EXECUTION_FAILED);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(Download(c, 16), std::vector<double>(16, 0.0));  // did nothing
  FailNextCall("cublasCreate_v2", CUBLAS_STATUS_ALLOC_FAILED);
  cublasHandle_t h = nullptr;
  EXPECT_EQ(cublasCreate(&h), CUBLAS_STATUS_ALLOC_FAILED);
  FailNextCall("cusolverDnXpotrf", CUSOLVER_STATUS_INTERNAL_ERROR);
  int* info = Device<int>(1);
  size_t ws = 0, hws = 0;
  ASSERT_EQ(
      cusolverDnXpotrf_bufferSize(solver_, params_, CUBLAS_FILL_MODE_LOWER, 4, CUDA_R_64F, c, 4, CUDA_R_64F, &ws, &hws),
      CUSOLVER_STATUS_SUCCESS);
  void* work = Device<char>(ws);
  EXPECT_EQ(cusolverDnXpotrf(solver_, params_, CUBLAS_FILL_MODE_LOWER, 4, CUDA_R_64F, c, 4, CUDA_R_64F, work, ws,
                             nullptr, 0, info),
            CUSOLVER_STATUS_INTERNAL_ERROR);
  FailNextCall("cusolverDnCreate", CUSOLVER_STATUS_ALLOC_FAILED);
  cusolverDnHandle_t sh = nullptr;
  EXPECT_EQ(cusolverDnCreate(&sh), CUSOLVER_STATUS_ALLOC_FAILED);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // library failures are not runtime errors
  EXPECT_EQ(GetCounters().potrf_calls, 1);
}

TEST_F(LibraryTest, LibraryCallInPoisonedContextFails) {
  double* a = Device<double>(16);
  const double one = 1.0;
  FailNextCall("cudaMemsetAsync", cudaErrorIllegalAddress);
  EXPECT_EQ(cudaMemsetAsync(a, 0, 8, stream_), cudaErrorIllegalAddress);
  EXPECT_EQ(cublasDsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, 4, 4, &one, a, 4, &one, a, 4),
            CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaErrorIllegalAddress);
}

// ---- cuSOLVER ----------------------------------------------------------------------

TEST_F(LibraryTest, XpotrfMatchesLapackeAndScribblesOppositeTriangle) {
  const int n = 17, lda = 19;
  for (cublasFillMode_t uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER}) {
    std::vector<double> spd = RandomSpd(n, 40);
    std::vector<double> a(static_cast<size_t>(lda) * n, 123.0);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < n; ++i) a[i + static_cast<size_t>(j) * lda] = spd[i + static_cast<size_t>(j) * n];
    size_t ws = 0, hws = 1;
    ASSERT_EQ(cusolverDnXpotrf_bufferSize(solver_, params_, uplo, n, CUDA_R_64F, nullptr, lda, CUDA_R_64F, &ws, &hws),
              CUSOLVER_STATUS_SUCCESS);
    EXPECT_GT(ws, 0u);
    EXPECT_EQ(hws, 0u);
    double* da = Upload(a);
    int* info = Device<int>(1);
    unsigned char* work = Device<unsigned char>(ws);
    ASSERT_EQ(cudaMemset(work, 0, ws), cudaSuccess);
    ASSERT_EQ(cusolverDnXpotrf(solver_, params_, uplo, n, CUDA_R_64F, da, lda, CUDA_R_64F, work, ws, nullptr, 0, info),
              CUSOLVER_STATUS_SUCCESS);
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    std::vector<double> want = a;
    ASSERT_EQ(LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, uplo == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U', n, want.data(), lda),
              0);
    const std::vector<double> got = Download(da, a.size());
    for (int j = 0; j < n; ++j) {
      for (int i = 0; i < lda; ++i) {
        const size_t at = i + static_cast<size_t>(j) * lda;
        if (i >= n) {
          EXPECT_EQ(got[at], 123.0);  // padding below the matrix: untouched
        } else if (uplo == CUBLAS_FILL_MODE_LOWER ? i >= j : i <= j) {
          EXPECT_TRUE(SameBits(got[at], want[at])) << i << "," << j;
        } else {
          EXPECT_TRUE(std::isnan(got[at])) << i << "," << j;
        }
      }
    }
    EXPECT_EQ(Download(info, 1)[0], 0);
    const std::vector<unsigned char> w = Download(work, ws);
    for (unsigned char byte : w) ASSERT_EQ(byte, 0xFF);
    Free(da);
    Free(info);
    Free(work);
  }
  EXPECT_EQ(GetCounters().potrf_calls, 2);
}

TEST_F(LibraryTest, XpotrfReportsNotPositiveDefinite) {
  const int n = 6;
  std::vector<double> a = RandomSpd(n, 41);
  a[3 + 3 * n] = -100.0;  // leading minor 4 not positive definite
  double* da = Upload(a);
  int* info = Device<int>(1);
  size_t ws = 0, hws = 0;
  ASSERT_EQ(cusolverDnXpotrf_bufferSize(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, da, n, CUDA_R_64F, &ws,
                                        &hws),
            CUSOLVER_STATUS_SUCCESS);
  void* work = Device<char>(ws);
  ASSERT_EQ(cusolverDnXpotrf(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, da, n, CUDA_R_64F, work, ws,
                             nullptr, 0, info),
            CUSOLVER_STATUS_SUCCESS);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(Download(info, 1)[0], 4);
}

TEST_F(LibraryTest, SolverArgumentChecksAndUndersizedWorkspace) {
  const int n = 8;
  double* a = Device<double>(n * n);
  int* info = Device<int>(1);
  size_t ws = 0, hws = 0;
  EXPECT_EQ(
      cusolverDnXpotrf_bufferSize(nullptr, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n, CUDA_R_64F, &ws, &hws),
      CUSOLVER_STATUS_NOT_INITIALIZED);
  EXPECT_EQ(
      cusolverDnXpotrf_bufferSize(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_32F, a, n, CUDA_R_64F, &ws, &hws),
      CUSOLVER_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cusolverDnXpotrf_bufferSize(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n - 1, CUDA_R_64F,
                                        &ws, &hws),
            CUSOLVER_STATUS_INVALID_VALUE);
  ASSERT_EQ(
      cusolverDnXpotrf_bufferSize(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n, CUDA_R_64F, &ws, &hws),
      CUSOLVER_STATUS_SUCCESS);
  void* work = Device<char>(ws);
  EXPECT_EQ(GetCounters().violations, 0);
  EXPECT_EQ(cusolverDnXpotrf(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n, CUDA_R_64F, work, ws - 1,
                             nullptr, 0, info),
            CUSOLVER_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 1);
  size_t tws = 0;
  ASSERT_EQ(cusolverDnXtrtri_bufferSize(solver_, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F, a, n,
                                        &tws, &hws),
            CUSOLVER_STATUS_SUCCESS);
  EXPECT_GT(tws, 0u);
  EXPECT_EQ(cusolverDnXtrtri(solver_, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F, a, n, work, tws - 1,
                             nullptr, 0, info),
            CUSOLVER_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 2);
  EXPECT_EQ(cusolverDnXtrtri(solver_, CUBLAS_FILL_MODE_LOWER, static_cast<cublasDiagType_t>(5), n, CUDA_R_64F, a, n,
                             work, ws, nullptr, 0, info),
            CUSOLVER_STATUS_INVALID_VALUE);
  // Workspace claimed larger than its allocation: refused and counted.
  EXPECT_EQ(cusolverDnXpotrf(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n, CUDA_R_64F, work, ws + 1,
                             nullptr, 0, info),
            CUSOLVER_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 3);
  // info on the host: refused.
  int host_info = 0;
  EXPECT_EQ(cusolverDnXpotrf(solver_, params_, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n, CUDA_R_64F, work, ws,
                             nullptr, 0, &host_info),
            CUSOLVER_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 4);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

TEST_F(LibraryTest, DpotrfBatchedMatchesLapackeAndReadsPointersAtRunTime) {
  const int n = 5, batch = 3;
  std::vector<double> all;
  for (int b = 0; b < batch; ++b) {
    std::vector<double> m = RandomSpd(n, 50 + b);
    if (b == 1) m[2 + 2 * n] = -50.0;  // not PD at minor 3
    all.insert(all.end(), m.begin(), m.end());
  }
  double* mats = Upload(all);
  double** dptrs = Device<double*>(batch);
  int* infos = Device<int>(batch);
  // The pointer array is uploaded ASYNCHRONOUSLY just before the call: the
  // emulation must read it when the call runs, not when it is made.
  double* host_ptrs[batch];
  for (int b = 0; b < batch; ++b) host_ptrs[b] = mats + b * n * n;
  ASSERT_EQ(cudaMemcpyAsync(dptrs, host_ptrs, sizeof(host_ptrs), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  ASSERT_EQ(cusolverDnDpotrfBatched(solver_, CUBLAS_FILL_MODE_LOWER, n, dptrs, n, infos, batch),
            CUSOLVER_STATUS_SUCCESS);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  const std::vector<double> got = Download(mats, all.size());
  const std::vector<int> info = Download(infos, batch);
  for (int b = 0; b < batch; ++b) {
    std::vector<double> want(all.begin() + b * n * n, all.begin() + (b + 1) * n * n);
    const int want_info = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', n, want.data(), n);
    EXPECT_EQ(info[b], want_info);
    for (int j = 0; j < n; ++j) {
      for (int i = 0; i < n; ++i) {
        const double g = got[b * n * n + i + j * n];
        if (i >= j) {
          EXPECT_TRUE(SameBits(g, want[i + j * n])) << b << ": " << i << "," << j;
        } else {
          EXPECT_TRUE(std::isnan(g));
        }
      }
    }
  }
  EXPECT_EQ(info[1], 3);
  const Counters c = GetCounters();
  EXPECT_EQ(c.potrf_batched_calls, 1);
  EXPECT_EQ(c.potrf_batched_matrices, batch);
  EXPECT_EQ(c.violations, 0);
}

TEST_F(LibraryTest, DpotrfBatchedBadMatrixPointerFaultsAtRunTime) {
  const int n = 4;
  double* mats = Device<double>(n * n);
  double** dptrs = Device<double*>(2);
  int* infos = Device<int>(2);
  double* host_ptrs[2] = {mats, mats + 1};  // the second runs past the end
  ASSERT_EQ(cudaMemcpyAsync(dptrs, host_ptrs, sizeof(host_ptrs), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  ASSERT_EQ(cusolverDnDpotrfBatched(solver_, CUBLAS_FILL_MODE_LOWER, n, dptrs, n, infos, 2), CUSOLVER_STATUS_SUCCESS);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaErrorIllegalAddress);
  EXPECT_EQ(GetCounters().violations, 1);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  // Refused at call time: the pointer array is on the host.
  Reset();
  EXPECT_EQ(cusolverDnDpotrfBatched(solver_, CUBLAS_FILL_MODE_LOWER, n, host_ptrs, n, infos, 2),
            CUSOLVER_STATUS_INVALID_VALUE);
  EXPECT_EQ(GetCounters().violations, 1);
  EXPECT_EQ(cusolverDnDpotrfBatched(solver_, CUBLAS_FILL_MODE_LOWER, n, dptrs, n - 1, infos, 2),
            CUSOLVER_STATUS_INVALID_VALUE);
}

TEST_F(LibraryTest, XtrtriMatchesLapacke) {
  const int n = 11;
  for (cublasFillMode_t uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER}) {
    for (cublasDiagType_t diag : {CUBLAS_DIAG_NON_UNIT, CUBLAS_DIAG_UNIT}) {
      const char ul = uplo == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U';
      std::vector<double> a = RandomSpd(n, 60);
      ASSERT_EQ(LAPACKE_dpotrf(LAPACK_COL_MAJOR, ul, n, a.data(), n), 0);
      // The opposite triangle holds recognisable values trtri must not touch.
      for (int j = 0; j < n; ++j) {
        for (int i = 0; i < n; ++i) {
          if (uplo == CUBLAS_FILL_MODE_LOWER ? i < j : i > j) a[i + j * n] = 7.0;
        }
      }
      double* da = Upload(a);
      int* info = Device<int>(1);
      size_t ws = 0, hws = 0;
      ASSERT_EQ(cusolverDnXtrtri_bufferSize(solver_, uplo, diag, n, CUDA_R_64F, da, n, &ws, &hws),
                CUSOLVER_STATUS_SUCCESS);
      void* work = Device<char>(ws);
      ASSERT_EQ(cusolverDnXtrtri(solver_, uplo, diag, n, CUDA_R_64F, da, n, work, ws, nullptr, 0, info),
                CUSOLVER_STATUS_SUCCESS);
      ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      std::vector<double> want = a;
      ASSERT_EQ(LAPACKE_dtrtri_work(LAPACK_COL_MAJOR, ul, diag == CUBLAS_DIAG_UNIT ? 'U' : 'N', n, want.data(), n), 0);
      const std::vector<double> got = Download(da, a.size());
      for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(SameBits(got[i], want[i])) << i;
      EXPECT_EQ(Download(info, 1)[0], 0);
      Free(da);
      Free(info);
      Free(work);
    }
  }
  // A singular triangle: info = index of the zero diagonal (1-based).
  std::vector<double> s(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) s[i + i * n] = i == 4 ? 0.0 : 1.0;
  double* ds = Upload(s);
  int* info = Device<int>(1);
  size_t ws = 0, hws = 0;
  ASSERT_EQ(cusolverDnXtrtri_bufferSize(solver_, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F, ds, n,
                                        &ws, &hws),
            CUSOLVER_STATUS_SUCCESS);
  void* work = Device<char>(ws);
  ASSERT_EQ(cusolverDnXtrtri(solver_, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F, ds, n, work, ws,
                             nullptr, 0, info),
            CUSOLVER_STATUS_SUCCESS);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_EQ(Download(info, 1)[0], 5);
  EXPECT_EQ(GetCounters().trtri_calls, 5);
}

// Library work runs in stream order with the copies around it.
TEST_F(LibraryTest, LibraryWorkIsOrderedWithCopies) {
  const int n = 6, k = 4;
  const std::vector<double> x = Random(static_cast<size_t>(n) * k, 70);
  double* dx = Device<double>(x.size());
  double* dg = Device<double>(n * n);
  std::vector<double> g(n * n, -1.0);
  const double one = 1.0, zero = 0.0;
  ASSERT_EQ(cudaMemcpyAsync(dx, x.data(), x.size() * sizeof(double), cudaMemcpyHostToDevice, stream_), cudaSuccess);
  ASSERT_EQ(cublasDgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, n, n, k, &one, dx, n, dx, n, &zero, dg, n),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cudaMemcpyAsync(g.data(), dg, g.size() * sizeof(double), cudaMemcpyDeviceToHost, stream_), cudaSuccess);
  EXPECT_EQ(g[0], -1.0);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  std::vector<double> want(n * n);
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, n, n, k, 1.0, x.data(), n, x.data(), n, 0.0, want.data(), n);
  EXPECT_EQ(g, want);
}

}  // namespace
}  // namespace sigma::cuda_emulator
