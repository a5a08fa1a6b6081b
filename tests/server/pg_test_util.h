// A throwaway PostgreSQL server for the store tests (Debian's `postgresql`
// package): a cluster copied from a per-machine template (initdb runs once per
// PostgreSQL version and uid, under a lock), started with pg_ctl on a free
// loopback port in a temporary directory, stopped and removed at exit. As
// root the server runs as the `postgres` user (runuser). Tests skip with the
// reason when the binaries are missing or the server cannot start.
#ifndef SIGMA_TESTS_PG_TEST_UTIL_H_
#define SIGMA_TESTS_PG_TEST_UTIL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sigma::server::testing {

class PgServer {
 public:
  // The server of this test process, started on first use; nullptr (and the
  // reason in *why) when PostgreSQL is not usable here.
  static PgServer* Get(std::string* why);

  // A new empty database on this server; its postgresql:// URL.
  std::string NewDatabase();
  // Runs `sql` on the database at `url`; the first column of every row (text).
  absl::StatusOr<std::vector<std::string>> Query(const std::string& url, const std::string& sql);

  // Stops (fast shutdown) and starts the server again on the same port.
  absl::Status Stop();
  absl::Status Start();
  int port() const { return port_; }
  std::string Url(const std::string& dbname) const;
  ~PgServer();

 private:
  PgServer() = default;
  absl::Status Init();
  std::string Cmd(const std::string& tool) const;  // "[runuser -u postgres --] BIN/tool"

  std::string bin_dir_;
  std::string dir_;  // temporary directory: data/ and server.log
  bool as_postgres_ = false;
  int port_ = 0;
  int next_db_ = 0;
};

}  // namespace sigma::server::testing

// Skips the test (with the reason) when no PostgreSQL server can be started.
#define SIGMA_PG_OR_SKIP(var)                                         \
  std::string var##_why;                                              \
  PgServer* var = PgServer::Get(&var##_why);                          \
  if (var == nullptr) GTEST_SKIP() << "PostgreSQL: " << var##_why

#endif  // SIGMA_TESTS_PG_TEST_UTIL_H_
