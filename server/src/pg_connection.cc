// libpq plumbing of the PostgreSQL store (pg_connection.h).
#include "pg_connection.h"

#include <arpa/inet.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sigma::server::pg {

Param Real(double v) {
  if (std::isnan(v)) return Param{"NaN", false};
  if (std::isinf(v)) return Param{v > 0 ? "Infinity" : "-Infinity", false};
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return Param{buf, false};
}

std::string GetBytes(const PGresult* r, int row, int col) {
  return std::string(PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col)));
}

int64_t GetInt(const PGresult* r, int row, int col) {
  const char* p = PQgetvalue(r, row, col);
  if (PQgetlength(r, row, col) == 4) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return static_cast<int32_t>(ntohl(v));
  }
  uint32_t hi, lo;
  std::memcpy(&hi, p, 4);
  std::memcpy(&lo, p + 4, 4);
  return static_cast<int64_t>((static_cast<uint64_t>(ntohl(hi)) << 32) | ntohl(lo));
}

Connection::Connection(std::string url, const StoreOptions& options)
    : url_(std::move(url)), options_(absl::StrCat("-c statement_timeout=", options.statement_timeout_ms)) {}

absl::Status Connection::Connect() {
  if (conn_ && PQstatus(conn_) == CONNECTION_OK) return absl::OkStatus();
  Drop();
  // connect_timeout and options first: a value in the URL overrides them (expand_dbname).
  const char* keys[] = {"connect_timeout", "options", "application_name", "dbname", nullptr};
  const char* values[] = {"5", options_.c_str(), "sigmad", url_.c_str(), nullptr};
  conn_ = PQconnectdbParams(keys, values, 1);
  if (conn_ && PQstatus(conn_) == CONNECTION_OK) {
    PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);  // NOTICEs are not errors
    return absl::OkStatus();
  }
  std::string msg = conn_ ? PQerrorMessage(conn_) : "out of memory";
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  Drop();
  return absl::UnavailableError(absl::StrCat("postgresql: cannot connect: ", msg));
}

absl::StatusOr<Result> Connection::Exec(const char* sql, const std::vector<Param>& params) {
  if (auto s = Connect(); !s.ok()) return s;
  std::vector<const char*> values;
  std::vector<int> lengths, formats;
  for (const Param& p : params) {
    values.push_back(p.value.data());
    lengths.push_back(static_cast<int>(p.value.size()));
    formats.push_back(p.binary ? 1 : 0);
  }
  Result r(params.empty() && std::strchr(sql, ';') != nullptr
               ? PQexec(conn_, sql)  // several statements (DDL), text results
               : PQexecParams(conn_, sql, static_cast<int>(params.size()), nullptr, values.data(),
                              lengths.data(), formats.data(), 1));
  const ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
  std::string msg = r ? PQresultErrorMessage(r.get()) : PQerrorMessage(conn_);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
  const std::string text = absl::StrCat("postgresql: ", msg, " (in: ", std::string(sql).substr(0, 60), ")");
  if (PQstatus(conn_) != CONNECTION_OK || state == nullptr || std::strncmp(state, "08", 2) == 0 ||
      std::strncmp(state, "57P", 3) == 0) {
    Drop();
    return absl::UnavailableError(text);
  }
  if (std::strcmp(state, "23505") == 0) return absl::AlreadyExistsError(text);
  if (std::strcmp(state, "57014") == 0 || std::strcmp(state, "55P03") == 0)
    return absl::DeadlineExceededError(absl::StrCat(text, " [", options_, "]"));
  if (std::strcmp(state, "40001") == 0 || std::strcmp(state, "40P01") == 0) return absl::AbortedError(text);
  return absl::InternalError(text);
}

}  // namespace sigma::server::pg
