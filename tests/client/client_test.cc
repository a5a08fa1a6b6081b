// Client library against an in-process fake SigmaMonitor (no sigmad needed):
// framing of a share, chunking and seq numbers, retries, error statuses,
// multi-rank split, health, rendezvous hashing.
#include <algorithm>
#include <fstream>
#include <sstream>
#include <limits>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "sigma/client/client.h"
#include "sigma/client/json.h"
#include "sigma/v1/sigma.grpc.pb.h"
#include "test_util.h"

namespace sigma::client {
namespace {

using ::testing::HasSubstr;

// Records every Ingest stream; fails the first `fail_count` calls with
// `fail_code` (after reading the whole stream, or after `fail_after_messages`).
class FakeMonitor final : public v1::SigmaMonitor::Service {
 public:
  struct Stream {
    std::vector<v1::IngestRequest> messages;
  };

  grpc::Status Ingest(grpc::ServerContext* /*context*/, grpc::ServerReader<v1::IngestRequest>* reader,
                      v1::IngestResponse* response) override {
    const int call = calls_.fetch_add(1);
    if (call < delay_count_) std::this_thread::sleep_for(delay_);
    Stream stream;
    v1::IngestRequest request;
    while (reader->Read(&request)) stream.messages.push_back(request);
    if (call < fail_count_) return grpc::Status(fail_code_, absl::StrCat("injected failure ", call));
    std::lock_guard<std::mutex> lock(mu_);
    int64_t rows = 0;
    int64_t batches = 0;
    int32_t world_size = 1;
    for (const auto& m : stream.messages) {
      if (m.has_batch()) rows += m.batch().rows(), ++batches;
      if (m.has_open()) world_size = m.open().world_size();
    }
    response->set_rows_accepted(rows);
    response->set_batches_accepted(batches);
    streams_.push_back(std::move(stream));
    if (++ends_ == world_size) {
      response->set_sealed(true);
      response->mutable_report()->set_job(streams_.back().messages.front().open().job());
      response->mutable_report()->set_track2(42.0);
      response->mutable_report()->set_world_size(world_size);
    }
    return grpc::Status::OK;
  }

  grpc::Status CloseGeneration(grpc::ServerContext*, const v1::CloseGenerationRequest* request,
                               v1::GenerationReport* report) override {
    if (request->job() == "missing")
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no snapshot missing/default/3");
    report->set_job(request->job());
    report->set_tap(request->tap());
    report->set_generation(request->generation());
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest*,
                        v1::ListJobsResponse* response) override {
    response->add_jobs()->set_job(name_ + "-b");
    response->add_jobs()->set_job(name_ + "-a");
    return grpc::Status::OK;
  }

  grpc::Status ConfigureJob(grpc::ServerContext*, const v1::ConfigureJobRequest* request,
                            v1::JobInfo* info) override {
    if (request->config().has_delta() && request->config().delta() <= 0)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "delta must be > 0");
    info->set_job(request->job());
    *info->mutable_config() = request->config();
    return grpc::Status::OK;
  }

  std::vector<Stream> streams() {
    std::lock_guard<std::mutex> lock(mu_);
    return streams_;
  }
  int calls() const { return calls_.load(); }

  int fail_count_ = 0;
  grpc::StatusCode fail_code_ = grpc::StatusCode::UNAVAILABLE;
  int delay_count_ = 0;
  std::chrono::milliseconds delay_{0};
  std::string name_ = "fake";

 private:
  std::atomic<int> calls_{0};
  std::mutex mu_;
  std::vector<Stream> streams_;
  int ends_ = 0;
};

class FakeServer {
 public:
  explicit FakeServer(FakeMonitor* service,
                      std::shared_ptr<grpc::ServerCredentials> credentials = nullptr) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0",
                             credentials ? credentials : grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { server_->Shutdown(std::chrono::system_clock::now()); }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

ClientOptions FastOptions() {
  ClientOptions options;
  options.deadline = absl::Seconds(10);
  options.initial_backoff = absl::Milliseconds(5);
  options.max_backoff = absl::Milliseconds(50);
  return options;
}

std::unique_ptr<Client> MakeClient(const std::string& target, ClientOptions options = FastOptions()) {
  auto c = Client::Create({target}, options);
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

std::vector<float> Ramp(int64_t rows, int32_t m) {
  std::vector<float> data(static_cast<size_t>(rows * m));
  std::iota(data.begin(), data.end(), 0.0f);
  return data;
}

TEST(ClientTest, StreamsOpenChunkedBatchesAndEnd) {
  FakeMonitor service;
  FakeServer server(&service);
  ClientOptions options = FastOptions();
  const int32_t m = 4;
  options.chunk_bytes = 10 * m * sizeof(float);  // 10 rows per batch
  auto client = MakeClient(server.target(), options);
  const std::vector<float> data = Ramp(95, m);
  ShareOptions share;
  share.corpus_size = 1000;
  v1::JobConfig config;
  config.set_n_a(64);
  config.set_preprocessing(v1::PREPROCESSING_NONE);
  share.config = config;
  auto response = client->SendGeneration({"job-1", "layer.7", 3},
                                         Embeddings{data.data(), v1::DTYPE_FP32, 95, m, {}}, share);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(response->sealed());
  EXPECT_EQ(response->report().job(), "job-1");
  EXPECT_EQ(response->rows_accepted(), 95);

  auto streams = service.streams();
  ASSERT_EQ(streams.size(), 1u);
  const auto& msgs = streams[0].messages;
  ASSERT_EQ(msgs.size(), 1u + 10u + 1u);
  ASSERT_TRUE(msgs.front().has_open());
  const v1::OpenSnapshot& open = msgs.front().open();
  EXPECT_EQ(open.job(), "job-1");
  EXPECT_EQ(open.tap(), "layer.7");
  EXPECT_EQ(open.generation(), 3);
  EXPECT_EQ(open.rank(), 0);
  EXPECT_EQ(open.world_size(), 1);
  EXPECT_EQ(open.m(), m);
  EXPECT_EQ(open.dtype(), v1::DTYPE_FP32);
  ASSERT_TRUE(open.has_corpus_size());
  EXPECT_EQ(open.corpus_size(), 1000);
  EXPECT_EQ(open.config().n_a(), 64);
  EXPECT_EQ(open.config().preprocessing(), v1::PREPROCESSING_NONE);
  std::string bytes;
  for (size_t i = 1; i + 1 < msgs.size(); ++i) {
    ASSERT_TRUE(msgs[i].has_batch());
    EXPECT_EQ(msgs[i].batch().seq(), static_cast<int64_t>(i - 1));
    EXPECT_EQ(msgs[i].batch().rows(), i < 10 ? 10 : 5);
    EXPECT_EQ(msgs[i].batch().data().size(), msgs[i].batch().rows() * m * sizeof(float));
    EXPECT_EQ(msgs[i].batch().sample_ids_size(), 0);
    bytes += msgs[i].batch().data();
  }
  ASSERT_EQ(bytes.size(), data.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(bytes.data(), data.data(), bytes.size()), 0);
  ASSERT_TRUE(msgs.back().has_end());
  EXPECT_EQ(msgs.back().end().count(), 0);
  EXPECT_FALSE(msgs.back().end().has_max_energy());
}

TEST(ClientTest, SeveralBlocksContinueSeqAndCarrySampleIds) {
  FakeMonitor service;
  FakeServer server(&service);
  ClientOptions options = FastOptions();
  options.chunk_bytes = 4 * 2 * sizeof(double);  // 4 rows per batch
  auto client = MakeClient(server.target(), options);
  std::vector<double> a(6 * 2, 1.0), b(3 * 2, 2.0);
  std::vector<uint64_t> ids_a = {10, 11, 12, 13, 14, 15}, ids_b = {20, 21, 22};
  const Embeddings blocks[] = {{a.data(), v1::DTYPE_FP64, 6, 2, ids_a},
                               {b.data(), v1::DTYPE_FP64, 3, 2, ids_b}};
  auto response = client->SendGeneration({"job", "default", 0}, blocks, ShareOptions{});
  ASSERT_TRUE(response.ok()) << response.status();
  const auto msgs = service.streams().at(0).messages;
  // open, [4, 2] of block a, [3] of block b, end.
  ASSERT_EQ(msgs.size(), 5u);
  EXPECT_EQ(msgs[1].batch().seq(), 0);
  EXPECT_EQ(msgs[2].batch().seq(), 1);
  EXPECT_EQ(msgs[3].batch().seq(), 2);
  EXPECT_EQ(msgs[2].batch().rows(), 2);
  EXPECT_THAT(msgs[2].batch().sample_ids(), ::testing::ElementsAre(14, 15));
  EXPECT_THAT(msgs[3].batch().sample_ids(), ::testing::ElementsAre(20, 21, 22));
}

TEST(ClientTest, NarrowRowsAreChunkedWithinTheDaemonsRowsPerBatch) {
  // 1 MiB (the default chunk_bytes) of m = 1 fp32 rows is 262144 rows: sigmad
  // refuses more than its default --max-rows-per-batch = 65536.
  FakeMonitor service;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  const int64_t rows = 70000;
  const std::vector<float> data = Ramp(rows, 1);
  auto response = client->SendGeneration({"job", "default", 0},
                                         Embeddings{data.data(), v1::DTYPE_FP32, rows, 1, {}}, ShareOptions{});
  ASSERT_TRUE(response.ok()) << response.status();
  const auto msgs = service.streams().at(0).messages;
  ASSERT_EQ(msgs.size(), 4u);  // open, 65536 + 4464 rows, end
  EXPECT_EQ(msgs[1].batch().rows(), 65536);
  EXPECT_EQ(msgs[2].batch().rows(), rows - 65536);
  EXPECT_EQ(msgs[2].batch().seq(), 1);
}

TEST(ClientTest, InvalidInputFailsWithoutRpc) {
  FakeMonitor service;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  std::vector<float> x(8, 1.0f);
  std::vector<uint64_t> ids = {1};
  const Embeddings mixed[] = {{x.data(), v1::DTYPE_FP32, 2, 4, {}},
                              {x.data(), v1::DTYPE_FP32, 1, 8, {}}};
  EXPECT_TRUE(absl::IsInvalidArgument(
      client->SendGeneration({"j"}, mixed, ShareOptions{}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      client->SendGeneration({"j"}, Embeddings{x.data(), v1::DTYPE_UNSPECIFIED, 2, 4, {}}, {})
          .status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      client->SendGeneration({"j"}, Embeddings{x.data(), v1::DTYPE_FP32, 2, 4, ids}, {}).status()));
  ShareOptions bad_rank;
  bad_rank.rank = 2;
  bad_rank.world_size = 2;
  EXPECT_TRUE(absl::IsInvalidArgument(
      client->SendGeneration({"j"}, Embeddings{x.data(), v1::DTYPE_FP32, 2, 4, {}}, bad_rank)
          .status()));
  EXPECT_EQ(service.calls(), 0);
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Create({}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Create({"a:1", "a:1"}).status()));
}

TEST(ClientTest, RetriesUnavailableByResendingTheWholeShare) {
  FakeMonitor service;
  service.fail_count_ = 2;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  const std::vector<float> data = Ramp(7, 3);
  auto response =
      client->SendGeneration({"j"}, Embeddings{data.data(), v1::DTYPE_FP32, 7, 3, {}}, {});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(response->sealed());
  EXPECT_EQ(service.calls(), 3);
  EXPECT_EQ(client->retries(), 2);
  const auto msgs = service.streams().at(0).messages;
  ASSERT_EQ(msgs.size(), 3u);  // the third attempt carried the whole share again
  EXPECT_EQ(msgs[1].batch().seq(), 0);
  EXPECT_EQ(msgs[1].batch().rows(), 7);
}

TEST(ClientTest, RetriesDeadlineExceeded) {
  FakeMonitor service;
  service.delay_count_ = 1;
  service.delay_ = std::chrono::milliseconds(600);
  FakeServer server(&service);
  ClientOptions options = FastOptions();
  options.deadline = absl::Milliseconds(300);
  auto client = MakeClient(server.target(), options);
  const std::vector<float> data = Ramp(2, 2);
  auto response =
      client->SendGeneration({"j"}, Embeddings{data.data(), v1::DTYPE_FP32, 2, 2, {}}, {});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_GE(client->retries(), 1);
}

TEST(ClientTest, GivesUpAfterMaxRetries) {
  FakeMonitor service;
  service.fail_count_ = 100;
  FakeServer server(&service);
  ClientOptions options = FastOptions();
  options.max_retries = 2;
  auto client = MakeClient(server.target(), options);
  const std::vector<float> data = Ramp(2, 2);
  auto response =
      client->SendGeneration({"j"}, Embeddings{data.data(), v1::DTYPE_FP32, 2, 2, {}}, {});
  EXPECT_TRUE(absl::IsUnavailable(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("injected failure 2"));
  EXPECT_EQ(service.calls(), 3);
}

TEST(ClientTest, OtherErrorsAreNotRetriedAndKeepCodeAndMessage) {
  FakeMonitor service;
  service.fail_count_ = 1;
  service.fail_code_ = grpc::StatusCode::INVALID_ARGUMENT;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  const std::vector<float> data = Ramp(2, 2);
  auto response =
      client->SendGeneration({"j"}, Embeddings{data.data(), v1::DTYPE_FP32, 2, 2, {}}, {});
  EXPECT_TRUE(absl::IsInvalidArgument(response.status())) << response.status();
  EXPECT_EQ(response.status().message(), "injected failure 0");
  EXPECT_EQ(service.calls(), 1);
  EXPECT_EQ(client->retries(), 0);

  auto closed = client->CloseGeneration({"missing", "default", 3});
  EXPECT_TRUE(absl::IsNotFound(closed.status()));
  EXPECT_EQ(closed.status().message(), "no snapshot missing/default/3");
  v1::JobConfig bad;
  bad.set_delta(-1);
  auto configured = client->ConfigureJob("j", bad);
  EXPECT_TRUE(absl::IsInvalidArgument(configured.status()));
  EXPECT_EQ(configured.status().message(), "delta must be > 0");
}

TEST(ClientTest, UnreachableTargetIsUnavailable) {
  ClientOptions options = FastOptions();
  options.max_retries = 1;
  auto client = MakeClient("127.0.0.1:1", options);
  auto jobs = client->ListJobs();
  EXPECT_TRUE(absl::IsUnavailable(jobs.status())) << jobs.status();
  EXPECT_EQ(client->retries(), 1);
}

TEST(ClientTest, FromGrpcStatusKeepsEveryCode) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  for (int code = 1; code <= 16; ++code) {
    const absl::Status s =
        FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "msg"));
    EXPECT_EQ(static_cast<int>(s.code()), code);
    EXPECT_EQ(s.message(), "msg");
  }
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "x")).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(ClientTest, MultiRankSplitsRowsWithGlobalSampleIds) {
  FakeMonitor service;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  const int32_t m = 3;
  const std::vector<float> data = Ramp(10, m);
  ShareOptions share;
  share.corpus_size = 50;
  auto report = client->SendGenerationMultiRank(
      {"mr", "t", 1}, Embeddings{data.data(), v1::DTYPE_FP32, 10, m, {}}, 3, share);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->job(), "mr");
  EXPECT_EQ(report->world_size(), 3);
  auto streams = service.streams();
  ASSERT_EQ(streams.size(), 3u);
  std::map<int, std::vector<uint64_t>> ids_by_rank;
  std::string bytes_by_rank[3];
  for (const auto& s : streams) {
    const auto& open = s.messages.front().open();
    EXPECT_EQ(open.world_size(), 3);
    EXPECT_EQ(open.corpus_size(), 50);
    for (const auto& msg : s.messages) {
      if (!msg.has_batch()) continue;
      ids_by_rank[open.rank()].insert(ids_by_rank[open.rank()].end(),
                                      msg.batch().sample_ids().begin(),
                                      msg.batch().sample_ids().end());
      bytes_by_rank[open.rank()] += msg.batch().data();
    }
  }
  EXPECT_THAT(ids_by_rank[0], ::testing::ElementsAre(0, 1, 2));
  EXPECT_THAT(ids_by_rank[1], ::testing::ElementsAre(3, 4, 5));
  EXPECT_THAT(ids_by_rank[2], ::testing::ElementsAre(6, 7, 8, 9));
  const std::string all = bytes_by_rank[0] + bytes_by_rank[1] + bytes_by_rank[2];
  ASSERT_EQ(all.size(), data.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(all.data(), data.data(), all.size()), 0);

  EXPECT_TRUE(absl::IsInvalidArgument(
      client->SendGenerationMultiRank({"mr"}, Embeddings{data.data(), v1::DTYPE_FP32, 2, m, {}}, 3)
          .status()));
}

TEST(ClientTest, HealthAndListJobsAcrossTargets) {
  FakeMonitor a, b;
  a.name_ = "x";
  b.name_ = "y";
  FakeServer sa(&a), sb(&b);
  auto c = Client::Create({sa.target(), sb.target()}, FastOptions());
  ASSERT_TRUE(c.ok());
  for (const std::string& t : (*c)->targets()) {
    auto health = (*c)->Health(t);
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, ServingStatus::kServing);
  }
  auto jobs = (*c)->ListJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  std::vector<std::string> names;
  for (const auto& j : *jobs) names.push_back(j.job());
  EXPECT_THAT(names, ::testing::ElementsAre("x-a", "x-b", "y-a", "y-b"));
}

TEST(ClientTest, JsonUsesProtoFieldNamesAndPrintsDefaults) {
  v1::GenerationReport report;
  report.set_job("j");
  report.set_n_a(400);
  report.set_track2(-1.5);
  report.add_alerts()->set_rule("low_confidence");
  auto json = MessageToJson(report);
  ASSERT_TRUE(json.ok());
  EXPECT_THAT(*json, HasSubstr("\"n_a\":\"400\""));
  EXPECT_THAT(*json, HasSubstr("\"track2\":-1.5"));
  EXPECT_THAT(*json, HasSubstr("\"track1_lower\":0"));
  EXPECT_THAT(*json, HasSubstr("\"track2_ci_halfwidth\":0"));
  EXPECT_THAT(*json, HasSubstr("\"per_dim\""));
  EXPECT_THAT(*json, HasSubstr("\"rho_violated\":false"));
  EXPECT_EQ(json->find('\n'), std::string::npos);
  EXPECT_EQ(json->find("generations_to_critical"), std::string::npos);
  report.set_generations_to_critical(4.5);
  json = MessageToJson(report);
  EXPECT_THAT(*json, HasSubstr("\"generations_to_critical\":4.5"));
}

// ---- local pre-sketch ------------------------------------------------------

std::vector<uint64_t> SentIds(FakeMonitor& service, v1::EndOfShare* end = nullptr) {
  std::vector<uint64_t> ids;
  const auto streams = service.streams();
  for (const auto& msg : streams.at(0).messages) {
    if (msg.has_batch()) ids.insert(ids.end(), msg.batch().sample_ids().begin(),
                                    msg.batch().sample_ids().end());
    if (msg.has_end() && end != nullptr) *end = msg.end();
  }
  return ids;
}

TEST(PresketchTest, KeepsTheSharedSketchVectorsSelection) {
  const nlohmann::json v = sigma::testing::LoadJson(sigma::testing::TestVectorsDir() + "/sketch.json");
  const uint64_t seed = v["seed"].get<uint64_t>();
  const std::vector<uint64_t> ids = v["sample_ids"].get<std::vector<uint64_t>>();
  const std::vector<uint64_t> first5 = v["priorities_of_first_5"].get<std::vector<uint64_t>>();
  for (size_t i = 0; i < first5.size(); ++i) EXPECT_EQ(SketchPriority(seed, ids[i]), first5[i]);

  FakeMonitor service;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  // Row j holds the value j, so the rows sent show which rows were kept.
  std::vector<double> rows(ids.size());
  std::iota(rows.begin(), rows.end(), 1.0);
  ShareOptions share;
  share.presketch = SketchParams{v["k"].get<int64_t>(), seed, 1e9, v1::PREPROCESSING_NONE};
  auto response = client->SendGeneration(
      {"sk"}, Embeddings{rows.data(), v1::DTYPE_FP64, static_cast<int64_t>(ids.size()), 1, ids},
      share);
  ASSERT_TRUE(response.ok()) << response.status();
  v1::EndOfShare end;
  EXPECT_EQ(SentIds(service, &end), v["expected_selected"].get<std::vector<uint64_t>>());
  EXPECT_EQ(end.count(), static_cast<int64_t>(ids.size()));
  const double n = static_cast<double>(ids.size());
  EXPECT_DOUBLE_EQ(end.max_energy(), n * n);
  EXPECT_DOUBLE_EQ(end.mean_energy(), (n + 1) * (2 * n + 1) / 6);
  EXPECT_EQ(end.rho_violations(), 0);
  // The data of each kept row is that of the first row with its id.
  std::map<uint64_t, double> first_value;
  for (size_t j = 0; j < ids.size(); ++j) first_value.emplace(ids[j], rows[j]);
  std::vector<double> sent;
  const auto streams = service.streams();
  for (const auto& msg : streams.at(0).messages) {
    if (!msg.has_batch()) continue;
    const std::string& d = msg.batch().data();
    for (size_t o = 0; o < d.size(); o += 8) {
      double x;
      std::memcpy(&x, d.data() + o, 8);
      sent.push_back(x);
    }
  }
  const auto selected = v["expected_selected"].get<std::vector<uint64_t>>();
  ASSERT_EQ(sent.size(), selected.size());
  for (size_t i = 0; i < selected.size(); ++i) EXPECT_EQ(sent[i], first_value[selected[i]]);
}

TEST(PresketchTest, DefaultIdsEnergiesAndNoDropPassThrough) {
  FakeMonitor service;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  // fp16 rows [3, 4] (energy 25) and [0, 0] (energy 0), 10 of each.
  const uint16_t three = 0x4200, four = 0x4400;
  std::vector<uint16_t> rows;
  for (int i = 0; i < 20; ++i) {
    rows.push_back(i % 2 == 0 ? three : 0);
    rows.push_back(i % 2 == 0 ? four : 0);
  }
  ShareOptions share;
  share.rank = 1;
  share.world_size = 2;
  share.presketch = SketchParams{4, 9, 16.0, v1::PREPROCESSING_NONE};
  auto response = client->SendGeneration(
      {"e"}, Embeddings{rows.data(), v1::DTYPE_FP16, 20, 2, {}}, share);
  ASSERT_TRUE(response.ok()) << response.status();
  v1::EndOfShare end;
  const std::vector<uint64_t> sent = SentIds(service, &end);
  std::vector<uint64_t> all(20);
  for (uint64_t i = 0; i < 20; ++i) all[i] = i + (uint64_t{1} << 40);
  std::sort(all.begin(), all.end(), [](uint64_t a, uint64_t b) {
    return SketchPriority(9, a) < SketchPriority(9, b);
  });
  all.resize(4);
  EXPECT_EQ(sent, all);
  EXPECT_EQ(end.count(), 20);
  EXPECT_EQ(end.max_energy(), 25.0);
  EXPECT_EQ(end.mean_energy(), 12.5);
  EXPECT_EQ(end.rho_violations(), 10);

  // Under l2 every row has energy 1; a zero row is refused (the daemon's rule,
  // ingest_rules.h), naming it, before anything is sent.
  FakeMonitor l2_service;
  FakeServer l2_server(&l2_service);
  auto l2_client = MakeClient(l2_server.target());
  share.presketch->preprocessing = v1::PREPROCESSING_L2;
  share.presketch->rho = 1.0;
  auto zero = l2_client->SendGeneration({"e"}, Embeddings{rows.data(), v1::DTYPE_FP16, 20, 2, {}}, share);
  EXPECT_TRUE(absl::IsInvalidArgument(zero.status())) << zero.status();
  EXPECT_THAT(zero.status().message(), HasSubstr("block 0 row 1 has norm 0"));
  EXPECT_EQ(l2_service.calls(), 0);
  std::vector<uint16_t> nonzero = rows;
  for (size_t i = 2; i < nonzero.size(); i += 4) nonzero[i + 1] = four;  // rows [0, 4]
  ASSERT_TRUE(l2_client->SendGeneration({"e"}, Embeddings{nonzero.data(), v1::DTYPE_FP16, 20, 2, {}},
                                        share).ok());
  SentIds(l2_service, &end);
  EXPECT_EQ(end.max_energy(), 1.0);
  EXPECT_EQ(end.mean_energy(), 1.0);
  EXPECT_EQ(end.rho_violations(), 0);

  // n_a >= rows: nothing dropped, the share goes as it is (no ids, no energies).
  FakeMonitor all_service;
  FakeServer all_server(&all_service);
  auto all_client = MakeClient(all_server.target());
  share.presketch->n_a = 100;
  ASSERT_TRUE(all_client->SendGeneration({"e"}, Embeddings{nonzero.data(), v1::DTYPE_FP16, 20, 2, {}},
                                         share).ok());
  EXPECT_TRUE(SentIds(all_service, &end).empty());
  EXPECT_EQ(end.count(), 0);
  EXPECT_FALSE(end.has_max_energy());
}

TEST(PresketchTest, NonFiniteRowFailsBeforeSending) {
  FakeMonitor service;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  std::vector<float> rows = {1, 2, 3, std::numeric_limits<float>::quiet_NaN()};
  ShareOptions share;
  share.presketch = SketchParams{1, 0, 1.0, v1::PREPROCESSING_L2};
  auto response =
      client->SendGeneration({"nan"}, Embeddings{rows.data(), v1::DTYPE_FP32, 2, 2, {}}, share);
  EXPECT_TRUE(absl::IsInvalidArgument(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("row 1 column 1"));
  EXPECT_EQ(service.calls(), 0);
}

// Issue 14 item 6 in the pre-sketch: float64 rows scaled by 1e155 / 1e-170
// report the energies of the unscaled rows (a plain sum of squares gave energy 0
// to every 1e-170 row under l2); a squared norm beyond float64 under none is
// refused before sending.
TEST(PresketchTest, ScaledRowsKeepTheirEnergiesAndOverflowIsRefused) {
  std::vector<double> base(30 * 3);
  for (size_t i = 0; i < base.size(); ++i) base[i] = 0.25 + static_cast<double>(i % 7);
  for (double scale : {1e155, 1e-170}) {
    std::vector<double> rows = base;
    for (double& v : rows) v *= scale;
    FakeMonitor service;
    FakeServer server(&service);
    auto client = MakeClient(server.target());
    ShareOptions share;
    share.presketch = SketchParams{5, 1, 1.0, v1::PREPROCESSING_L2};
    ASSERT_TRUE(client->SendGeneration({"s"}, Embeddings{rows.data(), v1::DTYPE_FP64, 30, 3, {}}, share).ok());
    v1::EndOfShare end;
    EXPECT_EQ(SentIds(service, &end).size(), 5u);
    EXPECT_EQ(end.count(), 30);
    EXPECT_EQ(end.max_energy(), 1.0) << scale;
    EXPECT_EQ(end.mean_energy(), 1.0) << scale;
  }
  std::vector<double> rows = base;
  rows[3 * 4] = 1e160;  // row 4: ||x||^2 ~ 1e320
  FakeMonitor service;
  FakeServer server(&service);
  auto client = MakeClient(server.target());
  ShareOptions share;
  share.presketch = SketchParams{5, 1, 1e300, v1::PREPROCESSING_NONE};
  auto response = client->SendGeneration({"s"}, Embeddings{rows.data(), v1::DTYPE_FP64, 30, 3, {}}, share);
  EXPECT_TRUE(absl::IsInvalidArgument(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("block 0 row 4 has a squared norm above"));
  EXPECT_EQ(service.calls(), 0);
}

// End to end through a real sigmad: float64 rows scaled by 1e155 and 1e-170
// give the report of the unscaled rows (was track2 -110.5 instead of -16.7),
// and a zero row under l2 is refused with INVALID_ARGUMENT naming it, the
// snapshot left as it was.
TEST(ExtremeValuesTest, ScaledRowsThroughSigmadGiveTheUnscaledReport) {
  if (sigma::testing::SigmadPath().empty()) GTEST_SKIP() << "sigmad is not part of this build";
  sigma::testing::TempDir dir;
  auto daemon = sigma::testing::Sigmad::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  ClientOptions options;
  options.deadline = absl::Seconds(60);
  auto client = Client::Create({(*daemon)->target()}, options);
  ASSERT_TRUE(client.ok()) << client.status();
  const int32_t m = 16;
  const int64_t rows = 300;
  std::mt19937_64 rng(21);
  std::normal_distribution<double> normal;
  std::vector<double> base(static_cast<size_t>(rows * m));
  for (size_t i = 0; i < base.size(); ++i) base[i] = normal(rng) * (1.0 + static_cast<double>(i % m));
  v1::JobConfig config;
  config.set_n_a(256);
  ShareOptions share;
  share.config = config;
  share.corpus_size = 1000;
  auto send = [&](const std::string& job, const std::vector<double>& data) {
    return (*client)->SendGeneration({job, "default", 0}, Embeddings{data.data(), v1::DTYPE_FP64, rows, m, {}},
                                     share);
  };
  auto ref = send("unscaled", base);
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_TRUE(ref->sealed());
  const v1::GenerationReport& want = ref->report();
  for (double scale : {1e155, 1e-170}) {
    std::vector<double> data = base;
    for (double& v : data) v *= scale;
    auto got = send(absl::StrCat("scaled-", scale > 1 ? "up" : "down"), data);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->sealed());
    const v1::GenerationReport& r = got->report();
    for (auto [a, b] : {std::pair{r.track1_lower(), want.track1_lower()}, {r.track1_upper(), want.track1_upper()},
                        {r.track2(), want.track2()}, {r.track2_raw(), want.track2_raw()},
                        {r.track2_ci_halfwidth(), want.track2_ci_halfwidth()}})
      EXPECT_NEAR(a, b, 1e-12 * std::fabs(b)) << scale;
    EXPECT_EQ(r.n_a(), want.n_a());
    EXPECT_EQ(r.flags().max_energy(), 1.0);
    EXPECT_FALSE(r.flags().rho_violated());
  }
  // A zero row: INVALID_ARGUMENT naming it; the job still seals with the
  // other rows afterwards.
  std::vector<double> with_zero = base;
  std::fill(with_zero.begin() + 7 * m, with_zero.begin() + 8 * m, 0.0);
  auto refused = send("zero-row", with_zero);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("row 7 has norm 0"));
  auto after = send("zero-row", base);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->sealed());
  EXPECT_NEAR(after->report().track2(), want.track2(), 1e-12 * std::fabs(want.track2()));
}

// ---- sigmactl flags ----------------------------------------------------------

using ::sigma::testing::CommandResult;
using ::sigma::testing::RunCommand;
using ::sigma::testing::SigmactlPath;

TEST(SigmactlTest, HelpUsageAndUnreachableTarget) {
  for (const char* cmd : {"send", "report", "jobs", "configure", "close", "health"}) {
    CommandResult r = RunCommand({SigmactlPath(), cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("usage: sigmactl ", cmd))) << cmd;
    EXPECT_THAT(r.out, HasSubstr("--target")) << cmd;
    r = RunCommand({SigmactlPath(), cmd, "--no-such-flag"});
    EXPECT_EQ(r.exit_code, 2) << cmd;
    EXPECT_THAT(r.err, HasSubstr("unknown flag '--no-such-flag'")) << cmd;
  }
  CommandResult r = RunCommand({SigmactlPath(), "send", "--job", "j", "--generation", "0"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("no .npy file given"));
  r = RunCommand({SigmactlPath(), "send", "x.npy", "--job", "j", "--generation", "zero"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--generation: not an integer"));
  r = RunCommand({SigmactlPath(), "send", "x.npy", "--job", "j", "--generation", "0", "--rank",
                  "2", "--world-size", "2"});
  EXPECT_EQ(r.exit_code, 2);
  r = RunCommand({SigmactlPath(), "configure", "--job", "j", "--preprocessing", "l3"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--preprocessing must be l2 or none"));
  r = RunCommand({SigmactlPath(), "send", "/nonexistent.npy", "--job", "j", "--generation", "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("cannot open"));
  r = RunCommand({SigmactlPath(), "report", "--job", "j", "--target", "127.0.0.1:1", "--retries",
                  "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, ::testing::StartsWith("sigmactl: UNAVAILABLE: "));
}

TEST(SigmactlTest, SendFlagsReachTheWire) {
  FakeMonitor service;
  service.name_ = "cli";
  FakeServer server(&service);
  sigma::testing::TempDir tmp;
  std::vector<float> values(14);
  std::iota(values.begin(), values.end(), 0.0f);
  ASSERT_TRUE(sigma::testing::WriteNpyRows(tmp.File("a.npy"), values.data(), 7, 2).ok());
  CommandResult r = RunCommand(
      {SigmactlPath(), "send", tmp.File("a.npy"), "--target", server.target(), "--job", "cli-j",
       "--tap", "emb", "--generation", "5", "--rank", "1", "--world-size", "3", "--corpus-size",
       "999", "--n-a", "5", "--delta", "0.5", "--rho", "2", "--preprocessing", "none", "--seed",
       "17", "--batch-rows", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Not sealed (1 of 3 ranks): the IngestResponse.
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["sealed"], false);
  EXPECT_EQ(j["rows_accepted"], 7);  // sigmactl prints 64-bit integers as numbers
  const auto streams = service.streams();
  ASSERT_EQ(streams.size(), 1u);
  const auto& msgs = streams[0].messages;
  ASSERT_EQ(msgs.size(), 5u);  // open, 3 + 3 + 1 rows, end
  const v1::OpenSnapshot& open = msgs[0].open();
  EXPECT_EQ(open.job(), "cli-j");
  EXPECT_EQ(open.tap(), "emb");
  EXPECT_EQ(open.generation(), 5);
  EXPECT_EQ(open.rank(), 1);
  EXPECT_EQ(open.world_size(), 3);
  EXPECT_EQ(open.m(), 2);
  EXPECT_EQ(open.dtype(), v1::DTYPE_FP32);
  EXPECT_EQ(open.corpus_size(), 999);
  EXPECT_EQ(open.config().n_a(), 5);
  EXPECT_EQ(open.config().delta(), 0.5);
  EXPECT_EQ(open.config().rho(), 2.0);
  EXPECT_EQ(open.config().preprocessing(), v1::PREPROCESSING_NONE);
  EXPECT_EQ(open.config().seed(), 17u);
  EXPECT_EQ(msgs[1].batch().rows(), 3);
  EXPECT_EQ(msgs[3].batch().rows(), 1);
  EXPECT_EQ(msgs[3].batch().seq(), 2);
  EXPECT_TRUE(msgs[4].has_end());

  r = RunCommand({SigmactlPath(), "jobs", "--target", server.target()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cli-a"));
  r = RunCommand({SigmactlPath(), "health", "--target", server.target(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["targets"][0]["status"], "SERVING");
}

// ---- TLS ------------------------------------------------------------------------

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(TlsTest, ClientAndSigmactlTalkTls) {
  sigma::testing::TempDir tmp;
  const std::string key = tmp.File("key.pem"), cert = tmp.File("cert.pem");
  CommandResult gen = RunCommand(
      {"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
       cert, "-days", "1", "-subj", "/CN=sigmad.test", "-addext",
       "subjectAltName=DNS:sigmad.test"});
  if (gen.exit_code != 0) GTEST_SKIP() << "no usable openssl: " << gen.err;
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({ReadText(key), ReadText(cert)});
  FakeMonitor service;
  FakeServer server(&service, grpc::SslServerCredentials(ssl));

  auto creds = TlsCredentials(TlsFiles{cert, "", ""});
  ASSERT_TRUE(creds.ok()) << creds.status();
  ClientOptions options = FastOptions();
  options.credentials = *creds;
  options.tls_server_name = "sigmad.test";
  auto client = MakeClient(server.target(), options);
  auto health = client->Health(server.target());
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, ServingStatus::kServing);

  // Plaintext against the TLS port fails, and is reported as UNAVAILABLE.
  ClientOptions plain = FastOptions();
  plain.max_retries = 0;
  EXPECT_TRUE(absl::IsUnavailable(MakeClient(server.target(), plain)->ListJobs().status()));

  CommandResult r = RunCommand({SigmactlPath(), "health", "--target", server.target(), "--tls-ca",
                                cert, "--tls-server-name", "sigmad.test"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("SERVING"));
  r = RunCommand({SigmactlPath(), "health", "--target", server.target(), "--tls-ca",
                  tmp.File("missing.pem")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("cannot read"));
  EXPECT_TRUE(absl::IsInvalidArgument(TlsCredentials(TlsFiles{"", cert, ""}).status()));
}

// ---- rendezvous hashing ------------------------------------------------------

TEST(RendezvousTest, ScoreIsPinned) {
  // The function is part of the scale-out contract (clients in other languages
  // must pick the same daemon): these values must never change.
  EXPECT_EQ(RendezvousScore("", ""), 0xa0490b007fca3c4bULL);
  EXPECT_EQ(RendezvousScore("127.0.0.1:50051", "my-job"), 0xa19008d9e849f1bfULL);
  EXPECT_EQ(RendezvousScore("127.0.0.1:50051", "opt125m-s2"), 0x59447c1287f5ea0fULL);
  // The same golden mapping as the Python client's tests (docs/python-client.md).
  const std::vector<std::string> targets = {"10.0.0.1:50051", "10.0.0.2:50051",
                                            "10.0.0.3:50051"};
  EXPECT_EQ(targets[PickTarget(targets, "job-a")], "10.0.0.1:50051");
  EXPECT_EQ(targets[PickTarget(targets, "job-b")], "10.0.0.1:50051");
  EXPECT_EQ(targets[PickTarget(targets, "job-c")], "10.0.0.2:50051");
  EXPECT_EQ(targets[PickTarget(targets, "job-d")], "10.0.0.1:50051");
}

TEST(RendezvousTest, StableAndIndependentOfTargetOrder) {
  std::vector<std::string> targets = {"a:1", "b:2", "c:3", "d:4", "e:5"};
  std::vector<std::string> reversed(targets.rbegin(), targets.rend());
  for (int i = 0; i < 500; ++i) {
    const std::string job = absl::StrCat("job-", i);
    const std::string& picked = targets[PickTarget(targets, job)];
    EXPECT_EQ(picked, targets[PickTarget(targets, job)]);
    EXPECT_EQ(picked, reversed[PickTarget(reversed, job)]);
  }
  auto c = Client::Create(targets);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->TargetFor("job-7"), targets[PickTarget(targets, "job-7")]);
}

TEST(RendezvousTest, SpreadsJobsAndMovesFewOnRemoval) {
  std::vector<std::string> targets = {"10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051",
                                      "10.0.0.4:50051"};
  const int kJobs = 8000;
  std::map<std::string, int> counts;
  std::vector<std::string> owner(kJobs);
  for (int i = 0; i < kJobs; ++i) {
    owner[i] = targets[PickTarget(targets, absl::StrCat("trainer-", i))];
    ++counts[owner[i]];
  }
  ASSERT_EQ(counts.size(), 4u);
  for (const auto& [t, n] : counts) {
    EXPECT_GT(n, kJobs / 4 * 0.9) << t;
    EXPECT_LT(n, kJobs / 4 * 1.1) << t;
  }
  // Removing a target moves only its own jobs.
  std::vector<std::string> three = {targets[0], targets[1], targets[3]};
  for (int i = 0; i < kJobs; ++i) {
    const std::string& now = three[PickTarget(three, absl::StrCat("trainer-", i))];
    if (owner[i] != targets[2]) {
      EXPECT_EQ(now, owner[i]);
    }
  }
}

}  // namespace
}  // namespace sigma::client
