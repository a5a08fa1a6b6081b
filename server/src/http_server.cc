#include "sigma/server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "sigma/server/config.h"

namespace sigma::server {
namespace {

using Clock = std::chrono::steady_clock;

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

}  // namespace

const char* HttpReason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

absl::StatusOr<HttpRequest> ParseHttpRequest(const std::string& head, int* error_status) {
  *error_status = 400;
  std::vector<std::string> lines = absl::StrSplit(head, "\r\n");
  HttpRequest req;
  // request-line = method SP request-target SP HTTP-version (RFC 9112 §3)
  std::vector<std::string> parts = absl::StrSplit(lines[0], ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty())
    return absl::InvalidArgumentError("malformed request line");
  if (!std::all_of(parts[0].begin(), parts[0].end(), IsTokenChar))
    return absl::InvalidArgumentError("malformed method");
  if (parts[1][0] != '/' && parts[1] != "*") return absl::InvalidArgumentError("request target is not a path");
  for (char c : parts[1])
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return absl::InvalidArgumentError("bad request target");
  if (parts[2].rfind("HTTP/", 0) != 0) return absl::InvalidArgumentError("malformed version");
  if (parts[2] != "HTTP/1.0" && parts[2] != "HTTP/1.1") {
    *error_status = 505;
    return absl::InvalidArgumentError("unsupported HTTP version");
  }
  req.method = parts[0];
  req.path = parts[1].substr(0, parts[1].find('?'));
  req.version = parts[2];
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string::npos) return absl::InvalidArgumentError("malformed header");
    std::string name = line.substr(0, colon);
    if (!std::all_of(name.begin(), name.end(), IsTokenChar)) return absl::InvalidArgumentError("malformed header name");
    for (char c : line)
      if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f)
        return absl::InvalidArgumentError("control character in a header");
    req.headers[absl::AsciiStrToLower(name)] = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  if (req.version == "HTTP/1.1" && !req.headers.count("host")) return absl::InvalidArgumentError("HTTP/1.1 without Host");
  return req;
}

std::string SerializeHttpResponse(const HttpResponse& r, const std::string& request_method) {
  std::string out = absl::StrCat("HTTP/1.1 ", r.status, " ", HttpReason(r.status), "\r\nContent-Type: ",
                                 r.content_type, "\r\nContent-Length: ", r.body.size(),
                                 "\r\nConnection: close\r\nCache-Control: no-store\r\n");
  for (const auto& [name, value] : r.headers) absl::StrAppend(&out, name, ": ", value, "\r\n");
  out += "\r\n";
  if (request_method != "HEAD") out += r.body;
  return out;
}

// One client connection. Owned by the loop thread.
struct HttpServer::Connection {
  enum class State { kReading, kWriting, kLingering };
  int fd = -1;
  State state = State::kReading;
  std::string in;    // bytes read so far (header block only)
  std::string out;   // response bytes not yet written
  size_t written = 0;
  Clock::time_point deadline;
  ~Connection() {
    if (fd >= 0) close(fd);
  }
};

HttpServer::HttpServer(HttpServerOptions options, Handler handler)
    : options_(options), handler_(std::move(handler)) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start(const std::string& listen) {
  std::string host;
  int port = 0;
  if (auto s = SplitHostPort(listen, &host, &port); !s.ok()) return s;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res); rc != 0)
    return absl::UnavailableError(absl::StrCat(listen, ": cannot resolve: ", gai_strerror(rc)));
  std::string error = "no address";
  for (addrinfo* ai = res; ai != nullptr && listen_fd_ < 0; ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
      listen_fd_ = fd;
    } else {
      error = std::strerror(errno);
      close(fd);
    }
  }
  freeaddrinfo(res);
  if (listen_fd_ < 0) return absl::UnavailableError(absl::StrCat(listen, ": cannot listen: ", error));
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  SetNonBlocking(listen_fd_);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
  thread_.join();
  close(listen_fd_);
  close(wake_fd_);
  listen_fd_ = wake_fd_ = -1;
}

void HttpServer::Loop() {
  std::vector<std::unique_ptr<Connection>> conns;
  Clock::time_point accept_paused_until{};
  std::vector<pollfd> fds;
  while (!stopping_) {
    const Clock::time_point now = Clock::now();
    // Expire connections past their deadline: a request still incomplete gets
    // 408, a lingering one is closed, a stuck write is dropped.
    for (auto& c : conns) {
      if (now < c->deadline) continue;
      if (c->state == Connection::State::kReading) {
        HttpResponse r;
        r.status = 408;
        r.body = "request not complete in time\n";
        Respond(c.get(), r, "GET");
        if (c->fd < 0) c.reset();
      } else {
        c.reset();
      }
    }
    std::erase_if(conns, [](const auto& c) { return c == nullptr; });

    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    const bool accepting = now >= accept_paused_until;
    fds.push_back({accepting ? listen_fd_ : -1, POLLIN, 0});
    Clock::time_point next = now + std::chrono::seconds(1);
    for (const auto& c : conns) {
      fds.push_back({c->fd, static_cast<short>(c->state == Connection::State::kWriting ? POLLOUT : POLLIN), 0});
      next = std::min(next, c->deadline);
    }
    if (!accepting) next = std::min(next, accept_paused_until);
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
    if (poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait, 0) + 1)) < 0 && errno != EINTR) break;
    if (stopping_) break;
    for (size_t i = 0; i < conns.size(); ++i) {
      const short ev = fds[i + 2].revents;
      if (ev == 0) continue;
      Connection* c = conns[i].get();
      if (c->state == Connection::State::kWriting) {
        OnWritable(c);
      } else {
        OnReadable(c);
      }
      if (c->fd < 0) conns[i].reset();
    }
    std::erase_if(conns, [](const auto& c) { return c == nullptr; });
    if (fds[1].revents & POLLIN) AcceptAll(&conns, &accept_paused_until);
  }
}

void HttpServer::AcceptAll(std::vector<std::unique_ptr<Connection>>* conns, Clock::time_point* accept_paused_until) {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) return;
      // EMFILE/ENFILE/ENOBUFS: the pending connection stays queued; pause
      // accepting so the loop does not spin, and retry when the pause ends.
      *accept_paused_until = Clock::now() + std::chrono::milliseconds(100);
      return;
    }
    auto c = std::make_unique<Connection>();
    c->fd = fd;
    c->deadline = Clock::now() + options_.request_timeout;
    if (conns->size() >= options_.max_connections) {
      ++refused_;
      HttpResponse r;
      r.status = 503;
      r.body = "too many connections to the metrics port\n";
      const std::string bytes = SerializeHttpResponse(r, "GET");
      (void)!send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      continue;  // closed by ~Connection
    }
    conns->push_back(std::move(c));
  }
}

void HttpServer::OnReadable(Connection* c) {
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      if (c->state == Connection::State::kLingering) continue;  // discard an unread body
      c->in.append(buf, static_cast<size_t>(n));
      const size_t end = c->in.find("\r\n\r\n");
      if (end != std::string::npos) {
        int status = 400;
        auto req = ParseHttpRequest(c->in.substr(0, end), &status);
        if (!req.ok()) {
          HttpResponse r;
          r.status = status;
          r.body = absl::StrCat(req.status().message(), "\n");
          Respond(c, r, "GET");
        } else {
          HttpResponse r;
          try {
            r = handler_(*req);
          } catch (const std::exception& e) {
            r = HttpResponse{500, "text/plain; charset=utf-8", absl::StrCat("internal error: ", e.what(), "\n"), {}};
          }
          Respond(c, r, req->method);
        }
        return;
      }
      if (c->in.size() > options_.max_header_bytes) {
        HttpResponse r;
        r.status = 431;
        r.body = absl::StrCat("request headers over ", options_.max_header_bytes, " bytes\n");
        Respond(c, r, "GET");
        return;
      }
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 && c->state == Connection::State::kReading && !c->in.empty()) {
      // The client half-closed in the middle of its request: answer it.
      HttpResponse r;
      r.status = 400;
      r.body = "incomplete request\n";
      Respond(c, r, "GET");
      return;
    }
    // EOF or error: the peer is gone (or finished sending while we linger).
    close(c->fd);
    c->fd = -1;
    return;
  }
}

void HttpServer::Respond(Connection* c, const HttpResponse& response, const std::string& method) {
  c->out = SerializeHttpResponse(response, method);
  c->written = 0;
  c->in.clear();
  c->state = Connection::State::kWriting;
  c->deadline = Clock::now() + options_.request_timeout;
  OnWritable(c);
}

void HttpServer::OnWritable(Connection* c) {
  while (c->written < c->out.size()) {
    const ssize_t n = send(c->fd, c->out.data() + c->written, c->out.size() - c->written, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->written += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    close(c->fd);
    c->fd = -1;
    return;
  }
  // Lingering close: stop writing, drain what the client still sends.
  shutdown(c->fd, SHUT_WR);
  c->out.clear();
  c->state = Connection::State::kLingering;
  c->deadline = Clock::now() + options_.linger;
}

}  // namespace sigma::server
