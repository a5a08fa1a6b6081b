#include "sigma/server/auth.h"

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "yaml-cpp/yaml.h"

namespace sigma::server {
namespace {

constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void Compress(uint32_t h[8], const uint8_t block[64]) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = (uint32_t{block[4 * i]} << 24) | (uint32_t{block[4 * i + 1]} << 16) |
           (uint32_t{block[4 * i + 2]} << 8) | uint32_t{block[4 * i + 3]};
  for (int i = 16; i < 64; ++i) {
    const uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; ++i) {
    const uint32_t s1 = Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25);
    const uint32_t ch = (e & f) ^ (~e & g);
    const uint32_t t1 = hh + s1 + ch + kK[i] + w[i];
    const uint32_t s0 = Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22);
    const uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    const uint32_t t2 = s0 + maj;
    hh = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d;
  h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

bool ParseHexDigest(std::string_view hex, Sha256Digest* out) {
  if (hex.size() != 64) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < 32; ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

bool ValidPrefix(const std::string& p) {
  if (p.size() > 128) return false;
  for (char c : p) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == ':' || c == '-'))
      return false;
  }
  return true;
}

// The integer field of `e` a per-token limit or quota key sets; null for other keys.
int64_t* LimitField(TokenEntry* e, const std::string& key) {
  if (key == "max_streams") return &e->max_streams;
  if (key == "rate_limit_bytes_per_second") return &e->rate_limit_bytes_per_second;
  if (key == "rate_limit_burst_bytes") return &e->rate_limit_burst_bytes;
  if (key == "max_jobs") return &e->max_jobs;
  if (key == "max_open_snapshots") return &e->max_open_snapshots;
  if (key == "max_memory_bytes") return &e->max_memory_bytes;
  return nullptr;
}

}  // namespace

Sha256Digest Sha256(std::string_view data) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const uint8_t* p = reinterpret_cast<const uint8_t*>(data.data());
  size_t n = data.size();
  const uint64_t bits = static_cast<uint64_t>(n) * 8;
  while (n >= 64) {
    Compress(h, p);
    p += 64;
    n -= 64;
  }
  uint8_t tail[128] = {};
  std::memcpy(tail, p, n);
  tail[n] = 0x80;
  const size_t len = n + 1 + 8 <= 64 ? 64 : 128;
  for (int i = 0; i < 8; ++i) tail[len - 1 - i] = static_cast<uint8_t>(bits >> (8 * i));
  Compress(h, tail);
  if (len == 128) Compress(h, tail + 64);
  Sha256Digest out;
  for (int i = 0; i < 8; ++i) {
    out[4 * i] = static_cast<uint8_t>(h[i] >> 24);
    out[4 * i + 1] = static_cast<uint8_t>(h[i] >> 16);
    out[4 * i + 2] = static_cast<uint8_t>(h[i] >> 8);
    out[4 * i + 3] = static_cast<uint8_t>(h[i]);
  }
  return out;
}

std::string HexDigest(const Sha256Digest& digest) {
  static const char* kHex = "0123456789abcdef";
  std::string s(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    s[2 * i] = kHex[digest[i] >> 4];
    s[2 * i + 1] = kHex[digest[i] & 15];
  }
  return s;
}

const char* RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kIngest: return "Ingest";
    case Rpc::kCloseGeneration: return "CloseGeneration";
    case Rpc::kGetHistory: return "GetHistory";
    case Rpc::kListJobs: return "ListJobs";
    case Rpc::kConfigureJob: return "ConfigureJob";
    case Rpc::kGetJob: return "GetJob";
    case Rpc::kGetReport: return "GetReport";
    case Rpc::kDeleteJob: return "DeleteJob";
    case Rpc::kFinishJob: return "FinishJob";
    case Rpc::kListSnapshots: return "ListSnapshots";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Parse(const std::string& yaml_text,
                                                              const std::string& where,
                                                              std::vector<std::string>* warnings) {
  auto bad = [&](const std::string& msg) { return absl::InvalidArgumentError(absl::StrCat("--tokens ", where, ": ", msg)); };
  std::unique_ptr<Authorizer> auth(new Authorizer());
  try {
    const YAML::Node root = YAML::Load(yaml_text);
    YAML::Node list = root;
    if (root.IsMap() && root["tokens"]) list = root["tokens"];  // `tokens: [...]` also accepted
    if (!list.IsSequence()) return bad("expected a list of {token_sha256 or token, role, job_prefixes}");
    std::set<Sha256Digest> seen;
    size_t index = 0;
    for (const YAML::Node& item : list) {
      ++index;
      const std::string at = absl::StrCat("entry ", index);
      if (!item.IsMap()) return bad(at + ": expected a mapping");
      TokenEntry e;
      e.name = at;
      bool has_digest = false, has_role = false, has_prefixes = false;
      for (const auto& kv : item) {
        const std::string key = kv.first.as<std::string>();
        const YAML::Node& v = kv.second;
        if (key == "token_sha256" || key == "token") {
          if (has_digest) return bad(at + ": give one of token_sha256 and token");
          if (!v.IsScalar()) return bad(at + ": " + key + " must be a string");
          const std::string s = v.as<std::string>();
          if (key == "token") {
            // The value is not echoed: it is a secret.
            if (s.empty()) return bad(at + ": token is empty");
            e.digest = Sha256(s);
            if (warnings)
              warnings->push_back(absl::StrCat("--tokens ", where, ": ", at,
                                               " holds a plain-text token; store token_sha256 "
                                               "(printf %s TOKEN | sha256sum) instead"));
          } else if (!ParseHexDigest(s, &e.digest)) {
            return bad(at + ": token_sha256 must be 64 hex digits (the SHA-256 of the token)");
          }
          has_digest = true;
        } else if (key == "role") {
          const std::string r = v.IsScalar() ? v.as<std::string>() : "";
          if (r == "write") e.role = Role::kWrite;
          else if (r == "read") e.role = Role::kRead;
          else if (r == "admin") e.role = Role::kAdmin;
          else return bad(at + ": role must be write, read or admin, got '" + r.substr(0, 40) + "'");
          has_role = true;
        } else if (key == "job_prefixes") {
          if (!v.IsSequence()) return bad(at + ": job_prefixes must be a list (\"\" matches every job)");
          for (const YAML::Node& p : v) {
            if (!p.IsScalar()) return bad(at + ": job_prefixes holds a non-string");
            const std::string prefix = p.as<std::string>();
            if (!ValidPrefix(prefix))
              return bad(at + ": job prefix '" + prefix.substr(0, 40) + "' is not [A-Za-z0-9_.:-]{0,128}");
            e.job_prefixes.push_back(prefix);
          }
          has_prefixes = true;
        } else if (key == "name") {
          if (!v.IsScalar()) return bad(at + ": name must be a string");
          e.name = v.as<std::string>();
        } else if (int64_t* limit = LimitField(&e, key)) {
          int64_t value = -1;
          if (v.IsScalar() && !absl::SimpleAtoi(v.as<std::string>(), &value)) value = -1;
          if (value < 1) return bad(at + ": " + key + " must be an integer >= 1");
          *limit = value;
        } else {
          return bad(at + ": unknown key '" + key.substr(0, 40) + "'");
        }
      }
      if (!has_digest) return bad(at + ": needs token_sha256 (or token)");
      if (!has_role) return bad(at + ": needs role (write or read)");
      if (!has_prefixes) return bad(at + ": needs job_prefixes (a list; [\"\"] for every job)");
      if (!seen.insert(e.digest).second) return bad(at + ": the same token appears twice");
      auth->entries_.push_back(std::move(e));
    }
  } catch (const YAML::Exception& e) {
    return bad(e.what());
  }
  if (auth->entries_.empty()) return bad("no tokens: every request would be refused");
  return auth;
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::LoadFile(const std::string& path,
                                                                 std::vector<std::string>* warnings) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--tokens ", path, ": cannot read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path, warnings);
}

absl::Status Authorizer::Authenticate(const std::vector<std::string_view>& authorization,
                                      const TokenEntry** entry) const {
  *entry = nullptr;
  if (authorization.empty())
    return absl::UnauthenticatedError("missing bearer token: send metadata 'authorization: Bearer TOKEN'");
  if (authorization.size() != 1)
    return absl::UnauthenticatedError("more than one authorization header");
  std::string_view v = authorization.front();
  constexpr std::string_view kScheme = "bearer ";
  bool scheme = v.size() > kScheme.size();
  for (size_t i = 0; scheme && i < kScheme.size(); ++i)
    scheme = absl::ascii_tolower(static_cast<unsigned char>(v[i])) == kScheme[i];
  if (!scheme)
    return absl::UnauthenticatedError("authorization header is not 'Bearer TOKEN'");
  v.remove_prefix(kScheme.size());
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
  const Sha256Digest d = Sha256(v);
  // Compare against every entry without an early exit (constant time in the digest).
  const TokenEntry* found = nullptr;
  for (const TokenEntry& e : entries_) {
    uint8_t diff = 0;
    for (size_t i = 0; i < d.size(); ++i) diff |= static_cast<uint8_t>(d[i] ^ e.digest[i]);
    if (diff == 0) found = &e;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown bearer token");
  *entry = found;
  return absl::OkStatus();
}

absl::Status Authorizer::CheckRole(const TokenEntry& entry, Rpc rpc) {
  const bool read_only = rpc == Rpc::kGetHistory || rpc == Rpc::kListJobs || rpc == Rpc::kListSnapshots ||
                         rpc == Rpc::kGetJob || rpc == Rpc::kGetReport;
  const Role needed = rpc == Rpc::kDeleteJob ? Role::kAdmin : read_only ? Role::kRead : Role::kWrite;
  if (entry.role < needed) {  // read < write < admin
    const char* names[] = {"read", "write", "admin"};
    return absl::PermissionDeniedError(absl::StrCat(RpcName(rpc), " needs a", needed == Role::kAdmin ? "n " : " ",
                                                    names[static_cast<int>(needed)], " token; token '", entry.name,
                                                    "' has role ", names[static_cast<int>(entry.role)]));
  }
  return absl::OkStatus();
}

bool Authorizer::JobAllowed(const TokenEntry& entry, std::string_view job) {
  for (const std::string& p : entry.job_prefixes) {
    if (job.size() >= p.size() && job.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

absl::Status Authorizer::CheckJob(const TokenEntry& entry, Rpc rpc, std::string_view job) {
  if (absl::Status s = CheckRole(entry, rpc); !s.ok()) return s;
  if (!JobAllowed(entry, job))
    return absl::PermissionDeniedError(absl::StrCat(RpcName(rpc), ": job '", std::string(job.substr(0, 128)), "' is outside the prefixes of token '",
                                     entry.name, "'"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BasicAuth>> BasicAuth::Parse(const std::string& text, const std::string& where) {
  std::unique_ptr<BasicAuth> auth(new BasicAuth());
  std::istringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::string_view v = line;
    while (!v.empty() && absl::ascii_isspace(static_cast<unsigned char>(v.front()))) v.remove_prefix(1);
    while (!v.empty() && absl::ascii_isspace(static_cast<unsigned char>(v.back()))) v.remove_suffix(1);
    if (v.empty() || v.front() == '#') continue;
    const size_t colon = v.rfind(':');
    Sha256Digest d;
    if (colon == std::string_view::npos || colon == 0 || !ParseHexDigest(v.substr(colon + 1), &d))
      return absl::InvalidArgumentError(absl::StrCat("--metrics-basic-auth-file ", where, ": line ", number,
                                                     " is not USER:SHA256HEX (64 hex digits)"));
    auth->users_.emplace_back(std::string(v.substr(0, colon)), d);
  }
  if (auth->users_.empty())
    return absl::InvalidArgumentError(absl::StrCat("--metrics-basic-auth-file ", where, ": no users"));
  return auth;
}

absl::StatusOr<std::unique_ptr<BasicAuth>> BasicAuth::LoadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--metrics-basic-auth-file ", path, ": cannot read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

bool BasicAuth::Check(const std::string& user, const std::string& password) const {
  const Sha256Digest d = Sha256(password);
  bool ok = false;
  for (const auto& [name, digest] : users_) {
    uint8_t diff = 0;
    for (size_t i = 0; i < d.size(); ++i) diff |= static_cast<uint8_t>(d[i] ^ digest[i]);
    if (diff == 0 && name == user) ok = true;
  }
  return ok;
}

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]") return true;
  return host.rfind("127.", 0) == 0;
}

}  // namespace sigma::server
