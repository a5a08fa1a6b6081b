#include "sigma/server/store_migrate.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sigma/server/storage.h"

namespace sigma::server {

absl::StatusOr<MigrateCounts> MigrateStore(const std::string& from_db, const std::string& to_db, int64_t batch) {
  if (from_db == to_db) return absl::InvalidArgumentError("--from and --to name the same database");
  if (batch < 1) return absl::InvalidArgumentError("batch must be positive");
  auto from = Store::Open(from_db);
  if (!from.ok()) return from.status();
  std::vector<StoredJob> jobs;
  std::vector<sigma::v1::GenerationReport> reports;
  std::vector<ConfigRecord> configs;
  if (auto s = (*from)->LoadAll(&jobs, &reports); !s.ok()) return s;
  if (auto s = (*from)->LoadConfigLog(&configs); !s.ok()) return s;
  auto to = Store::Open(to_db);
  if (!to.ok()) return to.status();
  // Jobs and their configs log first (the reports reference the jobs), then
  // the reports in sealing order.
  if (auto s = (*to)->Import(jobs, configs); !s.ok())
    return absl::Status(s.code(), absl::StrCat("jobs and configs: ", s.message()));
  MigrateCounts counts;
  counts.jobs = static_cast<int64_t>(jobs.size());
  counts.configs = static_cast<int64_t>(configs.size());
  for (size_t i = 0; i < reports.size(); i += static_cast<size_t>(batch)) {
    const size_t end = std::min(reports.size(), i + static_cast<size_t>(batch));
    const std::vector<sigma::v1::GenerationReport> chunk(reports.begin() + static_cast<std::ptrdiff_t>(i),
                                                         reports.begin() + static_cast<std::ptrdiff_t>(end));
    if (auto s = (*to)->Commit({}, chunk); !s.ok())
      return absl::Status(s.code(), absl::StrCat("reports ", i, "..", end - 1, " (", counts.reports,
                                                 " copied before): ", s.message()));
    counts.reports = static_cast<int64_t>(end);
  }
  return counts;
}

int MigrateMain(int argc, char** argv) {
  std::string from, to;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--from") == 0) from = argv[i + 1];
    else if (std::strcmp(argv[i], "--to") == 0) to = argv[i + 1];
    else from.clear(), to.clear(), i = argc;
  }
  if (from.empty() || to.empty() || argc != 5) {
    std::fprintf(stderr,
                 "usage: sigmad-migrate --from DB --to DB\n"
                 "  copies every job, configuration change and report of one history store into\n"
                 "  another, e.g.\n"
                 "  --from var/sigma.db --to postgresql://sigma@db:5432/sigma (stop sigmad first)\n");
    return 2;
  }
  absl::StatusOr<MigrateCounts> n = MigrateStore(from, to);
  if (!n.ok()) {
    std::fprintf(stderr, "sigmad-migrate: %s\n", std::string(n.status().message()).c_str());
    return 1;
  }
  std::printf("copied %lld jobs, %lld configuration changes and %lld reports from %s to %s\n",
              static_cast<long long>(n->jobs), static_cast<long long>(n->configs), static_cast<long long>(n->reports),
              RedactDb(from).c_str(), RedactDb(to).c_str());
  return 0;
}

}  // namespace sigma::server
