// Authorisation (--tokens), /metrics basic auth and mutual TLS.
//
// The Authorizer unit tests use the class alone; the rest run an in-process
// Daemon on 127.0.0.1:0 and call it through raw stubs with the
// `authorization` metadata set by hand.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "server_test_util.h"
#include "sigma/server/auth.h"

namespace sigma::server::testing {
namespace {

// ----------------------------------------------------------------- unit tests

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(HexDigest(Sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexDigest(Sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // Padding edges: 55 bytes (one block), 56 (two blocks), 64, and a long input.
  EXPECT_EQ(HexDigest(Sha256(std::string(55, 'a'))), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(HexDigest(Sha256(std::string(56, 'a'))), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(HexDigest(Sha256(std::string(64, 'a'))), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
  EXPECT_EQ(HexDigest(Sha256(std::string(1000, 'a'))), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

constexpr char kWriteA[] = "write-token-team-a-0123456789";
constexpr char kWriteB[] = "write-token-team-b-0123456789";
constexpr char kReadA[] = "read-token-team-a-0123456789";  // stored in plain text below
constexpr char kReadB[] = "read-token-team-b-0123456789";

// write A (hashed), write B (hashed), read A (plain text), read B (hashed).
std::string TokensYaml() {
  return std::string(R"(
- token_sha256: 8969cd2c6676dd9097981e1312719781817e40f844c720f14d7926a846f09cc4
  role: write
  job_prefixes: ["teamA."]
  name: trainer-a
- token_sha256: DE35F7DC666919FCD2752FF2B8D3D350460237FAEF6687940C2A6D58E2B19543
  role: write
  job_prefixes: [teamB., shared-b]
- token: )") + kReadA + R"(
  role: read
  job_prefixes: ["teamA."]
  name: dashboard-a
- token_sha256: c359e20bc593fc3a04df9d7c9659e5831fe0e4a60aa9b87cc5395ecec773ee1c
  role: read
  job_prefixes: ["teamB."]
)";
}

const TokenEntry* Auth(const Authorizer& a, const std::string& header, grpc::StatusCode* code) {
  const TokenEntry* e = nullptr;
  std::vector<std::string_view> v;
  if (!header.empty()) v.push_back(header);
  *code = static_cast<grpc::StatusCode>(a.Authenticate(v, &e).code());
  return e;
}

TEST(AuthorizerTest, ParsesAndDecides) {
  std::vector<std::string> warnings;
  auto a = Authorizer::Parse(TokensYaml(), "t.yaml", &warnings);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->size(), 4u);
  ASSERT_EQ(warnings.size(), 1u);  // the plain-text entry; the warning does not carry the token
  EXPECT_NE(warnings[0].find("entry 3"), std::string::npos) << warnings[0];
  EXPECT_EQ(warnings[0].find(kReadA), std::string::npos);

  grpc::StatusCode code;
  const TokenEntry* wa = Auth(**a, std::string("Bearer ") + kWriteA, &code);
  ASSERT_EQ(code, grpc::StatusCode::OK);
  EXPECT_EQ(wa->name, "trainer-a");
  EXPECT_EQ(wa->role, Role::kWrite);
  // Scheme is case-insensitive; upper-case hex in the file matched.
  const TokenEntry* wb = Auth(**a, std::string("bearer ") + kWriteB, &code);
  ASSERT_EQ(code, grpc::StatusCode::OK);
  const TokenEntry* ra = Auth(**a, std::string("Bearer ") + kReadA, &code);
  ASSERT_EQ(code, grpc::StatusCode::OK);
  EXPECT_EQ(ra->role, Role::kRead);
  for (const std::string bad : {std::string(""), std::string("Bearer"), std::string("Bearer "),
                                std::string("Basic ") + kWriteA, std::string(kWriteA),
                                std::string("Bearer ") + kWriteA + "x", std::string("Bearer nope")}) {
    EXPECT_EQ(Auth(**a, bad, &code), nullptr) << bad;
    EXPECT_EQ(code, grpc::StatusCode::UNAUTHENTICATED) << bad;
  }
  const TokenEntry* none = nullptr;
  const std::string h1 = std::string("Bearer ") + kWriteA;
  absl::Status two = (*a)->Authenticate({h1, h1}, &none);
  EXPECT_EQ(two.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(std::string(two.message()).find(kWriteA), std::string::npos);

  using C = grpc::StatusCode;
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*wa, Rpc::kIngest, "teamA.x").code()), C::OK);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*wa, Rpc::kConfigureJob, "teamA.").code()), C::OK);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*wa, Rpc::kIngest, "teamA").code()), C::PERMISSION_DENIED);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*wa, Rpc::kGetHistory, "teamB.x").code()), C::PERMISSION_DENIED);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*wb, Rpc::kCloseGeneration, "shared-b-1").code()), C::OK);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*ra, Rpc::kGetHistory, "teamA.x").code()), C::OK);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckRole(*ra, Rpc::kListJobs).code()), C::OK);
  for (Rpc rpc : {Rpc::kIngest, Rpc::kCloseGeneration, Rpc::kConfigureJob}) {
    EXPECT_EQ(static_cast<C>(Authorizer::CheckRole(*ra, rpc).code()), C::PERMISSION_DENIED) << RpcName(rpc);
    EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*ra, rpc, "teamA.x").code()), C::PERMISSION_DENIED) << RpcName(rpc);
  }
  // Job lifecycle: ListSnapshots is a read; FinishJob a write; DeleteJob needs admin.
  EXPECT_EQ(static_cast<C>(Authorizer::CheckRole(*ra, Rpc::kListSnapshots).code()), C::OK);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckRole(*ra, Rpc::kFinishJob).code()), C::PERMISSION_DENIED);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*wa, Rpc::kFinishJob, "teamA.x").code()), C::OK);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*wa, Rpc::kDeleteJob, "teamA.x").code()), C::PERMISSION_DENIED);
  auto admin = Authorizer::Parse("[{token: t-admin, role: admin, job_prefixes: [teamA.]}]", "x");
  ASSERT_TRUE(admin.ok()) << admin.status();
  const TokenEntry* ad = Auth(**admin, "Bearer t-admin", &code);
  ASSERT_NE(ad, nullptr);
  for (Rpc rpc : {Rpc::kDeleteJob, Rpc::kIngest, Rpc::kFinishJob, Rpc::kGetHistory})
    EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*ad, rpc, "teamA.x").code()), C::OK) << RpcName(rpc);
  EXPECT_EQ(static_cast<C>(Authorizer::CheckJob(*ad, Rpc::kDeleteJob, "teamB.x").code()), C::PERMISSION_DENIED);
  // "" matches every job.
  auto all = Authorizer::Parse("[{token: t0123, role: read, job_prefixes: [\"\"]}]", "x");
  ASSERT_TRUE(all.ok()) << all.status();
  const TokenEntry* r = Auth(**all, "Bearer t0123", &code);
  ASSERT_NE(r, nullptr);
  EXPECT_TRUE(Authorizer::JobAllowed(*r, "anything"));
  // `tokens:` at the top is accepted too.
  EXPECT_TRUE(Authorizer::Parse("tokens: [{token: t0123, role: read, job_prefixes: [a]}]", "x").ok());
}

TEST(AuthorizerTest, RefusesBadFiles) {
  const std::vector<std::string> bad = {
      "",                                                                    // no tokens
      "[]",                                                                  // no tokens
      "{a: 1}",                                                              // not a list
      "[{role: write, job_prefixes: [a]}]",                                  // no token
      "[{token: secret-1, job_prefixes: [a]}]",                              // no role
      "[{token: secret-1, role: write}]",                                    // no prefixes
      "[{token: secret-1, role: root, job_prefixes: [a]}]",                  // bad role
      "[{token_sha256: abc, role: read, job_prefixes: [a]}]",                // not 64 hex
      "[{token: secret-1, token_sha256: " + std::string(64, 'a') + ", role: read, job_prefixes: [a]}]",
      "[{token: secret-1, role: read, job_prefixes: a}]",                    // not a list
      "[{token: secret-1, role: read, job_prefixes: [\"a b\"]}]",            // bad prefix char
      "[{token: secret-1, role: read, job_prefixes: [a], extra: 1}]",        // unknown key
      "[{token: secret-1, role: read, job_prefixes: [a]}, {token: secret-1, role: write, job_prefixes: [b]}]",
      "[{token: , role: read, job_prefixes: [a]}]",                          // empty token
      "[[[",                                                                 // YAML syntax
  };
  for (const std::string& text : bad) {
    auto a = Authorizer::Parse(text, "f.yaml");
    EXPECT_FALSE(a.ok()) << text;
    if (!a.ok()) {
      EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << text;
      EXPECT_EQ(std::string(a.status().message()).find("secret-1"), std::string::npos) << a.status();
    }
  }
  EXPECT_FALSE(Authorizer::LoadFile("/nonexistent/tokens.yaml").ok());
}

TEST(BasicAuthTest, ParsesAndChecks) {
  auto b = BasicAuth::Parse(
      "# scrapers\n\nscraper:926d3a2dd68393416b7a8348aaadfe4e0c56de6259e17078a0fa1f4dd6e519ae\n", "f");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE((*b)->Check("scraper", "s3cret-pass"));
  EXPECT_FALSE((*b)->Check("scraper", "s3cret-pas"));
  EXPECT_FALSE((*b)->Check("other", "s3cret-pass"));
  EXPECT_FALSE(BasicAuth::Parse("scraper:abc\n", "f").ok());
  EXPECT_FALSE(BasicAuth::Parse(":" + std::string(64, 'a'), "f").ok());
  EXPECT_FALSE(BasicAuth::Parse("# only a comment\n", "f").ok());
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("[::1]"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_FALSE(IsLoopbackHost("0.0.0.0"));
  EXPECT_FALSE(IsLoopbackHost("[::]"));
  EXPECT_FALSE(IsLoopbackHost("10.1.2.3"));
}

// --------------------------------------------------------- the daemon, end to end

std::string WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void SetAuth(grpc::ClientContext* ctx, const std::optional<std::string>& header) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (header) ctx->AddMetadata("authorization", *header);
}

// One call of each RPC on `job`, with `header` as the authorization metadata.
struct Outcome {
  grpc::StatusCode ingest, close, history, list, configure;
  std::vector<std::string> listed;  // ListJobs' job names when OK
};

Outcome CallAll(v1::SigmaMonitor::Stub* stub, const std::optional<std::string>& header, const std::string& job,
                int64_t generation) {
  Outcome out;
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, header);
    v1::IngestResponse resp;
    auto w = stub->Ingest(&ctx, &resp);
    const Rows rows = GaussianRows(40, 4, 17);
    w->Write(MakeOpen(job, generation, 0, 1, 4, v1::DTYPE_FP32));
    w->Write(MakeBatch(rows, 0, 40, 0, v1::DTYPE_FP32));
    w->Write(MakeEnd());
    w->WritesDone();
    out.ingest = w->Finish().error_code();
    if (out.ingest == grpc::StatusCode::OK) EXPECT_TRUE(resp.sealed());
  }
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, header);
    v1::CloseGenerationRequest req;
    req.set_job(job);
    req.set_tap("default");
    req.set_generation(0);  // sealed in the set-up: returns the stored report
    v1::GenerationReport report;
    out.close = stub->CloseGeneration(&ctx, req, &report).error_code();
  }
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, header);
    v1::GetHistoryRequest req;
    req.set_job(job);
    v1::GetHistoryResponse resp;
    out.history = stub->GetHistory(&ctx, req, &resp).error_code();
    if (out.history == grpc::StatusCode::OK) EXPECT_GE(resp.reports_size(), 1);
  }
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, header);
    v1::ListJobsResponse resp;
    out.list = stub->ListJobs(&ctx, v1::ListJobsRequest(), &resp).error_code();
    for (const auto& j : resp.jobs()) out.listed.push_back(j.job());
  }
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, header);
    v1::ConfigureJobRequest req;
    req.set_create(true);
    req.set_job(job);
    req.mutable_config()->mutable_thresholds()->set_drift_warning(0.2);  // allowed after a seal
    v1::JobInfo info;
    out.configure = stub->ConfigureJob(&ctx, req, &info).error_code();
  }
  return out;
}

std::string Bearer(const char* token) { return std::string("Bearer ") + token; }

class AuthDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonOptions o = TestOptions(dir_.path());
    o.tokens_file = WriteFile(dir_.path() + "/tokens.yaml", TokensYaml());
    d_ = StartDaemon(o);
    ASSERT_NE(d_, nullptr);
    EXPECT_EQ(d_->daemon->warnings().size(), 1u);  // the plain-text token
    // Set-up: one sealed generation in teamA.job and in teamB.job.
    for (const auto& [job, token] : {std::pair<std::string, const char*>{"teamA.job", kWriteA},
                                     std::pair<std::string, const char*>{"teamB.job", kWriteB}}) {
      grpc::ClientContext ctx;
      SetAuth(&ctx, Bearer(token));
      v1::IngestResponse resp;
      auto w = d_->stub->Ingest(&ctx, &resp);
      const Rows rows = GaussianRows(40, 4, 5);
      w->Write(MakeOpen(job, 0, 0, 1, 4, v1::DTYPE_FP32));
      w->Write(MakeBatch(rows, 0, 40, 0, v1::DTYPE_FP32));
      w->Write(MakeEnd());
      w->WritesDone();
      grpc::Status s = w->Finish();
      ASSERT_TRUE(s.ok()) << job << ": " << s.error_message();
      ASSERT_TRUE(resp.sealed());
    }
  }
  TempDir dir_;
  std::unique_ptr<TestDaemon> d_;
};

TEST_F(AuthDaemonTest, EveryCredentialAgainstEveryRpc) {
  using C = grpc::StatusCode;
  const C U = C::UNAUTHENTICATED, P = C::PERMISSION_DENIED, K = C::OK;
  struct Case {
    std::string name;
    std::optional<std::string> header;
    C ingest, close, history, list, configure;
    std::vector<std::string> listed;
  };
  const std::vector<Case> cases = {
      {"no token", std::nullopt, U, U, U, U, U, {}},
      {"wrong token", Bearer("not-a-token-0123456789"), U, U, U, U, U, {}},
      {"empty bearer", std::string("Bearer "), U, U, U, U, U, {}},
      {"basic scheme", std::string("Basic ") + kWriteA, U, U, U, U, U, {}},
      {"token without scheme", std::string(kWriteA), U, U, U, U, U, {}},
      {"write, own prefix", Bearer(kWriteA), K, K, K, K, K, {"teamA.job"}},
      {"write, wrong prefix", Bearer(kWriteB), P, P, P, K, P, {"teamB.job"}},
      {"read, own prefix", Bearer(kReadA), P, P, K, K, P, {"teamA.job"}},
      {"read, wrong prefix", Bearer(kReadB), P, P, P, K, P, {"teamB.job"}},
  };
  int64_t unauthenticated = 0, denied = 0;
  int64_t generation = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Outcome o = CallAll(d_->stub.get(), c.header, "teamA.job", generation++);
    EXPECT_EQ(o.ingest, c.ingest);
    EXPECT_EQ(o.close, c.close);
    EXPECT_EQ(o.history, c.history);
    EXPECT_EQ(o.list, c.list);
    EXPECT_EQ(o.configure, c.configure);
    EXPECT_EQ(o.listed, c.listed);
    for (C got : {o.ingest, o.close, o.history, o.list, o.configure}) {
      unauthenticated += got == U;
      denied += got == P;
    }
  }
  // Refused ingests left nothing behind: teamA.job has gen 0 and the one the write token sent.
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, Bearer(kReadA));
    v1::GetHistoryRequest req;
    req.set_job("teamA.job");
    v1::GetHistoryResponse resp;
    ASSERT_TRUE(d_->stub->GetHistory(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.reports_size(), 2);
    EXPECT_EQ(resp.reports(1).generation(), 6);  // "write, own prefix" was the 6th case
  }
  // A write token may not point its job's baseline at another team's job.
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, Bearer(kWriteA));
    v1::ConfigureJobRequest req;
    req.set_create(true);
    req.set_job("teamA.job");
    req.mutable_config()->set_baseline_job("teamB.job");
    v1::JobInfo info;
    EXPECT_EQ(d_->stub->ConfigureJob(&ctx, req, &info).error_code(), P);
    ++denied;
  }
  {
    grpc::ClientContext ctx;
    SetAuth(&ctx, Bearer(kWriteA));
    v1::IngestResponse resp;
    auto w = d_->stub->Ingest(&ctx, &resp);
    v1::JobConfig config;
    config.set_baseline_job("teamB.job");
    w->Write(MakeOpen("teamA.new", 0, 0, 1, 4, v1::DTYPE_FP32, std::nullopt, &config));
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), P);
    ++denied;
  }
  // The refusals are counted; no token (nor its digest) appears in the scrape.
  const std::string scrape = Scrape(d_->ports.metrics_port);
  ExpectMetricNear(MetricValue(scrape, "sigma_auth_failures_total", {{"code", "unauthenticated"}}),
                   static_cast<double>(unauthenticated));
  ExpectMetricNear(MetricValue(scrape, "sigma_auth_failures_total", {{"code", "permission_denied"}}),
                   static_cast<double>(denied));
  EXPECT_EQ(unauthenticated, 25);
  EXPECT_EQ(denied, 13);
  for (const char* t : {kWriteA, kWriteB, kReadA, kReadB, "8969cd2c6676dd9097981e1312719781817e40f8"})
    EXPECT_EQ(scrape.find(t), std::string::npos) << t;
}

// GetJob / GetReport take the read roles of GetHistory and ListJobs (issue 17);
// their auth refusals are counted like every other RPC's.
TEST_F(AuthDaemonTest, GetJobAndGetReportTakeTheReadRoles) {
  using C = grpc::StatusCode;
  struct Case {
    std::optional<std::string> header;
    C want;
  };
  const std::vector<Case> cases = {{std::nullopt, C::UNAUTHENTICATED},     {Bearer("not-a-token-0123456789"), C::UNAUTHENTICATED},
                                   {Bearer(kWriteA), C::OK},              {Bearer(kReadA), C::OK},
                                   {Bearer(kWriteB), C::PERMISSION_DENIED}, {Bearer(kReadB), C::PERMISSION_DENIED}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header.value_or("no header"));
    grpc::ClientContext job_ctx, report_ctx;
    if (c.header) {
      SetAuth(&job_ctx, *c.header);
      SetAuth(&report_ctx, *c.header);
    }
    v1::GetJobRequest job;
    job.set_job("teamA.job");
    v1::JobInfo info;
    EXPECT_EQ(d_->stub->GetJob(&job_ctx, job, &info).error_code(), c.want);
    if (c.want == C::OK) EXPECT_EQ(info.job(), "teamA.job");
    v1::GetReportRequest report;
    report.set_job("teamA.job");
    report.set_generation(0);
    v1::GenerationReport r;
    EXPECT_EQ(d_->stub->GetReport(&report_ctx, report, &r).error_code(), c.want);
    if (c.want == C::OK) EXPECT_EQ(r.job(), "teamA.job");
  }
  const std::string scrape = Scrape(d_->ports.metrics_port);
  EXPECT_EQ(MetricValue(scrape, "sigma_auth_failures_total", {{"code", "unauthenticated"}}), 4.0);
  EXPECT_EQ(MetricValue(scrape, "sigma_auth_failures_total", {{"code", "permission_denied"}}), 4.0);
}

TEST_F(AuthDaemonTest, StatusMessagesNeverCarryTheToken) {
  for (const std::string& header : {Bearer("wrong-secret-token-zz"), Bearer(kReadA), Bearer(kWriteB)}) {
    grpc::ClientContext ctx;
    SetAuth(&ctx, header);
    v1::ConfigureJobRequest req;
    req.set_create(true);
    req.set_job("teamA.job");
    v1::JobInfo info;
    grpc::Status s = d_->stub->ConfigureJob(&ctx, req, &info);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error_message().find(header.substr(7)), std::string::npos) << s.error_message();
  }
}

// Without --tokens every request is allowed; an authorization header is ignored.
TEST(AuthOffTest, NoTokensFileMeansNoAuthorisation) {
  TempDir dir;
  auto d = StartDaemon(TestOptions(dir.path()));
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d->daemon->warnings().empty());
  v1::IngestResponse resp;
  ASSERT_TRUE(SendShare(d->stub.get(), MakeOpen("open.job", 0, 0, 1, 4, v1::DTYPE_FP32), GaussianRows(40, 4, 1), 0,
                        40, 20, v1::DTYPE_FP32, &resp)
                  .ok());
  for (const std::optional<std::string>& h : {std::optional<std::string>(), std::optional<std::string>("Bearer x")}) {
    const Outcome o = CallAll(d->stub.get(), h, "open.job", h ? 2 : 1);
    EXPECT_EQ(o.ingest, grpc::StatusCode::OK);
    EXPECT_EQ(o.close, grpc::StatusCode::OK);
    EXPECT_EQ(o.history, grpc::StatusCode::OK);
    EXPECT_EQ(o.list, grpc::StatusCode::OK);
    EXPECT_EQ(o.configure, grpc::StatusCode::OK);
    EXPECT_EQ(o.listed, std::vector<std::string>{"open.job"});
  }
}

TEST(AuthOffTest, BadTokensFileRefusesToStart) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.tokens_file = WriteFile(dir.path() + "/t.yaml", "[{token: abc-secret, role: owner, job_prefixes: [a]}]");
  Daemon d;
  auto st = d.Start(o);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.status().message()).find("--tokens"), std::string::npos) << st.status();
  EXPECT_EQ(std::string(st.status().message()).find("abc-secret"), std::string::npos);
  o.tokens_file = dir.path() + "/missing.yaml";
  Daemon d2;
  EXPECT_FALSE(d2.Start(o).ok());
}

// Non-loopback listen addresses without TLS give a warning.
TEST(AuthOffTest, NonLoopbackWithoutTlsWarns) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.listen = "0.0.0.0:0";
  o.metrics_listen = "0.0.0.0:0";
  Daemon d;
  ASSERT_TRUE(d.Start(o).ok());
  ASSERT_EQ(d.warnings().size(), 2u);
  EXPECT_NE(d.warnings()[0].find("--listen 0.0.0.0:0"), std::string::npos) << d.warnings()[0];
  EXPECT_NE(d.warnings()[1].find("--metrics-listen 0.0.0.0:0"), std::string::npos) << d.warnings()[1];
}

// HTTP GET /metrics with optional headers: returns "STATUS\nBODY".
std::string HttpGet(int port, const std::string& extra_headers) {
  const std::string resp = HttpGetMetrics(port, extra_headers);
  const size_t sp = resp.find(' ');
  const size_t body = resp.find("\r\n\r\n");
  if (sp == std::string::npos || body == std::string::npos) return resp;
  return resp.substr(sp + 1, 3) + "\n" + resp.substr(body + 4);
}

TEST(MetricsBasicAuthTest, ScrapeNeedsThePassword) {
  TempDir dir;
  DaemonOptions o = TestOptions(dir.path());
  o.metrics_basic_auth_file = WriteFile(
      dir.path() + "/htpasswd", "scraper:926d3a2dd68393416b7a8348aaadfe4e0c56de6259e17078a0fa1f4dd6e519ae\n");
  auto d = StartDaemon(o);
  ASSERT_NE(d, nullptr);
  const int port = d->ports.metrics_port;
  EXPECT_EQ(HttpGet(port, "").substr(0, 3), "401");
  EXPECT_EQ(HttpGet(port, "Authorization: Basic c2NyYXBlcjp3cm9uZw==\r\n").substr(0, 3), "401");  // scraper:wrong
  const std::string ok = HttpGet(port, "Authorization: Basic c2NyYXBlcjpzM2NyZXQtcGFzcw==\r\n");  // scraper:s3cret-pass
  EXPECT_EQ(ok.substr(0, 3), "200");
  EXPECT_NE(ok.find("sigma_open_snapshots"), std::string::npos);
  // A bad file refuses to start.
  DaemonOptions bad = TestOptions(dir.path() + "/b");
  bad.metrics_basic_auth_file = WriteFile(dir.path() + "/bad", "scraper:plain-password\n");
  Daemon d2;
  EXPECT_FALSE(d2.Start(bad).ok());
}

// Mutual TLS: a client certificate signed by --tls-client-ca is required; a
// token is still checked on top of it.
TEST(MutualTlsTest, ClientCertificateRequiredAndTokensStillChecked) {
  TempDir dir;
  const std::string p = dir.path() + "/";
  const std::string ossl = "/usr/bin/openssl";
  const std::string q = " >/dev/null 2>&1";
  const std::vector<std::string> cmds = {
      ossl + " req -x509 -newkey rsa:2048 -nodes -keyout " + p + "ca.key -out " + p +
          "ca.pem -days 1 -subj /CN=sigma-test-ca" + q,
      ossl + " req -x509 -newkey rsa:2048 -nodes -keyout " + p + "server.key -out " + p +
          "server.pem -days 1 -subj /CN=sigmad.test -addext subjectAltName=DNS:sigmad.test" + q,
      ossl + " req -newkey rsa:2048 -nodes -keyout " + p + "client.key -out " + p + "client.csr -subj /CN=trainer" + q,
      ossl + " x509 -req -in " + p + "client.csr -CA " + p + "ca.pem -CAkey " + p + "ca.key -CAcreateserial -out " + p +
          "client.pem -days 1" + q,
      // A client certificate from another CA.
      ossl + " req -x509 -newkey rsa:2048 -nodes -keyout " + p + "rogue.key -out " + p +
          "rogue.pem -days 1 -subj /CN=rogue" + q,
  };
  for (const auto& c : cmds) {
    if (std::system(c.c_str()) != 0) GTEST_SKIP() << "no usable openssl: " << c;
  }
  DaemonOptions o = TestOptions(dir.path());
  o.tls_cert = p + "server.pem";
  o.tls_key = p + "server.key";
  o.tls_client_ca = p + "ca.pem";
  o.tokens_file = WriteFile(p + "tokens.yaml", TokensYaml());
  Daemon daemon;
  auto ports = daemon.Start(o);
  ASSERT_TRUE(ports.ok()) << ports.status();
  auto stub_with = [&](const std::string& cert, const std::string& key) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadAll(p + "server.pem");
    if (!cert.empty()) {
      ssl.pem_cert_chain = ReadAll(cert);
      ssl.pem_private_key = ReadAll(key);
    }
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("sigmad.test");
    return v1::SigmaMonitor::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(ports->grpc_port),
                                                               grpc::SslCredentials(ssl), args));
  };
  auto list = [](v1::SigmaMonitor::Stub* stub, const std::optional<std::string>& header) {
    grpc::ClientContext ctx;
    SetAuth(&ctx, header);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListJobsResponse resp;
    return stub->ListJobs(&ctx, v1::ListJobsRequest(), &resp).error_code();
  };
  auto good = stub_with(p + "client.pem", p + "client.key");
  EXPECT_EQ(list(good.get(), Bearer(kReadA)), grpc::StatusCode::OK);
  EXPECT_EQ(list(good.get(), std::nullopt), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list(stub_with("", "").get(), Bearer(kReadA)), grpc::StatusCode::UNAVAILABLE);  // no client cert
  EXPECT_EQ(list(stub_with(p + "rogue.pem", p + "rogue.key").get(), Bearer(kReadA)),
            grpc::StatusCode::UNAVAILABLE);  // a certificate the CA did not sign
  EXPECT_EQ(list(MakeStub(ports->grpc_port).get(), Bearer(kReadA)), grpc::StatusCode::UNAVAILABLE);  // plaintext
}

}  // namespace
}  // namespace sigma::server::testing
