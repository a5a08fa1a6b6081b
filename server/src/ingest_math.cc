// The per-batch energy pass of the ingest path (declared in scheduler.h).
// Compiled with -O3 (see CMakeLists.txt) so that the loops vectorize. The
// rules (energy, budget, refusals, overflow-safe norms) are those of
// sigma/kernels/ingest_rules.h; this file only makes them fast on wire bytes.
#include <cmath>
#include <cstring>
#include <vector>

#include "sigma/kernels/ingest_rules.h"
#include "sigma/server/refusal.h"
#include "sigma/server/scheduler.h"

namespace sigma::server {
namespace {

// The two refusals of a batch's energy pass, each counted under its own
// reason: NaN/Inf elements (CheckFinite names the element) and rows whose norm
// the preprocessing refuses (RowRefusal: norm 0 under l2, beyond float64).
absl::Status NonFinite(const absl::Status& s) {
  return s.ok() ? s : Refusal(s.code(), "non_finite", s.message());
}
absl::Status NormRefusal(sigma::RowCheck check, int64_t row) {
  return Refusal(absl::StatusCode::kInvalidArgument, "invalid_norm", sigma::RowRefusal(check, row));
}

// Decides, once per block, whether a row whose plain sum of squares is not
// finite holds NaN/Inf (refused, CheckFinite names the element) or merely
// overflows (then the scaled norm decides). One CheckFinite pass per block.
class FiniteGuard {
 public:
  FiniteGuard(const sigma::RowBlock& block, int64_t first_row) : block_(block), first_row_(first_row) {}
  absl::Status Check() {
    if (!checked_) status_ = sigma::CheckFinite(block_, first_row_);
    checked_ = true;
    return status_;
  }

 private:
  const sigma::RowBlock& block_;
  const int64_t first_row_;
  bool checked_ = false;
  absl::Status status_;
};

// The plain float64 sum of squares of one row, 8 accumulators (vectorizes).
template <typename Load>
double PlainSquares(const uint8_t* row, int64_t m, size_t width, const Load& load) {
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
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Energies of every row of `block` (EnergyOfRow), element bytes read by `load`.
template <typename Load>
absl::Status RowEnergies(const sigma::RowBlock& block, Load load, sigma::Preprocessing p,
                         double rho, sigma::EnergyStats* stats, int64_t first_row) {
  const auto* data = static_cast<const uint8_t*>(block.data);
  const size_t width = sigma::DTypeWidth(block.dtype);
  FiniteGuard finite(block, first_row);
  for (int64_t r = 0; r < block.num_rows; ++r) {
    const uint8_t* row = data + static_cast<size_t>(r * block.m) * width;
    const double plain = PlainSquares(row, block.m, width, load);
    if (!std::isfinite(plain)) {
      if (absl::Status s = finite.Check(); !s.ok()) return WithShareRow(NonFinite(s), first_row + r);
    }
    const sigma::ScaledSquares sq = sigma::RowSquares(
        block.m, plain, [&](int64_t c) { return load(row + static_cast<size_t>(c) * width); });
    const sigma::RowEnergy e = sigma::EnergyOfRow(p, sq);
    if (e.check != sigma::RowCheck::kOk) return WithShareRow(NormRefusal(e.check, first_row + r), first_row + r);
    sigma::AddRowEnergy(e.energy, rho, stats);
  }
  return absl::OkStatus();
}

// l2 fast path for 16/32-bit floats: their squares never overflow or underflow
// in float64, so a row's l2 verdict depends only on its bits: "some element
// has an all-ones exponent" (NaN/Inf) and "some element is non-zero" (else the
// row has norm 0 and is refused).
template <typename Word>
absl::Status L2RowEnergies(const sigma::RowBlock& block, Word exp_mask, double rho,
                           sigma::EnergyStats* stats, int64_t first_row) {
  const auto* data = static_cast<const uint8_t*>(block.data);
  const Word magnitude = static_cast<Word>(~(Word{1} << (sizeof(Word) * 8 - 1)));
  for (int64_t r = 0; r < block.num_rows; ++r) {
    const uint8_t* row = data + static_cast<size_t>(r * block.m) * sizeof(Word);
    Word nonzero = 0;
    Word bad = 0;
    for (int64_t c = 0; c < block.m; ++c) {
      Word w;
      std::memcpy(&w, row + static_cast<size_t>(c) * sizeof(Word), sizeof(Word));
      nonzero |= static_cast<Word>(w & magnitude);
      bad |= static_cast<Word>((w & exp_mask) == exp_mask);
    }
    if (bad) return WithShareRow(NonFinite(sigma::CheckFinite(block, first_row)), first_row + r);
    // Any positive stand-in for ||x||^2 gives a nonzero narrow row's verdict.
    const sigma::RowEnergy e =
        sigma::EnergyOfRow(sigma::Preprocessing::kL2, sigma::ScaledSquares{0, nonzero ? 1.0 : 0.0});
    if (e.check != sigma::RowCheck::kOk) return WithShareRow(NormRefusal(e.check, first_row + r), first_row + r);
    sigma::AddRowEnergy(e.energy, rho, stats);
  }
  return absl::OkStatus();
}

const float* HalfTable() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = static_cast<float>(sigma::HalfToDouble(static_cast<uint16_t>(i)));
    return t;
  }();
  return table.data();
}

template <typename Word>
Word LoadWord(const uint8_t* q) {
  Word w;
  std::memcpy(&w, q, sizeof(Word));
  return w;
}

}  // namespace

absl::Status BatchEnergy(const sigma::RowBlock& block, sigma::Preprocessing p, double rho,
                         sigma::EnergyStats* stats, int64_t first_row) {
  sigma::EnergyStats local;
  absl::Status status;
  const bool l2 = p == sigma::Preprocessing::kL2;
  switch (block.dtype) {
    case sigma::DType::kFloat32:
      status = l2 ? L2RowEnergies<uint32_t>(block, 0x7f800000u, rho, &local, first_row)
                  : RowEnergies(block, [](const uint8_t* q) { return static_cast<double>(LoadWord<float>(q)); },
                                p, rho, &local, first_row);
      break;
    case sigma::DType::kFloat64:
      status = RowEnergies(block, [](const uint8_t* q) { return LoadWord<double>(q); }, p, rho, &local, first_row);
      break;
    case sigma::DType::kBFloat16:
      status = l2 ? L2RowEnergies<uint16_t>(block, 0x7f80u, rho, &local, first_row)
                  : RowEnergies(block, [](const uint8_t* q) { return sigma::BFloat16ToDouble(LoadWord<uint16_t>(q)); },
                                p, rho, &local, first_row);
      break;
    case sigma::DType::kFloat16: {
      if (l2) {
        status = L2RowEnergies<uint16_t>(block, 0x7c00u, rho, &local, first_row);
        break;
      }
      const float* table = HalfTable();
      status = RowEnergies(block, [table](const uint8_t* q) { return static_cast<double>(table[LoadWord<uint16_t>(q)]); },
                           p, rho, &local, first_row);
      break;
    }
  }
  if (!status.ok()) return status;
  stats->Merge(local);
  return absl::OkStatus();
}

}  // namespace sigma::server
