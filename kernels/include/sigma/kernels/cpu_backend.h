// The CPU backend: OpenBLAS + LAPACKE in float64. Built when SIGMA_HAVE_CPU_BLAS.
#ifndef SIGMA_KERNELS_CPU_BACKEND_H_
#define SIGMA_KERNELS_CPU_BACKEND_H_

#include <memory>

#include "sigma/kernels/backend.h"

namespace sigma {

// How the Gram is formed. OpenBLAS dsyrk can be slower than dgemm when
// m << n_A (it does half the flops but parallelises worse); kAuto uses the
// rule measured in bench/kernels (see docs/benchmarks.md).
enum class GramMethod { kAuto, kSyrk, kGemm };

std::unique_ptr<Backend> MakeCpuBackend(GramMethod method = GramMethod::kAuto);

}  // namespace sigma

#endif  // SIGMA_KERNELS_CPU_BACKEND_H_
