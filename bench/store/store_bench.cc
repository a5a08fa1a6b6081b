// Seal commit latency: Store::Commit of one seal's transaction (its job row
// and one report of realistic size), sequentially, on each --db given.
// Prints per store the median and p99 in milliseconds and the ratio of the
// median to the first store's (the baseline of the same run).
// Usage: sigma_store_bench [--commits N] DB...   (a file path or postgresql:// URL)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "sigma/server/storage.h"

namespace {

using sigma::server::Store;
using sigma::server::StoredJob;

sigma::v1::GenerationReport MakeReport(int64_t generation) {
  sigma::v1::GenerationReport r;
  r.set_job("bench");
  r.set_tap("default");
  r.set_generation(generation);
  r.set_m(256);
  r.set_n(100000);
  r.set_n_a(4096);
  r.set_backend("cpu");
  r.set_track2(-1.0 - 0.001 * generation);
  r.set_sealed_unix_ms(1700000000000 + generation);
  r.mutable_per_dim()->set_track2_drift(0.01);
  for (int i = 0; i < 3; ++i) {
    sigma::v1::Alert* a = r.add_alerts();
    a->set_rule("collapse_contraction");
    a->set_severity("warning");
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int commits = 200;
  std::vector<std::string> dbs;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--commits") == 0 && i + 1 < argc) commits = std::atoi(argv[++i]);
    else dbs.emplace_back(argv[i]);
  }
  if (dbs.empty() || commits < 1) {
    std::fprintf(stderr, "usage: sigma_store_bench [--commits N] DB...\n");
    return 2;
  }
  double baseline = 0;
  for (const std::string& db : dbs) {
    auto store = Store::Open(db);
    if (!store.ok()) {
      std::fprintf(stderr, "%s\n", std::string(store.status().message()).c_str());
      return 1;
    }
    StoredJob job{"bench", {}, 256};
    job.config.set_n_a(4096);
    std::vector<double> ms;
    for (int g = 0; g < commits; ++g) {
      const auto t0 = std::chrono::steady_clock::now();
      if (auto s = (*store)->Commit({job}, {MakeReport(g)}); !s.ok()) {
        std::fprintf(stderr, "commit: %s\n", std::string(s.message()).c_str());
        return 1;
      }
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    const double p99 = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
    if (baseline == 0) baseline = median;
    std::printf("%-10s commits=%d median_ms=%.3f p99_ms=%.3f median_vs_first=%.2f\n", (*store)->kind(), commits,
                median, p99, median / baseline);
  }
  return 0;
}
