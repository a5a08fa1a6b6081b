// libpq plumbing shared by the PostgreSQL Store and HistoryReader
// (storage_postgres.cc): one connection with reconnect, typed parameters and
// binary result decoding, SQLSTATE -> absl::Status. Internal to server/src.
#ifndef SIGMA_SERVER_SRC_PG_CONNECTION_H_
#define SIGMA_SERVER_SRC_PG_CONNECTION_H_

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sigma/server/storage.h"

namespace sigma::server::pg {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

// One query parameter: text, or binary (BYTEA), or NULL.
struct Param {
  std::string value;
  bool binary = false;
};
inline Param Text(std::string s) { return Param{std::move(s), false}; }
inline Param Bytes(std::string s) { return Param{std::move(s), true}; }
inline Param Int(int64_t v) { return Param{std::to_string(v), false}; }
Param Real(double v);  // %.17g; NaN and +-Infinity spelled as PostgreSQL reads them

// Binary-format result columns: TEXT and BYTEA are raw bytes, INTEGER is
// 4 bytes and BIGINT 8 bytes in network order.
std::string GetBytes(const PGresult* r, int row, int col);
int64_t GetInt(const PGresult* r, int row, int col);

// One libpq connection to `url`, (re)connected on demand. Not thread-safe:
// each owner calls it under its own mutex.
class Connection {
 public:
  Connection(std::string url, const StoreOptions& options);
  ~Connection() { Drop(); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects unless already connected and healthy.
  absl::Status Connect();

  // Runs `sql` ($1.. bound to `params`); results in binary format. Errors:
  // UNAVAILABLE (connection lost; the connection is dropped, the next call
  // reconnects), DEADLINE_EXCEEDED (statement_timeout, or a lock not
  // available NOWAIT), ALREADY_EXISTS (unique violation), ABORTED
  // (serialization failure or deadlock), INTERNAL otherwise; the message
  // names the statement.
  absl::StatusOr<Result> Exec(const char* sql, const std::vector<Param>& params = {});

  // Exec for statements whose rows are not needed.
  absl::Status Run(const char* sql, const std::vector<Param>& params = {}) { return Exec(sql, params).status(); }

  void Rollback() {
    if (conn_ && PQstatus(conn_) == CONNECTION_OK) Run("ROLLBACK").IgnoreError();
  }
  void Drop() {
    if (conn_) PQfinish(conn_);
    conn_ = nullptr;
  }

 private:
  std::string url_;
  std::string options_;  // libpq "options": -c statement_timeout=MS
  PGconn* conn_ = nullptr;
};

// Runs `fn` (a whole transaction or a read), and once more on a fresh
// connection when it failed because the connection was lost.
inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) { return s.status(); }

template <typename Fn>
auto WithRetry(Fn fn) -> decltype(fn()) {
  auto r = fn();
  if (StatusOf(r).code() == absl::StatusCode::kUnavailable) r = fn();
  return r;
}

}  // namespace sigma::server::pg

#endif  // SIGMA_SERVER_SRC_PG_CONNECTION_H_
