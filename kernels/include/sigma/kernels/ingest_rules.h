// The ingest rules of SIGMA-SPEC §2, defined once and shared by the kernels,
// the daemon's ingest path (server/src/ingest_math.cc) and the C++ client's
// pre-sketch (client/cpp): the sketch hash, default sample ids and n_A, the
// exact decoding of the 16-bit float formats, and the per-row energy rule with
// its overflow/underflow-safe norm. The Python client keeps its own copy
// (client/python/src/sigma_client/sketch.py), pinned by /work/shared/testvectors.
//
// Header-only, standard C++20 only (no Abseil), so the client links nothing of
// the kernels. Everything here is a pure function: thread-safe.
#ifndef SIGMA_KERNELS_INGEST_RULES_H_
#define SIGMA_KERNELS_INGEST_RULES_H_

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace sigma {

// ---------------------------------------------------------------- sketch

// splitmix64 (spec §2), unsigned 64-bit wrapping arithmetic.
constexpr uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// priority(seed, id) = splitmix64(id ^ splitmix64(seed)); the bottom-k sketch
// keeps the ids of smallest (priority, id).
constexpr uint64_t SketchPriority(uint64_t seed, uint64_t id) {
  return SplitMix64(id ^ SplitMix64(seed));
}

// Default sample id of the row at `index` in rank `rank`'s stream for a
// snapshot when the client sends none (spec §2): index + (rank << 40).
constexpr uint64_t DefaultSampleId(int64_t rank, int64_t index) {
  return static_cast<uint64_t>(index) + (static_cast<uint64_t>(rank) << 40);
}

// n_A >= 16 m rows make the Track II estimate confident (spec §3's calibration).
inline constexpr int64_t kConfidentRowsPerDim = 16;

// Default n_A for dimension m: max(4096, 16 m) (spec §2).
constexpr int64_t DefaultNA(int64_t m) {
  return std::max<int64_t>(4096, kConfidentRowsPerDim * m);
}

// The low_confidence flag: n_A < 16 m.
constexpr bool LowConfidence(int64_t n_a, int64_t m) { return n_a < kConfidentRowsPerDim * m; }

// ---------------------------------------------------------------- 16-bit floats

// Exact IEEE binary16 -> float64 (every half is a double).
inline double HalfToDouble(uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  double value;
  if (exponent == 0) {
    value = std::ldexp(static_cast<double>(mantissa), -24);  // subnormal or zero
  } else if (exponent == 31) {
    value = mantissa ? std::numeric_limits<double>::quiet_NaN()
                     : std::numeric_limits<double>::infinity();
  } else {
    value = std::ldexp(static_cast<double>(mantissa | 0x400), exponent - 25);
  }
  return (bits & 0x8000) ? -value : value;
}

// Exact bfloat16 -> float64 (the upper half of a float32).
constexpr double BFloat16ToDouble(uint16_t bits) {
  return static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(bits) << 16));
}

// ---------------------------------------------------------------- energy rule

enum class Preprocessing : int {
  kL2 = 0,    // each row scaled to unit Euclidean norm (a zero row is refused)
  kNone = 1,  // raw rows; rho must be configured
};

// A row's sum of squares as ldexp(ssq, 2 * exp): ||x||^2 = ssq * 4^exp. With
// exp = 0, ssq is the plain float64 sum of squares.
struct ScaledSquares {
  int exp = 0;
  double ssq = 0.0;
};

// A plain float64 sum of squares `plain` of a finite row is trusted when it is
// finite (no square or partial sum overflowed) and >= 2^-900: a square that
// underflowed lost < 2^-1074 each, so m of them change it by < m 2^-174
// relatively. Otherwise the norm is recomputed scaled (RowSquares).
inline constexpr double kMinTrustedSumOfSquares = 0x1p-900;
constexpr bool PlainSquaresTrusted(double plain) {
  return plain >= kMinTrustedSumOfSquares && plain <= std::numeric_limits<double>::max();
}

// The squares of one finite row of `m` elements, element c read by load(c)
// (as double), given its plain float64 sum of squares `plain` (summed in any
// order). When `plain` is not trusted, recomputed as LAPACK's dnrm2 avoids
// overflow and underflow: scaled by the power of two 2^exp that brings the
// largest |x_c| into [0.5, 1), which is exact, so ssq in [0.25, m].
template <typename Load>
ScaledSquares RowSquares(int64_t m, double plain, Load&& load) {
  if (PlainSquaresTrusted(plain)) return {0, plain};
  double amax = 0.0;
  for (int64_t c = 0; c < m; ++c) amax = std::max(amax, std::fabs(static_cast<double>(load(c))));
  if (amax == 0.0) return {0, 0.0};
  const int exp = std::ilogb(amax) + 1;
  double ssq = 0.0;
  for (int64_t c = 0; c < m; ++c) {
    const double v = std::ldexp(static_cast<double>(load(c)), -exp);
    ssq += v * v;
  }
  return {exp, ssq};
}

// Why a row is refused (spec §2 and §4: never silently wrong).
enum class RowCheck {
  kOk,
  kZeroNorm,        // l2: ||x|| = 0, the row has no direction
  kNormOverflow,    // l2: ||x|| > DBL_MAX
  kEnergyOverflow,  // none: ||x||^2 > DBL_MAX
};

// A row's energy ||x_j||^2 after preprocessing (spec §2): exactly 1 under l2
// (a normalised row; its recomputed sum of squares is 1 only up to ~m ulps),
// ||x||^2 under none. `energy` is meaningful when check == kOk.
struct RowEnergy {
  RowCheck check = RowCheck::kOk;
  double energy = 0.0;
};

inline RowEnergy EnergyOfRow(Preprocessing p, ScaledSquares sq) {
  if (p == Preprocessing::kL2) {
    if (sq.ssq == 0.0) return {RowCheck::kZeroNorm, 0.0};
    if (!std::isfinite(std::ldexp(std::sqrt(sq.ssq), sq.exp))) return {RowCheck::kNormOverflow, 0.0};
    return {RowCheck::kOk, 1.0};
  }
  const double energy = std::ldexp(sq.ssq, 2 * sq.exp);  // may round to 0: the honest value
  if (!std::isfinite(energy)) return {RowCheck::kEnergyOverflow, 0.0};
  return {RowCheck::kOk, energy};
}

// The rho budget rule: a row violates it when its energy exceeds rho.
constexpr bool ExceedsBudget(double energy, double rho) { return energy > rho; }

// The refusal text for row `row` (callers prefix where the row came from and
// turn it into INVALID_ARGUMENT). Empty for kOk.
inline std::string RowRefusal(RowCheck check, int64_t row) {
  const std::string where = "row " + std::to_string(row);
  switch (check) {
    case RowCheck::kOk: return "";
    case RowCheck::kZeroNorm:
      return where + " has norm 0: an all-zero row cannot be l2-normalised";
    case RowCheck::kNormOverflow:
      return where + " has a norm above the float64 range (1.8e308): scale the embeddings down";
    case RowCheck::kEnergyOverflow:
      return where + " has a squared norm above the float64 range (1.8e308; preprocessing none "
                     "uses ||x||^2): scale the embeddings down";
  }
  return where + " is refused";
}

// Scales a row of `m` float64 to unit norm in place, given RowSquares of it
// (ssq > 0). On the plain path (exp = 0) this is x * (1 / sqrt(ssq)).
inline void NormaliseRow(double* row, int64_t m, ScaledSquares sq) {
  const double inv = 1.0 / std::sqrt(sq.ssq);
  if (sq.exp == 0) {
    for (int64_t c = 0; c < m; ++c) row[c] *= inv;
  } else {
    for (int64_t c = 0; c < m; ++c) row[c] = std::ldexp(row[c], -sq.exp) * inv;
  }
}

}  // namespace sigma

#endif  // SIGMA_KERNELS_INGEST_RULES_H_
