#include "npy.h"

#include <cstring>
#include <fstream>
#include <regex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sigma::cli {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::StatusOr<DType> DTypeFromDescr(const std::string& descr) {
  if (descr == "<f4") return DType::kFloat32;
  if (descr == "<f2") return DType::kFloat16;
  if (descr == "<f8") return DType::kFloat64;
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported .npy dtype '", descr,
      "': expected little-endian float16 ('<f2'), float32 ('<f4') or float64 ('<f8')"));
}

std::string DescrFromDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "<f2";
    case DType::kFloat32: return "<f4";
    case DType::kFloat64: return "<f8";
    case DType::kBFloat16: return "";
  }
  return "";
}

}  // namespace

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  char magic[6];
  unsigned char version[2];
  if (!in.read(magic, 6) || std::memcmp(magic, kMagic, 6) != 0)
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a .npy file (bad magic)"));
  if (!in.read(reinterpret_cast<char*>(version), 2) || version[0] < 1 || version[0] > 3)
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': unsupported .npy version"));
  uint32_t header_len = 0;
  if (version[0] == 1) {
    unsigned char len[2];
    if (!in.read(reinterpret_cast<char*>(len), 2))
      return absl::InvalidArgumentError(absl::StrCat("'", path, "': truncated header"));
    header_len = len[0] | (len[1] << 8);
  } else {
    unsigned char len[4];
    if (!in.read(reinterpret_cast<char*>(len), 4))
      return absl::InvalidArgumentError(absl::StrCat("'", path, "': truncated header"));
    header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<uint32_t>(len[3]) << 24);
  }
  if (header_len > (1u << 20))
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': header too long"));
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len))
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': truncated header"));

  std::smatch match;
  static const std::regex kDescr(R"('descr'\s*:\s*'([^']*)')");
  static const std::regex kOrder(R"('fortran_order'\s*:\s*(True|False))");
  static const std::regex kShape(R"('shape'\s*:\s*\(([^)]*)\))");
  if (!std::regex_search(header, match, kDescr))
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': header has no descr"));
  absl::StatusOr<DType> dtype = DTypeFromDescr(match[1].str());
  if (!dtype.ok())
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': ", dtype.status().message()));
  if (!std::regex_search(header, match, kOrder))
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': header has no fortran_order"));
  if (match[1].str() == "True")
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "': Fortran-order arrays are not supported; save C-order"));
  if (!std::regex_search(header, match, kShape))
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': header has no shape"));
  std::vector<int64_t> dims;
  for (absl::string_view part : absl::StrSplit(match[1].str(), ',', absl::SkipWhitespace())) {
    int64_t dim;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &dim) || dim < 0)
      return absl::InvalidArgumentError(absl::StrCat("'", path, "': bad shape"));
    dims.push_back(dim);
  }
  NpyArray array;
  array.dtype = *dtype;
  if (dims.size() == 1) {
    // Refused, as the Python client does: one row or one column is a guess.
    return absl::InvalidArgumentError(absl::StrFormat(
        "'%s': a 1-D array of shape (%d,) is not [rows, m]; save one row as [1, m] "
        "(numpy: x.reshape(1, -1))", path, dims[0]));
  } else if (dims.size() == 2) {
    array.rows = dims[0];
    array.cols = dims[1];
  } else {
    return absl::InvalidArgumentError(absl::StrFormat(
        "'%s': expected a 2-D array [rows, m], got %d dimensions", path, dims.size()));
  }
  if (array.rows == 0 || array.cols == 0)
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': the array is empty"));
  const size_t bytes = static_cast<size_t>(array.rows) * array.cols * DTypeWidth(array.dtype);
  array.data.resize(bytes);
  if (!in.read(reinterpret_cast<char*>(array.data.data()), static_cast<std::streamsize>(bytes)))
    return absl::InvalidArgumentError(absl::StrFormat(
        "'%s': truncated data: shape (%d, %d) needs %d bytes", path, array.rows, array.cols, bytes));
  return array;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  const std::string descr = DescrFromDType(array.dtype);
  if (descr.empty()) return absl::InvalidArgumentError("bf16 cannot be written as .npy");
  std::string header = absl::StrFormat("{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }",
                                       descr, array.rows, array.cols);
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write '", path, "'"));
  out.write(kMagic, 6);
  const unsigned char version[2] = {1, 0};
  out.write(reinterpret_cast<const char*>(version), 2);
  const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(len), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(array.data.data()),
            static_cast<std::streamsize>(array.data.size()));
  if (!out) return absl::DataLossError(absl::StrCat("write to '", path, "' failed"));
  return absl::OkStatus();
}

std::string FileRowNote(const std::vector<NpyArray>& arrays, const std::vector<std::string>& paths, int64_t row) {
  int64_t first = 0;
  for (size_t i = 0; i < arrays.size() && i < paths.size(); ++i) {
    if (row < first + arrays[i].rows)
      return absl::StrFormat("sigmactl: share row %d is row %d of %s (counting from 0); nothing of this share was "
                             "kept, send the corrected file(s) again\n",
                             row, row - first, paths[i]);
    first += arrays[i].rows;
  }
  return "";
}

}  // namespace sigma::cli
