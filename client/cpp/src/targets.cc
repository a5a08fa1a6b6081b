// Where a job's calls go and how: rendezvous choice among the targets
// (docs/deployment.md) and TLS channel credentials.
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/credentials.h"
#include "sigma/client/client.h"
#include "sigma/kernels/ingest_rules.h"

namespace sigma::client {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = kFnvOffset;
  for (unsigned char c : s) {
    h ^= c;
    h *= kFnvPrime;
  }
  return h;
}

}  // namespace

uint64_t RendezvousScore(std::string_view target, std::string_view job) {
  return SplitMix64(Fnv1a64(job) ^ SplitMix64(Fnv1a64(target)));
}

size_t PickTarget(absl::Span<const std::string> targets, std::string_view job) {
  size_t best = 0;
  uint64_t best_score = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    const uint64_t score = RendezvousScore(targets[i], job);
    if (i == 0 || score > best_score || (score == best_score && targets[i] < targets[best])) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentials(const TlsFiles& files) {
  if (files.cert_file.empty() != files.key_file.empty())
    return absl::InvalidArgumentError("a TLS client certificate needs both a cert and a key file");
  grpc::SslCredentialsOptions ssl;
  if (!files.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPem(files.ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
  }
  if (!files.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem(files.cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(files.key_file);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace sigma::client
