#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace sigma::testing {

double NaiveLogDet(const std::vector<double>& x, int64_t rows, int64_t m, double scale,
                   double shift) {
  std::vector<double> a(static_cast<size_t>(m * m), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j <= i; ++j) a[i * m + j] += x[r * m + i] * x[r * m + j];
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j <= i; ++j) a[i * m + j] *= scale;
    a[i * m + i] += shift;
  }
  double log_det = 0.0;
  for (int64_t j = 0; j < m; ++j) {
    double d = a[j * m + j];
    for (int64_t k = 0; k < j; ++k) d -= a[j * m + k] * a[j * m + k];
    if (d <= 0) throw std::runtime_error("NaiveLogDet: not positive definite");
    const double l = std::sqrt(d);
    a[j * m + j] = l;
    log_det += 2.0 * std::log(l);
    for (int64_t i = j + 1; i < m; ++i) {
      double s = a[i * m + j];
      for (int64_t k = 0; k < j; ++k) s -= a[i * m + k] * a[j * m + k];
      a[i * m + j] = s / l;
    }
  }
  return log_det;
}

std::vector<double> AnisotropicRows(std::mt19937_64& rng, int64_t rows, int64_t m, double decay,
                                    bool normalise) {
  std::normal_distribution<double> normal(0.0, 1.0);
  // A fixed random orthogonal-ish mixing: Gram-Schmidt of a Gaussian matrix.
  std::mt19937_64 mix_rng(12345 + m);
  std::vector<double> q(static_cast<size_t>(m * m));
  for (double& v : q) v = normal(mix_rng);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t k = 0; k < i; ++k) {
      double dot = 0;
      for (int64_t c = 0; c < m; ++c) dot += q[i * m + c] * q[k * m + c];
      for (int64_t c = 0; c < m; ++c) q[i * m + c] -= dot * q[k * m + c];
    }
    double norm = 0;
    for (int64_t c = 0; c < m; ++c) norm += q[i * m + c] * q[i * m + c];
    norm = std::sqrt(norm);
    for (int64_t c = 0; c < m; ++c) q[i * m + c] /= norm;
  }
  std::vector<double> out(static_cast<size_t>(rows * m), 0.0);
  std::vector<double> z(static_cast<size_t>(m));
  for (int64_t r = 0; r < rows; ++r) {
    double scale = 1.0;
    for (int64_t i = 0; i < m; ++i, scale *= decay) z[i] = normal(rng) * scale;
    double energy = 0;
    for (int64_t c = 0; c < m; ++c) {
      double v = 0;
      for (int64_t i = 0; i < m; ++i) v += z[i] * q[i * m + c];
      out[r * m + c] = v;
      energy += v * v;
    }
    if (normalise && energy > 0)
      for (int64_t c = 0; c < m; ++c) out[r * m + c] /= std::sqrt(energy);
  }
  return out;
}

std::string SharedDir() {
  if (const char* env = std::getenv("SIGMA_SHARED_DIR"); env != nullptr && *env) return env;
  return SIGMA_SHARED_DIR;
}

std::vector<std::string> TestVectorFiles() {
  std::vector<std::string> files;
  const std::filesystem::path dir = std::filesystem::path(SharedDir()) / "testvectors";
  if (!std::filesystem::exists(dir)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".json" && entry.path().filename() != "sketch.json")
      files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

TestVector LoadTestVector(const std::string& path) {
  std::ifstream in(path);
  const nlohmann::json doc = nlohmann::json::parse(in);
  TestVector tv;
  tv.name = doc.at("name").get<std::string>();
  tv.m = doc.at("m");
  tv.n_a = doc.at("n_A");
  tv.n = doc.at("n");
  tv.delta = doc.at("delta");
  tv.rho = doc.at("rho");
  tv.preprocessing = doc.at("preprocessing") == "l2" ? Preprocessing::kL2 : Preprocessing::kNone;
  for (const auto& row : doc.at("rows"))
    for (const auto& v : row) tv.rows.push_back(v.get<double>());
  const auto& e = doc.at("expected");
  tv.track1_lower = e.at("track1_lower");
  tv.track1_upper = e.at("track1_upper");
  tv.track2 = e.at("track2");
  tv.track2_raw = e.at("track2_raw");
  tv.track2_bias = e.at("track2_bias");
  tv.track2_ci_halfwidth = e.at("track2_ci_halfwidth");
  const auto& f = doc.at("expected_flags");
  tv.rho_violated = f.at("rho_violated");
  tv.n_a_below_m = f.at("n_a_below_m");
  tv.low_confidence = f.at("low_confidence");
  tv.max_energy = doc.at("max_energy");
  return tv;
}

bool Close(double actual, double expected, double rel, double abs) {
  return std::fabs(actual - expected) <= std::max(rel * std::fabs(expected), abs);
}

}  // namespace sigma::testing
