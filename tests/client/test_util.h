// Helpers of the client tests: a real sigmad child process on free loopback
// ports, a TCP proxy that can cut a connection mid-stream, temp dirs, test
// vectors and running sigmactl.
#ifndef SIGMA_TESTS_CLIENT_TEST_UTIL_H_
#define SIGMA_TESTS_CLIENT_TEST_UTIL_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace sigma::testing {

// A fresh directory under $TMPDIR (default /tmp), removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Path of the sigmad binary, or "" when the build has no sigmad target.
std::string SigmadPath();
std::string SigmactlPath();
std::string TestVectorsDir();

// A sigmad child process: --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
// --db DIR/sigma.db --port-file DIR/ports.json; Start waits for the port file.
class Sigmad {
 public:
  static absl::StatusOr<std::unique_ptr<Sigmad>> Start(const std::string& dir,
                                                       std::vector<std::string> extra_args = {});
  ~Sigmad();  // SIGTERM, then SIGKILL after 10 s
  std::string target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  // The daemon's stdout + stderr so far (for failure messages).
  std::string Log() const;
  void Stop();

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string log_path_;
};

// A loopback TCP proxy to `upstream_port`. The first `cut_connections`
// connections are cut (both directions shut down) once `cut_after_bytes`
// bytes went from the client to the upstream on that connection. With a
// `handshake_delay_ms`, each connection is accepted at once but relayed only
// after that delay (a slow link: the HTTP/2 handshake takes that long).
class CuttingProxy {
 public:
  CuttingProxy(int upstream_port, int cut_connections, int64_t cut_after_bytes, int handshake_delay_ms = 0);
  ~CuttingProxy();
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  int cuts() const { return cuts_.load(); }

 private:
  void AcceptLoop();
  void Pump(int client_fd, bool cut);

  int listen_fd_ = -1;
  int port_ = 0;
  int upstream_port_;
  int64_t cut_after_bytes_;
  int handshake_delay_ms_;
  std::atomic<int> remaining_cuts_;
  std::atomic<int> cuts_{0};
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  std::vector<std::thread> pumps_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
// Runs `argv` (argv[0] = path), capturing stdout and stderr.
CommandResult RunCommand(const std::vector<std::string>& argv);

// Writes `rows` x `cols` row-major values as a .npy file (fp32 or fp64), the
// input of `sigmactl send`.
absl::Status WriteNpyRows(const std::string& path, const float* values, int64_t rows, int64_t cols);
absl::Status WriteNpyRows(const std::string& path, const double* values, int64_t rows, int64_t cols);

// Test vector files (every *.json except sketch.json), sorted.
std::vector<std::string> TestVectorFiles();
nlohmann::json LoadJson(const std::string& path);

}  // namespace sigma::testing

#endif  // SIGMA_TESTS_CLIENT_TEST_UTIL_H_
