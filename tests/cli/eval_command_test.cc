// `sigmactl eval` through the real binary: the shared test vectors, .npy input
// with sub-sampling, and clear errors for bad input.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "npy.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/estimator.h"
#include "sigma/kernels/sketch.h"

namespace sigma::cli {
namespace {

struct RunResult {
  int exit_code;
  std::string out;  // stdout and stderr together
};

// Runs `sigmactl eval ARGS`.
RunResult RunSigmactl(const std::string& args) {
  const std::string command = std::string(SIGMACTL_PATH) + " eval " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  RunResult result{-1, ""};
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.out.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool Close(double actual, double expected) {
  return std::fabs(actual - expected) <= std::max(1e-9 * std::fabs(expected), 1e-7);
}

std::filesystem::path TempDir() {
  auto dir = std::filesystem::temp_directory_path() /
             ("sigma_cli_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(EvalCommandTest, SharedTestVectorsReproduceThroughTheBinary) {
  const std::filesystem::path dir = std::filesystem::path(SIGMA_SHARED_DIR) / "testvectors";
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".json" || entry.path().filename() == "sketch.json") continue;
    const RunResult run = RunSigmactl(entry.path().string() + " --json --backend cpu");
    ASSERT_EQ(run.exit_code, 0) << run.out;
    const nlohmann::json got = nlohmann::json::parse(run.out);
    std::ifstream in(entry.path());
    const nlohmann::json tv = nlohmann::json::parse(in);
    for (const char* key : {"track1_lower", "track1_upper", "track2", "track2_raw", "track2_bias",
                            "track2_ci_halfwidth"}) {
      EXPECT_PRED2(Close, got.at(key).get<double>(), tv["expected"][key].get<double>())
          << entry.path().filename() << " " << key;
    }
    for (const char* flag : {"rho_violated", "n_a_below_m", "low_confidence"})
      EXPECT_EQ(got["flags"][flag], tv["expected_flags"][flag]) << entry.path() << " " << flag;
    EXPECT_EQ(got["m"], tv["m"]);
    EXPECT_EQ(got["n_a"], tv["n_A"]);
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

TEST(EvalCommandTest, NpyInputIsSubSampledByTheSketch) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  NpyArray array;
  array.dtype = DType::kFloat32;
  array.rows = 900;
  array.cols = 6;
  std::vector<float> values(array.rows * array.cols);
  for (float& v : values) v = normal(rng);
  array.data.resize(values.size() * 4);
  std::memcpy(array.data.data(), values.data(), array.data.size());
  const std::string path = (TempDir() / "emb.npy").string();
  ASSERT_TRUE(WriteNpy(path, array).ok());

  const RunResult run = RunSigmactl(path + " --json --n-a 200 --n 5000 --seed 9 --delta 1e-4 "
                                           "--backend cpu");
  ASSERT_EQ(run.exit_code, 0) << run.out;
  const nlohmann::json got = nlohmann::json::parse(run.out);
  EXPECT_EQ(got["n_a"], 200);
  EXPECT_EQ(got["n"], 5000.0);

  // The same computation through the library.
  std::vector<uint64_t> ids(array.rows);
  for (int64_t i = 0; i < array.rows; ++i) ids[i] = DefaultSampleId(0, i);
  std::vector<float> selected;
  for (int64_t index : SelectBottomK(9, 200, ids))
    selected.insert(selected.end(), values.begin() + index * 6, values.begin() + (index + 1) * 6);
  auto backend = std::move(*MakeBackend({BackendKind::kCpu, 0}));
  absl::StatusOr<TrackValues> v = EvaluateSnapshot(
      *backend, {{selected.data(), DType::kFloat32, 200, 6}, Preprocessing::kL2, 5000, 1e-4, 1.0});
  ASSERT_TRUE(v.ok());
  EXPECT_PRED2(Close, got["track2"].get<double>(), v->track2);
  EXPECT_PRED2(Close, got["track1_upper"].get<double>(), v->track1_upper);
  EXPECT_PRED2(Close, got["track2_ci_halfwidth"].get<double>(), v->track2_ci_halfwidth);
}

TEST(EvalCommandTest, TableOutputWithoutJson) {
  const RunResult run = RunSigmactl(std::string(SIGMA_SHARED_DIR) +
                                    "/testvectors/small_full.json --backend cpu");
  ASSERT_EQ(run.exit_code, 0) << run.out;
  EXPECT_NE(run.out.find("track1_upper"), std::string::npos);
  EXPECT_NE(run.out.find("-20.648747413"), std::string::npos) << run.out;
}

TEST(EvalCommandTest, BadInputGivesAClearMessageAndNonZeroExit) {
  const auto dir = TempDir();
  RunResult run = RunSigmactl((dir / "missing.json").string());
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("cannot open"), std::string::npos) << run.out;

  std::ofstream(dir / "bad.json") << "{\"rows\": [[1, 2], [3]]}";
  run = RunSigmactl((dir / "bad.json").string());
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("row 1 has 1 values"), std::string::npos) << run.out;

  std::ofstream(dir / "garbage.json") << "not json";
  run = RunSigmactl((dir / "garbage.json").string());
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("not valid JSON"), std::string::npos) << run.out;

  std::ofstream(dir / "garbage.npy") << "definitely not numpy";
  run = RunSigmactl((dir / "garbage.npy").string());
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("not a .npy file"), std::string::npos) << run.out;

  NpyArray nan_array{DType::kFloat32, 2, 2, std::vector<unsigned char>(16, 0)};
  const float nan = std::nanf("");
  std::memcpy(nan_array.data.data() + 12, &nan, 4);
  ASSERT_TRUE(WriteNpy((dir / "nan.npy").string(), nan_array).ok());
  run = RunSigmactl((dir / "nan.npy").string());
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("row 1, column 1"), std::string::npos) << run.out;

  // A zero row cannot be l2-normalised: refused as sigmad refuses it.
  NpyArray zero_row{DType::kFloat32, 2, 2, std::vector<unsigned char>(16, 0)};
  const float one = 1.0f;
  std::memcpy(zero_row.data.data(), &one, 4);
  ASSERT_TRUE(WriteNpy((dir / "zero_row.npy").string(), zero_row).ok());
  run = RunSigmactl((dir / "zero_row.npy").string());
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("row 1 has norm 0"), std::string::npos) << run.out;

  run = RunSigmactl(std::string(SIGMA_SHARED_DIR) + "/testvectors/small_full.json --bogus");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_NE(run.out.find("unknown flag --bogus"), std::string::npos) << run.out;

  run = RunSigmactl(std::string(SIGMA_SHARED_DIR) + "/testvectors/small_full.json --n 3");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("smaller than n_A"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace sigma::cli
