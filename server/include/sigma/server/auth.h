// Bearer-token authorisation of sigmad's API (--tokens FILE, docs/reliability.md).
//
// The tokens file is YAML, a list of entries:
//
//   - token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//     role: write               # write: everything for its jobs but DeleteJob; read: GetHistory,
//                               #   ListJobs, GetJob, GetReport, ListSnapshots; admin: write plus DeleteJob
//     job_prefixes: [team-a.]   # job names it may touch ("" matches every job)
//     name: team-a-trainer      # optional, for operators; never the token
//     max_streams: 16           # optional: concurrent Ingest streams (else --max-streams-per-client)
//     rate_limit_bytes_per_second: 50000000   # optional: ingest payload rate (else the flag)
//     rate_limit_burst_bytes: 100000000       # optional: bucket size (else the flag)
//     max_jobs: 50              # optional quotas (quota.h): jobs its requests create,
//     max_open_snapshots: 64    #   snapshots it holds open, and the bytes they hold
//     max_memory_bytes: 2000000000   # (else only --max-jobs etc. limit it)
//   - token: plain-text-secret  # accepted, but a warning suggests token_sha256
//     role: read
//     job_prefixes: [""]
//
// A request carries `authorization: Bearer TOKEN` in its gRPC metadata. Missing,
// malformed or unknown: UNAUTHENTICATED. A job outside the token's prefixes, or
// an RPC its role may not call: PERMISSION_DENIED. The token itself never
// appears in a status message, a log line or a metric; only SHA-256 digests
// are kept in memory.
#ifndef SIGMA_SERVER_AUTH_H_
#define SIGMA_SERVER_AUTH_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sigma::server {

using Sha256Digest = std::array<uint8_t, 32>;
Sha256Digest Sha256(std::string_view data);
std::string HexDigest(const Sha256Digest& digest);  // 64 lower-case hex digits

enum class Role { kRead, kWrite, kAdmin };

// The RPCs as the authoriser sees them.
enum class Rpc {
  kIngest, kCloseGeneration, kGetHistory, kListJobs, kConfigureJob,
  kGetJob, kGetReport,  // GetJob / GetReport block: read-only like GetHistory and ListJobs
  kDeleteJob, kFinishJob, kListSnapshots  // job lifecycle (issue 15 item 4)
};
const char* RpcName(Rpc rpc);

struct TokenEntry {
  Sha256Digest digest{};
  Role role = Role::kRead;
  std::vector<std::string> job_prefixes;
  std::string name;  // optional label from the file, or "entry N"
  // Per-token overrides of the daemon's per-client limits (limits.h); 0: use
  // the daemon's flag.
  int64_t max_streams = 0;
  int64_t rate_limit_bytes_per_second = 0;
  int64_t rate_limit_burst_bytes = 0;
  // Per-token quotas (quota.h); 0: only the daemon-wide flags.
  int64_t max_jobs = 0;
  int64_t max_open_snapshots = 0;
  int64_t max_memory_bytes = 0;
};

class Authorizer {
 public:
  // Parses the YAML text of a tokens file; `where` names it in errors.
  // `warnings` (optional) receives non-fatal remarks (plain-text tokens).
  static absl::StatusOr<std::unique_ptr<Authorizer>> Parse(const std::string& yaml_text,
                                                           const std::string& where,
                                                           std::vector<std::string>* warnings = nullptr);
  static absl::StatusOr<std::unique_ptr<Authorizer>> LoadFile(const std::string& path,
                                                              std::vector<std::string>* warnings = nullptr);

  // The entry of the bearer token in `authorization` (the metadata values
  // given; exactly one is expected), or UNAUTHENTICATED.
  absl::Status Authenticate(const std::vector<std::string_view>& authorization,
                            const TokenEntry** entry) const;
  // May `entry` call `rpc` at all (role check)? PERMISSION_DENIED if not.
  static absl::Status CheckRole(const TokenEntry& entry, Rpc rpc);
  // May `entry` call `rpc` on `job`? Role and prefixes; PERMISSION_DENIED if not.
  static absl::Status CheckJob(const TokenEntry& entry, Rpc rpc, std::string_view job);
  static bool JobAllowed(const TokenEntry& entry, std::string_view job);

  size_t size() const { return entries_.size(); }

 private:
  Authorizer() = default;
  std::vector<TokenEntry> entries_;
};

// HTTP basic auth of /metrics (--metrics-basic-auth-file): lines
// "USER:SHA256HEX" (the hex SHA-256 of the password); blank lines and lines
// starting with '#' are skipped.
class BasicAuth {
 public:
  static absl::StatusOr<std::unique_ptr<BasicAuth>> Parse(const std::string& text, const std::string& where);
  static absl::StatusOr<std::unique_ptr<BasicAuth>> LoadFile(const std::string& path);
  bool Check(const std::string& user, const std::string& password) const;
  size_t size() const { return users_.size(); }

 private:
  BasicAuth() = default;
  std::vector<std::pair<std::string, Sha256Digest>> users_;
};

// True for 127.0.0.0/8, ::1 and localhost ("[::1]" too).
bool IsLoopbackHost(const std::string& host);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_AUTH_H_
