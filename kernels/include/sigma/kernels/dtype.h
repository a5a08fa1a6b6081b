// Element types of embedding batches on the wire and their exact conversion to
// float64. Every fp16, bf16 and fp32 value is exactly representable in float64,
// so the conversion loses nothing (spec §4).
#ifndef SIGMA_KERNELS_DTYPE_H_
#define SIGMA_KERNELS_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "sigma/kernels/ingest_rules.h"  // HalfToDouble, BFloat16ToDouble

namespace sigma {

enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
};

// Bytes per element of `dtype` (inline: the C++ client's wire mapping,
// sigma/v1/wire.h, uses it without linking the kernels).
constexpr size_t DTypeWidth(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
  }
  return 0;
}

// "fp32", "fp16", "bf16", "fp64".
std::string_view DTypeName(DType dtype);

// Parses "fp32"/"float32", "fp16"/"float16", "bf16"/"bfloat16", "fp64"/"float64".
std::optional<DType> ParseDType(std::string_view name);

// Exact conversions of one element: HalfToDouble, BFloat16ToDouble (ingest_rules.h).
// Round-to-nearest-even conversions, used by tests and clients to make inputs.
uint16_t DoubleToHalf(double value);
uint16_t DoubleToBFloat16(double value);

// A row-major block of embeddings in host memory: `num_rows` rows of `m`
// elements of `dtype`, packed little-endian, `num_rows * m * DTypeWidth(dtype)`
// bytes at `data`. Rows are the columns x_j of the math (spec §2). Not owning.
struct RowBlock {
  const void* data = nullptr;
  DType dtype = DType::kFloat64;
  int64_t num_rows = 0;
  int64_t m = 0;

  size_t ByteSize() const {
    return static_cast<size_t>(num_rows) * static_cast<size_t>(m) * DTypeWidth(dtype);
  }
};

// Checks that `bytes` bytes hold exactly num_rows x m elements of `dtype` and
// that the shape is positive; INVALID_ARGUMENT naming the mismatch otherwise.
absl::Status ValidateRowBlock(const RowBlock& block, size_t bytes);

// Converts `block` to float64, row-major [num_rows, m], into `out` (caller
// allocates num_rows * m doubles). Exact.
void ConvertToDouble(const RowBlock& block, double* out);

// INVALID_ARGUMENT naming the first row and column holding NaN or Inf, OK
// otherwise. `m` must be > 0.
absl::Status CheckFinite(const RowBlock& block, int64_t first_row = 0);  // rows named from first_row

}  // namespace sigma

#endif  // SIGMA_KERNELS_DTYPE_H_
