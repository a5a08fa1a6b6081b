#include "sigma/kernels/dtype.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"

namespace sigma {

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "fp32";
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat64: return "fp64";
  }
  return "unknown";
}

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "fp32" || name == "float32") return DType::kFloat32;
  if (name == "fp16" || name == "float16") return DType::kFloat16;
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  if (name == "fp64" || name == "float64") return DType::kFloat64;
  return std::nullopt;
}

uint16_t DoubleToBFloat16(double value) {
  const float f = static_cast<float>(value);
  uint32_t bits = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return 0x7fc0;
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

uint16_t DoubleToHalf(double value) {
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  double a = std::fabs(value);
  if (std::isnan(value)) return 0x7e00;
  if (a >= 65520.0) return sign | 0x7c00;  // rounds to infinity
  if (a < std::ldexp(1.0, -25)) {
    return sign;  // rounds to zero (ties at 2^-25 go to even zero)
  }
  int exponent;
  std::frexp(a, &exponent);  // a = frac * 2^exponent, frac in [0.5, 1)
  int biased = exponent - 1 + 15;
  if (biased <= 0) {
    // Subnormal: units of 2^-24.
    const double units = std::nearbyint(std::ldexp(a, 24));
    return sign | static_cast<uint16_t>(units);  // 1024 units = smallest normal
  }
  // Normal: 11 significant bits.
  double scaled = std::nearbyint(std::ldexp(a, 10 - (exponent - 1)));  // in [1024, 2048]
  if (scaled >= 2048.0) {
    scaled /= 2;
    ++biased;
  }
  if (biased >= 31) return sign | 0x7c00;
  return sign | static_cast<uint16_t>(biased << 10) |
         static_cast<uint16_t>(static_cast<int>(scaled) - 1024);
}

absl::Status ValidateRowBlock(const RowBlock& block, size_t bytes) {
  if (block.m <= 0) return absl::InvalidArgumentError(absl::StrFormat("m must be > 0, got %d", block.m));
  if (block.num_rows <= 0)
    return absl::InvalidArgumentError(absl::StrFormat("rows must be > 0, got %d", block.num_rows));
  if (block.data == nullptr) return absl::InvalidArgumentError("row data is missing");
  if (bytes != block.ByteSize())
    return absl::InvalidArgumentError(absl::StrFormat(
        "byte size %d does not match rows x m x width = %d x %d x %d = %d", bytes, block.num_rows,
        block.m, DTypeWidth(block.dtype), block.ByteSize()));
  return absl::OkStatus();
}

void ConvertToDouble(const RowBlock& block, double* out) {
  const size_t count = static_cast<size_t>(block.num_rows) * static_cast<size_t>(block.m);
  const auto* bytes = static_cast<const unsigned char*>(block.data);
  switch (block.dtype) {
    case DType::kFloat64:
      std::memcpy(out, bytes, count * sizeof(double));
      return;
    case DType::kFloat32:
      for (size_t i = 0; i < count; ++i) {
        float v;
        std::memcpy(&v, bytes + 4 * i, 4);
        out[i] = v;
      }
      return;
    case DType::kFloat16:
      for (size_t i = 0; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, bytes + 2 * i, 2);
        out[i] = HalfToDouble(v);
      }
      return;
    case DType::kBFloat16:
      for (size_t i = 0; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, bytes + 2 * i, 2);
        out[i] = BFloat16ToDouble(v);
      }
      return;
  }
}

namespace {
template <typename Bits>
Bits Load(const unsigned char* p) {
  Bits v;
  std::memcpy(&v, p, sizeof(Bits));
  return v;
}
}  // namespace

absl::Status CheckFinite(const RowBlock& block, int64_t first_row) {
  const size_t count = static_cast<size_t>(block.num_rows) * static_cast<size_t>(block.m);
  const auto* bytes = static_cast<const unsigned char*>(block.data);
  auto fail = [&](size_t i) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "non-finite value (NaN or Inf) at row %d, column %d", first_row + static_cast<int64_t>(i / block.m),
        static_cast<int64_t>(i % block.m)));
  };
  switch (block.dtype) {
    case DType::kFloat64:
      for (size_t i = 0; i < count; ++i)
        if ((Load<uint64_t>(bytes + 8 * i) & 0x7ff0000000000000ull) == 0x7ff0000000000000ull)
          return fail(i);
      break;
    case DType::kFloat32:
      for (size_t i = 0; i < count; ++i)
        if ((Load<uint32_t>(bytes + 4 * i) & 0x7f800000u) == 0x7f800000u) return fail(i);
      break;
    case DType::kFloat16:
      for (size_t i = 0; i < count; ++i)
        if ((Load<uint16_t>(bytes + 2 * i) & 0x7c00u) == 0x7c00u) return fail(i);
      break;
    case DType::kBFloat16:
      for (size_t i = 0; i < count; ++i)
        if ((Load<uint16_t>(bytes + 2 * i) & 0x7f80u) == 0x7f80u) return fail(i);
      break;
  }
  return absl::OkStatus();
}

}  // namespace sigma
