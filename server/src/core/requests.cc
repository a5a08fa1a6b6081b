#include "sigma/server/requests.h"

#include <cctype>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sigma/server/refusal.h"
#include "sigma/server/scheduler.h"
#include "sigma/v1/wire.h"

namespace sigma::server {

namespace v1 = sigma::v1;
using absl::StatusCode;

namespace {

absl::Status BadName(const char* what, const std::string& name) {
  return Refusal(StatusCode::kInvalidArgument, "invalid_name",
                 absl::StrCat("invalid ", what, " name '", name.substr(0, 200), "': must match [A-Za-z0-9_.:-]{1,128}"));
}

absl::Status CheckConfig(const v1::JobConfig& config) {
  if (auto s = ValidateJobConfig(config); !s.ok())
    return Refusal(StatusCode::kInvalidArgument, "invalid_request", s.message());
  if (!config.baseline_job().empty() && !ValidName(config.baseline_job()))
    return Refusal(StatusCode::kInvalidArgument, "invalid_name", "invalid config.baseline_job name");
  if (!config.baseline_run().empty() && !ValidName(config.baseline_run()))
    return Refusal(StatusCode::kInvalidArgument, "invalid_name", "invalid config.baseline_run name");
  return absl::OkStatus();
}

}  // namespace

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (unsigned char c : name) {
    if (!(std::isalnum(c) || c == '_' || c == '.' || c == ':' || c == '-')) return false;
  }
  return true;
}

absl::StatusOr<sigma::DType> ValidateOpen(const v1::OpenSnapshot& open, const DaemonOptions& options) {
  const std::string tap = TapName(open.tap());
  if (!ValidName(open.job())) return BadName("job", open.job());
  if (!ValidName(tap)) return BadName("tap", tap);
  if (!open.run().empty() && !ValidName(open.run())) return BadName("run", open.run());
  if (!v1::Resume_IsValid(open.resume()))
    return Refusal(StatusCode::kInvalidArgument, "invalid_request",
                   absl::StrFormat("unknown resume %d: use RESUME_ALLOW, RESUME_MUST or RESUME_NEVER",
                                   static_cast<int>(open.resume())));
  if (open.generation() < 0)
    return Refusal(StatusCode::kInvalidArgument, "invalid_request",
                   absl::StrFormat("generation must be >= 0, got %d", open.generation()));
  if (open.world_size() < 1 || open.world_size() > 65536)
    return Refusal(StatusCode::kInvalidArgument, "invalid_rank",
                   absl::StrFormat("world_size must be in [1, 65536], got %d", open.world_size()));
  if (open.rank() < 0 || open.rank() >= open.world_size())
    return Refusal(StatusCode::kInvalidArgument, "invalid_rank",
                   absl::StrFormat("rank must be in [0, world_size = %d), got %d", open.world_size(), open.rank()));
  if (open.m() < 1 || open.m() > (1 << 20))
    return Refusal(StatusCode::kInvalidArgument, "dimension_mismatch",
                   absl::StrFormat("m must be in [1, 2^20], got %d", open.m()));
  if (open.m() > options.max_m)
    return Refusal(StatusCode::kResourceExhausted, "m_too_large",
                   absl::StrFormat("m = %d exceeds --max-m = %d", open.m(), options.max_m));
  const std::optional<sigma::DType> dtype = sigma::FromWireDType(open.dtype());
  if (!dtype)
    return Refusal(StatusCode::kInvalidArgument, "invalid_dtype",
                   absl::StrFormat("unknown dtype %d (%s): use DTYPE_FP32, DTYPE_FP16, DTYPE_BF16 or DTYPE_FP64",
                                   static_cast<int>(open.dtype()), v1::DType_Name(open.dtype())));
  if (open.has_corpus_size() && open.corpus_size() < 1)
    return Refusal(StatusCode::kInvalidArgument, "invalid_request",
                   absl::StrFormat("corpus_size must be >= 1, got %d", open.corpus_size()));
  if (absl::Status s = CheckConfig(open.config()); !s.ok()) return s;
  return *dtype;
}

absl::Status ValidateBatch(const v1::Batch& batch, const Snapshot::Params& snap, const DaemonOptions& options,
                           const std::string& where) {
  const int64_t rows = batch.rows();
  if (batch.seq() < 0) return Refusal(StatusCode::kInvalidArgument, "invalid_request", where + ": seq must be >= 0");
  if (rows <= 0)
    return Refusal(StatusCode::kInvalidArgument, "empty_batch",
                   absl::StrFormat("%s: rows must be >= 1, got %d", where, rows));
  if (rows > options.max_rows_per_batch)
    return Refusal(StatusCode::kResourceExhausted, "too_many_rows",
                   absl::StrFormat("%s: %d rows exceed --max-rows-per-batch = %d; send smaller batches", where, rows,
                                   options.max_rows_per_batch));
  const int64_t payload = BatchPayloadBytes(batch);
  if (payload > options.max_message_bytes)
    return Refusal(StatusCode::kResourceExhausted, "too_large",
                   absl::StrFormat("%s: %d payload bytes exceed --max-message-bytes = %d; send smaller batches",
                                   where, payload, options.max_message_bytes));
  const int64_t width = static_cast<int64_t>(sigma::DTypeWidth(snap.dtype));
  const int64_t row_bytes = static_cast<int64_t>(snap.row_bytes);
  const bool fits = rows <= options.max_message_bytes / row_bytes + 1;
  if (!fits || static_cast<int64_t>(batch.data().size()) != rows * row_bytes)
    return Refusal(StatusCode::kInvalidArgument, "size_mismatch",
                   absl::StrFormat("%s: data has %d bytes, expected rows (%d) x m (%d) x %d bytes (%s) = %s", where,
                                   batch.data().size(), rows, snap.m, width, sigma::DTypeName(snap.dtype),
                                   fits ? absl::StrCat(rows * row_bytes) : std::string("too many")));
  if (batch.sample_ids_size() != 0 && batch.sample_ids_size() != rows)
    return Refusal(StatusCode::kInvalidArgument, "sample_ids_mismatch",
                   absl::StrFormat("%s: %d sample_ids for %d rows (send none or one per row)", where,
                                   batch.sample_ids_size(), rows));
  return absl::OkStatus();
}

absl::Status ValidateNames(const std::string& job, const std::string* tap, const std::string& run) {
  if (!run.empty() && !ValidName(run)) return BadName("run", run);
  if (!ValidName(job) || (tap && !ValidName(*tap)))
    return Refusal(StatusCode::kInvalidArgument, "invalid_name",
                   "invalid job or tap name: must match [A-Za-z0-9_.:-]{1,128}");
  return absl::OkStatus();
}

absl::StatusOr<SnapshotKey> ValidateKey(const std::string& job, const std::string& tap, int64_t generation,
                                        const std::string& run) {
  SnapshotKey key{job, TapName(tap), generation, run.empty() ? std::string(kFirstRun) : run};
  if (absl::Status s = ValidateNames(key.job, &key.tap, run); !s.ok()) return s;
  if (generation < 0)
    return Refusal(StatusCode::kInvalidArgument, "invalid_request",
                   absl::StrFormat("generation must be >= 0, got %d", generation));
  return key;
}

absl::Status ValidateConfigure(const v1::ConfigureJobRequest& request) {
  if (!ValidName(request.job())) return BadName("job", request.job());
  return CheckConfig(request.config());
}

}  // namespace sigma::server
