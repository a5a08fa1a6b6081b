// Custom kernels of the CUDA backend; see device_kernels.h for shapes and
// contracts. Built for sm_80/sm_90 (+PTX). No fast-math: every float64
// operation here is IEEE round-to-nearest (division and sqrt included), so
// results match the CPU reference up to summation order.
#include "device_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>

// Every launch goes through this macro: nvcc's <<<>>> here; the host CUDA
// emulator (tests/gpu/emulator/device_shim.h) defines it to run the same
// kernels on the CPU in tests.
#ifndef SIGMA_LAUNCH_KERNEL
#define SIGMA_LAUNCH_KERNEL(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#endif

namespace sigma::cuda::kernels {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;          // warps per block in the row kernels
constexpr int kReduceThreads = 1024;      // single-block reductions
constexpr int kElementwiseThreads = 256;
constexpr int kColumnThreads = 256;        // one block per matrix / column
constexpr int kRowThreads = kRowsPerBlock * kWarp;
// Every kernel declares its block size in __launch_bounds__, so ptxas keeps
// its registers within what that block needs (a 1024-thread block gets at most
// 64 per thread): a launch can never fail with "too many resources requested".
// kernels/cuda/CMakeLists.txt makes local memory and spills a build error.

// The reduction operators of WarpReduce / BlockReduce.
struct SumOp {
  template <typename T>
  __device__ __forceinline__ static T Apply(T a, T b) { return a + b; }
};
struct MaxOp {  // doubles only: fmax (a NaN operand loses, as on the CPU)
  __device__ __forceinline__ static double Apply(double a, double b) { return fmax(a, b); }
};
struct MinOp {
  template <typename T>
  __device__ __forceinline__ static T Apply(T a, T b) { return b < a ? b : a; }
};

template <typename Op, typename T>
__device__ __forceinline__ T WarpReduce(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = Op::Apply(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Block-wide reduction (blockDim.x a multiple of 32, <= 1024); `identity` is
// Op's neutral element. Every thread gets the result. Deterministic: fixed
// shuffle tree, then warp 0 over the per-warp partials in warp order. One
// __shared__ array of 32 T per instantiation.
template <typename Op, typename T>
__device__ T BlockReduce(T v, T identity) {
  __shared__ T partial[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = WarpReduce<Op>(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : identity;
  return WarpReduce<Op>(v);
}
__device__ __forceinline__ double BlockSum(double v) { return BlockReduce<SumOp>(v, 0.0); }

// Exact widening of one element.
template <int kDType> struct Elem;
template <> struct Elem<0> {
  using T = float;
  static __device__ __forceinline__ double Load(const T* p, int64_t i) { return static_cast<double>(p[i]); }
};
template <> struct Elem<1> {
  using T = unsigned short;
  static __device__ __forceinline__ double Load(const T* p, int64_t i) {
    return static_cast<double>(__half2float(__ushort_as_half(p[i])));
  }
};
template <> struct Elem<2> {
  using T = unsigned short;
  static __device__ __forceinline__ double Load(const T* p, int64_t i) {
    return static_cast<double>(__uint_as_float(static_cast<unsigned int>(p[i]) << 16));
  }
};
template <> struct Elem<3> {
  using T = double;
  static __device__ __forceinline__ double Load(const T* p, int64_t i) { return p[i]; }
};

// Compensated (error-free transformation) accumulation of squares: each
// lane keeps a sum and a correction; v*v is split exactly with an FMA, so a
// row's energy has ~1 ulp of error whatever m is (it decides the l2 scale and,
// for raw rows, the rho test). __dadd_rn/__dmul_rn keep nvcc from contracting
// the transformation into FMAs.
struct CompensatedSum {
  double s = 0.0, c = 0.0;
  __device__ __forceinline__ void Add(double x) {
    const double t = __dadd_rn(s, x);
    if (!isfinite(t)) {  // overflow: the error terms would turn Inf into NaN
      s = t;
      return;
    }
    const double bp = __dsub_rn(t, s);
    const double err = __dadd_rn(__dsub_rn(s, __dsub_rn(t, bp)), __dsub_rn(x, bp));
    s = t;
    c = __dadd_rn(c, err);
  }
  __device__ __forceinline__ void AddSquare(double v) {
    const double p = __dmul_rn(v, v);
    const double pe = isfinite(p) ? fma(v, v, -p) : 0.0;  // exact: v*v = p + pe
    Add(p);
    c = __dadd_rn(c, pe);
  }
  // Warp-wide merge (fixed butterfly order); every lane gets the total.
  __device__ __forceinline__ double WarpTotal() {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const double os = __shfl_xor_sync(0xffffffffu, s, offset);
      const double oc = __shfl_xor_sync(0xffffffffu, c, offset);
      c = __dadd_rn(c, oc);
      Add(os);
    }
    return __dadd_rn(s, c);
  }
};

// Records the smallest linear index of a non-finite element as its bitwise
// complement (atomicMax of ~index: 0 means none).
__device__ __forceinline__ void NoteNonFinite(unsigned long long* first_bad, unsigned long long index) {
  atomicMax(first_bad, ~index);
}

// RowSquares' scaled path (ingest_rules.h), for the warp's row `in` of m
// elements: called when the plain sum of squares `plain` is not trusted
// (PlainSquaresTrusted: non-finite or below kMinTrustedSquares). A warp-wide
// max-abs reduction, then the squares of x * 2^-e, e = *scale_exp, the power
// of two that brings max|x_c| into [0.5, 1) (exact scaling), so the result is
// in [0.25, m] and ||x||^2 = result * 4^e. Returns `plain` with e = 0 when the
// row is zero or not finite (the latter is refused through first_bad). The
// whole warp calls it (the condition is warp-uniform); every lane gets the
// same result.
template <int kDType>
__device__ __forceinline__ double ScaledRowSquares(const typename Elem<kDType>::T* in, int64_t m, int lane,
                                                   double plain, int* scale_exp) {
  *scale_exp = 0;
  double amax = 0.0;
  for (int64_t c = lane; c < m; c += kWarp) amax = fmax(amax, fabs(Elem<kDType>::Load(in, c)));
  amax = WarpReduce<MaxOp>(amax);
  if (!(amax > 0.0 && amax <= DBL_MAX)) return plain;
  *scale_exp = ilogb(amax) + 1;
  CompensatedSum acc;
  for (int64_t c = lane; c < m; c += kWarp) acc.AddSquare(ldexp(Elem<kDType>::Load(in, c), -*scale_exp));
  return acc.WarpTotal();
}

// One warp per row: one read of the raw row for its energy (and a finiteness
// check), then (l2) a second, cached read to scale and store. The energy rule
// is ingest_rules.h's (RowSquares, EnergyOfRow, NormaliseRow): the plain sum of
// squares when trusted, else ScaledRowSquares (a row scaled by 1e155 or 1e-170
// gives the unscaled row's result). Registers only: ptxas refuses local memory
// and spills (kernels/cuda/CMakeLists.txt); 40 registers on sm_80/sm_90.
template <int kDType>
__global__ void __launch_bounds__(kRowThreads) ConvertRowsKernel(const typename Elem<kDType>::T* __restrict__ raw, int64_t num_rows,
                                  int64_t m, bool l2, double* __restrict__ x,
                                  double* __restrict__ row_energy, int64_t first_row,
                                  unsigned long long* first_bad) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= num_rows) return;  // whole warp leaves together
  const typename Elem<kDType>::T* in = raw + row * m;
  double* out = x + row * m;
  const unsigned long long base = static_cast<unsigned long long>(first_row + row) * static_cast<unsigned long long>(m);
  CompensatedSum acc;
  for (int64_t c = lane; c < m; c += kWarp) {
    const double v = Elem<kDType>::Load(in, c);
    if (!isfinite(v)) NoteNonFinite(first_bad, base + static_cast<unsigned long long>(c));
    if (!l2) out[c] = v;
    acc.AddSquare(v);
  }
  double energy = acc.WarpTotal();  // ||x||^2 = energy * 4^scale_exp; warp-uniform
  int scale_exp = 0;
  if (!(energy >= kMinTrustedSquares && energy <= DBL_MAX))  // PlainSquaresTrusted
    energy = ScaledRowSquares<kDType>(in, m, lane, energy, &scale_exp);
  if (l2) {
    if (energy > 0.0) {
      const double inv = 1.0 / sqrt(energy);  // as NormaliseRow
      for (int64_t c = lane; c < m; c += kWarp)
        out[c] = __dmul_rn(scale_exp == 0 ? Elem<kDType>::Load(in, c) : ldexp(Elem<kDType>::Load(in, c), -scale_exp),
                           inv);
      // A normalised row has unit energy by definition (spec §2; EnergyOfRow).
      energy = 1.0;
    } else {
      for (int64_t c = lane; c < m; c += kWarp) out[c] = 0.0;
    }
  } else if (scale_exp != 0) {
    energy = ldexp(energy, 2 * scale_exp);  // EnergyOfRow: may round to 0 or overflow to +Inf, the honest value
  }
  if (lane == 0) row_energy[row] = energy;
}

__global__ void __launch_bounds__(kReduceThreads) EnergyReduceKernel(const double* __restrict__ row_energy, int64_t n, double limit,
                                   EnergyDev* acc) {
  double mx = 0.0, sum = 0.0;
  long long violations = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double e = row_energy[i];
    mx = fmax(mx, e);
    sum += e;
    violations += e > limit ? 1 : 0;
  }
  mx = BlockReduce<MaxOp>(mx, -DBL_MAX);
  sum = BlockSum(sum);
  violations = BlockReduce<SumOp>(violations, 0LL);
  if (threadIdx.x == 0) {
    acc->max_energy = fmax(acc->max_energy, mx);
    acc->sum_energy += sum;
    acc->count += n;
    acc->rho_violations += violations;
  }
}

__global__ void __launch_bounds__(kElementwiseThreads) ShiftedCopiesKernel(const double* g, int64_t m, ShiftTargets t) {
  const int64_t total = m * m;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = idx / m, row = idx - col * m;
    // Constant trip counts (unrolled): indexing t's arrays with a runtime k
    // would copy the parameter to local memory (ptxas: 80-byte stack frame).
    if (row < col) {
#pragma unroll
      for (int k = 0; k < 3; ++k)
        if (k < t.count) t.dst[k][idx] = 0.0;
      continue;
    }
    const double v = g[idx];  // read before any write: dst may alias g
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      if (k >= t.count) break;
      double a = __dmul_rn(t.scale[k], v);
      if (row == col) a = __dadd_rn(a, t.shift[k]);
      t.dst[k][idx] = a;
    }
  }
}

__global__ void __launch_bounds__(kColumnThreads) LogDiagKernel(const double* mats, int64_t m, const int* info, void* out,
                              int per_group, int64_t group_stride_bytes) {
  const int64_t b = blockIdx.x;
  const double* a = mats + b * m * m;
  double sum = 0.0;
  long long bad = LLONG_MAX;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const double d = a[i * m + i];
    if (!(d > 0.0)) {
      bad = bad < i + 1 ? bad : i + 1;
    } else {
      sum += log(d);
    }
  }
  sum = BlockSum(sum);
  bad = BlockReduce<MinOp>(bad, LLONG_MAX);
  if (threadIdx.x == 0) {
    CholDev* o = reinterpret_cast<CholDev*>(static_cast<char*>(out) + (b / per_group) * group_stride_bytes) +
                 b % per_group;
    const int inf = info[b];
    o->info = inf;
    if (inf != 0) {
      o->ok = 0;
      o->failed_column = inf;
      o->log_det = 0.0;
    } else if (bad != LLONG_MAX) {
      o->ok = 0;
      o->failed_column = bad;
      o->log_det = 0.0;
    } else {
      o->ok = 1;
      o->failed_column = 0;
      o->log_det = 2.0 * sum;
    }
  }
}

__global__ void __launch_bounds__(kRowThreads) ColumnSquaredNormsKernel(const double* __restrict__ y, int64_t m, int64_t n,
                                         double* __restrict__ q) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (col >= n) return;
  const double* c = y + col * m;
  double s = 0.0;
  for (int64_t r = lane; r < m; r += kWarp) s += c[r] * c[r];
  s = WarpReduce<SumOp>(s);
  if (lane == 0) q[col] = s;
}

__global__ void __launch_bounds__(kReduceThreads) QStatsKernel(const double* __restrict__ q, int64_t n, double* out) {
  double sum = 0.0, sum_sq = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    sum += q[i];
    sum_sq += q[i] * q[i];
  }
  sum = BlockSum(sum);
  sum_sq = BlockSum(sum_sq);
  const double mean = n > 0 ? sum / static_cast<double>(n) : 0.0;
  double centered = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) centered += (q[i] - mean) * (q[i] - mean);
  centered = BlockSum(centered);
  if (threadIdx.x == 0) {
    out[0] = mean;
    out[1] = n > 0 ? sum_sq / static_cast<double>(n) : 0.0;
    out[2] = n > 1 ? sqrt(centered / static_cast<double>(n - 1)) : 0.0;
  }
}

// One block per column c of the lower triangle of a = A: partial[c] = a_cc
// and partial[m + c] = a_cc^2 + 2 sum_{r>c} a_rc^2 (A symmetric).
__global__ void __launch_bounds__(kColumnThreads) TraceColumnKernel(const double* __restrict__ a, int64_t m,
                                                                    double* __restrict__ partial) {
  const int64_t c = blockIdx.x;
  const double* col = a + c * m;
  double s = 0.0;
  for (int64_t r = c + 1 + threadIdx.x; r < m; r += blockDim.x) s += col[r] * col[r];
  s = BlockSum(s);
  if (threadIdx.x == 0) {
    partial[c] = col[c];
    partial[m + c] = col[c] * col[c] + 2.0 * s;
  }
}

__global__ void __launch_bounds__(kReduceThreads) SumKernel(const double* __restrict__ v, int64_t n, double* out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = BlockSum(s);
  if (threadIdx.x == 0) *out = s;
}

unsigned int GridFor(int64_t work, int threads) {
  int64_t blocks = (work + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  // Grid-stride loops cover the rest; 2^20 blocks is plenty of parallelism.
  if (blocks > (int64_t{1} << 20)) blocks = int64_t{1} << 20;
  return static_cast<unsigned int>(blocks);
}

}  // namespace

cudaError_t LaunchConvertRows(int dtype, const void* raw, int64_t num_rows, int64_t m, bool l2,
                              double* x, double* row_energy, int64_t first_row,
                              unsigned long long* first_bad, cudaStream_t stream) {
  if (num_rows <= 0) return cudaSuccess;
  const int64_t blocks = (num_rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned int>(blocks)), block(kRowThreads);
  switch (dtype) {
    case 0:
      SIGMA_LAUNCH_KERNEL(ConvertRowsKernel<0>, grid, block, stream)(static_cast<const float*>(raw), num_rows, m, l2, x, row_energy, first_row, first_bad);
      break;
    case 1:
      SIGMA_LAUNCH_KERNEL(ConvertRowsKernel<1>, grid, block, stream)(static_cast<const unsigned short*>(raw), num_rows, m, l2, x,
                                                       row_energy, first_row, first_bad);
      break;
    case 2:
      SIGMA_LAUNCH_KERNEL(ConvertRowsKernel<2>, grid, block, stream)(static_cast<const unsigned short*>(raw), num_rows, m, l2, x,
                                                       row_energy, first_row, first_bad);
      break;
    case 3:
      SIGMA_LAUNCH_KERNEL(ConvertRowsKernel<3>, grid, block, stream)(static_cast<const double*>(raw), num_rows, m, l2, x, row_energy, first_row, first_bad);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t LaunchEnergyReduce(const double* row_energy, int64_t n, double limit, EnergyDev* acc,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  SIGMA_LAUNCH_KERNEL(EnergyReduceKernel, 1, kReduceThreads, stream)(row_energy, n, limit, acc);
  return cudaGetLastError();
}

cudaError_t LaunchShiftedCopies(const double* g, int64_t m, const ShiftTargets& targets,
                                cudaStream_t stream) {
  if (targets.count <= 0 || targets.count > 3) return cudaErrorInvalidValue;
  SIGMA_LAUNCH_KERNEL(ShiftedCopiesKernel, GridFor(m * m, kElementwiseThreads), kElementwiseThreads, stream)(g, m, targets);
  return cudaGetLastError();
}

cudaError_t LaunchLogDiag(const double* mats, int64_t m, int64_t count, const int* info, void* out,
                          int per_group, int64_t group_stride_bytes, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  if (count > INT_MAX || per_group <= 0) return cudaErrorInvalidValue;
  SIGMA_LAUNCH_KERNEL(LogDiagKernel, static_cast<unsigned int>(count), kColumnThreads, stream)(mats, m, info, out, per_group,
                                                                       group_stride_bytes);
  return cudaGetLastError();
}

cudaError_t LaunchColumnSquaredNorms(const double* y, int64_t m, int64_t n, double* q,
                                     cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  SIGMA_LAUNCH_KERNEL(ColumnSquaredNormsKernel, static_cast<unsigned int>(blocks), kRowThreads, stream)(y, m, n, q);
  return cudaGetLastError();
}

cudaError_t LaunchQStats(const double* q, int64_t n, double* out, cudaStream_t stream) {
  SIGMA_LAUNCH_KERNEL(QStatsKernel, 1, kReduceThreads, stream)(q, n, out);
  return cudaGetLastError();
}

cudaError_t LaunchInverseTraces(const double* a, int64_t m, double* partial, double* trace_a,
                                double* trace_a2, cudaStream_t stream) {
  if (m <= 0 || m > INT_MAX) return cudaErrorInvalidValue;
  SIGMA_LAUNCH_KERNEL(TraceColumnKernel, static_cast<unsigned int>(m), kColumnThreads, stream)(a, m, partial);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  SIGMA_LAUNCH_KERNEL(SumKernel, 1, kReduceThreads, stream)(partial, m, trace_a);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  SIGMA_LAUNCH_KERNEL(SumKernel, 1, kReduceThreads, stream)(partial + m, m, trace_a2);
  return cudaGetLastError();
}

}  // namespace sigma::cuda::kernels
