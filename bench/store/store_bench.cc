// Seal commit latency on each --db given, sequentially, in two parts:
//  1. commit: Store::Commit of one seal's transaction (its job row and one
//     report of realistic size) on an empty history;
//  2. long history (--history N reports already in the tap): a seal's store
//     work as sigmad does it, the read of the tap's history a seal of a
//     shared store needs and the commit. "all" reads the whole tap
//     (HistoryReader::Reports, what ReportHistory::CatchUp read before the
//     seal window); "window" is ReportHistory::CatchUp now (SealWindow:
//     a bounded number of reports, none for SQLite, whose daemon is the only
//     writer and reads nothing).
// Prints per store and step the median and p99 in milliseconds and the ratio
// of the median to the first store's commit median (the baseline of the same
// run). Usage: sigma_store_bench [--commits N] [--history N] DB...   (a file
// path or postgresql:// URL; each should be empty)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sigma/server/report_builder.h"
#include "sigma/server/report_history.h"
#include "sigma/server/storage.h"

namespace {

using sigma::server::HistoryReader;
using sigma::server::ReportHistory;
using sigma::server::Store;
using sigma::server::StoredJob;

sigma::v1::GenerationReport MakeReport(const std::string& tap, int64_t generation) {
  sigma::v1::GenerationReport r;
  r.set_job("bench");
  r.set_tap(tap);
  r.set_generation(generation);
  r.set_m(256);
  r.set_n(100000);
  r.set_n_a(4096);
  r.set_backend("cpu");
  r.set_track2(-1.0 - 0.001 * generation);
  r.set_baseline_generation(0);
  r.set_sealed_unix_ms(1700000000000 + generation);
  r.mutable_per_dim()->set_track2_drift(0.01);
  for (int i = 0; i < 3; ++i) {
    sigma::v1::Alert* a = r.add_alerts();
    a->set_rule("collapse_contraction");
    a->set_severity("warning");
  }
  return r;
}

struct Timing {
  double median = 0, p99 = 0;
};

// Runs `step(i)` `n` times; false when a step failed.
bool Time(int n, const std::function<bool(int)>& step, Timing* out) {
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!step(i)) return false;
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  out->median = ms[ms.size() / 2];
  out->p99 = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  return true;
}

bool Check(const absl::Status& s, const char* what) {
  if (!s.ok()) std::fprintf(stderr, "%s: %s\n", what, std::string(s.message()).c_str());
  return s.ok();
}

// Both parts on one database; prints its lines. `baseline`: the first
// store's commit median (set by the first call).
bool Run(const std::string& db, int commits, int history, double* baseline) {
  auto store = Store::Open(db);
  if (!Check(store.status(), "open")) return false;
  auto reader = HistoryReader::Open(db);
  if (!Check(reader.status(), "open reader")) return false;
  HistoryReader* raw_reader = reader->get();
  ReportHistory cache(64, std::move(*reader));
  StoredJob job{"bench", {}, 256};
  job.config.set_n_a(4096);
  Store* s = store->get();
  const char* kind = s->kind();
  auto print = [&](const char* step, const Timing& t) {
    if (*baseline == 0) *baseline = t.median;
    std::printf("%-10s %-22s history=%-6d median_ms=%.3f p99_ms=%.3f median_vs_first_commit=%.2f\n", kind, step,
                std::strcmp(step, "commit") == 0 ? 0 : history, t.median, t.p99, t.median / *baseline);
  };
  Timing t;
  if (!Time(commits, [&](int g) { return Check(s->Commit({job}, {MakeReport("default", g)}), "commit"); }, &t))
    return false;
  print("commit", t);
  for (int g = 0; g < history; g += 500) {
    std::vector<sigma::v1::GenerationReport> chunk;
    for (int i = g; i < std::min(history, g + 500); ++i) chunk.push_back(MakeReport("long", i));
    if (!Check(s->Commit({job}, chunk), "history")) return false;
  }
  int64_t next = history;
  auto seal = [&](const std::function<absl::Status(int64_t)>& read) {
    return [&, read](int) {
      const int64_t g = next++;
      return Check(read(g), "read") && Check(s->Commit({job}, {MakeReport("long", g)}), "commit");
    };
  };
  const bool shared = raw_reader->shared();
  if (shared) {
    auto all = [&](int64_t) {
      std::vector<sigma::v1::GenerationReport> out;
      return raw_reader->Reports("bench", "1", "long", &out);
    };
    if (!Time(commits, seal(all), &t)) return false;
    print("seal, read all", t);
  }
  auto window = [&](int64_t g) {
    return cache.CatchUp("bench", "1", "long", g, /*recent=*/2, sigma::server::kForecastWindow, /*pinned=*/-1);
  };
  if (!Time(commits, seal(window), &t)) return false;
  print(shared ? "seal, read window" : "seal (reads nothing)", t);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int commits = 200, history = 5000;
  std::vector<std::string> dbs;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--commits") == 0 && i + 1 < argc) commits = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--history") == 0 && i + 1 < argc) history = std::atoi(argv[++i]);
    else dbs.emplace_back(argv[i]);
  }
  if (dbs.empty() || commits < 1 || history < 0) {
    std::fprintf(stderr, "usage: sigma_store_bench [--commits N] [--history N] DB...\n");
    return 2;
  }
  double baseline = 0;
  for (const std::string& db : dbs) {
    if (!Run(db, commits, history, &baseline)) return 1;
  }
  return 0;
}
