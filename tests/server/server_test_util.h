// Helpers of the sigmad tests: an in-process daemon on free ports, a raw
// stub, share streaming, row generation and /metrics scraping.
#ifndef SIGMA_TESTS_SERVER_TEST_UTIL_H_
#define SIGMA_TESTS_SERVER_TEST_UTIL_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "sigma/server/daemon.h"
#include "sigma/v1/sigma.grpc.pb.h"

namespace sigma::server::testing {

namespace v1 = sigma::v1;

// A fresh temporary directory, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

DaemonOptions TestOptions(const std::string& dir);

// An in-process daemon with its stub.
struct TestDaemon {
  std::unique_ptr<Daemon> daemon;
  BoundPorts ports;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::SigmaMonitor::Stub> stub;
};
std::unique_ptr<TestDaemon> StartDaemon(const DaemonOptions& options);
std::unique_ptr<v1::SigmaMonitor::Stub> MakeStub(int port, std::shared_ptr<grpc::Channel>* channel = nullptr);

// Row-major float64 rows.
struct Rows {
  int64_t m = 0;
  std::vector<double> values;  // [n, m]
  int64_t n() const { return m ? static_cast<int64_t>(values.size()) / m : 0; }
};
Rows GaussianRows(int64_t n, int64_t m, uint64_t seed, double scale_tail = 1.0, int64_t tail_from = -1);
std::string Pack(const Rows& rows, int64_t begin, int64_t end, v1::DType dtype);

// A batch of rows [begin, end) of `rows`.
v1::IngestRequest MakeBatch(const Rows& rows, int64_t begin, int64_t end, int64_t seq, v1::DType dtype,
                            const std::vector<uint64_t>* ids = nullptr);
v1::IngestRequest MakeOpen(const std::string& job, int64_t generation, int32_t rank, int32_t world_size,
                           int32_t m, v1::DType dtype, std::optional<int64_t> corpus_size = std::nullopt,
                           const v1::JobConfig* config = nullptr, const std::string& tap = "");
v1::IngestRequest MakeEnd(int64_t count = 0);

// Sends `messages` on one Ingest stream and returns the final status.
grpc::Status SendStream(v1::SigmaMonitor::Stub* stub, const std::vector<v1::IngestRequest>& messages,
                        v1::IngestResponse* response);

// One rank's whole share in batches of `batch_rows` (open, batches, end).
grpc::Status SendShare(v1::SigmaMonitor::Stub* stub, const v1::IngestRequest& open, const Rows& rows,
                       int64_t begin, int64_t end, int64_t batch_rows, v1::DType dtype,
                       v1::IngestResponse* response, const std::vector<uint64_t>* ids = nullptr,
                       bool send_end = true);

// A TCP connection to 127.0.0.1:PORT (-1 on failure); `nonblocking`: the
// socket is O_NONBLOCK and a connect still in progress counts as made.
int ConnectLoopback(int port, bool nonblocking = false);
// HTTP GET http://127.0.0.1:PORT/metrics with `extra_headers` (each ending in
// CRLF): the whole response (status line, headers, body); empty on failure.
std::string HttpGetMetrics(int port, const std::string& extra_headers);
// The body of HTTP GET http://127.0.0.1:PORT/metrics; empty on failure.
std::string Scrape(int port);
// Value of the series `name{labels}` (labels as a map, all must match exactly); nullopt if absent.
std::optional<double> MetricValue(const std::string& scrape, const std::string& name,
                                  const std::map<std::string, std::string>& labels);
// The exposition format prints fixed-point decimals: compare to 1e-12 relative.
void ExpectMetricNear(const std::optional<double>& scraped, double want);
// True when promtool was found at configure time (Debian package prometheus).
bool HavePromtool();
// Runs `promtool check metrics` on `text`; returns its output (empty when clean) and sets *rc.
std::string PromtoolCheck(const std::string& text, int* rc);

// Starts the sigmad binary (SIGMAD_PATH) with `args`, its stdout appended to
// `log_path` (stderr too when `with_stderr`). Returns the child's pid.
pid_t SpawnSigmad(const std::vector<std::string>& args, const std::string& log_path, bool with_stderr);
// Waits for `pid`: its exit code, 128 + signal, or -1 after `timeout_s` (the
// child is then SIGKILLed and reaped).
int WaitExit(pid_t pid, double timeout_s);

// The numeric fields of two reports that must be bitwise equal.
void ExpectSameValues(const v1::GenerationReport& a, const v1::GenerationReport& b);

}  // namespace sigma::server::testing

#endif  // SIGMA_TESTS_SERVER_TEST_UTIL_H_
