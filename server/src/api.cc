#include "sigma/server/api.h"

#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

namespace sigma::server {
namespace v1 = sigma::v1;

namespace {

// Counts a refusal by the authoriser in the metrics.
grpc::Status CountAuth(Metrics* metrics, grpc::Status s) {
  if (!s.ok() && metrics) metrics->AuthFailure(s.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  return s;
}

// May `token` (null: auth off) open a snapshot of `open.job` (and compare
// against its baseline_job)?
grpc::Status CheckOpen(const TokenEntry* token, const v1::OpenSnapshot& open) {
  if (token == nullptr) return grpc::Status::OK;
  grpc::Status s = Authorizer::CheckJob(*token, Rpc::kIngest, open.job());
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
class IngestReactor final : public grpc::ServerReadReactor<v1::IngestRequest> {
 public:
  // `token`: the caller's entry (null when auth is off). A non-OK `refused`
  // (authentication failed) ends the stream before anything is read.
  IngestReactor(Engine* engine, v1::IngestResponse* response, const TokenEntry* token, Metrics* metrics,
                const grpc::Status& refused)
      : engine_(engine), response_(response), token_(token), metrics_(metrics) {
    if (!refused.ok()) {
      finished_ = true;
      Finish(refused);
      return;
    }
    StartRead(&request_[0]);
  }

  void OnReadDone(bool ok) override {
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

  void OnDone() override { delete this; }

 private:
  // Processes the message that just arrived in request_[current_], then any
  // that arrived meanwhile.
  void Drain(bool ok) {
    for (;;) {
      const bool stop = Handle(ok);
      std::lock_guard<std::mutex> lock(mu_);
      if (stop) {
        finished_ = true;
        busy_ = false;
        return;
      }
      if (!pending_) {
        busy_ = false;
        return;
      }
      pending_ = false;
      ok = pending_ok_;
    }
  }

  // Returns true when the stream is done (Finish called or scheduled).
  bool Handle(bool ok) {
    if (!ok) {  // half-close (or cancellation): answer with what this stream did
      End(nullptr);
      return true;
    }
    v1::IngestRequest& request = request_[current_];
    if (request.message_case() == v1::IngestRequest::kEnd) {
      End(&request.end());
      return true;
    }
    current_ ^= 1;
    StartRead(&request_[current_]);  // read ahead while we process `request`
    grpc::Status status;
    switch (request.message_case()) {
      case v1::IngestRequest::kOpen:
        status = CountAuth(metrics_, CheckOpen(token_, request.open()));
        if (status.ok()) status = engine_->Open(request.open(), &session_);
        break;
      case v1::IngestRequest::kBatch:
        status = engine_->Batch(&session_, request.batch());
        break;
      default:
        status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "empty IngestRequest: set open, batch or end");
    }
    if (status.ok()) return false;
    *response_ = session_.response;
    Finish(status);  // the outstanding read completes and is ignored
    return true;
  }

  void End(const v1::EndOfShare* end) {
    engine_->EndShare(&session_, end, [this](const grpc::Status& s, const v1::IngestResponse& r) {
      *response_ = r;
      Finish(s);
    });
  }

  Engine* engine_;
  v1::IngestResponse* response_;
  const TokenEntry* token_;
  Metrics* metrics_;
  v1::IngestRequest request_[2];
  int current_ = 0;  // the buffer the latest read filled (or fills)
  IngestSession session_;
  std::mutex mu_;
  bool busy_ = false;
  bool pending_ = false;
  bool pending_ok_ = false;
  bool finished_ = false;
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
  grpc::Status s = Authenticate(context, &token);
  if (entry) *entry = token;
  if (!s.ok() || token == nullptr) return s;
  s = job ? Authorizer::CheckJob(*token, rpc, *job) : Authorizer::CheckRole(*token, rpc);
  if (s.ok() && !baseline_job.empty()) s = Authorizer::CheckJob(*token, rpc, baseline_job);
  return CountAuth(metrics_, s);
}

grpc::ServerReadReactor<v1::IngestRequest>* MonitorService::Ingest(grpc::CallbackServerContext* context,
                                                                   v1::IngestResponse* response) {
  // The job is known only from OpenSnapshot: the token and its role are
  // checked now, the job's prefix when OpenSnapshot arrives.
  const TokenEntry* token = nullptr;
  grpc::Status s = Check(context, Rpc::kIngest, nullptr, "", &token);
  return new IngestReactor(engine_, response, token, metrics_, s);
}

grpc::ServerUnaryReactor* MonitorService::CloseGeneration(grpc::CallbackServerContext* context,
                                                          const v1::CloseGenerationRequest* request,
                                                          v1::GenerationReport* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status s = Check(context, Rpc::kCloseGeneration, &request->job()); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->Close(*request, [reactor, response](const grpc::Status& s, ReportPtr report) {
    if (s.ok() && report) *response = *report;
    reactor->Finish(s);
  });
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
  reactor->Finish(engine_->GetHistory(*request, response));
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
  grpc::Status s = engine_->ListJobs(response);
  if (s.ok() && token != nullptr) {  // only the jobs within the token's prefixes
    v1::ListJobsResponse all;
    all.Swap(response);
    for (v1::JobInfo& job : *all.mutable_jobs()) {
      if (Authorizer::JobAllowed(*token, job.job())) response->add_jobs()->Swap(&job);
    }
  }
  reactor->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::ConfigureJob(grpc::CallbackServerContext* context,
                                                       const v1::ConfigureJobRequest* request,
                                                       v1::JobInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status s = Check(context, Rpc::kConfigureJob, &request->job(), request->config().baseline_job());
      !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  engine_->Configure(*request, [reactor, response](const grpc::Status& s, const v1::JobInfo& info) {
    if (s.ok()) *response = info;
    reactor->Finish(s);
  });
  return reactor;
}

}  // namespace sigma::server
