// Test helpers: a naive float64 reference independent of BLAS/LAPACK, seeded
// data generators, and the shared test vectors.
#ifndef SIGMA_TESTS_KERNELS_REFERENCE_H_
#define SIGMA_TESTS_KERNELS_REFERENCE_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "sigma/kernels/preprocess.h"

namespace sigma::testing {

// log det(scale * X^T X + shift * I) for X [rows, m] row-major, by a textbook
// Cholesky in float64 (O(m^3), small m only).
double NaiveLogDet(const std::vector<double>& x, int64_t rows, int64_t m, double scale,
                   double shift);

// Anisotropic Gaussian rows [rows, m]: column c scaled by decay^c, then a fixed
// random rotation mixes them; optionally l2-normalised.
std::vector<double> AnisotropicRows(std::mt19937_64& rng, int64_t rows, int64_t m, double decay,
                                    bool normalise);

struct TestVector {
  std::string name;
  int64_t m = 0, n_a = 0;
  double n = 0, delta = 0, rho = 0;
  Preprocessing preprocessing = Preprocessing::kL2;
  std::vector<double> rows;
  double track1_lower, track1_upper, track2, track2_raw, track2_bias, track2_ci_halfwidth;
  bool rho_violated, n_a_below_m, low_confidence;
  double max_energy;
};

std::string SharedDir();
std::vector<std::string> TestVectorFiles();  // every *.json except sketch.json
TestVector LoadTestVector(const std::string& path);

// |actual - expected| <= max(rel * |expected|, abs).
bool Close(double actual, double expected, double rel = 1e-9, double abs = 1e-7);
// Three-argument form for EXPECT_PRED3 (absolute floor 1e-7).
inline bool CloseRel(double actual, double expected, double rel) {
  return Close(actual, expected, rel, 1e-7);
}

}  // namespace sigma::testing

#endif  // SIGMA_TESTS_KERNELS_REFERENCE_H_
