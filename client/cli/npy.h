// Minimal reader of NumPy .npy files (format 1.0-3.0): C-order 2-D arrays of
// little-endian float16, float32 or float64 (and bfloat16 written by ml_dtypes
// as '<V2' is not accepted: save bf16 as raw bytes via the Python client).
#ifndef SIGMA_CLIENT_CLI_NPY_H_
#define SIGMA_CLIENT_CLI_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sigma/kernels/dtype.h"

namespace sigma::cli {

struct NpyArray {
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<unsigned char> data;  // rows * cols * DTypeWidth(dtype) bytes, row-major

  RowBlock block() const { return RowBlock{data.data(), dtype, rows, cols}; }
};

// Reads `path`. INVALID_ARGUMENT naming the problem for anything that is not a
// 2-D C-order array of a supported dtype (a 1-D array is one row); NOT_FOUND
// when the file cannot be opened.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Writes a 2-D array (used by tests and tools).
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

// The share row sigmad named (rows of `arrays` concatenated in order, as
// sigmactl send streams them) as a file and row of `paths`, as a message line
// for a refused send; "" when the row is beyond them.
std::string FileRowNote(const std::vector<NpyArray>& arrays, const std::vector<std::string>& paths, int64_t row);

}  // namespace sigma::cli

#endif  // SIGMA_CLIENT_CLI_NPY_H_
