// sigmactl's online commands: flag parsing, the common flags and the client
// they describe. Used by online_commands.cc (the commands themselves).
#ifndef SIGMA_CLI_ONLINE_FLAGS_H_
#define SIGMA_CLI_ONLINE_FLAGS_H_

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "commands.h"
#include "sigma/client/client.h"

namespace sigma::cli {

// sigmad's default --max-message-bytes (server/include/sigma/server/config.h):
// --batch-rows is capped so that one Batch never exceeds it.
inline constexpr int64_t kDaemonMaxMessageBytes = int64_t{64} << 20;

struct FlagSpec {
  std::string_view name;  // without the leading "--"
  bool takes_value;
};

// The help text of the common flags (every online command prints it).
inline constexpr char kCommonFlagsHelp[] =
    "common flags:\n"
    "  --target HOST:PORT    sigmad address; repeat or give a comma list to spread jobs over\n"
    "                        several daemons by rendezvous hashing of the job name\n"
    "                        (default: $SIGMA_TARGET, else 127.0.0.1:50051)\n"
    "  --timeout SECONDS     deadline of each attempt of each RPC (default 120)\n"
    "  --retries N           retries on UNAVAILABLE / DEADLINE_EXCEEDED, with exponential\n"
    "                        backoff; a share is re-sent whole, which is safe (default 5)\n"
    "  --tls                 connect with TLS, checking the server against the system roots\n"
    "  --tls-ca FILE         ... against this PEM CA bundle instead (implies --tls)\n"
    "  --tls-cert FILE --tls-key FILE   client certificate and key, PEM (mutual TLS)\n"
    "  --tls-server-name N   expect this name in the server certificate\n"
    "  --token-file FILE     bearer token for sigmad --tokens, read from FILE (surrounding\n"
    "                        whitespace stripped); default: $SIGMA_TOKEN, else none\n"
    "  -h, --help            print this help\n"
    "exit status: 0 ok, 1 error (\"sigmactl: CODE: message\" for RPC errors), 2 usage\n";

inline constexpr FlagSpec kCommonFlags[] = {
    {"target", true},  {"timeout", true},  {"retries", true},  {"tls", false},
    {"tls-ca", true},  {"tls-cert", true}, {"tls-key", true},  {"tls-server-name", true},
    {"token-file", true}};

struct Parsed {
  std::map<std::string, std::vector<std::string>> flags;
  std::vector<std::string> positional;
  bool help = false;

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  // The last value given for `name`.
  std::optional<std::string> Get(const std::string& name) const {
    auto it = flags.find(name);
    if (it == flags.end()) return std::nullopt;
    return it->second.back();
  }
};

// Parses `args` against the common flags and `specs`.
absl::StatusOr<Parsed> ParseArgs(const Args& args, std::initializer_list<FlagSpec> specs, bool allow_positional);
// Integer / unsigned / double flag values (absent: nullopt); INVALID_ARGUMENT naming the flag.
absl::StatusOr<std::optional<int64_t>> GetInt(const Parsed& p, const std::string& name, int64_t min);
absl::StatusOr<std::optional<uint64_t>> GetUint(const Parsed& p, const std::string& name);
absl::StatusOr<std::optional<double>> GetDouble(const Parsed& p, const std::string& name, bool positive);
// Exit statuses with their messages: 2 (usage), 1 (client or RPC error).
int UsageError(std::ostream& err, const std::string& usage, const absl::Status& status);
int ClientError(std::ostream& err, const std::string& usage, const absl::Status& status);
int RpcError(std::ostream& err, const absl::Status& status);
// The client the common flags describe (--target, --timeout, --retries, TLS, token).
absl::StatusOr<std::unique_ptr<client::Client>> MakeClient(const Parsed& p);
// Fills `config` from --n-a, --delta, --rho, --preprocessing, --seed; returns whether any was given.
absl::StatusOr<bool> ParseJobConfig(const Parsed& p, sigma::v1::JobConfig* config);

// --resume: "allow", "must" or "never" (docs/server.md "Runs").
absl::StatusOr<sigma::v1::Resume> ParseResume(const std::string& value);
// --probe, --trend-k, --trend-z, --trend-floor.
absl::Status ParseSignificanceFlags(const Parsed& p, sigma::v1::JobConfig* config);

}  // namespace sigma::cli

#endif  // SIGMA_CLI_ONLINE_FLAGS_H_
