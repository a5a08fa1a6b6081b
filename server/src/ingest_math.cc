// The per-batch energy pass of the ingest path (declared in scheduler.h).
// Compiled with -O3 (see CMakeLists.txt) so that the loops vectorize.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "sigma/server/scheduler.h"

namespace sigma::server {
namespace {

template <typename Load>
bool RowEnergies(const uint8_t* data, int64_t rows, int64_t m, size_t width, Load load,
                 sigma::Preprocessing p, double rho, sigma::EnergyStats* stats) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = data + static_cast<size_t>(r * m) * width;
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 8 <= m; c += 8) {
      for (int k = 0; k < 8; ++k) {
        const double v = load(row + static_cast<size_t>(c + k) * width);
        a[k] += v * v;
      }
    }
    for (; c < m; ++c) {
      const double v = load(row + static_cast<size_t>(c) * width);
      a[0] += v * v;
    }
    const double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    if (!std::isfinite(s)) return false;
    // PreprocessRows' energy: 1 for a normalised (non-zero) l2 row, else ||x||^2.
    const double e = p == sigma::Preprocessing::kL2 ? (s > 0 ? 1.0 : 0.0) : s;
    ++stats->count;
    stats->max_energy = std::max(stats->max_energy, e);
    stats->sum_energy += e;
    if (e > rho) ++stats->rho_violations;
  }
  return true;
}

// l2 fast path for 16/32-bit floats: a row's energy after l2 is 1 when any
// element is non-zero and 0 otherwise (squares of these formats never
// underflow in float64), so only the bits are needed: per row, "some element
// has an all-ones exponent" (NaN/Inf) and "some element is non-zero".
template <typename Word>
bool L2RowEnergies(const uint8_t* data, int64_t rows, int64_t m, Word exp_mask, double rho,
                   sigma::EnergyStats* stats) {
  const Word magnitude = static_cast<Word>(~(Word{1} << (sizeof(Word) * 8 - 1)));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = data + static_cast<size_t>(r * m) * sizeof(Word);
    Word nonzero = 0;
    Word bad = 0;
    for (int64_t c = 0; c < m; ++c) {
      Word w;
      std::memcpy(&w, row + static_cast<size_t>(c) * sizeof(Word), sizeof(Word));
      nonzero |= static_cast<Word>(w & magnitude);
      bad |= static_cast<Word>((w & exp_mask) == exp_mask);
    }
    if (bad) return false;
    const double e = nonzero ? 1.0 : 0.0;
    ++stats->count;
    stats->max_energy = std::max(stats->max_energy, e);
    stats->sum_energy += e;
    if (e > rho) ++stats->rho_violations;
  }
  return true;
}

const float* HalfTable() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = static_cast<float>(sigma::HalfToDouble(static_cast<uint16_t>(i)));
    return t;
  }();
  return table.data();
}

}  // namespace

absl::Status BatchEnergy(const sigma::RowBlock& block, sigma::Preprocessing p, double rho,
                         sigma::EnergyStats* stats) {
  const auto* data = static_cast<const uint8_t*>(block.data);
  const size_t width = sigma::DTypeWidth(block.dtype);
  sigma::EnergyStats local;
  bool finite = false;
  const bool l2 = p == sigma::Preprocessing::kL2;
  switch (block.dtype) {
    case sigma::DType::kFloat32:
      if (l2) {
        finite = L2RowEnergies<uint32_t>(data, block.num_rows, block.m, 0x7f800000u, rho, &local);
        break;
      }
      finite = RowEnergies(data, block.num_rows, block.m, width, [](const uint8_t* q) {
        float f;
        std::memcpy(&f, q, 4);
        return static_cast<double>(f);
      }, p, rho, &local);
      break;
    case sigma::DType::kFloat64:
      finite = RowEnergies(data, block.num_rows, block.m, width, [](const uint8_t* q) {
        double d;
        std::memcpy(&d, q, 8);
        return d;
      }, p, rho, &local);
      break;
    case sigma::DType::kBFloat16:
      if (l2) {
        finite = L2RowEnergies<uint16_t>(data, block.num_rows, block.m, 0x7f80u, rho, &local);
        break;
      }
      finite = RowEnergies(data, block.num_rows, block.m, width, [](const uint8_t* q) {
        uint16_t h;
        std::memcpy(&h, q, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return static_cast<double>(f);
      }, p, rho, &local);
      break;
    case sigma::DType::kFloat16: {
      if (l2) {
        finite = L2RowEnergies<uint16_t>(data, block.num_rows, block.m, 0x7c00u, rho, &local);
        break;
      }
      const float* table = HalfTable();
      finite = RowEnergies(data, block.num_rows, block.m, width, [table](const uint8_t* q) {
        uint16_t h;
        std::memcpy(&h, q, 2);
        return static_cast<double>(table[h]);
      }, p, rho, &local);
      break;
    }
  }
  if (!finite) {
    // A NaN/Inf element (CheckFinite names it), or finite float64 values whose
    // squares overflow: then the exact, slow path of the kernels.
    if (absl::Status s = sigma::CheckFinite(block); !s.ok()) return s;
    local = sigma::EnergyStats{};
    std::vector<double> buf(static_cast<size_t>(block.m));
    for (int64_t r = 0; r < block.num_rows; ++r) {
      sigma::RowBlock one{data + static_cast<size_t>(r * block.m) * width, block.dtype, 1, block.m};
      sigma::ConvertToDouble(one, buf.data());
      sigma::PreprocessRows(p, rho, buf.data(), 1, block.m, &local);
    }
  }
  stats->Merge(local);
  return absl::OkStatus();
}

}  // namespace sigma::server
