// Ingest throughput of sigmad against a do-nothing gRPC sink that implements
// the same sigma.v1.SigmaMonitor service, measured in the same run on
// loopback: payload bytes per second for batch messages of 256 KiB, 1 MiB and
// 4 MiB over 1 and 4 concurrent Ingest streams (one rank each). The sink reads
// and drops every message; sigmad validates, checks for NaN/Inf, computes the
// energies and keeps the bottom-k sub-sample. Timing covers open, batches and
// the half-close (the response), not the seal (a separate, batched step).
//
//   sigma_ingest_bench [--bytes N] [--reps R] [--m M] [--dtype fp32|bf16]
//                      [--size BYTES] [--streams N] [--target sink|sigmad]   (one cell, for profiling)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "grpcpp/grpcpp.h"
#include "sigma/kernels/dtype.h"
#include "sigma/server/daemon.h"
#include "sigma/v1/sigma.grpc.pb.h"

namespace v1 = sigma::v1;

namespace {

// The do-nothing sink: reads every message, answers on half-close.
class SinkService final : public v1::SigmaMonitor::CallbackService {
  class Reactor final : public grpc::ServerReadReactor<v1::IngestRequest> {
   public:
    explicit Reactor(v1::IngestResponse* resp) : resp_(resp) { StartRead(&req_); }
    void OnReadDone(bool ok) override {
      if (!ok || req_.has_end()) {
        resp_->set_batches_accepted(batches_);
        Finish(grpc::Status::OK);
        return;
      }
      if (req_.has_batch()) ++batches_;
      StartRead(&req_);
    }
    void OnDone() override { delete this; }

   private:
    v1::IngestResponse* resp_;
    v1::IngestRequest req_;
    int64_t batches_ = 0;
  };

 public:
  grpc::ServerReadReactor<v1::IngestRequest>* Ingest(grpc::CallbackServerContext*,
                                                     v1::IngestResponse* resp) override {
    return new Reactor(resp);
  }
};

struct Config {
  int64_t total_bytes = int64_t{256} << 20;  // payload per measurement
  int reps = 3;
  int m = 1024;
  v1::DType dtype = v1::DTYPE_FP32;
  int64_t only_size = 0;   // 0: 256 KiB, 1 MiB, 4 MiB
  int only_streams = 0;    // 0: 1 and 4
  std::string only_target; // "": both; "sink" or "sigmad"
};

// Sends `per_stream` payload bytes on each of `streams` streams; returns seconds.
double RunOnce(v1::SigmaMonitor::Stub* stub, const Config& cfg, int64_t msg_bytes, int streams,
               const std::string& job, int64_t generation, const std::string& payload) {
  const int width = cfg.dtype == v1::DTYPE_FP32 ? 4 : 2;
  const int64_t rows = msg_bytes / (cfg.m * width);
  const int64_t batches = std::max<int64_t>(1, cfg.total_bytes / streams / msg_bytes);
  std::vector<std::thread> threads;
  std::vector<bool> ok(streams, false);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < streams; ++r) {
    threads.emplace_back([&, r] {
      grpc::ClientContext ctx;
      v1::IngestResponse resp;
      auto writer = stub->Ingest(&ctx, &resp);
      v1::IngestRequest open;
      auto* o = open.mutable_open();
      o->set_job(job);
      o->set_generation(generation);
      o->set_rank(r);
      o->set_world_size(streams);
      o->set_m(cfg.m);
      o->set_dtype(cfg.dtype);
      o->mutable_config()->set_n_a(4096);
      if (!writer->Write(open)) return;
      v1::IngestRequest batch;
      batch.mutable_batch()->set_rows(rows);
      batch.mutable_batch()->set_data(payload);
      for (int64_t s = 0; s < batches; ++s) {
        batch.mutable_batch()->set_seq(s);
        if (!writer->Write(batch)) break;
      }
      writer->WritesDone();
      grpc::Status st = writer->Finish();
      ok[r] = st.ok() && resp.batches_accepted() == batches;
      if (!st.ok()) std::fprintf(stderr, "stream %d: %s\n", r, st.error_message().c_str());
    });
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (bool b : ok) {
    if (!b) {
      std::fprintf(stderr, "a stream failed\n");
      std::exit(1);
    }
  }
  return secs;
}

std::unique_ptr<v1::SigmaMonitor::Stub> Stub(int port) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  args.SetMaxReceiveMessageSize(-1);
  // A separate connection per stub (no subchannel sharing between the two servers' stubs).
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return v1::SigmaMonitor::NewStub(
      grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--bytes") cfg.total_bytes = std::stoll(v);
    else if (k == "--reps") cfg.reps = std::stoi(v);
    else if (k == "--m") cfg.m = std::stoi(v);
    else if (k == "--dtype") cfg.dtype = v == "bf16" ? v1::DTYPE_BF16 : v1::DTYPE_FP32;
    else if (k == "--size") cfg.only_size = std::stoll(v);
    else if (k == "--streams") cfg.only_streams = std::stoi(v);
    else if (k == "--target") cfg.only_target = v;
    else {
      std::fprintf(stderr, "usage: %s [--bytes N] [--reps R] [--m M] [--dtype fp32|bf16] [--size BYTES] [--streams N] [--target sink|sigmad]\n", argv[0]);
      return 2;
    }
  }
  const std::string dir = (std::filesystem::temp_directory_path() / ("sigma_ingest_bench_" + std::to_string(getpid()))).string();
  std::filesystem::create_directories(dir);

  sigma::server::DaemonOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.db = dir + "/sigma.db";
  options.backend = "cpu";
  options.max_open_snapshots = 1024;
  sigma::server::Daemon daemon;
  auto ports = daemon.Start(options);
  if (!ports.ok()) {
    std::fprintf(stderr, "sigmad: %s\n", std::string(ports.status().message()).c_str());
    return 1;
  }
  SinkService sink;
  grpc::ServerBuilder builder;
  int sink_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &sink_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes + (1 << 20)));
  builder.RegisterService(&sink);
  auto sink_server = builder.BuildAndStart();
  if (!sink_server) return 1;

  auto sigmad_stub = Stub(ports->grpc_port);
  auto sink_stub = Stub(sink_port);

  std::printf("SIGMA ingest benchmark: m = %d, %s, %lld MiB per measurement, median of %d, %u hardware threads\n",
              cfg.m, v1::DType_Name(cfg.dtype).c_str(), static_cast<long long>(cfg.total_bytes >> 20), cfg.reps,
              std::thread::hardware_concurrency());
  std::printf("%-9s %-8s %14s %14s %7s\n", "message", "streams", "sink MiB/s", "sigmad MiB/s", "ratio");
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  int64_t generation = 0;
  for (int64_t msg : {int64_t{256} << 10, int64_t{1} << 20, int64_t{4} << 20}) {
    if (cfg.only_size != 0 && msg != cfg.only_size) continue;
    const int width = cfg.dtype == v1::DTYPE_FP32 ? 4 : 2;
    const int64_t rows = msg / (cfg.m * width);
    std::string payload(static_cast<size_t>(rows * cfg.m * width), '\0');
    for (int64_t i = 0; i < rows * cfg.m; ++i) {
      const float f = normal(rng);
      if (width == 4) std::memcpy(payload.data() + 4 * i, &f, 4);
      else {
        const uint16_t h = sigma::DoubleToBFloat16(f);
        std::memcpy(payload.data() + 2 * i, &h, 2);
      }
    }
    for (int streams : {1, 4}) {
      if (cfg.only_streams != 0 && streams != cfg.only_streams) continue;
      std::vector<double> sink_t, sigmad_t;
      for (int rep = 0; rep < cfg.reps; ++rep) {
        if (cfg.only_target != "sigmad")
          sink_t.push_back(RunOnce(sink_stub.get(), cfg, msg, streams, "sink", 0, payload));
        if (cfg.only_target != "sink")
          sigmad_t.push_back(RunOnce(sigmad_stub.get(), cfg, msg, streams, "ingest_bench", generation++, payload));
      }
      if (sink_t.empty()) sink_t.push_back(1e300);
      if (sigmad_t.empty()) sigmad_t.push_back(1e300);
      std::sort(sink_t.begin(), sink_t.end());
      std::sort(sigmad_t.begin(), sigmad_t.end());
      const double bytes = static_cast<double>(std::max<int64_t>(1, cfg.total_bytes / streams / msg) * msg * streams);
      const double a = bytes / sink_t[sink_t.size() / 2] / (1 << 20);
      const double b = bytes / sigmad_t[sigmad_t.size() / 2] / (1 << 20);
      if (!cfg.only_target.empty()) {
        std::printf("%-9s %-8d %s MiB/s %.1f\n", absl::StrFormat("%d KiB", msg >> 10).c_str(), streams,
                    cfg.only_target.c_str(), cfg.only_target == "sink" ? a : b);
        continue;
      }
      std::printf("%-9s %-8d %14.1f %14.1f %7.2f\n",
                  msg >= (1 << 20) ? absl::StrFormat("%d MiB", msg >> 20).c_str()
                                   : absl::StrFormat("%d KiB", msg >> 10).c_str(),
                  streams, a, b, b / a);
      std::fflush(stdout);
    }
  }
  sink_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  daemon.Shutdown(1.0);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
