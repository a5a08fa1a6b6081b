// Fiber-based execution of emulated kernels; see simt.h.
//
// One block at a time: every CUDA thread of the block is a fiber with its own
// stack (cached across grids). On x86-64 the switch is a few instructions
// (callee-saved registers, MXCSR and the x87 control word, as the SysV ABI
// requires preserved); elsewhere ucontext, whose swapcontext costs a
// sigprocmask system call per switch. The scheduler runs each runnable fiber
// until it reaches a barrier or returns, then releases a barrier whose
// participants have all arrived: the block barrier (__syncthreads) when every
// live thread waits there, a warp barrier (the two halves of a shuffle) when
// every live lane of that warp waits there. Nothing releasable while threads
// still wait is a deadlock (divergent barriers), reported as a violation, as
// are a __syncthreads after some threads of the block exited and a shuffle
// with exited lanes (both undefined on the device).
#include "simt.h"

#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "absl/strings/str_format.h"

namespace sigma::cuda_emulator {
namespace {

enum class FiberState { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

// AddressSanitizer must be told about stack switches (or it reports false
// stack overflows and misses real ones).
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIGMA_EMU_ASAN 1
#else
#define SIGMA_EMU_ASAN 0
#endif

#if defined(__x86_64__)
// sigma_emu_switch(save, next): saves the callee-saved state on the current
// stack, stores the stack pointer in *save, and resumes the context whose
// stack pointer is `next` (made by MakeContext or saved by an earlier switch).
extern "C" void sigma_emu_switch(void** save, void* next);
asm(R"(
  .text
  .globl sigma_emu_switch
  .type sigma_emu_switch, @function
sigma_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sigma_emu_switch, .-sigma_emu_switch
)");

struct Context {
  void* sp = nullptr;
  const void* stack_bottom = nullptr;  // for AddressSanitizer
  size_t stack_size = 0;
};
// A context that starts `entry` (which must never return) on [stack, stack + bytes).
void MakeContext(Context* c, char* stack, size_t bytes, void (*entry)()) {
  uintptr_t top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15};
  auto* words = reinterpret_cast<uint64_t*>(top);
  // [top-8]: a null return address for `entry` (never used), so that at
  // entry %rsp + 8 is 16-byte aligned as after a call.
  *--words = 0;
  *--words = reinterpret_cast<uint64_t>(entry);  // popped by `ret`
  for (int i = 0; i < 6; ++i) *--words = 0;       // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  uint64_t fp = mxcsr | (uint64_t{fpucw} << 32);
  *--words = fp;
  c->sp = words;
  c->stack_bottom = stack;
  c->stack_size = bytes;
}
void RawSwitch(Context* from, Context* to) { sigma_emu_switch(&from->sp, to->sp); }
#else
struct Context {
  ucontext_t uc;
  const void* stack_bottom = nullptr;  // for AddressSanitizer
  size_t stack_size = 0;
};
void MakeContext(Context* c, char* stack, size_t bytes, void (*entry)()) {
  c->stack_bottom = stack;
  c->stack_size = bytes;
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = bytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}
void RawSwitch(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
#endif

// Switches from the running context `from` to `to`. `from_dies`: `from` is a
// finished fiber that will never be resumed.
void SwitchContext(Context* from, Context* to, bool from_dies = false) {
#if SIGMA_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_dies ? nullptr : &fake_stack, to->stack_bottom, to->stack_size);
  RawSwitch(from, to);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)from_dies;
  RawSwitch(from, to);
#endif
}

struct Fiber {
  Context context;
  FiberState state = FiberState::kRunnable;
  uint3 thread_idx{};
};

struct BlockRun {
  dim3 grid, block;
  uint3 block_idx{};
  std::vector<Fiber> fibers;
  std::vector<uint64_t> shuffle_slots;  // one per thread
  Context scheduler;
  int current = -1;
  const std::function<void()>* body = nullptr;
  std::string violation;  // first rule broken in this block, if any
};

thread_local BlockRun* g_run = nullptr;
std::mutex g_grid_mutex;  // one grid at a time: `static` __shared__ storage

constexpr size_t kStackBytes = size_t{128} << 10;
char* g_stacks = nullptr;  // [g_stack_count][kStackBytes], mmap'd, grown never shrunk
size_t g_stack_count = 0;

bool EnsureStacks(size_t count) {
  if (count <= g_stack_count) return true;
  if (g_stacks != nullptr) munmap(g_stacks, g_stack_count * kStackBytes);
  void* p = mmap(nullptr, count * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    g_stacks = nullptr;
    g_stack_count = 0;
    return false;
  }
  g_stacks = static_cast<char*>(p);
  g_stack_count = count;
  return true;
}

// Runs the kernel body for the current fiber, then hands control back to the
// scheduler for good (a fiber's stack is reused; it never returns).
void FiberEntry() {
  BlockRun* run = g_run;
#if SIGMA_EMU_ASAN
  // First code on this stack: completes the scheduler's switch and learns
  // the scheduler's (the host thread's) stack, to switch back to.
  __sanitizer_finish_switch_fiber(nullptr, &run->scheduler.stack_bottom, &run->scheduler.stack_size);
#endif
  (*run->body)();
  Fiber& f = run->fibers[run->current];
  f.state = FiberState::kDone;
  SwitchContext(&f.context, &run->scheduler, /*from_dies=*/true);
  std::abort();  // unreachable: a finished fiber is never resumed
}

void Yield(FiberState state) {
  BlockRun* run = g_run;
  Fiber& f = run->fibers[run->current];
  f.state = state;
  SwitchContext(&f.context, &run->scheduler);
}

void NoteViolation(BlockRun* run, const std::string& what) {
  if (run->violation.empty()) run->violation = what;
}

// Runs one block to completion; false on deadlock.
bool RunBlock(BlockRun* run) {
  const int n = static_cast<int>(run->fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = run->fibers[i];
    f.state = FiberState::kRunnable;
    f.thread_idx = uint3{static_cast<unsigned>(i % run->block.x),
                         static_cast<unsigned>((i / run->block.x) % run->block.y),
                         static_cast<unsigned>(i / (run->block.x * run->block.y))};
    MakeContext(&f.context, g_stacks + static_cast<size_t>(i) * kStackBytes, kStackBytes, FiberEntry);
  }
  const int warps = (n + kWarpSize - 1) / kWarpSize;
  for (;;) {
    for (int i = 0; i < n; ++i) {
      if (run->fibers[i].state != FiberState::kRunnable) continue;
      run->current = i;
      SwitchContext(&run->scheduler, &run->fibers[i].context);
    }
    run->current = -1;
    int live = 0, at_block = 0;
    for (const Fiber& f : run->fibers) {
      if (f.state == FiberState::kDone) continue;
      ++live;
      at_block += f.state == FiberState::kAtBlockBarrier;
    }
    if (live == 0) return true;
    bool released = false;
    if (at_block == live) {
      if (live < n)
        NoteViolation(run, absl::StrFormat("__syncthreads reached by %d thread(s) after %d exited: a barrier in "
                                           "divergent code (undefined on the device)",
                                           live, n - live));
      for (Fiber& f : run->fibers)
        if (f.state == FiberState::kAtBlockBarrier) f.state = FiberState::kRunnable;
      released = true;
    } else {
      for (int w = 0; w < warps; ++w) {
        const int first = w * kWarpSize, last = std::min(n, first + kWarpSize);
        int waiting = 0, done = 0, other = 0;
        for (int i = first; i < last; ++i) {
          const FiberState s = run->fibers[i].state;
          if (s == FiberState::kAtWarpBarrier) ++waiting;
          else if (s == FiberState::kDone) ++done;
          else ++other;
        }
        if (waiting == 0 || other != 0) continue;
        if (done != 0)
          NoteViolation(run, absl::StrFormat("warp %d: shuffle with %d exited lane(s) in the warp", w, done));
        for (int i = first; i < last; ++i)
          if (run->fibers[i].state == FiberState::kAtWarpBarrier) run->fibers[i].state = FiberState::kRunnable;
        released = true;
      }
    }
    if (!released) {
      NoteViolation(run, absl::StrFormat("deadlock: %d live thread(s), %d at __syncthreads, the rest at warp "
                                         "shuffles of partly waiting warps",
                                         live, at_block));
      return false;
    }
  }
}

}  // namespace

bool RunGrid(dim3 grid, dim3 block, std::string_view kernel_name, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_grid_mutex);
  const size_t threads = size_t{block.x} * block.y * block.z;
  if (!EnsureStacks(threads)) {
    ReportViolation(absl::StrFormat("kernel %s: cannot map %d fiber stacks", kernel_name, threads));
    return false;
  }
  BlockRun run;
  run.grid = grid;
  run.block = block;
  run.fibers.resize(threads);
  run.shuffle_slots.assign(threads, 0);
  run.body = &body;
  BlockRun* const saved = g_run;
  g_run = &run;
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z) {
    for (unsigned y = 0; y < grid.y && ok; ++y) {
      for (unsigned x = 0; x < grid.x && ok; ++x) {
        run.block_idx = uint3{x, y, z};
        ok = RunBlock(&run) && run.violation.empty();
        if (!ok) {
          ReportViolation(absl::StrFormat("kernel %s block (%d,%d,%d): %s", kernel_name, x, y, z, run.violation));
        }
      }
    }
  }
  g_run = saved;
  return ok;
}

uint3 CurrentThreadIdx() { return g_run->fibers[g_run->current].thread_idx; }
uint3 CurrentBlockIdx() { return g_run->block_idx; }
dim3 CurrentBlockDim() { return g_run->block; }
dim3 CurrentGridDim() { return g_run->grid; }

void SyncThreads() { Yield(FiberState::kAtBlockBarrier); }

uint64_t ShuffleXor64(unsigned mask, uint64_t bits, int lane_mask) {
  BlockRun* run = g_run;
  const int self = run->current;
  const int n = static_cast<int>(run->fibers.size());
  const int lane = self % kWarpSize, first = self - lane;
  const int lanes = std::min(kWarpSize, n - first);
  const unsigned present = lanes == kWarpSize ? 0xffffffffu : ((1u << lanes) - 1u);
  if ((mask & present) != present)
    NoteViolation(run, absl::StrFormat("shuffle mask 0x%08x does not cover the warp's lanes 0x%08x", mask, present));
  run->shuffle_slots[self] = bits;
  Yield(FiberState::kAtWarpBarrier);  // every lane has written its value
  const int source = first + (lane ^ lane_mask);
  uint64_t out = bits;  // CUDA: a source outside the warp returns one's own value
  if ((lane ^ lane_mask) < lanes) out = run->shuffle_slots[source];
  Yield(FiberState::kAtWarpBarrier);  // every lane has read before any writes again
  return out;
}

}  // namespace sigma::cuda_emulator
