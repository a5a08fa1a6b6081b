// The two Store/HistoryReader implementations behind Store::Open and
// HistoryReader::Open (storage.h): storage.cc (SQLite) and
// storage_postgres.cc (PostgreSQL, libpq).
#ifndef SIGMA_SERVER_SRC_STORAGE_BACKENDS_H_
#define SIGMA_SERVER_SRC_STORAGE_BACKENDS_H_

#include <memory>
#include <string>

#include "sigma/server/storage.h"

namespace sigma::server {

absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path);
absl::StatusOr<std::unique_ptr<HistoryReader>> OpenSqliteHistoryReader(const std::string& path);
absl::StatusOr<std::unique_ptr<Store>> OpenPostgresStore(const std::string& url, const StoreOptions& options);
absl::StatusOr<std::unique_ptr<HistoryReader>> OpenPostgresHistoryReader(const std::string& url,
                                                                         const StoreOptions& options);

}  // namespace sigma::server

#endif  // SIGMA_SERVER_SRC_STORAGE_BACKENDS_H_
