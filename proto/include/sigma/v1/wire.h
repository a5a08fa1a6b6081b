// The wire enums of sigma.v1 and the kernels' enums, mapped in one place for
// the daemon (server/src/core/requests.cc) and the C++ client (client/cpp).
//
// Header-only: protobuf's generated enums and sigma/kernels enum types, so
// neither gRPC reaches kernels/ nor does the client link the kernels. Pure
// functions: thread-safe.
#ifndef SIGMA_V1_WIRE_H_
#define SIGMA_V1_WIRE_H_

#include <cstddef>
#include <optional>

#include "sigma/kernels/dtype.h"         // sigma::DType, DTypeWidth (inline)
#include "sigma/kernels/ingest_rules.h"  // sigma::Preprocessing
#include "sigma/v1/sigma.pb.h"

namespace sigma {

// The row dtype of a wire dtype; nullopt for DTYPE_UNSPECIFIED and unknown values.
constexpr std::optional<DType> FromWireDType(v1::DType d) {
  switch (d) {
    case v1::DTYPE_FP32: return DType::kFloat32;
    case v1::DTYPE_FP16: return DType::kFloat16;
    case v1::DTYPE_BF16: return DType::kBFloat16;
    case v1::DTYPE_FP64: return DType::kFloat64;
    default: return std::nullopt;
  }
}

constexpr v1::DType ToWireDType(DType d) {
  switch (d) {
    case DType::kFloat32: return v1::DTYPE_FP32;
    case DType::kFloat16: return v1::DTYPE_FP16;
    case DType::kBFloat16: return v1::DTYPE_BF16;
    case DType::kFloat64: return v1::DTYPE_FP64;
  }
  return v1::DTYPE_UNSPECIFIED;
}

// Bytes per element of a wire dtype; 0 for DTYPE_UNSPECIFIED and unknown values.
constexpr size_t WireDTypeBytes(v1::DType d) {
  const std::optional<DType> dtype = FromWireDType(d);
  return dtype ? DTypeWidth(*dtype) : 0;
}

// A job's preprocessing as the ingest rules apply it: UNSPECIFIED means l2
// (the default; an effective JobConfig always names one).
constexpr Preprocessing FromWirePreprocessing(v1::Preprocessing p) {
  return p == v1::PREPROCESSING_NONE ? Preprocessing::kNone : Preprocessing::kL2;
}

}  // namespace sigma

#endif  // SIGMA_V1_WIRE_H_
