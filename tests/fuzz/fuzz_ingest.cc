// libFuzzer target: the ingest decoding and validation path of sigmad.
//
// The input is a sequence of records [u16 little-endian length][bytes]; each
// record's bytes are decoded as a sigma.v1.IngestRequest (the bytes gRPC hands
// to the service) and fed to a fresh Engine exactly as the Ingest reactor
// does: OpenSnapshot / Batch / EndOfShare on one session; a refused message
// ends that stream and the next record starts a new one; the input's end is a
// half-close. The Engine runs on an in-memory SQLite store and the CPU
// backend with small limits, so the limits are exercised too (the 16 MiB
// memory budget also bounds m: a seal works on m x m matrices).
//
// Invariant checked besides the sanitizers: a refused message leaves the
// stream's counters unchanged (docs/server.md "Validation").
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>

#include "sigma/kernels/backend_factory.h"
#include "sigma/server/metrics.h"
#include "sigma/server/scheduler.h"
#include "sigma/server/storage.h"

namespace {

using sigma::server::Engine;
using sigma::server::IngestSession;
namespace v1 = sigma::v1;

sigma::server::DaemonOptions FuzzOptions() {
  sigma::server::DaemonOptions o;
  o.db = ":memory:";
  o.backend = "cpu";
  o.max_jobs = 4;
  o.max_taps_per_job = 2;
  o.max_open_snapshots = 4;
  o.max_memory_bytes = int64_t{16} << 20;
  o.max_message_bytes = int64_t{256} << 10;
  o.seal_batch_window_ms = 0;
  return o;
}

void EndStream(Engine& engine, IngestSession& session, const v1::EndOfShare* end) {
  std::promise<void> done;
  engine.EndShare(&session, end, [&done](const absl::Status&, const v1::IngestResponse&) { done.set_value(); });
  done.get_future().wait();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sigma::server::Metrics metrics_owner;  // per input: job series do not pile up
  sigma::server::Metrics* metrics = &metrics_owner;
  const sigma::server::DaemonOptions options = FuzzOptions();
  auto store = sigma::server::Store::Open(options.db);
  if (!store.ok()) std::abort();
  sigma::BackendOptions bo;
  bo.kind = sigma::BackendKind::kCpu;
  auto backend = sigma::MakeBackend(bo);
  if (!backend.ok()) std::abort();
  Engine engine(options, std::move(*store), std::move(*backend), metrics);
  if (!engine.Restore().ok()) std::abort();
  engine.StartWorker();
  {
    auto session = std::make_unique<IngestSession>();
    bool live = false;  // a stream is open (not yet ended)
    size_t pos = 0;
    while (pos + 2 <= size) {
      const size_t len = std::min<size_t>(size - pos - 2, data[pos] | (size_t{data[pos + 1]} << 8));
      v1::IngestRequest request;
      const bool parsed = request.ParseFromArray(data + pos + 2, static_cast<int>(len));
      pos += 2 + len;
      if (!parsed) continue;
      if (!live) {
        session = std::make_unique<IngestSession>();
        live = true;
      }
      const v1::IngestResponse before = session->response;
      absl::Status status;
      switch (request.message_case()) {
        case v1::IngestRequest::kOpen:
          status = engine.Open(request.open(), session.get());
          break;
        case v1::IngestRequest::kBatch:
          status = engine.Batch(session.get(), request.batch());
          break;
        case v1::IngestRequest::kEnd:
          EndStream(engine, *session, &request.end());
          live = false;
          continue;
        default:
          status = absl::InvalidArgumentError("empty");
      }
      if (!status.ok()) {
        if (session->response.SerializeAsString() != before.SerializeAsString()) std::abort();
        live = false;  // the reactor ends the stream with this status
      }
    }
    if (live) EndStream(engine, *session, nullptr);  // half-close
  }
  engine.StopWorker();
  return 0;
}
