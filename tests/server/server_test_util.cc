#include "server_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <csignal>
#include <cerrno>
#include <chrono>
#include <thread>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "gtest/gtest.h"
#include "sigma/kernels/dtype.h"

namespace sigma::server::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "sigmad_test_XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  if (p == nullptr) std::abort();
  path_ = p;
}
TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

DaemonOptions TestOptions(const std::string& dir) {
  DaemonOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "127.0.0.1:0";
  o.db = dir + "/var/sigma.db";
  o.backend = "cpu";
  o.seal_batch_window_ms = 2;
  return o;
}

std::unique_ptr<v1::SigmaMonitor::Stub> MakeStub(int port, std::shared_ptr<grpc::Channel>* channel) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  args.SetMaxReceiveMessageSize(-1);
  auto ch = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                      grpc::InsecureChannelCredentials(), args);
  if (channel) *channel = ch;
  return v1::SigmaMonitor::NewStub(ch);
}

std::unique_ptr<TestDaemon> StartDaemon(const DaemonOptions& options) {
  auto t = std::make_unique<TestDaemon>();
  t->daemon = std::make_unique<Daemon>();
  auto ports = t->daemon->Start(options);
  if (!ports.ok()) {
    ADD_FAILURE() << "Daemon::Start: " << ports.status();
    return nullptr;
  }
  t->ports = *ports;
  t->stub = MakeStub(ports->grpc_port, &t->channel);
  return t;
}

Rows GaussianRows(int64_t n, int64_t m, uint64_t seed, double scale_tail, int64_t tail_from) {
  Rows r;
  r.m = m;
  r.values.resize(static_cast<size_t>(n * m));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      double v = normal(rng);
      if (tail_from >= 0 && j >= tail_from) v *= scale_tail;
      r.values[static_cast<size_t>(i * m + j)] = v;
    }
  }
  return r;
}

std::string Pack(const Rows& rows, int64_t begin, int64_t end, v1::DType dtype) {
  const size_t count = static_cast<size_t>((end - begin) * rows.m);
  const double* src = rows.values.data() + begin * rows.m;
  std::string out;
  switch (dtype) {
    case v1::DTYPE_FP64:
      out.resize(count * 8);
      std::memcpy(out.data(), src, count * 8);
      break;
    case v1::DTYPE_FP32: {
      out.resize(count * 4);
      for (size_t i = 0; i < count; ++i) {
        const float f = static_cast<float>(src[i]);
        std::memcpy(out.data() + 4 * i, &f, 4);
      }
      break;
    }
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16: {
      out.resize(count * 2);
      for (size_t i = 0; i < count; ++i) {
        const uint16_t h = dtype == v1::DTYPE_FP16 ? sigma::DoubleToHalf(src[i]) : sigma::DoubleToBFloat16(src[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      break;
    }
    default:
      break;
  }
  return out;
}

v1::IngestRequest MakeBatch(const Rows& rows, int64_t begin, int64_t end, int64_t seq, v1::DType dtype,
                            const std::vector<uint64_t>* ids) {
  v1::IngestRequest req;
  auto* b = req.mutable_batch();
  b->set_seq(seq);
  b->set_rows(end - begin);
  b->set_data(Pack(rows, begin, end, dtype));
  if (ids) {
    for (int64_t i = begin; i < end; ++i) b->add_sample_ids((*ids)[static_cast<size_t>(i)]);
  }
  return req;
}

v1::IngestRequest MakeOpen(const std::string& job, int64_t generation, int32_t rank, int32_t world_size,
                           int32_t m, v1::DType dtype, std::optional<int64_t> corpus_size,
                           const v1::JobConfig* config, const std::string& tap) {
  v1::IngestRequest req;
  auto* o = req.mutable_open();
  o->set_job(job);
  o->set_tap(tap);
  o->set_generation(generation);
  o->set_rank(rank);
  o->set_world_size(world_size);
  o->set_m(m);
  o->set_dtype(dtype);
  if (corpus_size) o->set_corpus_size(*corpus_size);
  if (config) *o->mutable_config() = *config;
  return req;
}

v1::IngestRequest MakeEnd(int64_t count) {
  v1::IngestRequest req;
  req.mutable_end()->set_count(count);
  return req;
}

grpc::Status SendStream(v1::SigmaMonitor::Stub* stub, const std::vector<v1::IngestRequest>& messages,
                        v1::IngestResponse* response) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto writer = stub->Ingest(&ctx, response);
  for (const auto& m : messages) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status SendShare(v1::SigmaMonitor::Stub* stub, const v1::IngestRequest& open, const Rows& rows,
                       int64_t begin, int64_t end, int64_t batch_rows, v1::DType dtype,
                       v1::IngestResponse* response, const std::vector<uint64_t>* ids, bool send_end) {
  std::vector<v1::IngestRequest> msgs{open};
  int64_t seq = 0;
  for (int64_t b = begin; b < end; b += batch_rows)
    msgs.push_back(MakeBatch(rows, b, std::min(end, b + batch_rows), seq++, dtype, ids));
  if (send_end) msgs.push_back(MakeEnd());
  return SendStream(stub, msgs, response);
}

int ConnectLoopback(int port, bool nonblocking) {
  const int fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && !(nonblocking && errno == EINPROGRESS)) {
    close(fd);
    return -1;
  }
  return fd;
}

std::string HttpGetMetrics(int port, const std::string& extra_headers) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return "";
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n" + extra_headers + "Connection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  return resp;
}

std::string Scrape(int port) {
  const std::string resp = HttpGetMetrics(port, "");
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

std::optional<double> MetricValue(const std::string& scrape, const std::string& name,
                                  const std::map<std::string, std::string>& labels) {
  std::istringstream in(scrape);
  std::string line;
  static const std::regex kLine(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$)");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)")re");
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::smatch m;
    if (!std::regex_match(line, m, kLine) || m[1].str() != name) continue;
    std::map<std::string, std::string> got;
    const std::string ls = m[3].str();
    for (auto it = std::sregex_iterator(ls.begin(), ls.end(), kLabel); it != std::sregex_iterator(); ++it)
      got[(*it)[1].str()] = (*it)[2].str();
    if (got != labels) continue;
    return std::strtod(m[4].str().c_str(), nullptr);
  }
  return std::nullopt;
}

void ExpectMetricNear(const std::optional<double>& scraped, double want) {
  ASSERT_TRUE(scraped.has_value()) << "series missing";
  EXPECT_NEAR(*scraped, want, 1e-12 * std::max(1.0, std::fabs(want)));
}

bool HavePromtool() {
  const std::string path = SIGMA_PROMTOOL;
  return !path.empty() && path.find("NOTFOUND") == std::string::npos && access(path.c_str(), X_OK) == 0;
}

std::string PromtoolCheck(const std::string& text, int* rc) {
  TempDir dir;
  const std::string in = dir.path() + "/scrape.txt", out = dir.path() + "/out.txt";
  {
    std::ofstream f(in);
    f << text;
  }
  const std::string cmd = std::string(SIGMA_PROMTOOL) + " check metrics < " + in + " > " + out + " 2>&1";
  const int status = std::system(cmd.c_str());
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream f(out);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void ExpectSameValues(const v1::GenerationReport& a, const v1::GenerationReport& b) {
  auto bits = [](double x) {
    uint64_t u;
    std::memcpy(&u, &x, 8);
    return u;
  };
#define SIGMA_SAME(field) EXPECT_EQ(bits(a.field()), bits(b.field())) << #field << ": " << a.field() << " vs " << b.field()
  SIGMA_SAME(n);
  SIGMA_SAME(track1_lower);
  SIGMA_SAME(track1_upper);
  SIGMA_SAME(track2);
  SIGMA_SAME(track2_raw);
  SIGMA_SAME(track2_bias);
  SIGMA_SAME(track2_ci_halfwidth);
  SIGMA_SAME(track1_drift);
  SIGMA_SAME(track2_drift);
  SIGMA_SAME(divergence);
  SIGMA_SAME(drift_halfwidth);
  SIGMA_SAME(flags().max_energy);
#undef SIGMA_SAME
  EXPECT_EQ(a.n_a(), b.n_a());
  EXPECT_EQ(a.m(), b.m());
  EXPECT_EQ(a.flags().rho_violations(), b.flags().rho_violations());
  EXPECT_EQ(a.flags().rho_violated(), b.flags().rho_violated());
  EXPECT_EQ(a.flags().low_confidence(), b.flags().low_confidence());
  EXPECT_EQ(a.flags().cholesky_failed(), b.flags().cholesky_failed());
  EXPECT_NEAR(a.flags().mean_energy(), b.flags().mean_energy(), 1e-12);
  EXPECT_EQ(a.baseline_generation(), b.baseline_generation());
  EXPECT_EQ(a.alerts_size(), b.alerts_size());
}

pid_t SpawnSigmad(const std::vector<std::string>& args, const std::string& log_path, bool with_stderr) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (!std::freopen(log_path.c_str(), "a", stdout)) _exit(126);
    if (with_stderr && !std::freopen(log_path.c_str(), "a", stderr)) _exit(126);
    std::vector<char*> argv;
    std::string bin = SIGMAD_PATH;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

int WaitExit(pid_t pid, double timeout_s) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (std::chrono::steady_clock::now() < end) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

}  // namespace sigma::server::testing
