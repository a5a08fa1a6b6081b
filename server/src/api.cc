#include "sigma/server/api.h"

#include <memory>
#include <mutex>

namespace sigma::server {
namespace v1 = sigma::v1;

namespace {

// Reads one message ahead: the next Batch is received (and deserialized) by
// gRPC while the current one is validated and sketched, so the stream's
// transport work overlaps ours. Messages are processed strictly in stream
// order and no thread ever waits: a read that completes while the previous
// message is still being processed is queued, and the thread processing the
// stream picks it up when it is done.
class IngestReactor final : public grpc::ServerReadReactor<v1::IngestRequest> {
 public:
  IngestReactor(Engine* engine, v1::IngestResponse* response) : engine_(engine), response_(response) {
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
        status = engine_->Open(request.open(), &session_);
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

grpc::ServerReadReactor<v1::IngestRequest>* MonitorService::Ingest(grpc::CallbackServerContext*,
                                                                   v1::IngestResponse* response) {
  return new IngestReactor(engine_, response);
}

grpc::ServerUnaryReactor* MonitorService::CloseGeneration(grpc::CallbackServerContext* context,
                                                          const v1::CloseGenerationRequest* request,
                                                          v1::GenerationReport* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
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
  reactor->Finish(engine_->GetHistory(*request, response));
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::ListJobs(grpc::CallbackServerContext* context,
                                                   const v1::ListJobsRequest*,
                                                   v1::ListJobsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(engine_->ListJobs(response));
  return reactor;
}

grpc::ServerUnaryReactor* MonitorService::ConfigureJob(grpc::CallbackServerContext* context,
                                                       const v1::ConfigureJobRequest* request,
                                                       v1::JobInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  engine_->Configure(*request, [reactor, response](const grpc::Status& s, const v1::JobInfo& info) {
    if (s.ok()) *response = info;
    reactor->Finish(s);
  });
  return reactor;
}

}  // namespace sigma::server
