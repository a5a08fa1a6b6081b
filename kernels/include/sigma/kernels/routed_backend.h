// A composite Backend (issue 5): one CPU backend for small snapshots and one
// backend per GPU, each with its own context created once at start-up.
// MakeBackend(kAuto) returns one when at least one CUDA device is usable;
// tests build it from injected children (any Backend), so routing is tested
// without a GPU.
//
// Routing (per snapshot):
//   - m < gpu_min_m and a CPU child exists        -> the CPU backend;
//   - otherwise                                    -> device number
//     placement_key % device_count (SealInput::placement_key, a stable hash
//     of the job name, PlacementKeyForJob): one job's snapshots always go to
//     the same device, different jobs spread over the devices.
//   With no CPU child everything goes to the devices; with no device child
//   everything goes to the CPU.
//
// Why small m goes to the CPU: a device seal pays fixed costs (kernel launches,
// a host<->device round trip, synchronisation) that a tiny Gram and three
// m x m Cholesky factorisations do not amortise; below some m the CPU backend
// is faster. That crossover depends on the GPU, the host CPU and n_A.
// kDefaultGpuMinM = 256 is NOT MEASURED on a GPU yet (no session so far had
// one): it is a conservative guess (the CPU backend seals m = 384, n_A = 4096
// in ~94 ms on 2 cores, docs/benchmarks.md, so below 256 the CPU costs at most
// tens of ms per seal). tests/gpu/device_check.sh measures it: the
// "CPU vs GPU seal crossover" table (sigma_gpu_bench's crossover sweep, m in
// {64 .. 1024} at n_A = 4096, against the CPU backend when the build has it and
// torch.linalg on the CPU otherwise) ends with a suggested gpu_min_m; set
// kDefaultGpuMinM (or sigmad --gpu-min-m) from it.
//
// SealBatch splits the batch into one group per child, keeping each group in
// input order; the device groups run concurrently, one thread per device, the
// CPU group on the calling thread; the results are written back in input
// order. The result of each snapshot is exactly what its child computes for it
// (bitwise identical to calling that child alone). Errors keep the semantics of
// Backend::SealBatch: an invalid shape fails the whole call before any work;
// when a child fails, the call returns that child's status (message prefixed
// with the child's name; with several failures, the one of the group holding
// the earliest input) and the outputs of the failed group are unspecified,
// while the other groups' outputs are written. A caller that re-seals the
// inputs one by one to isolate a failure (the daemon does) then sees the
// failure only on the failing child's inputs, since each input routes to the
// same child alone as in a batch.
//
// Thread-compatible like every Backend: calls on one RoutedBackend must not
// overlap; inside a call each child is used by one thread only.
#ifndef SIGMA_KERNELS_ROUTED_BACKEND_H_
#define SIGMA_KERNELS_ROUTED_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "sigma/kernels/backend.h"

namespace sigma {

// Snapshots with m below this go to the CPU (see above: NOT measured on a GPU).
inline constexpr int64_t kDefaultGpuMinM = 256;

// The placement key of a job: FNV-1a 64 of the name, then the splitmix64
// finaliser so that the low bits (placement_key % device_count) are well
// mixed. Fixed forever: changing it moves every job to another device.
uint64_t PlacementKeyForJob(std::string_view job);

class RoutedBackend : public Backend {
 public:
  // `cpu` may be null (no CPU routing) and `devices` may be empty, not both;
  // no child may be null. gpu_min_m >= 0 (0: the CPU child is never used).
  static absl::StatusOr<std::unique_ptr<RoutedBackend>> Create(
      std::unique_ptr<Backend> cpu, std::vector<std::unique_ptr<Backend>> devices, int64_t gpu_min_m);

  // E.g. "cuda:0 NVIDIA H200 + cpu (m < 256)", "cuda x2 NVIDIA H200 + cpu (m < 256)".
  std::string name() const override;

  absl::Status SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) override;

  // The child a snapshot of width m with this key goes to: kCpu or a device index.
  static constexpr int kCpu = -1;
  int Route(int64_t m, uint64_t placement_key) const;

  int64_t gpu_min_m() const { return gpu_min_m_; }
  int device_count() const { return static_cast<int>(devices_.size()); }
  bool has_cpu() const { return cpu_ != nullptr; }

 private:
  RoutedBackend(std::unique_ptr<Backend> cpu, std::vector<std::unique_ptr<Backend>> devices,
                int64_t gpu_min_m);
  Backend& Child(int route) { return route == kCpu ? *cpu_ : *devices_[static_cast<size_t>(route)]; }

  std::unique_ptr<Backend> cpu_;
  std::vector<std::unique_ptr<Backend>> devices_;
  int64_t gpu_min_m_;
};

}  // namespace sigma

#endif  // SIGMA_KERNELS_ROUTED_BACKEND_H_
