// The --db dispatch (SQLite path or PostgreSQL URL), the URL redaction for
// logs, the refusal of a commit to a job deleted elsewhere, and the
// backend-independent rule of HistoryReader::SealWindow (storage.h).
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sigma/server/storage.h"
#include "storage_backends.h"

namespace sigma::server {

namespace {
constexpr char kDeletedJobPayload[] = "type.sigma/store.job_deleted_elsewhere";
}  // namespace

absl::Status JobDeletedElsewhere(const std::string& job) {
  absl::Status s = absl::FailedPreconditionError(absl::StrCat(
      "job '", job, "' was deleted on another replica (its row in the shared store is gone or belongs to a job of ",
      "that name created since): nothing of this commit was stored, and this replica forgets the job; send again ",
      "to create it anew"));
  s.SetPayload(kDeletedJobPayload, absl::Cord(job));
  return s;
}

std::string DeletedJob(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kFailedPrecondition) return "";
  const auto job = status.GetPayload(kDeletedJobPayload);  // absl::optional<absl::Cord>
  return job ? std::string(*job) : "";
}

bool IsPostgresUrl(const std::string& db) {
  return absl::StartsWith(db, "postgresql://") || absl::StartsWith(db, "postgres://");
}

std::string RedactDb(const std::string& db) {
  if (!IsPostgresUrl(db)) return db;
  // scheme://user:password@host...: the password is between the first ':'
  // after the scheme and the last '@' of the authority.
  const size_t start = db.find("://") + 3;
  const size_t slash = db.find('/', start);
  const std::string authority = db.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
  const size_t at = authority.rfind('@');
  const size_t colon = authority.find(':');
  std::string out = db;
  if (at != std::string::npos && colon != std::string::npos && colon < at)
    out.replace(start + colon + 1, at - colon - 1, "***");
  if (const size_t pw = out.find("password="); pw != std::string::npos) {
    const size_t end = out.find('&', pw);
    out.replace(pw + 9, (end == std::string::npos ? out.size() : end) - pw - 9, "***");
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& db, const StoreOptions& options) {
  return IsPostgresUrl(db) ? OpenPostgresStore(db, options) : OpenSqliteStore(db);
}

absl::StatusOr<std::unique_ptr<HistoryReader>> HistoryReader::Open(const std::string& db,
                                                                   const StoreOptions& options) {
  return IsPostgresUrl(db) ? OpenPostgresHistoryReader(db, options) : OpenSqliteHistoryReader(db);
}

// The rule of SealWindow (storage.h), over the tap's whole history.
absl::Status HistoryReader::SealWindow(const std::string& job, const std::string& run, const std::string& tap,
                                       int64_t before, int recent, int with_drift, int64_t pinned,
                                       std::vector<sigma::v1::GenerationReport>* out) {
  std::vector<sigma::v1::GenerationReport> all;  // by generation
  if (auto s = Reports(job, run, tap, &all); !s.ok()) return s;
  std::set<int64_t> keep;
  if (pinned >= 0) keep.insert(pinned);
  for (const auto& r : all) {
    if (r.flags().cholesky_failed()) continue;
    keep.insert(r.generation());  // the first successful one
    break;
  }
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (it->generation() >= before) continue;
    if (recent > 0) keep.insert(it->generation()), --recent;
    if (with_drift > 0 && !it->flags().cholesky_failed() && it->baseline_generation() >= 0)
      keep.insert(it->generation()), --with_drift;
  }
  for (auto& r : all)
    if (keep.contains(r.generation())) out->push_back(std::move(r));
  return absl::OkStatus();
}

}  // namespace sigma::server
