#include "sigma/server/api.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sigma/server/refusal.h"

namespace sigma::server {
namespace v1 = sigma::v1;

namespace {

// Trailing metadata key of a rate-limit refusal: milliseconds until the
// client's bucket holds the refused batch (the clients wait that long).
constexpr char kRetryAfterKey[] = "sigma-retry-after-ms";
// Trailing metadata key of a refused batch: the row within the rank's share
// the refusal names (clients map it to their own rows: sigmactl's file row).
constexpr char kShareRowKey[] = "sigma-share-row";

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// The one conversion of the engine's statuses: a refusal (refusal.h) is
// counted in sigma_rejected_batches_total{reason} and logged (rate-limited).
grpc::Status Answer(Metrics* metrics, Logger* log, const char* rpc, const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  if (const std::string reason = RefusalReason(s); !reason.empty()) {
    if (metrics) metrics->Rejected(reason);
    if (log) log->Refusal(rpc, absl::StatusCodeToString(s.code()), reason, std::string(s.message()));
  }
  return ToGrpc(s);
}

// The completion of an engine call that answers one report (CloseGeneration,
// GetReport): runs once, on a lane or inline, and finishes the reactor.
ReportCallback ReplyReport(grpc::ServerUnaryReactor* reactor, v1::GenerationReport* response, Metrics* metrics,
                           Logger* log, const char* rpc) {
  return [=](const absl::Status& s, ReportPtr report) {
    if (s.ok() && report) *response = *report;
    reactor->Finish(Answer(metrics, log, rpc, s));
  };
}

// Counts a refusal by the authoriser in the metrics (sigma_auth_failures_total).
grpc::Status CountAuth(Metrics* metrics, const absl::Status& s) {
  if (!s.ok() && metrics) metrics->AuthFailure(s.code() == absl::StatusCode::kUnauthenticated);
  return ToGrpc(s);
}

// May `token` (null: auth off) open a snapshot of `open.job` (and compare
// against its baseline_job)?
absl::Status CheckOpen(const TokenEntry* token, const v1::OpenSnapshot& open) {
  if (token == nullptr) return absl::OkStatus();
  absl::Status s = Authorizer::CheckJob(*token, Rpc::kIngest, open.job());
  if (s.ok() && !open.config().baseline_job().empty())
    s = Authorizer::CheckJob(*token, Rpc::kIngest, open.config().baseline_job());
  return s;
}

// Reads one message ahead: the next Batch is received (and deserialized) by
// gRPC while the current one is validated and sketched, so the stream's
// transport work overlaps ours. Messages are processed strictly in stream
// order and no thread ever waits: a read that completes while the previous
// message is still being processed is queued, and the thread processing the
// stream picks it up when it is done.
class IngestReactor final : public grpc::ServerReadReactor<v1::IngestRequest>, public StreamWatchdog::Target {
 public:
  // `token`: the caller's entry (null when auth is off). A non-OK `refused`
  // (authentication failed) ends the stream before anything is read.
  // `client`: who is calling (per-client stream count and rate limit).
  IngestReactor(Engine* engine, v1::IngestResponse* response, const TokenEntry* token, Metrics* metrics,
                const grpc::Status& refused, grpc::CallbackServerContext* context, ClientLimiter* limiter,
                MonitorService::Client client, StreamWatchdog* watchdog)
      : engine_(engine),
        watchdog_(watchdog),
        response_(response),
        token_(token),
        metrics_(metrics),
        context_(context),
        limiter_(limiter),
        client_(std::move(client)) {
    grpc::Status status = refused;
    if (status.ok()) {
      status = ToGrpc(limiter_->AcquireStream(client_.key, client_.label, client_.limits));
      if (status.ok()) stream_counted_ = true;
      else if (metrics_) metrics_->Rejected("too_many_streams");
    }
    if (!status.ok()) {
      finished_ = true;
      Finish(status);
      return;
    }
    session_.tenant = client_.tenant;
    watchdog_->Add(this);
    StartRead(&request_[0]);
  }

  // Finish may be called from a seal lane (the share's outcome) or from Drain
  // while the other is still inside this object: the last of OnDone and Drain
  // deletes it. gRPC calls OnDone once, after Finish, never before the
  // constructor returned.
  void OnDone() override {
    {  // a share's outcome arriving later (its stream was refused after EndOfShare) is dropped
      std::lock_guard<std::mutex> lock(sink_->mu);
      sink_->reactor = nullptr;
    }
    watchdog_->Remove(this);
    if (stream_counted_) limiter_->ReleaseStream(client_.key);
    { std::lock_guard<std::mutex> answer(answer_mu_); }  // a Reply still inside Finish has left
    bool idle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      idle = !busy_;
    }
    if (idle) delete this;
  }

  // No message for --stream-idle-timeout-s: DEADLINE_EXCEEDED (the snapshot
  // this stream opened empty is dropped). Not while a message is processed.
  bool OnIdle() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || busy_) return finished_;
    finished_ = true;
    engine_->Abandon(&session_);
    Reply(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                       absl::StrCat("no message for ", watchdog_->timeout().count(),
                                    " s (--stream-idle-timeout-s): stream cancelled")),
          session_.response);
    return true;
  }

  void OnReadDone(bool ok) override {
    watchdog_->Touch(this);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      if (busy_) {  // the processing thread takes it next
        pending_ = true;
        pending_ok_ = ok;
        return;
      }
      busy_ = true;
    }
    Drain(ok);
  }


 private:
  // Processes the message that just arrived in request_[current_], then any
  // that arrived meanwhile.
  void Drain(bool ok) {
    for (;;) {
      const bool stop = Handle(ok);  // may Finish: OnDone then waits for busy_ to clear
      bool delete_now = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!stop && pending_) {
          pending_ = false;
          ok = pending_ok_;
          continue;
        }
        if (stop) finished_ = true;
        busy_ = false;
        delete_now = done_;
      }
      if (delete_now) delete this;  // OnDone ran while we were busy
      return;
    }
  }

  // Returns true when the stream is done (Finish called or scheduled).
  bool Handle(bool ok) {
    if (!ok) {  // half-close (or cancellation): answer with what this stream did
      if (share_ended_) return HalfClosedAfterEnd();
      End(nullptr);
      return true;
    }
    v1::IngestRequest& request = request_[current_];
    current_ ^= 1;
    StartRead(&request_[current_]);  // read ahead while we process `request`
    grpc::Status status;
    switch (request.message_case()) {
      case v1::IngestRequest::kOpen:
        status = CountAuth(metrics_, CheckOpen(token_, request.open()));
        if (status.ok()) status = Answer(metrics_, engine_->logger(), "Ingest", engine_->Open(request.open(), &session_));
        break;
      case v1::IngestRequest::kBatch:
        status = RateLimit(request.batch());
        if (status.ok()) {
          const absl::Status taken = engine_->Batch(&session_, request.batch());
          if (const std::optional<int64_t> row = ShareRow(taken))
            context_->AddTrailingMetadata(kShareRowKey, absl::StrCat(*row));
          status = Answer(metrics_, engine_->logger(), "Ingest", taken);
        }
        break;
      case v1::IngestRequest::kEnd:
        if (!share_ended_) {
          End(&request.end());  // reads go on until the half-close (docs/server.md)
          return false;
        }
        status = Answer(metrics_, engine_->logger(), "Ingest",
                        Refusal(absl::StatusCode::kFailedPrecondition, "invalid_request", "EndOfShare sent twice"));
        break;
      default:
        if (metrics_) metrics_->Rejected("invalid_request");
        status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "empty IngestRequest: set open, batch or end");
    }
    if (status.ok()) return false;
    watchdog_->Remove(this);
    engine_->Abandon(&session_);  // a refused stream leaves no empty open snapshot
    Reply(status, session_.response);  // the outstanding read completes and is ignored
    return true;
  }

  // Finishes the call once (the share's outcome and a refusal may race).
  void Reply(const grpc::Status& status, const v1::IngestResponse& response) {
    std::lock_guard<std::mutex> lock(answer_mu_);
    if (answered_) return;
    answered_ = true;
    *response_ = response;
    Finish(status);
  }

  // The half-close after EndOfShare: answer now if the share's outcome is known.
  bool HalfClosedAfterEnd() {
    std::lock_guard<std::mutex> lock(answer_mu_);
    half_closed_ = true;
    if (outcome_ && !answered_) {
      answered_ = true;
      *response_ = outcome_->second;
      Finish(outcome_->first);
    }
    return true;
  }

  // The client's ingest rate limit over the batch's payload bytes.
  grpc::Status RateLimit(const v1::Batch& batch) {
    if (client_.limits.bytes_per_second <= 0 || engine_->IsDuplicate(session_, batch.seq()))
      return grpc::Status::OK;
    absl::Duration retry_after;
    const absl::Status s =
        limiter_->Consume(client_.key, client_.label, client_.limits, BatchPayloadBytes(batch), &retry_after);
    if (s.ok()) return grpc::Status::OK;
    if (metrics_) metrics_->Rejected("rate_limited");
    if (retry_after > absl::ZeroDuration())
      context_->AddTrailingMetadata(kRetryAfterKey, absl::StrCat(absl::ToInt64Milliseconds(retry_after)));
    return ToGrpc(s);
  }

  // EndOfShare (`end`) or a half-close without one (null). After an
  // EndOfShare the stream keeps reading: a Batch or a second EndOfShare before
  // the half-close is refused with FAILED_PRECONDITION; the share's outcome is
  // answered at the half-close (at once when it is an error).
  void End(const v1::EndOfShare* end) {
    watchdog_->Remove(this);  // waiting for the seal is not idleness
    if (end != nullptr) share_ended_ = true;
    const bool explicit_end = end != nullptr;
    engine_->EndShare(&session_, end, [sink = sink_, explicit_end](const absl::Status& s, const v1::IngestResponse& r) {
      std::lock_guard<std::mutex> lock(sink->mu);
      if (sink->reactor != nullptr) sink->reactor->Outcome(explicit_end, s, r);
    });
  }

  // The share's outcome (EndShare's callback, through sink_).
  void Outcome(bool explicit_end, const absl::Status& s, const v1::IngestResponse& r) {
    const grpc::Status status = Answer(metrics_, engine_->logger(), "Ingest", s);
    {
      std::lock_guard<std::mutex> lock(answer_mu_);
      if (explicit_end && status.ok() && !half_closed_) {
        outcome_.emplace(status, r);
        return;
      }
    }
    Reply(status, r);
  }

  // Outlives the reactor: the share's outcome may arrive (on a seal lane)
  // after the stream finished and the reactor was deleted; OnDone clears
  // `reactor` under `mu`, the outcome is delivered under it.
  struct Sink {
    explicit Sink(IngestReactor* r) : reactor(r) {}
    std::mutex mu;
    IngestReactor* reactor;
  };
  std::shared_ptr<Sink> sink_ = std::make_shared<Sink>(this);

  Engine* engine_;
  StreamWatchdog* watchdog_;
  v1::IngestResponse* response_;
  const TokenEntry* token_;
  Metrics* metrics_;
  grpc::CallbackServerContext* context_;
  ClientLimiter* limiter_;
  const MonitorService::Client client_;
  bool stream_counted_ = false;  // AcquireStream succeeded: release in OnDone
  v1::IngestRequest request_[2];
  int current_ = 0;  // the buffer the latest read filled (or fills)
  IngestSession session_;
  std::mutex mu_;
  bool busy_ = false;
  bool pending_ = false;
  bool pending_ok_ = false;
  bool finished_ = false;
  bool share_ended_ = false;  // EndOfShare processed (reader thread only)
  std::mutex answer_mu_;      // answered_, half_closed_, outcome_
  bool done_ = false;         // OnDone ran (mu_): Drain deletes on its way out
  bool answered_ = false;
  bool half_closed_ = false;
  std::optional<std::pair<grpc::Status, v1::IngestResponse>> outcome_;
};

}  // namespace

grpc::Status MonitorService::Authenticate(grpc::CallbackServerContext* context, const TokenEntry** entry) {
  *entry = nullptr;
  if (auth_ == nullptr) return grpc::Status::OK;
  std::vector<std::string_view> values;
  const auto range = context->client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) values.emplace_back(it->second.data(), it->second.size());
  return CountAuth(metrics_, auth_->Authenticate(values, entry));
}

grpc::Status MonitorService::Check(grpc::CallbackServerContext* context, Rpc rpc, const std::string* job,
                                   const std::string& baseline_job, const TokenEntry** entry) {
  const TokenEntry* token = nullptr;
  grpc::Status authenticated = Authenticate(context, &token);
  if (entry) *entry = token;
  if (!authenticated.ok() || token == nullptr) return authenticated;
  absl::Status s = job ? Authorizer::CheckJob(*token, rpc, *job) : Authorizer::CheckRole(*token, rpc);
  if (s.ok() && !baseline_job.empty()) s = Authorizer::CheckJob(*token, rpc, baseline_job);
  return CountAuth(metrics_, s);
}

grpc::ServerReadReactor<v1::IngestRequest>* MonitorService::Ingest(grpc::CallbackServerContext* context,
                                                                   v1::IngestResponse* response) {
  // The job is known only from OpenSnapshot: the token and its role are
  // checked now, the job's prefix when OpenSnapshot arrives.
  const TokenEntry* token = nullptr;
  grpc::Status s = Check(context, Rpc::kIngest, nullptr, "", &token);
  return new IngestReactor(engine_, response, token, metrics_, s, context, &limiter_, Identify(context, token),
                           &watchdog_);
}

MonitorService::Client MonitorService::Identify(const grpc::CallbackServerContext* context,
                                                const TokenEntry* token) const {
  Client c;
  c.limits = client_limits_;
  if (token != nullptr) {
    // The entry's address is unique per token and reveals nothing of it.
    c.key = absl::StrCat("token:", reinterpret_cast<uintptr_t>(token));
    c.label = absl::StrCat("token '", token->name, "'");
    if (token->max_streams > 0) c.limits.max_streams = token->max_streams;
    if (token->rate_limit_bytes_per_second > 0) c.limits.bytes_per_second = token->rate_limit_bytes_per_second;
    if (token->rate_limit_burst_bytes > 0) c.limits.burst_bytes = token->rate_limit_burst_bytes;
    c.tenant = Tenant{c.key, c.label, token->max_jobs, token->max_open_snapshots, token->max_memory_bytes};
  } else {
    const std::string host = PeerHost(context->peer());
    c.key = "peer:" + host;
    c.label = "peer " + host;
  }
  return c;
}

std::string PeerHost(const std::string& peer) {
  std::string_view p = peer;
  for (std::string_view scheme : {"ipv4:", "ipv6:"}) {
    if (p.substr(0, scheme.size()) != scheme) continue;
    p.remove_prefix(scheme.size());
    const size_t colon = p.rfind(':');
    if (colon != std::string_view::npos) p = p.substr(0, colon);
    if (p.size() >= 2 && p.front() == '[' && p.back() == ']') p = p.substr(1, p.size() - 2);
    return std::string(p);
  }
  return peer;
}

grpc::ServerUnaryReactor* MonitorService::CloseGeneration(grpc::CallbackServerContext* context,
                                                          const v1::CloseGenerationRequest* request,
                                                          v1::GenerationReport* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status s = Check(context, Rpc::kCloseGeneration, &request->job()); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->Close(*request, ReplyReport(reactor, response, metrics_, engine_->logger(), "CloseGeneration"));
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::GetHistory(grpc::CallbackServerContext* context,
                                                     const v1::GetHistoryRequest* request,
                                                     v1::GetHistoryResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status s = Check(context, Rpc::kGetHistory, &request->job()); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->GetHistory(*request, response,
                      [this, reactor](const absl::Status& s) {
                        reactor->Finish(Answer(metrics_, engine_->logger(), "GetHistory", s));
                      });
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::ListJobs(grpc::CallbackServerContext* context,
                                                   const v1::ListJobsRequest*,
                                                   v1::ListJobsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const TokenEntry* token = nullptr;
  if (grpc::Status s = Check(context, Rpc::kListJobs, nullptr, "", &token); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->ListJobs(response, [this, reactor, response, token](const absl::Status& status) {
    grpc::Status s = Answer(metrics_, engine_->logger(), "ListJobs", status);
    if (s.ok() && token != nullptr) {  // only the jobs within the token's prefixes
      v1::ListJobsResponse all;
      all.Swap(response);
      for (v1::JobInfo& job : *all.mutable_jobs()) {
        if (Authorizer::JobAllowed(*token, job.job())) response->add_jobs()->Swap(&job);
      }
    }
    reactor->Finish(s);
  });
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::ConfigureJob(grpc::CallbackServerContext* context,
                                                       const v1::ConfigureJobRequest* request,
                                                       v1::JobInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const TokenEntry* token = nullptr;
  if (grpc::Status s = Check(context, Rpc::kConfigureJob, &request->job(), request->config().baseline_job(), &token);
      !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->Configure(
      *request,
      [this, reactor, response](const absl::Status& s, const v1::JobInfo& info) {
        if (s.ok()) *response = info;
        reactor->Finish(Answer(metrics_, engine_->logger(), "ConfigureJob", s));
      },
      token ? Identify(context, token).tenant : Tenant{});
  return reactor;
}

// ---- GetJob / GetReport block (issue 17 "Protocol")

grpc::ServerUnaryReactor* MonitorService::GetJob(grpc::CallbackServerContext* context,
                                                 const v1::GetJobRequest* request, v1::JobInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status s = Check(context, Rpc::kGetJob, &request->job());
  if (s.ok()) s = Answer(metrics_, engine_->logger(), "GetJob", engine_->GetJob(*request, response));
  reactor->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::DeleteJob(grpc::CallbackServerContext* context,
                                                   const v1::DeleteJobRequest* request,
                                                   v1::DeleteJobResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status s = Check(context, Rpc::kDeleteJob, &request->job()); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->DeleteJob(*request, [this, reactor, response](const absl::Status& s, const v1::DeleteJobResponse& r) {
    if (s.ok()) *response = r;
    reactor->Finish(Answer(metrics_, engine_->logger(), "DeleteJob", s));
  });
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::FinishJob(grpc::CallbackServerContext* context,
                                                   const v1::FinishJobRequest* request, v1::JobInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status s = Check(context, Rpc::kFinishJob, &request->job()); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->FinishJob(*request, [this, reactor, response](const absl::Status& s, const v1::JobInfo& info) {
    if (s.ok()) *response = info;
    reactor->Finish(Answer(metrics_, engine_->logger(), "FinishJob", s));
  });
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::ListSnapshots(grpc::CallbackServerContext* context,
                                                       const v1::ListSnapshotsRequest* request,
                                                       v1::ListSnapshotsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const TokenEntry* token = nullptr;
  const std::string* job = request->job().empty() ? nullptr : &request->job();
  if (grpc::Status s = Check(context, Rpc::kListSnapshots, job, "", &token); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  grpc::Status s = Answer(metrics_, engine_->logger(), "ListSnapshots", engine_->ListSnapshots(*request, response));
  if (s.ok() && token != nullptr) {  // only the jobs within the token's prefixes
    v1::ListSnapshotsResponse all;
    all.Swap(response);
    for (v1::SnapshotInfo& snap : *all.mutable_snapshots()) {
      if (Authorizer::JobAllowed(*token, snap.job())) response->add_snapshots()->Swap(&snap);
    }
  }
  reactor->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::GetReport(grpc::CallbackServerContext* context,
                                                    const v1::GetReportRequest* request,
                                                    v1::GenerationReport* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status s = Check(context, Rpc::kGetReport, &request->job()); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->GetReport(*request, ReplyReport(reactor, response, metrics_, engine_->logger(), "GetReport"));
  return reactor;
}

}  // namespace sigma::server
