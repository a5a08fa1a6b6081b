// The client library and sigmactl against a real sigmad process on loopback
// (free ports, temp db, --port-file). Skipped when the build has no sigmad.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "sigma/client/client.h"
#include "test_util.h"

namespace sigma::client {
namespace {

using ::sigma::testing::CommandResult;
using ::sigma::testing::CuttingProxy;
using ::sigma::testing::LoadJson;
using ::sigma::testing::RunCommand;
using ::sigma::testing::Sigmad;
using ::sigma::testing::SigmactlPath;
using ::sigma::testing::TempDir;
using ::sigma::testing::TestVectorFiles;
using ::sigma::testing::WriteNpyRows;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr const char* kTrackFields[] = {"track1_lower", "track1_upper",        "track2",
                                        "track2_raw",   "track2_ci_halfwidth"};

bool Close(double actual, double expected) {
  return std::fabs(actual - expected) <= std::max(1e-7, 1e-9 * std::fabs(expected));
}

double Field(const v1::GenerationReport& r, const std::string& name) {
  if (name == "track1_lower") return r.track1_lower();
  if (name == "track1_upper") return r.track1_upper();
  if (name == "track2") return r.track2();
  if (name == "track2_raw") return r.track2_raw();
  if (name == "track2_bias") return r.track2_bias();
  if (name == "track2_ci_halfwidth") return r.track2_ci_halfwidth();
  ADD_FAILURE() << "unknown field " << name;
  return NAN;
}

// A JSON number, or an int64 printed as a string (proto3 JSON mapping).
double JsonNumber(const nlohmann::json& j) {
  if (j.is_string()) return std::stod(j.get<std::string>());
  return j.get<double>();
}

struct Vector {
  std::string name;
  nlohmann::json json;
  int32_t m = 0;
  int64_t rows = 0;
  std::vector<double> data;

  v1::JobConfig Config() const {
    v1::JobConfig config;
    config.set_n_a(json["n_A"].get<int64_t>());
    config.set_delta(json["delta"].get<double>());
    config.set_rho(json["rho"].get<double>());
    config.set_preprocessing(json["preprocessing"] == "none" ? v1::PREPROCESSING_NONE
                                                             : v1::PREPROCESSING_L2);
    return config;
  }
  int64_t n() const { return json["n"].get<int64_t>(); }
  Embeddings Block() const { return Embeddings{data.data(), v1::DTYPE_FP64, rows, m, {}}; }
};

std::vector<Vector> LoadVectors() {
  std::vector<Vector> vectors;
  for (const std::string& path : TestVectorFiles()) {
    Vector v;
    v.json = LoadJson(path);
    v.name = v.json["name"].get<std::string>();
    v.m = v.json["m"].get<int32_t>();
    for (const auto& row : v.json["rows"]) {
      for (const auto& x : row) v.data.push_back(x.get<double>());
      ++v.rows;
    }
    vectors.push_back(std::move(v));
  }
  return vectors;
}

void ExpectMatchesVector(const v1::GenerationReport& r, const Vector& v) {
  SCOPED_TRACE(v.name);
  const nlohmann::json& e = v.json["expected"];
  for (const char* f : kTrackFields) {
    EXPECT_PRED2(Close, Field(r, f), e[f].get<double>()) << f;
  }
  EXPECT_PRED2(Close, r.track2_bias(), e["track2_bias"].get<double>()) << "track2_bias";
  EXPECT_EQ(r.m(), v.m);
  EXPECT_EQ(r.n(), static_cast<double>(v.n()));
  EXPECT_EQ(r.n_a(), v.json["n_A"].get<int64_t>());
  const nlohmann::json& flags = v.json["expected_flags"];
  EXPECT_EQ(r.flags().rho_violated(), flags["rho_violated"].get<bool>());
  EXPECT_EQ(r.flags().n_a_below_m(), flags["n_a_below_m"].get<bool>());
  EXPECT_EQ(r.flags().low_confidence(), flags["low_confidence"].get<bool>());
  EXPECT_PRED2(Close, r.flags().max_energy(), v.json["max_energy"].get<double>());
}

void ExpectJsonMatchesVector(const nlohmann::json& r, const Vector& v) {
  SCOPED_TRACE(v.name);
  const nlohmann::json& e = v.json["expected"];
  for (const char* f : kTrackFields) {
    ASSERT_TRUE(r.contains(f)) << f;
    EXPECT_PRED2(Close, JsonNumber(r[f]), e[f].get<double>()) << f;
  }
  EXPECT_PRED2(Close, JsonNumber(r["track2_bias"]), e["track2_bias"].get<double>());
  EXPECT_EQ(JsonNumber(r["m"]), v.m);
  EXPECT_EQ(JsonNumber(r["n"]), static_cast<double>(v.n()));
  EXPECT_EQ(JsonNumber(r["n_a"]), v.json["n_A"].get<double>());
  const nlohmann::json& flags = v.json["expected_flags"];
  for (const char* f : {"rho_violated", "n_a_below_m", "low_confidence"}) {
    EXPECT_EQ(r["flags"][f].get<bool>(), flags[f].get<bool>()) << f;
  }
  // Every field of the list is there under its proto name.
  for (const char* key :
       {"job", "tap", "generation", "m", "n", "n_a", "backend", "track1_lower", "track1_upper",
        "track2", "track2_ci_halfwidth", "track1_drift", "track2_drift", "divergence",
        "drift_halfwidth", "per_dim", "baseline_generation", "flags", "alerts",
        "compute_seconds"}) {
    EXPECT_TRUE(r.contains(key)) << key;
  }
}

void ExpectSameReport(const v1::GenerationReport& a, const v1::GenerationReport& b) {
  for (const char* f : kTrackFields) EXPECT_PRED2(Close, Field(a, f), Field(b, f)) << f;
  EXPECT_PRED2(Close, a.track2_bias(), b.track2_bias());
  EXPECT_EQ(a.m(), b.m());
  EXPECT_EQ(a.n(), b.n());
  EXPECT_EQ(a.n_a(), b.n_a());
}

std::vector<float> RandomRows(int64_t rows, int32_t m, uint64_t seed, double scale_tail = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> data(static_cast<size_t>(rows * m));
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t c = 0; c < m; ++c) {
      data[static_cast<size_t>(r * m + c)] =
          normal(rng) * static_cast<float>(c >= m / 2 ? scale_tail : 1.0);
    }
  }
  return data;
}

class SigmadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (sigma::testing::SigmadPath().empty()) return;
    dir_ = new TempDir();
    auto started = Sigmad::Start(dir_->path());
    if (!started.ok()) {
      start_error_ = new std::string(started.status().ToString());
      return;
    }
    daemon_ = started->release();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
    delete dir_;
    dir_ = nullptr;
    delete start_error_;
    start_error_ = nullptr;
  }
  void SetUp() override {
    if (sigma::testing::SigmadPath().empty()) GTEST_SKIP() << "sigmad is not part of this build";
    ASSERT_EQ(start_error_, nullptr) << *start_error_;
    ClientOptions options;
    options.deadline = absl::Seconds(60);
    options.initial_backoff = absl::Milliseconds(20);
    auto c = Client::Create({daemon_->target()}, options);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
  }
  void TearDown() override {
    if (HasFailure() && daemon_ != nullptr) {
      std::string log = daemon_->Log();
      if (log.size() > 4000) log = log.substr(log.size() - 4000);
      std::cerr << "---- sigmad log (tail) ----\n" << log << "\n";
    }
  }

  static CommandResult Sigmactl(std::vector<std::string> args) {
    args.insert(args.begin(), SigmactlPath());
    return RunCommand(args);
  }

  static TempDir* dir_;
  static Sigmad* daemon_;
  static std::string* start_error_;
  std::unique_ptr<Client> client_;
};

TempDir* SigmadTest::dir_ = nullptr;
Sigmad* SigmadTest::daemon_ = nullptr;
std::string* SigmadTest::start_error_ = nullptr;

TEST_F(SigmadTest, HealthIsServing) {
  auto status = client_->Health(daemon_->target());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, ServingStatus::kServing);
  CommandResult r = Sigmactl({"health", "--target", daemon_->target()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("SERVING"));
}

TEST_F(SigmadTest, TestVectorsThroughTheClient) {
  const std::vector<Vector> vectors = LoadVectors();
  ASSERT_GE(vectors.size(), 5u);
  for (const Vector& v : vectors) {
    ShareOptions share;
    share.corpus_size = v.n();
    share.config = v.Config();
    auto response = client_->SendGeneration({"tv-lib-" + v.name, "default", 0}, v.Block(), share);
    ASSERT_TRUE(response.ok()) << v.name << ": " << response.status();
    ASSERT_TRUE(response->sealed()) << v.name;
    EXPECT_EQ(response->rows_accepted(), v.rows);
    ExpectMatchesVector(response->report(), v);
    EXPECT_EQ(response->report().job(), "tv-lib-" + v.name);
    EXPECT_EQ(response->report().generation(), 0);
  }
}

TEST_F(SigmadTest, TestVectorsThroughSigmactlSendJson) {
  const std::vector<Vector> vectors = LoadVectors();
  TempDir tmp;
  for (const Vector& v : vectors) {
    const std::string path = tmp.File(v.name + ".npy");
    ASSERT_TRUE(WriteNpyRows(path, v.data.data(), v.rows, v.m).ok());
    const v1::JobConfig c = v.Config();
    CommandResult r = Sigmactl(
        {"send", path, "--target", daemon_->target(), "--job", "tv-cli-" + v.name, "--tap",
         "layer0", "--generation", "0", "--corpus-size", std::to_string(v.n()), "--n-a",
         std::to_string(c.n_a()), "--delta", absl::StrCat(c.delta()), "--rho",
         absl::StrCat(c.rho()), "--preprocessing", v.json["preprocessing"].get<std::string>(),
         "--json"});
    ASSERT_EQ(r.exit_code, 0) << v.name << ": " << r.err;
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "one JSON object on one line";
    nlohmann::json report = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(report.is_discarded()) << r.out;
    ExpectJsonMatchesVector(report, v);
    EXPECT_EQ(report["job"], "tv-cli-" + v.name);
    EXPECT_EQ(report["tap"], "layer0");
  }
}

TEST_F(SigmadTest, SigmactlConcatenatesFilesAndSendsRankShares) {
  const std::vector<Vector> vectors = LoadVectors();
  const Vector* v = nullptr;
  for (const Vector& x : vectors) {
    if (x.name == "sampled_tenth") v = &x;
  }
  ASSERT_NE(v, nullptr);
  TempDir tmp;
  // Three files, the rows of the vector in order.
  const int64_t cuts[] = {0, 150, 151, v->rows};
  std::vector<std::string> files;
  for (int i = 0; i < 3; ++i) {
    files.push_back(tmp.File(absl::StrCat("part", i, ".npy")));
    ASSERT_TRUE(WriteNpyRows(files.back(), v->data.data() + cuts[i] * v->m, cuts[i + 1] - cuts[i], v->m).ok());
  }
  const std::vector<std::string> config = {
      "--target", daemon_->target(), "--corpus-size", std::to_string(v->n()), "--n-a",
      std::to_string(v->Config().n_a()), "--delta", "1e-06", "--rho", "1", "--json",
      "--batch-rows", "17"};
  std::vector<std::string> args = {"send", files[0], files[1], files[2],
                                   "--job", "cli-concat", "--generation", "0"};
  args.insert(args.end(), config.begin(), config.end());
  CommandResult r = Sigmactl(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectJsonMatchesVector(nlohmann::json::parse(r.out), *v);

  // The same rows as two rank shares from two sigmactl runs: rank 0 does not
  // seal (IngestResponse JSON), rank 1 does (the report).
  std::vector<std::string> rank0 = {"send", files[0], "--job", "cli-ranks", "--generation", "0",
                                    "--rank", "0", "--world-size", "2"};
  rank0.insert(rank0.end(), config.begin(), config.end());
  r = Sigmactl(rank0);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json partial = nlohmann::json::parse(r.out);
  EXPECT_EQ(partial["sealed"], false) << r.out;
  EXPECT_EQ(JsonNumber(partial["rows_accepted"]), 150);
  std::vector<std::string> rank1 = {"send", files[1], files[2], "--job", "cli-ranks",
                                    "--generation", "0", "--rank", "1", "--world-size", "2"};
  rank1.insert(rank1.end(), config.begin(), config.end());
  r = Sigmactl(rank1);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectJsonMatchesVector(nlohmann::json::parse(r.out), *v);
}

TEST_F(SigmadTest, MultiRankEqualsSingleRank) {
  const int32_t m = 16;
  const int64_t rows = 3000;
  const std::vector<float> data = RandomRows(rows, m, 11);
  v1::JobConfig config;
  config.set_n_a(512);  // < rows: the bottom-k sketch picks the same rows either way
  config.set_seed(7);
  ShareOptions share;
  share.config = config;
  const Embeddings block{data.data(), v1::DTYPE_FP32, rows, m, {}};
  auto single = client_->SendGeneration({"mr-single", "t", 0}, block, share);
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_TRUE(single->sealed());
  auto multi = client_->SendGenerationMultiRank({"mr-multi", "t", 0}, block, 4, share);
  ASSERT_TRUE(multi.ok()) << multi.status();
  ExpectSameReport(*multi, single->report());
  EXPECT_EQ(multi->n(), rows);
  EXPECT_EQ(multi->n_a(), 512);
  EXPECT_EQ(multi->world_size(), 4);
}

TEST_F(SigmadTest, PresketchGivesTheSameReport) {
  const int32_t m = 16;
  const int64_t rows = 6000;
  const std::vector<float> data = RandomRows(rows, m, 13);
  v1::JobConfig config;
  config.set_n_a(400);
  config.set_seed(99);
  ShareOptions share;
  share.config = config;
  const Embeddings block{data.data(), v1::DTYPE_FP32, rows, m, {}};
  auto plain = client_->SendGeneration({"ps-plain", "t", 0}, block, share);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(plain->sealed());

  auto params = client_->EffectiveSketchParams("ps-sketched", m, config);
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->n_a, 400);
  EXPECT_EQ(params->seed, 99u);
  share.presketch = *params;
  auto sketched = client_->SendGeneration({"ps-sketched", "t", 0}, block, share);
  ASSERT_TRUE(sketched.ok()) << sketched.status();
  ASSERT_TRUE(sketched->sealed());
  EXPECT_EQ(sketched->rows_accepted(), 400);
  ExpectSameReport(sketched->report(), plain->report());
  EXPECT_EQ(sketched->report().n(), rows);
  EXPECT_NEAR(sketched->report().flags().max_energy(), 1.0, 1e-12);

  // Four ranks that each pre-sketch: the same again.
  auto multi = client_->SendGenerationMultiRank({"ps-multi", "t", 0}, block, 4, share);
  ASSERT_TRUE(multi.ok()) << multi.status();
  ExpectSameReport(*multi, plain->report());

  // sigmactl send --presketch: the same once more.
  TempDir tmp;
  ASSERT_TRUE(WriteNpyRows(tmp.File("x.npy"), data.data(), rows, m).ok());
  CommandResult r = Sigmactl({"send", tmp.File("x.npy"), "--target", daemon_->target(), "--job",
                              "ps-cli", "--tap", "t", "--generation", "0", "--n-a", "400",
                              "--seed", "99", "--presketch", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* f : kTrackFields) {
    EXPECT_PRED2(Close, JsonNumber(j[f]), Field(plain->report(), f)) << f;
  }
  EXPECT_EQ(JsonNumber(j["n"]), rows);

  // A known job: its own parameters win over the ones passed.
  v1::JobConfig other;
  other.set_n_a(7);
  params = client_->EffectiveSketchParams("ps-plain", m, other);
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->n_a, 400);
  params = client_->EffectiveSketchParams("ps-unknown-job", 512, {});
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->n_a, 16 * 512);
  EXPECT_EQ(params->preprocessing, v1::PREPROCESSING_L2);
}

TEST_F(SigmadTest, ResendAfterSealReturnsTheStoredReport) {
  const std::vector<float> data = RandomRows(500, 8, 3);
  const Embeddings block{data.data(), v1::DTYPE_FP32, 500, 8, {}};
  auto first = client_->SendGeneration({"resend", "t", 0}, block, {});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->sealed());
  auto again = client_->SendGeneration({"resend", "t", 0}, block, {});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->sealed());
  ExpectSameReport(again->report(), first->report());
  EXPECT_EQ(again->report().sealed_unix_ms(), first->report().sealed_unix_ms());
  auto history = client_->GetHistory("resend");
  ASSERT_TRUE(history.ok()) << history.status();
  EXPECT_EQ(history->size(), 1u);
}

// Runs (docs/server.md "Runs"): SnapshotId.run / .resume reach sigmad; a new
// run of a job seals its own generation 0 (not refused as a resend with other
// data); GetHistory, GetReport and CloseGeneration take the run.
TEST_F(SigmadTest, RunsThroughTheClient) {
  const std::vector<float> a = RandomRows(500, 8, 4), b = RandomRows(500, 8, 5);
  const Embeddings first{a.data(), v1::DTYPE_FP32, 500, 8, {}}, second{b.data(), v1::DTYPE_FP32, 500, 8, {}};
  auto one = client_->SendGeneration({"cpp.runs", "t", 0}, first, {});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->run(), "1");
  SnapshotId fresh{"cpp.runs", "t", 0};
  fresh.resume = v1::RESUME_NEVER;
  auto two = client_->SendGeneration(fresh, second, {});
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->run(), "2");
  EXPECT_EQ(two->report().run(), "2");
  auto latest = client_->GetHistory("cpp.runs");
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_EQ(latest->size(), 1u);
  EXPECT_EQ((*latest)[0].run(), "2");
  SnapshotId old{"cpp.runs", "t", 0, "1"};
  auto report = client_->GetReport(old);
  ASSERT_TRUE(report.ok()) << report.status();
  ExpectSameReport(*report, one->report());
  auto closed = client_->CloseGeneration(old);  // idempotent on a sealed generation
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->run(), "1");
  SnapshotId missing{"cpp.runs", "t", 1, "nope", v1::RESUME_MUST};
  EXPECT_TRUE(absl::IsNotFound(client_->SendGeneration(missing, first, {}).status()));
}

TEST_F(SigmadTest, RetryAfterAKilledStream) {
  const int32_t m = 64;
  const int64_t rows = 12000;  // 3 MiB of fp32
  const std::vector<float> data = RandomRows(rows, m, 5);
  const Embeddings block{data.data(), v1::DTYPE_FP32, rows, m, {}};
  v1::JobConfig config;
  config.set_n_a(2048);
  ShareOptions share;
  share.config = config;
  auto direct = client_->SendGeneration({"retry-direct", "t", 0}, block, share);
  ASSERT_TRUE(direct.ok()) << direct.status();

  // The first two connections through the proxy die after 1 MiB went up.
  CuttingProxy proxy(daemon_->grpc_port(), 2, 1 << 20);
  ClientOptions options;
  options.chunk_bytes = 64 << 10;
  options.initial_backoff = absl::Milliseconds(20);
  auto c = Client::Create({proxy.target()}, options);
  ASSERT_TRUE(c.ok());
  auto response = (*c)->SendGeneration({"retry-proxy", "t", 0}, block, share);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(proxy.cuts(), 2);
  EXPECT_GE((*c)->retries(), 2);
  ASSERT_TRUE(response->sealed());
  ExpectSameReport(response->report(), direct->report());
  EXPECT_EQ(response->report().n(), rows);
}

// A daemon behind a slow link (the HTTP/2 handshake takes 400 ms) is reached
// on the first attempt: the client must not cap gRPC's connect timeout (it did:
// GRPC_ARG_MIN_RECONNECT_BACKOFF_MS = 100 is also gRPC's minimum connect
// timeout, so every connect slower than ~100 ms failed as UNAVAILABLE).
TEST_F(SigmadTest, SlowHandshakeConnectsWithoutRetries) {
  CuttingProxy slow_link(daemon_->grpc_port(), 0, 0, /*handshake_delay_ms=*/400);
  ClientOptions options;
  options.max_retries = 0;
  auto c = Client::Create({slow_link.target()}, options);
  ASSERT_TRUE(c.ok());
  auto status = (*c)->Health(slow_link.target());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, ServingStatus::kServing);
  auto jobs = (*c)->ListJobs();
  EXPECT_TRUE(jobs.ok()) << jobs.status();
}

TEST_F(SigmadTest, ErrorsSurfaceWithCodeAndMessage) {
  auto closed = client_->CloseGeneration({"no-such-job", "default", 0});
  EXPECT_TRUE(absl::IsNotFound(closed.status())) << closed.status();
  EXPECT_FALSE(closed.status().message().empty());

  const std::vector<float> data = RandomRows(10, 4, 1);
  auto bad_name = client_->SendGeneration(
      {"bad name!", "t", 0}, Embeddings{data.data(), v1::DTYPE_FP32, 10, 4, {}}, {});
  EXPECT_TRUE(absl::IsInvalidArgument(bad_name.status())) << bad_name.status();
  EXPECT_FALSE(bad_name.status().message().empty());
  EXPECT_EQ(client_->retries(), 0);

  CommandResult r = Sigmactl({"close", "--target", daemon_->target(), "--job", "no-such-job",
                              "--generation", "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith("sigmactl: NOT_FOUND: "));
  r = Sigmactl({"close", "--target", daemon_->target(), "--job", "x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--generation is required"));
}

TEST_F(SigmadTest, TwoGenerationsHistoryJobsAndConfigure) {
  const int32_t m = 8;
  v1::JobConfig config;
  config.set_n_a(1000);
  config.set_preprocessing(v1::PREPROCESSING_NONE);
  config.set_rho(100);
  ShareOptions share;
  share.config = config;
  const std::vector<float> g0 = RandomRows(1000, m, 21);
  const std::vector<float> g1 = RandomRows(1000, m, 22, /*scale_tail=*/0.5);
  auto r0 = client_->SendGeneration({"drift", "t", 0},
                                    Embeddings{g0.data(), v1::DTYPE_FP32, 1000, m, {}}, share);
  ASSERT_TRUE(r0.ok()) << r0.status();
  auto r1 = client_->SendGeneration({"drift", "t", 1},
                                    Embeddings{g1.data(), v1::DTYPE_FP32, 1000, m, {}}, share);
  ASSERT_TRUE(r1.ok()) << r1.status();
  const v1::GenerationReport& a = r0->report();
  const v1::GenerationReport& b = r1->report();
  EXPECT_EQ(b.baseline_generation(), 0);
  EXPECT_PRED2(Close, b.track2_drift(), b.track2() - a.track2());
  EXPECT_PRED2(Close, b.track1_drift(), b.track1_upper() - a.track1_upper());
  EXPECT_PRED2(Close, b.divergence(), b.track1_drift() - b.track2_drift());
  EXPECT_LT(b.track2_drift(), -1.0);  // half the dimensions shrank by 2x: ~4 log 0.25

  auto history = client_->GetHistory("drift", "t");
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->size(), 2u);
  EXPECT_EQ((*history)[0].generation(), 0);
  EXPECT_EQ((*history)[1].generation(), 1);

  auto jobs = client_->ListJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  bool found = false;
  for (const v1::JobInfo& j : *jobs) {
    if (j.job() != "drift") continue;
    found = true;
    EXPECT_EQ(j.generations_sealed(), 2);
    EXPECT_EQ(j.last_generation(), 1);
    EXPECT_EQ(j.m(), m);
  }
  EXPECT_TRUE(found);

  v1::JobConfig thresholds;
  thresholds.mutable_thresholds()->set_drift_warning(0.2);
  auto info = client_->ConfigureJob("drift", thresholds);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->config().thresholds().drift_warning(), 0.2);
  EXPECT_EQ(info->config().n_a(), 1000);  // unchanged

  // The same through sigmactl.
  const std::string t = daemon_->target();
  CommandResult r = Sigmactl({"report", "--target", t, "--job", "drift", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json h = nlohmann::json::parse(r.out);
  ASSERT_EQ(h["reports"].size(), 2u);
  EXPECT_PRED2(Close, JsonNumber(h["reports"][1]["track2_drift"]), b.track2_drift());
  r = Sigmactl({"report", "--target", t, "--job", "drift"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("TRACK2"));
  r = Sigmactl({"jobs", "--target", t, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"job\":\"drift\""));
  r = Sigmactl({"jobs", "--target", t});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("drift"));
  r = Sigmactl({"configure", "--target", t, "--job", "drift", "--drift-critical", "0.7",
                "--divergence-warning", "0.05", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json job = nlohmann::json::parse(r.out);
  EXPECT_EQ(job["config"]["thresholds"]["drift_critical"].get<double>(), 0.7);
  EXPECT_EQ(job["config"]["thresholds"]["divergence_warning"].get<double>(), 0.05);
  // The significance settings (spec §3) through sigmactl; a bad value is refused.
  r = Sigmactl({"configure", "--target", t, "--job", "drift", "--probe", "fixed", "--trend-k", "3",
                "--trend-z", "2.5", "--trend-floor", "0", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  job = nlohmann::json::parse(r.out);
  EXPECT_EQ(job["config"]["probe"], "PROBE_FIXED");
  EXPECT_EQ(job["config"]["trend_k"], 3);
  EXPECT_EQ(job["config"]["trend_z"].get<double>(), 2.5);
  EXPECT_EQ(job["config"]["trend_floor"].get<double>(), 0.0);
  r = Sigmactl({"configure", "--target", t, "--job", "drift", "--probe", "sometimes"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--probe"));
  r = Sigmactl({"configure", "--target", t, "--job", "drift", "--trend-floor", "-1"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("trend_floor"));
  r = Sigmactl({"close", "--target", t, "--job", "drift", "--tap", "t", "--generation", "1",
                "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_PRED2(Close, JsonNumber(nlohmann::json::parse(r.out)["track2"]), b.track2());
}


// GetJob / GetReport (issue 17 "Protocol") through the client and sigmactl:
// the daemon resolves n_A for a given m, the taps' m and dtype, one report.
TEST_F(SigmadTest, GetJobAndGetReportThroughTheClientAndSigmactl) {
  const int32_t m = 8;
  const std::vector<float> data = RandomRows(500, m, 31);
  auto sent = client_->SendGeneration({"query", "t", 0}, Embeddings{data.data(), v1::DTYPE_FP32, 500, m, {}}, {});
  ASSERT_TRUE(sent.ok()) << sent.status();
  ASSERT_TRUE(sent->sealed());

  auto info = client_->GetJob("query");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->config().n_a(), 4096);
  ASSERT_EQ(info->tap_info_size(), 1);
  EXPECT_EQ(info->tap_info(0).tap(), "t");
  EXPECT_EQ(info->tap_info(0).m(), m);
  EXPECT_EQ(info->tap_info(0).dtype(), v1::DTYPE_FP32);
  info = client_->GetJob("query", 300);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->config().n_a(), 4800);
  EXPECT_EQ(client_->GetJob("no-such-job").status().code(), absl::StatusCode::kNotFound);
  // The pre-sketch parameters of another tap of the job with a larger m: n_A for that
  // m (the daemon's rule), not for the job's first m.
  auto params = client_->EffectiveSketchParams("query", 300);
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->n_a, 4800);

  auto report = client_->GetReport({"query", "t", 0});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->SerializeAsString(), sent->report().SerializeAsString());
  auto missing = client_->GetReport({"query", "t", 1});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("job 'query' tap 't' generation 1"));

  const std::string t = daemon_->target();
  CommandResult r = Sigmactl({"job", "--target", t, "--job", "query", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["n_a"], 4096);
  EXPECT_EQ(j["tap_info"][0]["dtype"], "DTYPE_FP32");
  r = Sigmactl({"job", "--target", t, "--job", "query", "--m", "300"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("n_A 4800 (for m = 300)"));
  EXPECT_THAT(r.out, HasSubstr("tap t  m 8  dtype fp32  open: -"));
  r = Sigmactl({"job", "--target", t, "--job", "no-such-job"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  r = Sigmactl({"job", "--target", t});
  EXPECT_EQ(r.exit_code, 2);
  r = Sigmactl({"report", "--target", t, "--job", "query", "--tap", "t", "--generation", "0", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_PRED2(Close, JsonNumber(nlohmann::json::parse(r.out)["track2"]), sent->report().track2());
  r = Sigmactl({"report", "--target", t, "--job", "query", "--tap", "t", "--generation", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("job query  run 1  tap t  generation 0"));
  r = Sigmactl({"report", "--target", t, "--job", "query", "--tap", "t", "--generation", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("generation 1"));
  r = Sigmactl({"report", "--target", t, "--job", "query", "--generation", "-1"});
  EXPECT_EQ(r.exit_code, 2);
}

// sigmad --tokens: the client's bearer_token, sigmactl --token-file and
// $SIGMA_TOKEN; the token never shows in the daemon's log.
TEST(SigmadTokensTest, ClientAndSigmactlSendTheToken) {
  if (sigma::testing::SigmadPath().empty()) GTEST_SKIP() << "sigmad is not part of this build";
  TempDir dir;
  const std::string write_token = "cpp-write-token-0123456789";
  {
    // token_sha256 of write_token; the read token is stored in plain text.
    std::ofstream f(dir.File("tokens.yaml"));
    f << "- token_sha256: 4c6ef1ce0e9b4b6fa0d09d90c34e64b2b6b1c5e3a8e0e1df7d5c9b1f1d3a2c10\n"
         "  role: write\n  job_prefixes: [unused.]\n"
         "- token: " << write_token << "\n  role: write\n  job_prefixes: [cpp.]\n";
  }
  auto started = Sigmad::Start(dir.path(), {"--backend", "cpu", "--tokens", dir.File("tokens.yaml")});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<Sigmad> daemon = *std::move(started);
  const std::vector<float> data = RandomRows(64, 8, 3);
  const Embeddings block{data.data(), v1::DTYPE_FP32, 64, 8, {}};

  ClientOptions options;
  options.max_retries = 0;
  auto anonymous = Client::Create({daemon->target()}, options);
  ASSERT_TRUE(anonymous.ok());
  EXPECT_TRUE(absl::IsUnauthenticated((*anonymous)->GetHistory("cpp.job").status()));
  options.bearer_token = write_token;
  auto client = Client::Create({daemon->target()}, options);
  ASSERT_TRUE(client.ok());
  auto sent = (*client)->SendGeneration({"cpp.job", "default", 0}, block, {});
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_TRUE(sent->sealed());
  EXPECT_TRUE(absl::IsPermissionDenied(
      (*client)->SendGeneration({"other.job", "default", 0}, block, {}).status()));
  auto history = (*client)->GetHistory("cpp.job");
  ASSERT_TRUE(history.ok()) << history.status();
  EXPECT_EQ(history->size(), 1u);
  options.bearer_token = "has space";
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Create({daemon->target()}, options).status()));

  CommandResult r = RunCommand({SigmactlPath(), "report", "--target", daemon->target(), "--job", "cpp.job"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith("sigmactl: UNAUTHENTICATED: "));
  {
    std::ofstream f(dir.File("token"));
    f << "  " << write_token << "\n";
  }
  r = RunCommand({SigmactlPath(), "report", "--target", daemon->target(), "--job", "cpp.job", "--token-file",
                  dir.File("token")});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = RunCommand({SigmactlPath(), "report", "--target", daemon->target(), "--job", "cpp.job", "--token-file",
                  dir.File("missing")});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  setenv("SIGMA_TOKEN", write_token.c_str(), 1);
  r = RunCommand({SigmactlPath(), "jobs", "--target", daemon->target()});
  unsetenv("SIGMA_TOKEN");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cpp.job"));
  daemon->Stop();
  EXPECT_EQ(daemon->Log().find(write_token), std::string::npos) << daemon->Log();
}

// A new job whose seed and n_a come from sigmad's config file (`defaults:`, `jobs.NAME`):
// EffectiveSketchParams returns those, so the pre-sketched report equals a full send
// (through the library and through sigmactl send --presketch).
TEST(SigmadConfigFileTest, PresketchOfANewJobUsesTheDaemonsConfig) {
  if (sigma::testing::SigmadPath().empty()) GTEST_SKIP() << "sigmad is not part of this build";
  TempDir dir;
  {
    std::ofstream f(dir.File("sigmad.yaml"));
    f << "defaults:\n  seed: 777\njobs:\n  cfg-named:\n    n_a: 300\n    seed: 99\n"
         "  cfg-cli:\n    n_a: 300\n    seed: 99\n";
  }
  auto started = Sigmad::Start(dir.path(), {"--backend", "cpu", "--config", dir.File("sigmad.yaml")});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<Sigmad> daemon = *std::move(started);
  auto client = Client::Create({daemon->target()}, ClientOptions());
  ASSERT_TRUE(client.ok()) << client.status();
  const int32_t m = 8;
  const int64_t rows = 5000;
  const std::vector<float> data = RandomRows(rows, m, 21);
  const Embeddings block{data.data(), v1::DTYPE_FP32, rows, m, {}};

  for (const auto& [job, n_a, seed] : {std::tuple<std::string, int64_t, uint64_t>{"cfg-named", 300, 99},
                                        {"cfg-default", 4096, 777}}) {
    auto params = (*client)->EffectiveSketchParams(job, m, {});
    ASSERT_TRUE(params.ok()) << params.status();
    EXPECT_EQ(params->n_a, n_a) << job;
    EXPECT_EQ(params->seed, seed) << job;
    ShareOptions share;
    share.presketch = *params;
    auto sketched = (*client)->SendGeneration({job, "sketched", 0}, block, share);
    ASSERT_TRUE(sketched.ok()) << sketched.status();
    ASSERT_TRUE(sketched->sealed());
    auto full = (*client)->SendGeneration({job, "full", 0}, block, {});
    ASSERT_TRUE(full.ok()) << full.status();
    ASSERT_TRUE(full->sealed());
    EXPECT_EQ(sketched->report().n_a(), n_a) << job;
    ExpectSameReport(sketched->report(), full->report());
  }

  TempDir tmp;
  ASSERT_TRUE(WriteNpyRows(tmp.File("x.npy"), data.data(), rows, m).ok());
  CommandResult r = RunCommand({SigmactlPath(), "send", tmp.File("x.npy"), "--target", daemon->target(),
                                "--job", "cfg-cli", "--generation", "0", "--presketch", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto full = (*client)->SendGeneration({"cfg-cli", "full", 0}, block, {});
  ASSERT_TRUE(full.ok()) << full.status();
  nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* f : kTrackFields) {
    EXPECT_PRED2(Close, JsonNumber(j[f]), Field(full->report(), f)) << f;
  }
}

}  // namespace
}  // namespace sigma::client
