// A small HTTP/1.1 server for sigmad's metrics port (/metrics, /, /healthz,
// /readyz).
//
// Why not prometheus-cpp's Exposer: it serves through libcivetweb, whose worker
// threads are created with a fixed 100 KiB stack (Debian builds it with
// USE_STACK_SIZE=102400). glibc carves the process's static TLS (60 KiB of it
// OpenBLAS's alone) out of that stack, which leaves too little for civetweb's
// error path: any request it answers itself (404, 405, 400) overflowed the
// stack and killed sigmad with SIGSEGV in mg_send_http_error
// (jupp0r/prometheus-cpp#739). docs/server.md, "The metrics port".
//
// Design: one thread runs a poll(2) loop over the listening socket and every
// connection (non-blocking sockets), so a slow or silent client (slowloris)
// holds one slot, never a thread. Each connection carries one request
// (Connection: close): headers are read until CRLFCRLF within `max_header_bytes`
// (else 431) and `request_timeout` (else 408), the handler runs on the loop
// thread, the response is written, the write side is shut down and the rest of
// the request (a body we do not read) is drained for `linger` before close, so
// the client reads the response instead of a reset. Beyond `max_connections`
// a new connection gets 503 at once. accept() failing with EMFILE/ENFILE pauses
// accepting for 100 ms (no busy loop) and recovers when descriptors are free.
//
// Thread-safety: Start/Stop from one thread; the handler is called on the loop
// thread only (one request at a time), so it must be quick (serialising the
// registry is).
#ifndef SIGMA_SERVER_HTTP_SERVER_H_
#define SIGMA_SERVER_HTTP_SERVER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace sigma::server {

struct HttpRequest {
  std::string method;   // as sent, e.g. "GET"
  std::string path;     // the target without its query string
  std::string version;  // "HTTP/1.0" or "HTTP/1.1"
  std::map<std::string, std::string> headers;  // names lower-cased; a repeated header keeps the last value
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
};

struct HttpServerOptions {
  size_t max_header_bytes = 16 * 1024;      // request line + headers
  size_t max_connections = 128;             // open at once; more get 503
  std::chrono::milliseconds request_timeout{10000};  // from accept to a complete header block
  std::chrono::milliseconds linger{1000};   // draining an unread body after the response
};

// The reason phrase of `status` ("Not Found"), "Unknown" for others.
const char* HttpReason(int status);

// Parses one request header block (without the final CRLFCRLF). Returns the
// HTTP status to answer on failure: 400 for a malformed request line or header,
// 505 for a version other than HTTP/1.0 or HTTP/1.1.
absl::StatusOr<HttpRequest> ParseHttpRequest(const std::string& head, int* error_status);

// The bytes of a response to `request_method` (HEAD: headers only).
std::string SerializeHttpResponse(const HttpResponse& response, const std::string& request_method);

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  HttpServer(HttpServerOptions options, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds `listen` ("host:port", "[v6]:port"; port 0 picks one) and starts the
  // loop thread. UNAVAILABLE naming the address when it cannot listen.
  absl::Status Start(const std::string& listen);
  // Stops the loop and closes every connection. Idempotent.
  void Stop();
  int port() const { return port_; }
  // Connections refused with 503 so far.
  int64_t refused_connections() const { return refused_.load(); }

 private:
  struct Connection;
  void Loop();
  void AcceptAll(std::vector<std::unique_ptr<Connection>>* conns,
                 std::chrono::steady_clock::time_point* accept_paused_until);
  void OnReadable(Connection* c);
  void Respond(Connection* c, const HttpResponse& response, const std::string& method);
  void OnWritable(Connection* c);

  const HttpServerOptions options_;
  const Handler handler_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: Stop() wakes the loop
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> refused_{0};
  std::thread thread_;
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_HTTP_SERVER_H_
