// The CUDA backend (spec §3, §4): cuBLAS Gram, cuSOLVER (batched) Cholesky,
// custom kernels for conversion, shifted copies and reductions. Its one
// operation is SealBatch; the device calls live in cuda_device.{h,cc}.
//
// Memory: the Backend interface takes host pointers only. Inside a call the
// data lives in one growable device workspace (GrowableBuffer, cudaMalloc'd)
// carved into the buffers of that call; host input is staged through two
// pinned slots (double buffering: the host copies chunk k+1 into one slot
// while the copy stream uploads chunk k from the other, and the compute stream
// converts what has arrived). Results come back through a small pinned buffer
// in one transfer per group. After each call a workspace or staging buffer
// larger than CudaBackendOptions::keep_bytes is freed; all of them are charged
// to CudaBackendOptions::memory_budget when one is given.
//
// Threads: one backend = one device context = two CUDA streams, a cuBLAS and a
// cuSOLVER handle, created once in MakeCudaBackend (never per request). Every
// call takes the backend's mutex, so concurrent calls are safe and run one
// after the other; use one backend per device for parallelism.
//
// Input checks: NaN/Inf rows are detected on the device by the conversion
// kernel (no extra host pass over the data) and refused with INVALID_ARGUMENT
// naming the snapshot, row and column (rows counted from the snapshot's first).
//
// Errors: every CUDA, cuBLAS and cuSOLVER status becomes an absl::Status:
// out of device memory (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED,
// CUSOLVER_STATUS_ALLOC_FAILED) and a refused memory budget are
// RESOURCE_EXHAUSTED, no device UNAVAILABLE, the rest INTERNAL. Nothing aborts
// or throws. After an error the streams are drained; a sticky error (the CUDA
// context is corrupt, e.g. an illegal address) marks the backend broken and
// every later call returns INTERNAL with the first reason.
#include "cuda_backend.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda_device.h"
#include "device_kernels.h"
#include "sigma/kernels/ingest_rules.h"
#include "sigma/kernels/routed_backend.h"

namespace sigma::cuda {

static_assert(kDefaultBatchedPotrfMaxM >= kDefaultGpuMinM,
              "under --backend auto the batched potrf path must cover some m the device gets");

namespace {

// One energy rule on the CPU and the device (device_kernels.h).
static_assert(kernels::kMinTrustedSquares == kMinTrustedSumOfSquares);

using kernels::CholDev;
using kernels::ShiftTargets;
using kernels::SnapshotDev;

// ---------------------------------------------------------------------------
// The one place that decides how the Gram is formed (see GramAlgo).
// UNMEASURED default: SYRK (half the flops of GEMM). bench/gpu/sigma_gpu_bench
// prints the three rates per (m, n_A) on the device ("gram" columns); change
// this rule to whatever wins there.
GramPath GramPathFor(GramAlgo algo, int64_t m, int64_t rows) {
  (void)m;
  (void)rows;
  switch (algo) {
    case GramAlgo::kSyrk: return GramPath::kSyrk;
    case GramAlgo::kGemm: return GramPath::kGemm;
    case GramAlgo::kBlocked: return GramPath::kBlocked;
    case GramAlgo::kAuto: break;
  }
  return GramPath::kSyrk;
}

// Energies above rho are violations (preprocess.cc: l2 rows have energy 1
// exactly, so they violate only rho < 1).
double ViolationLimit(double rho) { return rho; }

absl::Status NonFiniteError(unsigned long long flag, int64_t m, size_t snapshot) {
  const unsigned long long index = ~flag;
  return absl::InvalidArgumentError(absl::StrFormat(
      "snapshot %d: non-finite value (NaN or Inf) at row %d, column %d", snapshot,
      static_cast<int64_t>(index / static_cast<unsigned long long>(m)),
      static_cast<int64_t>(index % static_cast<unsigned long long>(m))));
}

absl::Status CheckDims(int64_t m, int64_t rows) {
  if (m > INT_MAX || rows > INT_MAX)
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA backend: m = %d and n_A = %d must each fit in 32 bits (cuBLAS)", m, rows));
  return absl::OkStatus();
}

// One cuSOLVER outcome on the device -> CholeskyOutcome.
absl::Status DecodeCholesky(const CholDev& d, CholeskyOutcome* o) {
  if (d.info < 0) return absl::InternalError(absl::StrFormat("cuSOLVER potrf: argument %d invalid", -d.info));
  *o = CholeskyOutcome{};
  o->ok = d.ok != 0;
  o->failed_column = o->ok ? 0 : d.failed_column;
  o->log_det = o->ok ? d.log_det : 0.0;
  return absl::OkStatus();
}

// Where one m-group's buffers lie in the arena and how it runs (the plan
// phase's output; nothing is allocated or queued while planning).
struct GroupPlan {
  int64_t snapshots = 0;  // S
  int64_t m = 0;
  size_t mm = 0;          // m * m
  int64_t nmats = 0;      // 3 S shifted matrices
  bool batched = false;   // batched potrf
  size_t slot = 0;        // bytes of one staging slot
  size_t o_slot[2] = {0, 0};
  std::vector<size_t> o_x, o_v;  // per snapshot: X_s [n_A, m] then L^{-1} X_s; row energies then q
  size_t o_mats = 0, o_partial = 0, o_info = 0, o_ptrs = 0, o_res = 0, o_ws = 0;
  size_t ws = 0, host_ws = 0;  // solver workspace (device bytes after o_ws; host bytes)
  size_t pinned_res = 0;       // offset of the results in the small pinned buffer
  std::vector<GramPath> gram;  // per snapshot
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::unique_ptr<DeviceContext> ctx, const CudaBackendOptions& options)
      : ctx_(std::move(ctx)), options_(options) {}

  std::string name() const override { return absl::StrCat("cuda:", ctx_->ordinal, " ", ctx_->device_name); }

  std::optional<PhaseTimes> last_times() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_times_;
  }

  // Spec §4 "Batched": snapshots are grouped by m (a batched factorisation
  // needs one matrix size); within a group every snapshot stays on the device
  // from upload to moments, and the 3 x #snapshots shifted matrices go through
  // ONE cusolverDnDpotrfBatched call (m <= batched_potrf_max_m) or one
  // cusolverDnXpotrf each. A group that does not fit in device memory (or the
  // memory budget) is split in halves until it does (a single snapshot that
  // does not fit is RESOURCE_EXHAUSTED). One host synchronisation per group.
  absl::Status SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) override {
    if (out.size() != inputs.size())
      return absl::InvalidArgumentError("SealBatch: output size differs from input size");
    for (const SealInput& input : inputs) {
      // Shape only: NaN/Inf are detected on the device by the conversion
      // kernel, which reads every element anyway (no O(n_A m) host scan).
      SIGMA_CU_RETURN_IF_ERROR(ValidateSealShape(input));
      SIGMA_CU_RETURN_IF_ERROR(CheckDims(input.rows.m, input.rows.num_rows));
    }
    if (inputs.empty()) return absl::OkStatus();
    return Run([&]() -> absl::Status {
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<std::pair<int64_t, std::vector<size_t>>> groups;  // by m, in first-seen order
      for (size_t i = 0; i < inputs.size(); ++i) {
        auto it = std::find_if(groups.begin(), groups.end(),
                               [&](const auto& g) { return g.first == inputs[i].rows.m; });
        if (it == groups.end()) {
          groups.push_back({inputs[i].rows.m, {i}});
        } else {
          it->second.push_back(i);
        }
      }
      PhaseTimes total;
      for (const auto& group : groups) {
        SIGMA_CU_RETURN_IF_ERROR(SealGroupSplitting(inputs, group.second, out, &total));
      }
      if (options_.record_phase_times) {
        total.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        last_times_ = total;
      }
      return absl::OkStatus();
    });
  }

 private:
  // Runs `body` under the lock on this backend's device; drains the streams
  // and records sticky errors on failure; trims the buffers afterwards.
  template <typename F>
  absl::Status Run(F&& body) {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_)
      return absl::InternalError(absl::StrCat("CUDA backend unusable after an earlier error: ", broken_reason_));
    SIGMA_CU_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(ctx_->ordinal), "cudaSetDevice"));
    ctx_->ResetSlots();
    absl::Status s = body();
    if (!s.ok()) Drain(s);
    if (!broken_) {  // the streams are idle here (synchronised or drained)
      ctx_->arena.Trim(options_.keep_bytes);
      ctx_->staging.Trim(options_.keep_bytes);
    }
    return s;
  }

  void Drain(const absl::Status& cause) {
    const cudaError_t sync = ctx_->Synchronize();
    const cudaError_t last = cudaGetLastError();
    if (IsStickyError(sync) || IsStickyError(last)) {
      broken_ = true;
      broken_reason_ = std::string(cause.message());
    }
    ctx_->ResetSlots();
  }

  absl::Status SealGroupSplitting(absl::Span<const SealInput> inputs, const std::vector<size_t>& idx,
                                  absl::Span<SealMoments> out, PhaseTimes* times) {
    absl::Status s = SealGroup(inputs, idx, out, times);
    if (s.code() != absl::StatusCode::kResourceExhausted || idx.size() < 2) return s;
    Drain(s);
    if (broken_) return s;
    const size_t half = idx.size() / 2;
    const std::vector<size_t> a(idx.begin(), idx.begin() + half), b(idx.begin() + half, idx.end());
    SIGMA_CU_RETURN_IF_ERROR(SealGroupSplitting(inputs, a, out, times));
    return SealGroupSplitting(inputs, b, out, times);
  }

  // All snapshots in `idx` have the same m: plan, reserve, enqueue the device
  // phases, wait once, decode.
  absl::Status SealGroup(absl::Span<const SealInput> inputs, const std::vector<size_t>& idx,
                         absl::Span<SealMoments> out, PhaseTimes* times) {
    GroupPlan plan;
    SIGMA_CU_RETURN_IF_ERROR(Plan(inputs, idx, &plan));
    SIGMA_CU_RETURN_IF_ERROR(Reserve(&plan));
    SIGMA_CU_RETURN_IF_ERROR(Enqueue(inputs, idx, plan));
    CUDA_TRY(cudaStreamSynchronize(ctx_->stream));
    const SnapshotDev* host_res = At<SnapshotDev>(ctx_->small.base(), plan.pinned_res);
    SIGMA_CU_RETURN_IF_ERROR(Decode(inputs, idx, plan, host_res, out));
    if (options_.record_phase_times) {
      DeviceContext& c = *ctx_;
      times->upload_convert_ms += c.Elapsed(0, 1);
      times->gram_ms += c.Elapsed(1, 2);
      times->cholesky_ms += c.Elapsed(2, 3);
      times->q_ms += c.Elapsed(3, 4);
      times->traces_ms += c.Elapsed(4, 5);
      times->batched_potrf = plan.batched;
      times->gram_gemm = plan.gram.back() == GramPath::kGemm;
      times->gram_blocked = plan.gram.back() == GramPath::kBlocked;
    }
    return absl::OkStatus();
  }

  // Offsets and sizes of one group; INVALID_ARGUMENT when a size overflows.
  absl::Status Plan(absl::Span<const SealInput> inputs, const std::vector<size_t>& idx, GroupPlan* p) const {
    p->snapshots = static_cast<int64_t>(idx.size());
    p->m = inputs[idx[0]].rows.m;
    p->nmats = 3 * p->snapshots;
    if (p->nmats > INT_MAX) return absl::InvalidArgumentError("too many snapshots in one batch");
    p->batched = p->m <= options_.batched_potrf_max_m;
    Layout lay;
    const size_t m = static_cast<size_t>(p->m);
    p->mm = lay.Mul(m, m);
    for (size_t i : idx) {
      const RowBlock& r = inputs[i].rows;
      p->slot = std::max(p->slot, DeviceContext::SlotBytes(lay.Mul(m, DTypeWidth(r.dtype)), r.num_rows,
                                                           options_.staging_slot_bytes));
      p->gram.push_back(GramPathFor(options_.gram, p->m, r.num_rows));
    }
    p->o_slot[0] = lay.Add(p->slot);
    p->o_slot[1] = lay.Add(p->slot);
    for (size_t i : idx) {
      const size_t n_a = static_cast<size_t>(inputs[i].rows.num_rows);
      p->o_x.push_back(lay.Add(lay.Mul(lay.Mul(n_a, m), sizeof(double))));
      p->o_v.push_back(lay.Add(lay.Mul(n_a, sizeof(double))));
    }
    const size_t nmats = static_cast<size_t>(p->nmats);
    p->o_mats = lay.Add(lay.Mul(lay.Mul(nmats, p->mm), sizeof(double)));  // [3S, m, m]: shifted -> factors
    p->o_partial = lay.Add(lay.Mul(2 * m, sizeof(double)));
    p->o_info = lay.Add(nmats * sizeof(int));
    p->o_ptrs = lay.Add(nmats * sizeof(double*));
    p->o_res = lay.Add(idx.size() * sizeof(SnapshotDev));
    p->o_ws = lay.total();  // solver workspace last: sized after the queries
    p->pinned_res = RoundUp(nmats * sizeof(double*), kAlign);
    if (lay.overflowed() || p->o_ws > (size_t{1} << 62))
      return absl::InvalidArgumentError(absl::StrFormat(
          "CUDA backend: a group of %d snapshots of m = %d needs more memory than can be addressed",
          p->snapshots, p->m));
    return absl::OkStatus();
  }

  // Grows the workspace, the staging and the small buffer for `p`, querying
  // the solver workspaces (nothing is queued yet: growing is safe).
  absl::Status Reserve(GroupPlan* p) {
    DeviceContext& c = *ctx_;
    SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(p->o_ws));
    double* probe = At<double>(c.arena.base(), p->o_mats);
    SIGMA_CU_RETURN_IF_ERROR(c.PotriBufferBytes(p->m, probe, &p->ws));
    if (!p->batched) {
      size_t d = 0, h = 0;
      SIGMA_CU_RETURN_IF_ERROR(c.PotrfBufferSizes(p->m, probe, &d, &h));
      p->ws = std::max(p->ws, d);
      p->host_ws = h;
    }
    SIGMA_CU_RETURN_IF_ERROR(c.arena.Reserve(p->o_ws + p->ws));
    c.host_solver_work.resize(std::max<size_t>(p->host_ws, 1));
    SIGMA_CU_RETURN_IF_ERROR(c.staging.Reserve(2 * p->slot));
    return c.small.Reserve(p->pinned_res + static_cast<size_t>(p->snapshots) * sizeof(SnapshotDev));
  }

  // The device phases A-E of one group, all queued on the streams; the last
  // copies the results to the small pinned buffer. No host synchronisation.
  absl::Status Enqueue(absl::Span<const SealInput> inputs, const std::vector<size_t>& idx, const GroupPlan& p) {
    DeviceContext& c = *ctx_;
    const bool timed = options_.record_phase_times;
    const int64_t S = p.snapshots, m = p.m;
    char* base = c.arena.base();
    char* slots[2] = {base + p.o_slot[0], base + p.o_slot[1]};
    double* mats = At<double>(base, p.o_mats);
    SnapshotDev* res = At<SnapshotDev>(base, p.o_res);
    auto X = [&](int64_t s) { return At<double>(base, p.o_x[s]); };
    auto V = [&](int64_t s) { return At<double>(base, p.o_v[s]); };
    auto M = [&](int64_t s, int k) { return mats + (3 * s + k) * p.mm; };
    auto n_a = [&](int64_t s) { return inputs[idx[s]].rows.num_rows; };

    CUDA_TRY(cudaMemsetAsync(res, 0, S * sizeof(SnapshotDev), c.stream));
    // ---- A: upload (copy stream), convert, l2, energies --------------------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(0, timed));
    for (int64_t s = 0; s < S; ++s) {
      const SealInput& in = inputs[idx[s]];
      SIGMA_CU_RETURN_IF_ERROR(c.UploadRows(in.rows, in.preprocessing == Preprocessing::kL2, X(s), V(s),
                                            &res[s].first_nonfinite, slots, p.slot));
      KERNEL_TRY(kernels::LaunchEnergyReduce(V(s), n_a(s), ViolationLimit(in.rho), &res[s].energy, c.stream),
                 "EnergyReduce kernel");
    }
    // ---- B: Gram into the slot of matrix 2 ----------------------------------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(1, timed));
    for (int64_t s = 0; s < S; ++s)
      SIGMA_CU_RETURN_IF_ERROR(c.Gram(X(s), m, n_a(s), M(s, 2), p.gram[s], options_.gram_block));
    // ---- C: shifted copies, one batched Cholesky, log-diagonals ------------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(2, timed));
    for (int64_t s = 0; s < S; ++s) {
      const SealInput& in = inputs[idx[s]];
      const std::vector<ShiftedMatrix> sh = TrackShifts(in.rows.num_rows, in.corpus_size, in.delta, in.rho);
      ShiftTargets t{};
      t.count = 3;
      for (int k = 0; k < 3; ++k) {
        t.dst[k] = M(s, k);
        t.scale[k] = sh[k].scale;
        t.shift[k] = sh[k].shift;
      }
      KERNEL_TRY(kernels::LaunchShiftedCopies(M(s, 2), m, t, c.stream), "ShiftedCopies kernel");  // in place
    }
    char* ws = base + p.o_ws;
    SIGMA_CU_RETURN_IF_ERROR(c.Potrf(mats, m, p.nmats, At<int>(base, p.o_info), p.batched,
                                     At<double*>(c.small.base(), 0), At<double*>(base, p.o_ptrs), ws, p.ws));
    KERNEL_TRY(kernels::LaunchLogDiag(mats, m, p.nmats, At<int>(base, p.o_info), res, 3, sizeof(SnapshotDev),
                                      c.stream),
               "LogDiag kernel");
    // ---- D: q = ||L^{-1} x_j||^2 and its statistics ------------------------
    // No host round trip: a failed factor just yields values that Decode
    // discards (cuBLAS/cuSOLVER do not fail on them).
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(3, timed));
    for (int64_t s = 0; s < S; ++s) {
      SIGMA_CU_RETURN_IF_ERROR(c.QNorms(M(s, 2), m, X(s), n_a(s), V(s)));
      KERNEL_TRY(kernels::LaunchQStats(V(s), n_a(s), &res[s].q_mean, c.stream), "QStats kernel");
    }
    // ---- E: tr(A), tr(A^2) from the inverse (in place of factor 2) ---------
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(4, timed));
    double* partial = At<double>(base, p.o_partial);
    for (int64_t s = 0; s < S; ++s)
      SIGMA_CU_RETURN_IF_ERROR(c.Traces(M(s, 2), m, partial, &res[s].potri_info, &res[s].trace_a,
                                        &res[s].trace_a2, ws, p.ws));
    SIGMA_CU_RETURN_IF_ERROR(c.Mark(5, timed));
    CUDA_TRY(cudaMemcpyAsync(At<SnapshotDev>(c.small.base(), p.pinned_res), res, S * sizeof(SnapshotDev),
                             cudaMemcpyDeviceToHost, c.stream));
    return absl::OkStatus();
  }

  // Host results -> SealMoments. A NaN/Inf in any snapshot refuses the group
  // before any output is written.
  absl::Status Decode(absl::Span<const SealInput> inputs, const std::vector<size_t>& idx, const GroupPlan& p,
                      const SnapshotDev* res, absl::Span<SealMoments> out) const {
    for (int64_t s = 0; s < p.snapshots; ++s) {
      if (res[s].first_nonfinite != 0) return NonFiniteError(res[s].first_nonfinite, p.m, idx[s]);
    }
    for (int64_t s = 0; s < p.snapshots; ++s) {
      const SnapshotDev& r = res[s];
      SealMoments& mo = out[idx[s]];
      mo = SealMoments{};
      mo.n_a = inputs[idx[s]].rows.num_rows;
      mo.m = p.m;
      for (int k = 0; k < 3; ++k) SIGMA_CU_RETURN_IF_ERROR(DecodeCholesky(r.chol[k], &mo.cholesky[k]));
      mo.energy.count = r.energy.count;
      mo.energy.max_energy = r.energy.max_energy;
      mo.energy.sum_energy = r.energy.sum_energy;
      mo.energy.rho_violations = r.energy.rho_violations;
      if (!mo.cholesky[2].ok) continue;
      if (r.potri_info != 0)
        return absl::FailedPreconditionError(absl::StrFormat("potri failed (info %d): singular factor", r.potri_info));
      mo.q_mean = r.q_mean;
      mo.q_sq_mean = r.q_sq_mean;
      mo.q_sd = r.q_sd;
      mo.trace_a = r.trace_a;
      mo.trace_a2 = r.trace_a2;
    }
    return absl::OkStatus();
  }

  std::unique_ptr<DeviceContext> ctx_;
  const CudaBackendOptions options_;
  mutable std::mutex mu_;
  bool broken_ = false;
  std::string broken_reason_;
  std::optional<PhaseTimes> last_times_;
};

}  // namespace

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal) {
  return MakeCudaBackend(ordinal, CudaBackendOptions{});
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal, const CudaBackendOptions& options) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::UnavailableError(
        absl::StrFormat("no CUDA device (cudaGetDeviceCount: %s)", cudaGetErrorString(e)));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device (cudaGetDeviceCount returned 0)");
  if (ordinal < 0 || ordinal >= count)
    return absl::UnavailableError(absl::StrFormat("no CUDA device %d (%d present)", ordinal, count));
  int runtime = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess || runtime < kMinCudaRuntimeVersion)
    return absl::UnavailableError(absl::StrFormat(
        "CUDA runtime %d.%d is too old: the CUDA backend needs CUDA >= 12.1 (cuBLAS TRSM fails for more than "
        "524,280 right-hand sides before it)",
        runtime / 1000, runtime % 1000 / 10));
  if (options.staging_slot_bytes == 0) return absl::InvalidArgumentError("staging_slot_bytes must be > 0");
  if (options.gram_block <= 0) return absl::InvalidArgumentError("gram_block must be > 0");
  auto ctx = std::make_unique<DeviceContext>();
  if (absl::Status s = ctx->Init(ordinal, options.memory_budget); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(std::move(ctx), options));
}

std::optional<PhaseTimes> LastPhaseTimes(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  if (cuda == nullptr) return std::nullopt;
  return cuda->last_times();
}

}  // namespace sigma::cuda
