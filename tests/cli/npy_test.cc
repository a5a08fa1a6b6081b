#include "npy.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace sigma::cli {
namespace {

TEST(NpyTest, RoundTripsEveryWritableDType) {
  const auto path = std::filesystem::temp_directory_path() / "sigma_npy_roundtrip.npy";
  for (DType dtype : {DType::kFloat16, DType::kFloat32, DType::kFloat64}) {
    NpyArray array{dtype, 3, 5, {}};
    array.data.resize(3 * 5 * DTypeWidth(dtype));
    for (size_t i = 0; i < array.data.size(); ++i) array.data[i] = static_cast<unsigned char>(i % 61);
    ASSERT_TRUE(WriteNpy(path.string(), array).ok());
    absl::StatusOr<NpyArray> back = ReadNpy(path.string());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->dtype, dtype);
    EXPECT_EQ(back->rows, 3);
    EXPECT_EQ(back->cols, 5);
    EXPECT_EQ(back->data, array.data);
  }
}

TEST(NpyTest, RefusesUnsupportedArrays) {
  const auto path = std::filesystem::temp_directory_path() / "sigma_npy_bad.npy";
  auto write_header = [&](const std::string& header, size_t payload) {
    std::ofstream out(path, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = static_cast<uint16_t>(header.size());
    out.write(reinterpret_cast<const char*>(&len), 2);
    out << header << std::string(payload, '\0');
  };
  write_header("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }\n", 16);
  EXPECT_NE(ReadNpy(path.string()).status().message().find("unsupported .npy dtype"),
            std::string::npos);
  write_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n", 16);
  EXPECT_NE(ReadNpy(path.string()).status().message().find("Fortran"), std::string::npos);
  write_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }\n", 32);
  EXPECT_NE(ReadNpy(path.string()).status().message().find("2-D"), std::string::npos);
  write_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }\n", 16);
  EXPECT_NE(ReadNpy(path.string()).status().message().find("truncated"), std::string::npos);
  EXPECT_EQ(ReadNpy("/nonexistent/x.npy").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sigma::cli
