#include "test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "npy.h"

namespace sigma::testing {
namespace fs = std::filesystem;

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = absl::StrCat(base && *base ? base : "/tmp", "/sigma_client_test.XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) std::abort();
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string SigmadPath() {
#ifdef SIGMA_SIGMAD_PATH
  return SIGMA_SIGMAD_PATH;
#else
  return "";
#endif
}

std::string SigmactlPath() { return SIGMA_SIGMACTL_PATH; }
std::string TestVectorsDir() { return SIGMA_TESTVECTORS_DIR; }

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Sigmad>> Sigmad::Start(const std::string& dir,
                                                      std::vector<std::string> extra_args) {
  const std::string binary = SigmadPath();
  if (binary.empty()) return absl::FailedPreconditionError("sigmad is not built");
  const std::string port_file = dir + "/ports.json";
  std::error_code ec;
  fs::remove(port_file, ec);
  auto daemon = std::unique_ptr<Sigmad>(new Sigmad());
  daemon->log_path_ = dir + "/sigmad.log";
  std::vector<std::string> args = {binary,         "--listen", "127.0.0.1:0", "--metrics-listen",
                                   "127.0.0.1:0",  "--db",     dir + "/sigma.db",
                                   "--port-file",  port_file};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  // Everything the child needs is allocated before fork (no malloc after it).
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const char* log_path = daemon->log_path_.c_str();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    const int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  daemon->pid_ = pid;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    int wstatus;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      daemon->pid_ = -1;
      return absl::InternalError(absl::StrCat("sigmad exited before listening: ", daemon->Log()));
    }
    if (fs::exists(port_file)) {
      nlohmann::json ports = nlohmann::json::parse(ReadFile(port_file), nullptr, false);
      if (!ports.is_discarded() && ports.contains("grpc_port") && ports["grpc_port"].is_number()) {
        daemon->grpc_port_ = ports["grpc_port"].get<int>();
        if (ports.contains("metrics_port") && ports["metrics_port"].is_number())
          daemon->metrics_port_ = ports["metrics_port"].get<int>();
        return daemon;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("sigmad wrote no port file within 60 s: ", daemon->Log()));
}

std::string Sigmad::Log() const { return ReadFile(log_path_); }

void Sigmad::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int wstatus;
  while (waitpid(pid_, &wstatus, WNOHANG) != pid_) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &wstatus, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  pid_ = -1;
}

Sigmad::~Sigmad() { Stop(); }

// ---- CuttingProxy ---------------------------------------------------------

CuttingProxy::CuttingProxy(int upstream_port, int cut_connections, int64_t cut_after_bytes,
                           int handshake_delay_ms)
    : upstream_port_(upstream_port),
      cut_after_bytes_(cut_after_bytes),
      handshake_delay_ms_(handshake_delay_ms),
      remaining_cuts_(cut_connections) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listen_fd_, 16) != 0)
    std::abort();
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

CuttingProxy::~CuttingProxy() {
  stop_ = true;
  shutdown(listen_fd_, SHUT_RDWR);
  close(listen_fd_);
  accept_thread_.join();
  for (std::thread& t : pumps_) t.join();
}

void CuttingProxy::AcceptLoop() {
  while (!stop_) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (poll(&pfd, 1, 50) <= 0) continue;
    const int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    const bool cut = remaining_cuts_.fetch_sub(1) > 0;
    pumps_.emplace_back([this, fd, cut] { Pump(fd, cut); });
  }
}

void CuttingProxy::Pump(int client_fd, bool cut) {
  // The simulated link latency (not a synchronisation).
  for (int waited = 0; waited < handshake_delay_ms_ && !stop_; waited += 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const int up = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(upstream_port_));
  if (connect(up, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(up);
    close(client_fd);
    return;
  }
  int64_t upstream_bytes = 0;
  char buf[16384];
  bool open = true;
  while (open && !stop_) {
    pollfd fds[2] = {{client_fd, POLLIN, 0}, {up, POLLIN, 0}};
    if (poll(fds, 2, 50) <= 0) continue;
    for (int i = 0; i < 2 && open; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int from = i == 0 ? client_fd : up;
      const int to = i == 0 ? up : client_fd;
      const ssize_t n = read(from, buf, sizeof(buf));
      if (n <= 0) {
        open = false;
        break;
      }
      ssize_t off = 0;
      while (off < n) {
        const ssize_t w = write(to, buf + off, static_cast<size_t>(n - off));
        if (w <= 0) {
          open = false;
          break;
        }
        off += w;
      }
      if (i == 0) upstream_bytes += n;
      if (cut && upstream_bytes >= cut_after_bytes_) {
        cuts_.fetch_add(1);
        // An RST rather than a FIN: the client sees the connection die.
        linger lg{1, 0};
        setsockopt(client_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        setsockopt(up, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        open = false;
      }
    }
  }
  close(up);
  close(client_fd);
}

// ---- .npy files ---------------------------------------------------------------

namespace {
absl::Status WriteNpyBytes(const std::string& path, DType dtype, const void* values, int64_t rows,
                           int64_t cols) {
  cli::NpyArray array;
  array.dtype = dtype;
  array.rows = rows;
  array.cols = cols;
  array.data.resize(static_cast<size_t>(rows * cols) * DTypeWidth(dtype));
  if (!array.data.empty()) std::memcpy(array.data.data(), values, array.data.size());
  return cli::WriteNpy(path, array);
}
}  // namespace

absl::Status WriteNpyRows(const std::string& path, const float* values, int64_t rows, int64_t cols) {
  return WriteNpyBytes(path, DType::kFloat32, values, rows, cols);
}
absl::Status WriteNpyRows(const std::string& path, const double* values, int64_t rows, int64_t cols) {
  return WriteNpyBytes(path, DType::kFloat64, values, rows, cols);
}

// ---- commands ---------------------------------------------------------------

CommandResult RunCommand(const std::vector<std::string>& argv) {
  TempDir dir;
  const std::string out_path = dir.File("out");
  const std::string err_path = dir.File("err");
  CommandResult result;
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (std::string& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  result.exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

std::vector<std::string> TestVectorFiles() {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(TestVectorsDir())) {
    const fs::path& p = entry.path();
    if (p.extension() == ".json" && p.filename() != "sketch.json") files.push_back(p.string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

nlohmann::json LoadJson(const std::string& path) { return nlohmann::json::parse(ReadFile(path)); }

}  // namespace sigma::testing
