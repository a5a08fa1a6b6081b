// Copying a history from one store into another (storage.h), e.g. an SQLite
// file into the PostgreSQL database replicas will share (docs/deployment.md):
// every job (its current configuration and m), its configs log (every
// configuration change with its time) and every report, in the order
// they were sealed, in transactions of `batch` reports. Re-running after an
// interruption is safe on PostgreSQL (a report already stored byte for byte
// counts as copied); a different report already at the destination stops the
// copy with ALREADY_EXISTS. The source must not be in use (its flock).
#ifndef SIGMA_SERVER_STORE_MIGRATE_H_
#define SIGMA_SERVER_STORE_MIGRATE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace sigma::server {

struct MigrateCounts {
  int64_t jobs = 0;
  int64_t configs = 0;  // rows of the configs log
  int64_t reports = 0;
};

absl::StatusOr<MigrateCounts> MigrateStore(const std::string& from_db, const std::string& to_db, int64_t batch = 500);

// `sigmad-migrate --from DB --to DB`: runs MigrateStore and prints the counts;
// the process exit code (0 done, 1 failed, 2 usage).
int MigrateMain(int argc, char** argv);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_STORE_MIGRATE_H_
