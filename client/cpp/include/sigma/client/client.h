// The C++ client of the SIGMA monitor daemon (sigmad): trainer ranks stream
// embedding batches into a snapshot (job, tap, generation) and read reports,
// history and job configurations back (spec §1, §5; API in
// proto/sigma/v1/sigma.proto).
//
//   sigma::client::ClientOptions options;
//   auto client = sigma::client::Client::Create({"10.0.0.5:50051"}, options);
//   sigma::client::Embeddings block{data, sigma::v1::DTYPE_FP32, rows, m};
//   sigma::client::ShareOptions share;               // rank 0 of world_size 1
//   auto response = (*client)->SendGeneration({"my-job", "layer12", 3}, block, share);
//   if (response.ok() && response->sealed()) use(response->report());
//
// Scale-out (rendezvous hashing). A client may be given several sigmad
// targets; every request that concerns a job goes to the target with the
// highest score
//
//     score(target, job) = splitmix64(fnv1a64(job) ^ splitmix64(fnv1a64(target)))
//
// (fnv1a64: 64-bit FNV-1a over the UTF-8 bytes, offset basis
// 0xcbf29ce484222325, prime 0x100000001b3; splitmix64 as in spec §2; all
// arithmetic unsigned 64-bit, wrapping; a tie goes to the lexicographically
// smaller target). Every client (C++, Python, sigmactl) given the same target
// list therefore sends all ranks of a job to the same daemon without any
// coordination; adding or removing a daemon moves only the jobs whose highest
// score changes (about 1/N of them). The order of the target list does not
// matter. A job's history lives on the daemon it hashes to, so a
// `baseline_job` must hash to the same daemon as the jobs that compare with
// it. ListJobs asks every target and merges the answers.
//
// Retries. UNAVAILABLE and DEADLINE_EXCEEDED are retried with exponential
// backoff (ClientOptions). An ingest share is retried by re-sending the whole
// share on a new stream with the same seq numbers, which is safe because
// sigmad deduplicates batches by (rank, seq) and answers a share re-sent after
// the seal with the stored report. Every other status is returned at once as
// an absl::Status carrying the gRPC code and message (FromGrpcStatus).
//
// Thread safety: a Client is safe to use from many threads at once (one
// channel per target, created on first use and shared).
#ifndef SIGMA_CLIENT_CLIENT_H_
#define SIGMA_CLIENT_CLIENT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/status.h"
#include "sigma/kernels/ingest_rules.h"
#include "sigma/v1/sigma.grpc.pb.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::client {

namespace v1 = ::sigma::v1;

struct ClientOptions {
  // Deadline of each attempt of each RPC (a whole ingest stream is one attempt).
  absl::Duration deadline = absl::Seconds(120);
  // Retries after the first attempt, for UNAVAILABLE and DEADLINE_EXCEEDED, and
  // for RESOURCE_EXHAUSTED from the daemon's rate limit (which says when: the
  // wait is then at least that long). Other limits are not retried.
  int max_retries = 5;
  // Backoff before retry k (k = 1, 2, ...): min(initial * multiplier^(k-1), max),
  // scaled by a uniform factor in [1 - jitter, 1 + jitter].
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  double backoff_multiplier = 2.0;
  double jitter = 0.2;
  // Payload bytes per Batch message: rows are grouped into chunks of
  // max(1, chunk_bytes / (m * width)) rows. The daemon refuses messages over its
  // limit, so keep this well below it (default 1 MiB).
  size_t chunk_bytes = size_t{1} << 20;
  // Rows per Batch message at most, whatever chunk_bytes allows: sigmad refuses
  // more than its --max-rows-per-batch (default 65536) with RESOURCE_EXHAUSTED,
  // which narrow rows reach within 1 MiB (m = 4 fp16: 131072 rows).
  int64_t max_chunk_rows = 65536;
  // Largest message the client accepts (history responses can be large).
  int max_receive_message_bytes = 256 << 20;
  // Channel credentials; null means plaintext (grpc::InsecureChannelCredentials).
  // TlsCredentials below makes TLS ones from PEM files.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // The name the server's certificate is checked against instead of the
  // target's host (TLS only; for tests and addresses by IP).
  std::string tls_server_name;
  // Bearer token sent as `authorization: Bearer TOKEN` on every call (sigmad
  // --tokens); empty: none. Over a plaintext channel it travels in clear text.
  std::string bearer_token;
};

// PEM files for a TLS channel. Empty ca_file: the system's root certificates.
// cert_file and key_file (both or neither): a client certificate (mutual TLS).
struct TlsFiles {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
};
// NOT_FOUND when a file cannot be read, INVALID_ARGUMENT for a cert without key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentials(const TlsFiles& files);

// One snapshot: (job, tap, generation) of a run of the job (docs/server.md
// "Runs"): `run` empty means the job's latest run (a new job: "1"); `resume`
// (Send only) allow (unspecified), must or never. The IngestResponse names
// the run the share went to: name it here for the next generations.
struct SnapshotId {
  std::string job;
  std::string tap = "default";
  int64_t generation = 0;
  std::string run;
  v1::Resume resume = v1::RESUME_UNSPECIFIED;
};

// A block of embeddings in host memory, row-major [rows, m], little-endian
// elements of `dtype` (rows * m * DTypeBytes(dtype) bytes at `data`). Not
// owning: the memory must stay valid during the call.
struct Embeddings {
  const void* data = nullptr;
  v1::DType dtype = v1::DTYPE_FP32;
  int64_t rows = 0;
  int32_t m = 0;
  // Empty (the daemon numbers rows: index in this rank's stream + (rank << 40)),
  // or one id per row (the bottom-k sketch then keeps the same rows in every
  // generation, spec §2).
  absl::Span<const uint64_t> sample_ids;

  size_t ByteSize() const;
};

// The sketch parameters of a job (spec §2), for a local pre-sketch.
struct SketchParams {
  int64_t n_a = 0;
  uint64_t seed = 0;
  double rho = 1.0;
  v1::Preprocessing preprocessing = v1::PREPROCESSING_L2;
};

// How one rank sends its share.
struct ShareOptions {
  int32_t rank = 0;
  int32_t world_size = 1;
  // The corpus size n of the snapshot (default: the rows streamed by all ranks).
  std::optional<int64_t> corpus_size;
  // Job configuration, applied by the daemon when the job is new.
  std::optional<v1::JobConfig> config;
  // The EndOfShare message; default: count 0 (= rows sent) and no energy
  // statistics (the daemon computes them from the rows sent). Set it when the
  // rank pre-sketched locally.
  std::optional<v1::EndOfShare> end;
  // Local pre-sketch (spec §2): when set, the rank keeps only the bottom n_a of
  // its distinct sample ids by (priority(seed, id), id) -- the global bottom-k
  // is contained in the union of the local ones, so the report is the same --
  // and sends those rows with explicit ids (default ids: index in this rank's
  // stream + (rank << 40), as the daemon would number them). When rows were
  // dropped, EndOfShare carries count = rows seen and the energy statistics of
  // every row seen (the daemon's rule, sigma/kernels/ingest_rules.h: 1 per
  // row under l2, the squared norm under none, computed without overflow or
  // underflow), replacing those of `end`. The parameters must be the job's
  // effective ones (Client::EffectiveSketchParams). A row the daemon would
  // refuse (NaN or Inf; norm 0 under l2; norm, or under none squared norm,
  // beyond float64) fails with INVALID_ARGUMENT naming it before anything is sent.
  std::optional<SketchParams> presketch;
};

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
std::string_view ServingStatusName(ServingStatus status);  // "SERVING", ...

// Bytes per element; 0 for DTYPE_UNSPECIFIED or unknown values.
size_t DTypeBytes(v1::DType dtype);

// The one place where a gRPC status becomes an absl::Status: same canonical
// code, same message (the two code spaces coincide).
absl::Status FromGrpcStatus(const grpc::Status& status);

// The row within the sender's share that a refused Ingest names (sigmad's
// trailing metadata "sigma-share-row"), when it named one: the rows of the
// share are the blocks of SendGeneration concatenated (before a pre-sketch).
std::optional<int64_t> RefusedShareRow(const absl::Status& status);

// priority(seed, id) = splitmix64(id ^ splitmix64(seed)) (spec §2): the
// daemon's own definition. (The default n_a is the daemon's to resolve: GetJob.)
using sigma::SketchPriority;

// Rendezvous hashing (see the top of this file).
uint64_t RendezvousScore(std::string_view target, std::string_view job);
// The index in `targets` of the target for `job`; `targets` must not be empty.
size_t PickTarget(absl::Span<const std::string> targets, std::string_view job);

class Client {
 public:
  // INVALID_ARGUMENT when `targets` is empty or holds an empty or duplicate
  // target. No connection is made until the first call.
  static absl::StatusOr<std::unique_ptr<Client>> Create(std::vector<std::string> targets,
                                                        ClientOptions options = {});

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  const std::vector<std::string>& targets() const { return targets_; }
  const ClientOptions& options() const { return options_; }
  // The daemon that serves `job` (rendezvous hashing).
  const std::string& TargetFor(std::string_view job) const;

  // Streams one rank's share of `snapshot`: OpenSnapshot, the rows of
  // `blocks` in order as Batch messages of at most options().chunk_bytes
  // (seq 0, 1, ... over the whole share; a chunk never spans two blocks),
  // then EndOfShare. Every block must have the same m and dtype, and either
  // all or none of them carry sample ids. Returns the daemon's answer:
  // sealed() and report() are set when this rank completed the snapshot.
  // Retries as described at the top of this file.
  absl::StatusOr<v1::IngestResponse> SendGeneration(const SnapshotId& snapshot,
                                                    absl::Span<const Embeddings> blocks,
                                                    const ShareOptions& share);
  absl::StatusOr<v1::IngestResponse> SendGeneration(const SnapshotId& snapshot,
                                                    const Embeddings& block,
                                                    const ShareOptions& share);

  // Sends `block` as one generation split across `world_size` ranks, each rank
  // a contiguous, near-equal slice sent concurrently from its own thread
  // (share.rank is ignored; share.world_size is replaced by `world_size`).
  // When `block` carries no sample ids, the rows get their global index as id,
  // so the result equals a single-rank send of the same rows. Returns the
  // report of the sealed snapshot (from the rank that sealed it, or, when no
  // rank saw the seal, from CloseGeneration). The first failing rank's status
  // otherwise.
  absl::StatusOr<v1::GenerationReport> SendGenerationMultiRank(const SnapshotId& snapshot,
                                                               const Embeddings& block,
                                                               int32_t world_size,
                                                               const ShareOptions& share = {});

  // The sketch parameters `job` uses for dimension `m`: the daemon's effective
  // configuration resolved for m (GetJob); an unknown job is first created
  // with `own` (ConfigureJob, as the first share's OpenSnapshot.config would),
  // so the daemon's config-file `defaults:`/`jobs.NAME` settings apply.
  absl::StatusOr<SketchParams> EffectiveSketchParams(std::string_view job, int32_t m,
                                                     const v1::JobConfig& own = {});

  // Seals now with whatever the ranks sent and returns the report (idempotent).
  absl::StatusOr<v1::GenerationReport> CloseGeneration(const SnapshotId& snapshot);
  // Every sealed report of `job`'s run (one tap when `tap` is not empty; run
  // empty: the job's latest run).
  absl::StatusOr<std::vector<v1::GenerationReport>> GetHistory(std::string_view job, std::string_view tap = "",
                                                              std::string_view run = "");
  // The jobs of every target, merged (sorted by job name).
  absl::StatusOr<std::vector<v1::JobInfo>> ListJobs();
  // GetJob / GetReport block.
  // One job's effective settings as its daemon resolves them (n_a for `m`
  // when given, else for the job's m), its taps (m, dtype) and open
  // snapshots. NOT_FOUND when the daemon does not know the job.
  absl::StatusOr<v1::JobInfo> GetJob(std::string_view job, std::optional<int32_t> m = std::nullopt);
  // One sealed report; NOT_FOUND (naming job, tap, generation) while it has not sealed.
  absl::StatusOr<v1::GenerationReport> GetReport(const SnapshotId& snapshot);
  // Updates `job`'s configuration; returns the effective one. An unknown job
  // is NOT_FOUND unless `create` (ConfigureJobRequest.create).
  absl::StatusOr<v1::JobInfo> ConfigureJob(std::string_view job, const v1::JobConfig& config, bool create = false);
  // Job lifecycle (issue 15 item 4; lifecycle.cc). DeleteJob: every run when
  // `run` is empty (admin token). FinishJob: idempotent. ListSnapshots: the
  // open snapshots of every target (of `job` only, on its target, when set).
  absl::StatusOr<v1::DeleteJobResponse> DeleteJob(std::string_view job, std::string_view run = "");
  absl::StatusOr<v1::JobInfo> FinishJob(std::string_view job);
  absl::StatusOr<std::vector<v1::SnapshotInfo>> ListSnapshots(std::string_view job = "");
  // grpc.health.v1.Health/Check on `target` ("" = the whole server).
  absl::StatusOr<ServingStatus> Health(const std::string& target, std::string_view service = "");

  // Attempts that were retried since creation (for tests and diagnostics).
  int64_t retries() const { return retries_.load(); }

 private:
  Client(std::vector<std::string> targets, ClientOptions options);

  std::shared_ptr<grpc::Channel> ChannelFor(const std::string& target);
  absl::StatusOr<v1::IngestResponse> SendShare(const SnapshotId& snapshot,
                                               absl::Span<const Embeddings> blocks,
                                               const ShareOptions& share,
                                               const v1::EndOfShare& end);
  absl::StatusOr<std::vector<v1::JobInfo>> ListJobsOn(const std::string& target);
  // One unary call on `target` with the retries (`call` makes the attempt).
  absl::Status Unary(const std::string& target,
                     const std::function<grpc::Status(v1::SigmaMonitor::Stub&, grpc::ClientContext&)>& call);
  // Runs `attempt` until it succeeds, fails with a non-retryable status, or
  // the retries are used up.
  template <typename Fn>
  absl::Status WithRetries(Fn&& attempt);
  absl::Duration Backoff(int retry);

  std::vector<std::string> targets_;
  ClientOptions options_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
  std::atomic<int64_t> retries_{0};
};

}  // namespace sigma::client

#endif  // SIGMA_CLIENT_CLIENT_H_
