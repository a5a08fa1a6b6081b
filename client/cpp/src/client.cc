#include "sigma/client/client.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <limits>
#include <chrono>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/channel_arguments.h"
#include "sigma/v1/sigma.grpc.pb.h"
#include "sigma/v1/wire.h"

namespace sigma::client {
namespace {

// The payload a RESOURCE_EXHAUSTED status carries when the daemon said when
// to retry (its rate limit: trailing metadata "sigma-retry-after-ms").
constexpr char kRetryAfterPayload[] = "sigma.retry_after_ms";

std::optional<absl::Duration> RetryAfter(const absl::Status& status) {
  const auto payload = status.GetPayload(kRetryAfterPayload);  // absl::optional<absl::Cord>
  int64_t ms = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &ms) || ms < 0) return std::nullopt;
  return absl::Milliseconds(ms);
}

constexpr char kShareRowPayload[] = "sigma.share_row";

// Transport trouble, or a rate-limit refusal that names its retry time.
bool Retryable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
         (absl::IsResourceExhausted(status) && RetryAfter(status).has_value());
}

// The deadline of one attempt and, when set, the bearer token.
void PrepareContext(grpc::ClientContext& context, const ClientOptions& options) {
  context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options.deadline));
  if (!options.bearer_token.empty()) context.AddMetadata("authorization", "Bearer " + options.bearer_token);
}

absl::Status ValidateBlocks(absl::Span<const Embeddings> blocks) {
  if (blocks.empty()) return absl::InvalidArgumentError("no embeddings to send");
  const Embeddings& first = blocks.front();
  if (DTypeBytes(first.dtype) == 0)
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported dtype ", v1::DType_Name(first.dtype)));
  if (first.m <= 0) return absl::InvalidArgumentError(absl::StrCat("m must be > 0, got ", first.m));
  const bool with_ids = !first.sample_ids.empty();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Embeddings& b = blocks[i];
    if (b.m != first.m)
      return absl::InvalidArgumentError(
          absl::StrFormat("block %d has m = %d, block 0 has m = %d", i, b.m, first.m));
    if (b.dtype != first.dtype)
      return absl::InvalidArgumentError(absl::StrFormat(
          "block %d has dtype %s, block 0 has %s", i, v1::DType_Name(b.dtype),
          v1::DType_Name(first.dtype)));
    if (b.rows < 0) return absl::InvalidArgumentError(absl::StrFormat("block %d has rows < 0", i));
    if (b.rows > 0 && b.data == nullptr)
      return absl::InvalidArgumentError(absl::StrFormat("block %d has no data", i));
    if (b.rows > 0 && b.sample_ids.empty() == with_ids)
      return absl::InvalidArgumentError(
          "either every block or none must carry sample ids");
    if (!b.sample_ids.empty() && static_cast<int64_t>(b.sample_ids.size()) != b.rows)
      return absl::InvalidArgumentError(absl::StrFormat(
          "block %d has %d sample ids for %d rows", i, b.sample_ids.size(), b.rows));
  }
  return absl::OkStatus();
}

// Element `i` of a little-endian row of `dtype`, exactly, as a double.
double ElementAt(const unsigned char* row, v1::DType dtype, int64_t i) {
  switch (dtype) {
    case v1::DTYPE_FP32: {
      float f;
      std::memcpy(&f, row + 4 * i, 4);
      return f;
    }
    case v1::DTYPE_FP64: {
      double d;
      std::memcpy(&d, row + 8 * i, 8);
      return d;
    }
    case v1::DTYPE_FP16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * i, 2);
      return HalfToDouble(h);
    }
    case v1::DTYPE_BF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * i, 2);
      return BFloat16ToDouble(h);
    }
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

// The local bottom-k of one rank's share (see ShareOptions::presketch).
struct Presketch {
  std::vector<unsigned char> data;  // the kept rows, in (priority, id) order
  std::vector<uint64_t> ids;
  int64_t rows_seen = 0;
  v1::EndOfShare end;
};

absl::StatusOr<Presketch> RunPresketch(absl::Span<const Embeddings> blocks, int32_t rank,
                                       const SketchParams& params) {
  if (params.n_a < 1)
    return absl::InvalidArgumentError(absl::StrCat("presketch n_a must be >= 1, got ", params.n_a));
  struct Candidate {
    uint64_t priority;
    uint64_t id;
    int64_t order;  // position in the stream: of repeated ids the first is kept
    const unsigned char* row;
  };
  const int32_t m = blocks.front().m;
  const v1::DType dtype = blocks.front().dtype;
  const size_t row_bytes = static_cast<size_t>(m) * DTypeBytes(dtype);
  const Preprocessing prep = sigma::FromWirePreprocessing(params.preprocessing);
  std::vector<Candidate> candidates;
  Presketch out;
  double energy_sum = 0.0, max_energy = 0.0;
  int64_t violations = 0;
  for (size_t b = 0; b < blocks.size(); ++b) {
    const auto* base = static_cast<const unsigned char*>(blocks[b].data);
    for (int64_t r = 0; r < blocks[b].rows; ++r) {
      const unsigned char* row = base + static_cast<size_t>(r) * row_bytes;
      double plain = 0.0;
      for (int32_t i = 0; i < m; ++i) {
        const double x = ElementAt(row, dtype, i);
        if (!std::isfinite(x))
          return absl::InvalidArgumentError(absl::StrFormat(
              "block %d row %d column %d holds NaN or Inf", b, r, i));
        plain += x * x;
      }
      // The daemon's energy rule and refusals (ingest_rules.h), overflow-safe.
      const RowEnergy e = EnergyOfRow(
          prep, RowSquares(m, plain, [&](int64_t i) { return ElementAt(row, dtype, i); }));
      if (e.check != RowCheck::kOk)
        return absl::InvalidArgumentError(absl::StrCat("block ", b, " ", RowRefusal(e.check, r)));
      energy_sum += e.energy;
      max_energy = std::max(max_energy, e.energy);
      if (ExceedsBudget(e.energy, params.rho)) ++violations;
      const uint64_t id = blocks[b].sample_ids.empty()
                              ? DefaultSampleId(rank, out.rows_seen)
                              : blocks[b].sample_ids[static_cast<size_t>(r)];
      candidates.push_back({SketchPriority(params.seed, id), id, out.rows_seen, row});
      ++out.rows_seen;
    }
  }
  // Distinct ids, the first occurrence kept.
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return a.id != b.id ? a.id < b.id : a.order < b.order;
  });
  candidates.erase(std::unique(candidates.begin(), candidates.end(),
                               [](const Candidate& a, const Candidate& b) { return a.id == b.id; }),
                   candidates.end());
  const size_t k = std::min<size_t>(candidates.size(), static_cast<size_t>(params.n_a));
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(),
                    [](const Candidate& a, const Candidate& b) {
                      return a.priority != b.priority ? a.priority < b.priority : a.id < b.id;
                    });
  out.data.resize(k * row_bytes);
  out.ids.resize(k);
  for (size_t i = 0; i < k; ++i) {
    std::memcpy(out.data.data() + i * row_bytes, candidates[i].row, row_bytes);
    out.ids[i] = candidates[i].id;
  }
  out.end.set_count(out.rows_seen);
  out.end.set_max_energy(max_energy);
  out.end.set_mean_energy(out.rows_seen > 0 ? energy_sum / static_cast<double>(out.rows_seen) : 0);
  out.end.set_rho_violations(violations);
  return out;
}

}  // namespace

std::optional<int64_t> RefusedShareRow(const absl::Status& status) {
  const auto payload = status.GetPayload(kShareRowPayload);
  int64_t row = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &row) || row < 0) return std::nullopt;
  return row;
}

size_t Embeddings::ByteSize() const {
  return static_cast<size_t>(rows) * static_cast<size_t>(m) * DTypeBytes(dtype);
}

std::string_view ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kServing: return "SERVING";
    case ServingStatus::kNotServing: return "NOT_SERVING";
    case ServingStatus::kServiceUnknown: return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown: break;
  }
  return "UNKNOWN";
}

size_t DTypeBytes(v1::DType dtype) { return sigma::WireDTypeBytes(dtype); }

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share the canonical code numbers.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(std::vector<std::string> targets,
                                                       ClientOptions options) {
  if (targets.empty()) return absl::InvalidArgumentError("no sigmad target given");
  std::set<std::string> seen;
  for (const std::string& t : targets) {
    if (t.empty()) return absl::InvalidArgumentError("empty sigmad target");
    if (!seen.insert(t).second)
      return absl::InvalidArgumentError(absl::StrCat("duplicate sigmad target '", t, "'"));
  }
  if (options.max_retries < 0) return absl::InvalidArgumentError("max_retries must be >= 0");
  for (char c : options.bearer_token) {
    if (c < 0x21 || c > 0x7e)  // an HTTP/2 header value; the token itself is not echoed
      return absl::InvalidArgumentError("bearer_token must be printable ASCII without spaces");
  }
  if (options.deadline <= absl::ZeroDuration())
    return absl::InvalidArgumentError("deadline must be > 0");
  if (options.backoff_multiplier < 1.0)
    return absl::InvalidArgumentError("backoff_multiplier must be >= 1");
  if (options.jitter < 0 || options.jitter >= 1)
    return absl::InvalidArgumentError("jitter must be in [0, 1)");
  return std::unique_ptr<Client>(new Client(std::move(targets), std::move(options)));
}

Client::Client(std::vector<std::string> targets, ClientOptions options)
    : targets_(std::move(targets)), options_(std::move(options)) {}

Client::~Client() = default;

const std::string& Client::TargetFor(std::string_view job) const {
  return targets_[PickTarget(targets_, job)];
}

std::shared_ptr<grpc::Channel> Client::ChannelFor(const std::string& target) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = channels_.find(target);
  if (it != channels_.end()) return it->second;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_receive_message_bytes);
  args.SetMaxSendMessageSize(-1);
  // Reconnect quickly after a lost connection; our own backoff paces retries.
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC also takes it as the minimum
  // connect timeout (default 20 s), and at 100 ms every connection whose
  // TCP + HTTP/2 (+ TLS) handshake took longer failed with UNAVAILABLE.
  const int max_backoff_ms =
      static_cast<int>(std::max<int64_t>(100, absl::ToInt64Milliseconds(options_.max_backoff)));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  args.SetString(GRPC_ARG_PRIMARY_USER_AGENT_STRING, "sigma-client-cpp/0.1");
  if (!options_.tls_server_name.empty()) args.SetSslTargetNameOverride(options_.tls_server_name);
  auto credentials =
      options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials();
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  channels_.emplace(target, channel);
  return channel;
}

absl::Duration Client::Backoff(int retry) {
  double seconds = absl::ToDoubleSeconds(options_.initial_backoff);
  for (int i = 1; i < retry; ++i) seconds *= options_.backoff_multiplier;
  seconds = std::min(seconds, absl::ToDoubleSeconds(options_.max_backoff));
  thread_local std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(1.0 - options_.jitter, 1.0 + options_.jitter);
  return absl::Seconds(seconds * jitter(rng));
}

template <typename Fn>
absl::Status Client::WithRetries(Fn&& attempt) {
  for (int retry = 0;; ++retry) {
    absl::Status status = attempt();
    if (status.ok() || !Retryable(status) || retry >= options_.max_retries) return status;
    retries_.fetch_add(1);
    absl::Duration wait = Backoff(retry + 1);
    if (const std::optional<absl::Duration> after = RetryAfter(status)) wait = std::max(wait, *after);
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(wait));
  }
}

absl::StatusOr<v1::IngestResponse> Client::SendGeneration(const SnapshotId& snapshot,
                                                          const Embeddings& block,
                                                          const ShareOptions& share) {
  return SendGeneration(snapshot, absl::MakeConstSpan(&block, 1), share);
}

absl::StatusOr<v1::IngestResponse> Client::SendGeneration(const SnapshotId& snapshot,
                                                          absl::Span<const Embeddings> blocks,
                                                          const ShareOptions& share) {
  if (absl::Status s = ValidateBlocks(blocks); !s.ok()) return s;
  if (share.world_size < 1)
    return absl::InvalidArgumentError(absl::StrCat("world_size must be >= 1, got ", share.world_size));
  if (share.rank < 0 || share.rank >= share.world_size)
    return absl::InvalidArgumentError(absl::StrFormat("rank %d is outside [0, %d)", share.rank,
                                                      share.world_size));
  v1::EndOfShare end = share.end.value_or(v1::EndOfShare());
  if (!share.presketch) return SendShare(snapshot, blocks, share, end);
  absl::StatusOr<Presketch> sketch = RunPresketch(blocks, share.rank, *share.presketch);
  if (!sketch.ok()) return sketch.status();
  if (static_cast<int64_t>(sketch->ids.size()) == sketch->rows_seen) {
    // Nothing dropped: the rows go as they are and the daemon sees them all.
    return SendShare(snapshot, blocks, share, end);
  }
  const Embeddings kept{sketch->data.data(), blocks.front().dtype,
                        static_cast<int64_t>(sketch->ids.size()), blocks.front().m, sketch->ids};
  return SendShare(snapshot, absl::MakeConstSpan(&kept, 1), share, sketch->end);
}

absl::StatusOr<v1::IngestResponse> Client::SendShare(const SnapshotId& snapshot,
                                                     absl::Span<const Embeddings> blocks,
                                                     const ShareOptions& share,
                                                     const v1::EndOfShare& end) {
  const int32_t m = blocks.front().m;
  const v1::DType dtype = blocks.front().dtype;
  const size_t row_bytes = static_cast<size_t>(m) * DTypeBytes(dtype);
  const int64_t chunk_rows = std::max<int64_t>(
      1, std::min<int64_t>(options_.max_chunk_rows, static_cast<int64_t>(options_.chunk_bytes / row_bytes)));

  v1::IngestRequest open_request;
  v1::OpenSnapshot* open = open_request.mutable_open();
  open->set_job(snapshot.job);
  open->set_tap(snapshot.tap);
  open->set_generation(snapshot.generation);
  open->set_run(snapshot.run);
  open->set_resume(snapshot.resume);
  open->set_rank(share.rank);
  open->set_world_size(share.world_size);
  open->set_m(m);
  open->set_dtype(dtype);
  if (share.corpus_size) open->set_corpus_size(*share.corpus_size);
  if (share.config) *open->mutable_config() = *share.config;

  v1::IngestRequest end_request;
  *end_request.mutable_end() = end;

  const std::string& target = TargetFor(snapshot.job);
  auto stub = v1::SigmaMonitor::NewStub(ChannelFor(target));
  v1::IngestResponse result;
  absl::Status status = WithRetries([&]() -> absl::Status {
    grpc::ClientContext context;
    PrepareContext(context, options_);
    v1::IngestResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::IngestRequest>> writer = stub->Ingest(&context, &response);
    bool ok = writer->Write(open_request);
    v1::IngestRequest batch_request;
    v1::Batch* batch = batch_request.mutable_batch();
    int64_t seq = 0;
    for (const Embeddings& b : blocks) {
      const auto* bytes = static_cast<const char*>(b.data);
      for (int64_t row = 0; ok && row < b.rows; row += chunk_rows) {
        const int64_t rows = std::min(chunk_rows, b.rows - row);
        batch->set_seq(seq++);
        batch->set_rows(rows);
        batch->set_data(bytes + static_cast<size_t>(row) * row_bytes,
                        static_cast<size_t>(rows) * row_bytes);
        batch->clear_sample_ids();
        if (!b.sample_ids.empty()) {
          batch->mutable_sample_ids()->Add(b.sample_ids.begin() + row,
                                           b.sample_ids.begin() + row + rows);
        }
        ok = writer->Write(batch_request);
      }
    }
    if (ok) ok = writer->Write(end_request);
    if (ok) writer->WritesDone();
    absl::Status finished = FromGrpcStatus(writer->Finish());
    if (!finished.ok()) {
      const auto& trailers = context.GetServerTrailingMetadata();
      if (auto it = trailers.find("sigma-retry-after-ms"); it != trailers.end())
        finished.SetPayload(kRetryAfterPayload, absl::Cord(std::string(it->second.data(), it->second.size())));
      if (auto it = trailers.find("sigma-share-row"); it != trailers.end())
        finished.SetPayload(kShareRowPayload, absl::Cord(std::string(it->second.data(), it->second.size())));
      return finished;
    }
    // The daemon may answer before reading everything (e.g. the snapshot was
    // already sealed and it returned the stored report): that answer counts.
    result = std::move(response);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return result;
}

absl::StatusOr<v1::GenerationReport> Client::SendGenerationMultiRank(const SnapshotId& snapshot,
                                                                     const Embeddings& block,
                                                                     int32_t world_size,
                                                                     const ShareOptions& share) {
  if (world_size < 1)
    return absl::InvalidArgumentError(absl::StrCat("world_size must be >= 1, got ", world_size));
  if (block.rows < world_size)
    return absl::InvalidArgumentError(absl::StrFormat(
        "cannot split %d rows across %d ranks", block.rows, world_size));
  if (absl::Status s = ValidateBlocks(absl::MakeConstSpan(&block, 1)); !s.ok()) return s;

  std::vector<uint64_t> global_ids;
  absl::Span<const uint64_t> ids = block.sample_ids;
  if (ids.empty()) {
    global_ids.resize(static_cast<size_t>(block.rows));
    std::iota(global_ids.begin(), global_ids.end(), uint64_t{0});
    ids = global_ids;
  }
  const size_t row_bytes = static_cast<size_t>(block.m) * DTypeBytes(block.dtype);
  std::vector<absl::StatusOr<v1::IngestResponse>> results(
      static_cast<size_t>(world_size), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(world_size));
  for (int32_t rank = 0; rank < world_size; ++rank) {
    threads.emplace_back([&, rank] {
      const int64_t begin = block.rows * rank / world_size;
      const int64_t end = block.rows * (rank + 1) / world_size;
      Embeddings part = block;
      part.data = static_cast<const char*>(block.data) + static_cast<size_t>(begin) * row_bytes;
      part.rows = end - begin;
      part.sample_ids = ids.subspan(static_cast<size_t>(begin), static_cast<size_t>(end - begin));
      ShareOptions rank_share = share;
      rank_share.rank = rank;
      rank_share.world_size = world_size;
      results[static_cast<size_t>(rank)] = SendGeneration(snapshot, part, rank_share);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int32_t rank = 0; rank < world_size; ++rank) {
    const auto& r = results[static_cast<size_t>(rank)];
    if (!r.ok()) {
      return absl::Status(r.status().code(),
                          absl::StrFormat("rank %d: %s", rank, r.status().message()));
    }
  }
  for (const auto& r : results) {
    if (r->sealed()) return r->report();
  }
  return CloseGeneration(snapshot);
}

absl::StatusOr<v1::GenerationReport> Client::CloseGeneration(const SnapshotId& snapshot) {
  auto stub = v1::SigmaMonitor::NewStub(ChannelFor(TargetFor(snapshot.job)));
  v1::CloseGenerationRequest request;
  request.set_job(snapshot.job);
  request.set_tap(snapshot.tap);
  request.set_generation(snapshot.generation);
  request.set_run(snapshot.run);
  v1::GenerationReport report;
  absl::Status status = WithRetries([&] {
    grpc::ClientContext context;
    PrepareContext(context, options_);
    return FromGrpcStatus(stub->CloseGeneration(&context, request, &report));
  });
  if (!status.ok()) return status;
  return report;
}

absl::StatusOr<std::vector<v1::GenerationReport>> Client::GetHistory(std::string_view job, std::string_view tap,
                                                                    std::string_view run) {
  auto stub = v1::SigmaMonitor::NewStub(ChannelFor(TargetFor(job)));
  v1::GetHistoryRequest request;
  request.set_job(std::string(job));
  request.set_tap(std::string(tap));
  request.set_run(std::string(run));
  v1::GetHistoryResponse response;
  absl::Status status = WithRetries([&] {
    grpc::ClientContext context;
    PrepareContext(context, options_);
    return FromGrpcStatus(stub->GetHistory(&context, request, &response));
  });
  if (!status.ok()) return status;
  return std::vector<v1::GenerationReport>(response.reports().begin(), response.reports().end());
}

absl::StatusOr<std::vector<v1::JobInfo>> Client::ListJobsOn(const std::string& target) {
  auto stub = v1::SigmaMonitor::NewStub(ChannelFor(target));
  v1::ListJobsResponse response;
  absl::Status status = WithRetries([&] {
    grpc::ClientContext context;
    PrepareContext(context, options_);
    return FromGrpcStatus(stub->ListJobs(&context, v1::ListJobsRequest(), &response));
  });
  if (!status.ok()) {
    if (targets_.size() == 1) return status;
    return absl::Status(status.code(), absl::StrCat(target, ": ", status.message()));
  }
  return std::vector<v1::JobInfo>(response.jobs().begin(), response.jobs().end());
}

absl::StatusOr<SketchParams> Client::EffectiveSketchParams(std::string_view job, int32_t m,
                                                           const v1::JobConfig& own) {
  absl::StatusOr<v1::JobInfo> info = GetJob(job, m);
  if (absl::IsNotFound(info.status())) {
    // A new job: the daemon's config file (`defaults:`, `jobs.NAME`) may set its seed or
    // n_a, which the pre-sketch must use. Create it with `own` (what the first share's
    // OpenSnapshot.config would do) and read back what the daemon resolves for m.
    absl::StatusOr<v1::JobInfo> created = ConfigureJob(job, own, /*create=*/true);
    // FAILED_PRECONDITION: another rank opened the job meanwhile with other sketch
    // settings; its win.
    if (!created.ok() && !absl::IsFailedPrecondition(created.status())) return created.status();
    info = GetJob(job, m);
  }
  if (!info.ok()) return info.status();
  const v1::JobConfig& config = info->config();  // effective: every field set
  SketchParams params;
  params.n_a = config.n_a();
  params.seed = config.seed();
  params.rho = config.rho();
  params.preprocessing = config.preprocessing();
  return params;
}

absl::StatusOr<std::vector<v1::JobInfo>> Client::ListJobs() {
  std::vector<v1::JobInfo> jobs;
  for (const std::string& target : targets_) {
    absl::StatusOr<std::vector<v1::JobInfo>> some = ListJobsOn(target);
    if (!some.ok()) return some.status();
    jobs.insert(jobs.end(), some->begin(), some->end());
  }
  std::stable_sort(jobs.begin(), jobs.end(),
                   [](const v1::JobInfo& a, const v1::JobInfo& b) { return a.job() < b.job(); });
  return jobs;
}

absl::StatusOr<v1::JobInfo> Client::ConfigureJob(std::string_view job, const v1::JobConfig& config, bool create) {
  v1::ConfigureJobRequest request;
  request.set_job(std::string(job));
  *request.mutable_config() = config;
  request.set_create(create);
  v1::JobInfo info;
  absl::Status status = Unary(TargetFor(job), [&](v1::SigmaMonitor::Stub& stub, grpc::ClientContext& context) {
    return stub.ConfigureJob(&context, request, &info);
  });
  if (!status.ok()) return status;
  return info;
}

absl::Status Client::Unary(const std::string& target,
                           const std::function<grpc::Status(v1::SigmaMonitor::Stub&, grpc::ClientContext&)>& call) {
  auto stub = v1::SigmaMonitor::NewStub(ChannelFor(target));
  return WithRetries([&] {
    grpc::ClientContext context;
    PrepareContext(context, options_);
    return FromGrpcStatus(call(*stub, context));
  });
}

absl::StatusOr<ServingStatus> Client::Health(const std::string& target, std::string_view service) {
  auto stub = grpc::health::v1::Health::NewStub(ChannelFor(target));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(std::string(service));
  grpc::health::v1::HealthCheckResponse response;
  absl::Status status = WithRetries([&] {
    grpc::ClientContext context;
    PrepareContext(context, options_);
    return FromGrpcStatus(stub->Check(&context, request, &response));
  });
  if (!status.ok()) return status;
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING: return ServingStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING: return ServingStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return ServingStatus::kServiceUnknown;
    default: return ServingStatus::kUnknown;
  }
}

}  // namespace sigma::client
