#include "sigma/server/metrics_endpoint.h"

#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"
#include "sigma/server/auth.h"
#include "sigma/version.h"

namespace sigma::server {
namespace {

HttpResponse Text(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

// True when `header` ("Basic base64(user:password)") passes `auth`.
bool BasicCredentialsPass(const BasicAuth& auth, const std::string& header) {
  constexpr absl::string_view kScheme = "Basic ";
  if (header.size() <= kScheme.size() || !absl::EqualsIgnoreCase(header.substr(0, kScheme.size()), kScheme))
    return false;
  std::string decoded;
  if (!absl::Base64Unescape(header.substr(kScheme.size()), &decoded)) return false;
  const size_t colon = decoded.find(':');
  if (colon == std::string::npos) return false;
  return auth.Check(decoded.substr(0, colon), decoded.substr(colon + 1));
}

std::string IndexPage() {
  return absl::StrCat(
      "<!DOCTYPE html>\n<html><head><title>sigmad</title></head><body>\n<h1>sigmad ", kSigmaVersion,
      "</h1>\n<p>SIGMA monitor daemon (revision ", kSigmaRevision,
      ").</p>\n<ul>\n<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\n"
      "<li><a href=\"/healthz\">/healthz</a>: liveness</li>\n<li><a href=\"/readyz\">/readyz</a>: readiness</li>\n"
      "</ul>\n</body></html>\n");
}

}  // namespace

HttpServer::Handler MakeMetricsHandler(std::shared_ptr<prometheus::Registry> registry, const BasicAuth* basic_auth,
                                       std::function<absl::Status()> readiness) {
  return [registry = std::move(registry), basic_auth, readiness = std::move(readiness)](const HttpRequest& req) {
    if (basic_auth != nullptr) {
      auto it = req.headers.find("authorization");
      if (it == req.headers.end() || !BasicCredentialsPass(*basic_auth, it->second)) {
        HttpResponse r = Text(401, "authentication required\n");
        r.headers.push_back({"WWW-Authenticate", "Basic realm=\"sigmad\", charset=\"UTF-8\""});
        return r;
      }
    }
    const bool known = req.path == "/" || req.path == "/metrics" || req.path == "/healthz" || req.path == "/readyz";
    if (!known) return Text(404, absl::StrCat("not found; see / for the endpoints\n"));
    if (req.method != "GET" && req.method != "HEAD") {
      HttpResponse r = Text(405, absl::StrCat("method ", req.method, " not allowed; use GET or HEAD\n"));
      r.headers.push_back({"Allow", "GET, HEAD"});
      return r;
    }
    if (req.path == "/healthz") return Text(200, "ok\n");
    if (req.path == "/readyz") {
      const absl::Status s = readiness ? readiness() : absl::OkStatus();
      return s.ok() ? Text(200, "ready\n") : Text(503, absl::StrCat("not ready: ", s.message(), "\n"));
    }
    if (req.path == "/") {
      HttpResponse r = Text(200, IndexPage());
      r.content_type = "text/html; charset=utf-8";
      return r;
    }
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry->Collect());
    HttpResponse r = Text(200, out.str());
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return r;
  };
}

}  // namespace sigma::server
