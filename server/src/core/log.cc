#include "sigma/server/log.h"

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sigma::server {

namespace {

const char* LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "info";
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') absl::StrAppend(&out, "\\", std::string(1, static_cast<char>(c)));
    else if (c < 0x20) absl::StrAppend(&out, absl::StrFormat("\\u%04x", c));
    else out.push_back(static_cast<char>(c));
  }
  return out + "\"";
}

// key=value, the value quoted (JSON rules) when it has spaces, quotes or
// control characters: one event stays on one line whatever a client sent.
std::string TextValue(const std::string& v) {
  for (unsigned char c : v) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) return JsonString(v);
  }
  return v.empty() ? "\"\"" : v;
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "debug") return LogLevel::kDebug;
  if (n == "info") return LogLevel::kInfo;
  if (n == "warning" || n == "warn") return LogLevel::kWarning;
  if (n == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(absl::StrCat("--log-level: '", name, "' is not debug, info, warning or error"));
}

absl::StatusOr<LogFormat> ParseLogFormat(const std::string& name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat("--log-format: '", name, "' is not text or json"));
}

Logger::Logger(Options options, Sink sink, std::function<absl::Time()> now)
    : options_(options), sink_(std::move(sink)), now_(std::move(now)) {}

std::string Logger::Format(LogLevel level, const std::string& event, const std::vector<Field>& fields) const {
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", now_(), absl::UTCTimeZone());
  if (options_.format == LogFormat::kJson) {
    std::string line = absl::StrCat("{\"ts\":", JsonString(ts), ",\"level\":", JsonString(LevelName(level)),
                                    ",\"event\":", JsonString(event));
    for (const auto& [k, v] : fields) absl::StrAppend(&line, ",", JsonString(k), ":", JsonString(v));
    return line + "}";
  }
  std::string line = absl::StrCat(ts, " ", LevelName(level), " ", event);
  for (const auto& [k, v] : fields) absl::StrAppend(&line, " ", k, "=", TextValue(v));
  return line;
}

void Logger::Log(LogLevel level, const std::string& event, const std::vector<Field>& fields) {
  if (level < options_.level) return;
  const std::string line = Format(level, event, fields);
  std::lock_guard<std::mutex> lock(mu_);
  if (sink_) {
    sink_(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

void Logger::Refusal(const std::string& rpc, const std::string& status, const std::string& reason,
                     const std::string& message) {
  if (LogLevel::kWarning < options_.level) return;
  int64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const absl::Time now = now_();
    if (now - window_start_ >= options_.refusal_period) {
      window_start_ = now;
      window_lines_ = 0;
    }
    if (window_lines_ >= options_.refusal_burst) {
      ++suppressed_;
      return;
    }
    ++window_lines_;
    suppressed = suppressed_;
    suppressed_ = 0;
  }
  std::vector<Field> fields{{"rpc", rpc}, {"status", status}, {"reason", reason}, {"message", message.substr(0, 300)}};
  if (suppressed > 0) fields.emplace_back("suppressed", absl::StrCat(suppressed));
  Log(LogLevel::kWarning, "refusal", fields);
}

}  // namespace sigma::server
