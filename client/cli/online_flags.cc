#include "online_flags.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

namespace sigma::cli {
namespace {
constexpr char kDefaultTarget[] = "127.0.0.1:50051";
}  // namespace

namespace v1 = ::sigma::v1;
using ::sigma::client::Client;
using ::sigma::client::ClientOptions;

absl::StatusOr<Parsed> ParseArgs(const Args& args, std::initializer_list<FlagSpec> specs,
                                 bool allow_positional) {
  std::map<std::string, bool> known;
  for (const FlagSpec& s : kCommonFlags) known[std::string(s.name)] = s.takes_value;
  for (const FlagSpec& s : specs) known[std::string(s.name)] = s.takes_value;
  Parsed parsed;
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_done || arg.size() < 2 || arg[0] != '-' || arg == "-") {
      if (!allow_positional)
        return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
      parsed.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      parsed.help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0)
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", arg, "'"));
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = known.find(name);
    if (it == known.end())
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '--", name, "'"));
    if (it->second) {
      if (!value) {
        if (i + 1 >= args.size())
          return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = args[++i];
      }
      parsed.flags[name].push_back(*value);
    } else {
      if (value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      parsed.flags[name].push_back("");
    }
  }
  return parsed;
}

absl::StatusOr<std::optional<int64_t>> GetInt(const Parsed& p, const std::string& name,
                                              int64_t min_value) {
  std::optional<std::string> v = p.Get(name);
  if (!v) return std::optional<int64_t>();
  int64_t x;
  if (!absl::SimpleAtoi(*v, &x))
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": not an integer: '", *v, "'"));
  if (x < min_value)
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be >= ", min_value));
  return std::optional<int64_t>(x);
}

absl::StatusOr<std::optional<uint64_t>> GetUint(const Parsed& p, const std::string& name) {
  std::optional<std::string> v = p.Get(name);
  if (!v) return std::optional<uint64_t>();
  uint64_t x;
  if (!absl::SimpleAtoi(*v, &x))
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": not an unsigned integer: '", *v, "'"));
  return std::optional<uint64_t>(x);
}

absl::StatusOr<std::optional<double>> GetDouble(const Parsed& p, const std::string& name,
                                                bool positive) {
  std::optional<std::string> v = p.Get(name);
  if (!v) return std::optional<double>();
  double x;
  if (!absl::SimpleAtod(*v, &x) || !std::isfinite(x))
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": not a number: '", *v, "'"));
  if (positive && !(x > 0))
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be > 0"));
  return std::optional<double>(x);
}

// Usage error: the message and one line pointing at the command's --help on `err`,
// exit 2 (usage starts "usage: sigmactl COMMAND ...").
int UsageError(std::ostream& err, const std::string& usage, const absl::Status& status) {
  std::vector<std::string> words = absl::StrSplit(usage, absl::MaxSplits(' ', 3));
  const std::string command = words.size() > 2 ? words[1] + " " + words[2] : "sigmactl";
  err << "sigmactl: " << status.message() << "\nsee '" << command << " --help'\n";
  return 2;
}

// A client that could not be made: bad flags are usage errors (2), an
// unreadable TLS file is a failure (1).
int ClientError(std::ostream& err, const std::string& usage, const absl::Status& status) {
  if (absl::IsInvalidArgument(status)) return UsageError(err, usage, status);
  err << "sigmactl: " << status.message() << "\n";
  return 1;
}

int RpcError(std::ostream& err, const absl::Status& status) {
  err << "sigmactl: " << absl::StatusCodeToString(status.code()) << ": " << status.message()
      << "\n";
  return 1;
}

absl::StatusOr<std::unique_ptr<Client>> MakeClient(const Parsed& p) {
  std::vector<std::string> targets;
  std::vector<std::string> specs;
  if (p.Has("target")) {
    specs = p.flags.at("target");
  } else if (const char* env = std::getenv("SIGMA_TARGET"); env != nullptr && *env != '\0') {
    specs.push_back(env);
  } else {
    specs.push_back(kDefaultTarget);
  }
  std::set<std::string> seen;
  for (const std::string& spec : specs) {
    for (absl::string_view t : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
      std::string target(absl::StripAsciiWhitespace(t));
      if (seen.insert(target).second) targets.push_back(target);
    }
  }
  if (targets.empty()) return absl::InvalidArgumentError("--target: no address given");
  ClientOptions options;
  absl::StatusOr<std::optional<double>> timeout = GetDouble(p, "timeout", true);
  if (!timeout.ok()) return timeout.status();
  if (*timeout) options.deadline = absl::Seconds(**timeout);
  absl::StatusOr<std::optional<int64_t>> retries = GetInt(p, "retries", 0);
  if (!retries.ok()) return retries.status();
  if (*retries) options.max_retries = static_cast<int>(**retries);
  if (p.Has("tls") || p.Has("tls-ca") || p.Has("tls-cert") || p.Has("tls-key")) {
    client::TlsFiles files;
    files.ca_file = p.Get("tls-ca").value_or("");
    files.cert_file = p.Get("tls-cert").value_or("");
    files.key_file = p.Get("tls-key").value_or("");
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = client::TlsCredentials(files);
    if (!creds.ok()) return creds.status();
    options.credentials = *creds;
  }
  options.tls_server_name = p.Get("tls-server-name").value_or("");
  if (std::optional<std::string> file = p.Get("token-file")) {
    std::ifstream in(*file, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in) return absl::NotFoundError(absl::StrCat("--token-file: cannot read ", *file));
    options.bearer_token = std::string(absl::StripAsciiWhitespace(ss.str()));
    if (options.bearer_token.empty())
      return absl::InvalidArgumentError(absl::StrCat("--token-file ", *file, " is empty"));
  } else if (const char* env = std::getenv("SIGMA_TOKEN"); env != nullptr && *env != '\0') {
    options.bearer_token = std::string(absl::StripAsciiWhitespace(env));
  }
  return Client::Create(std::move(targets), options);
}

// Fills `config` from the config flags; returns whether any was given.
absl::StatusOr<v1::Resume> ParseResume(const std::string& value) {
  if (value == "allow") return v1::RESUME_ALLOW;
  if (value == "must") return v1::RESUME_MUST;
  if (value == "never") return v1::RESUME_NEVER;
  return absl::InvalidArgumentError(absl::StrCat("--resume must be allow, must or never, got '", value, "'"));
}

absl::StatusOr<bool> ParseJobConfig(const Parsed& p, v1::JobConfig* config) {
  bool any = false;
  absl::StatusOr<std::optional<int64_t>> n_a = GetInt(p, "n-a", 1);
  if (!n_a.ok()) return n_a.status();
  if (*n_a) config->set_n_a(**n_a), any = true;
  absl::StatusOr<std::optional<double>> delta = GetDouble(p, "delta", true);
  if (!delta.ok()) return delta.status();
  if (*delta) config->set_delta(**delta), any = true;
  absl::StatusOr<std::optional<double>> rho = GetDouble(p, "rho", true);
  if (!rho.ok()) return rho.status();
  if (*rho) config->set_rho(**rho), any = true;
  if (std::optional<std::string> pre = p.Get("preprocessing")) {
    if (*pre == "l2") {
      config->set_preprocessing(v1::PREPROCESSING_L2);
    } else if (*pre == "none") {
      config->set_preprocessing(v1::PREPROCESSING_NONE);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--preprocessing must be l2 or none, got '", *pre, "'"));
    }
    any = true;
  }
  absl::StatusOr<std::optional<uint64_t>> seed = GetUint(p, "seed");
  if (!seed.ok()) return seed.status();
  if (*seed) config->set_seed(**seed), any = true;
  return any;
}

// --probe, --trend-k, --trend-z, --trend-floor (spec §3); sigmad validates the ranges.
absl::Status ParseSignificanceFlags(const Parsed& p, v1::JobConfig* config) {
  if (std::optional<std::string> probe = p.Get("probe")) {
    if (*probe == "fresh") config->set_probe(v1::PROBE_FRESH);
    else if (*probe == "fixed") config->set_probe(v1::PROBE_FIXED);
    else return absl::InvalidArgumentError(absl::StrCat("--probe: '", *probe, "' is not fresh or fixed"));
  }
  absl::StatusOr<std::optional<int64_t>> k = GetInt(p, "trend-k", 1);
  if (!k.ok()) return k.status();
  if (*k) config->set_trend_k(static_cast<int32_t>(std::min<int64_t>(**k, 1 << 30)));
  absl::StatusOr<std::optional<double>> z = GetDouble(p, "trend-z", true);
  if (!z.ok()) return z.status();
  if (*z) config->set_trend_z(**z);
  absl::StatusOr<std::optional<double>> floor = GetDouble(p, "trend-floor", false);
  if (!floor.ok()) return floor.status();
  if (*floor) config->set_trend_floor(**floor);
  return absl::OkStatus();
}

}  // namespace sigma::cli
