// Reads a snapshot in the shared test-vector JSON format (fields m, n_A, n,
// delta, rho, preprocessing, rows; see ../shared/testvectors/README.md).
#ifndef SIGMA_CLIENT_CLI_JSON_INPUT_H_
#define SIGMA_CLIENT_CLI_JSON_INPUT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sigma/kernels/preprocess.h"

namespace sigma::cli {

struct SnapshotFile {
  int64_t m = 0;
  int64_t n_a = 0;           // rows given
  std::optional<double> n;   // corpus size
  std::optional<double> delta;
  std::optional<double> rho;
  std::optional<Preprocessing> preprocessing;
  std::vector<double> rows;  // [n_a, m] row-major
};

// INVALID_ARGUMENT naming the field for a malformed file; NOT_FOUND if absent.
absl::StatusOr<SnapshotFile> ReadSnapshotJson(const std::string& path);

}  // namespace sigma::cli

#endif  // SIGMA_CLIENT_CLI_JSON_INPUT_H_
