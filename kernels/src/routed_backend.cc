#include "sigma/kernels/routed_backend.h"

#include <cstddef>
#include <exception>
#include <limits>
#include <new>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sigma/kernels/ingest_rules.h"  // SplitMix64

namespace sigma {

namespace {

// "cuda:1 NVIDIA H200" -> {"cuda", "NVIDIA H200"}; a name without "x:k " -> {name, ""}.
std::pair<std::string, std::string> SplitDeviceName(const std::string& name) {
  const size_t colon = name.find(':');
  const size_t space = name.find(' ');
  if (colon == std::string::npos || (space != std::string::npos && colon > space)) return {name, ""};
  return {name.substr(0, colon), space == std::string::npos ? "" : name.substr(space + 1)};
}

absl::Status WithChildName(const absl::Status& s, const std::string& child) {
  return absl::Status(s.code(), absl::StrCat(child, ": ", s.message()));
}

}  // namespace

uint64_t PlacementKeyForJob(std::string_view job) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64 offset basis
  for (const char c : job) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ULL;  // FNV prime
  }
  return SplitMix64(h);
}

absl::StatusOr<std::unique_ptr<RoutedBackend>> RoutedBackend::Create(
    std::unique_ptr<Backend> cpu, std::vector<std::unique_ptr<Backend>> devices, int64_t gpu_min_m) {
  if (cpu == nullptr && devices.empty())
    return absl::InvalidArgumentError("RoutedBackend: no CPU and no device backend");
  for (const std::unique_ptr<Backend>& d : devices)
    if (d == nullptr) return absl::InvalidArgumentError("RoutedBackend: null device backend");
  if (gpu_min_m < 0)
    return absl::InvalidArgumentError(absl::StrCat("RoutedBackend: gpu_min_m must be >= 0, got ", gpu_min_m));
  return std::unique_ptr<RoutedBackend>(new RoutedBackend(std::move(cpu), std::move(devices), gpu_min_m));
}

RoutedBackend::RoutedBackend(std::unique_ptr<Backend> cpu, std::vector<std::unique_ptr<Backend>> devices,
                             int64_t gpu_min_m)
    : cpu_(std::move(cpu)), devices_(std::move(devices)), gpu_min_m_(gpu_min_m) {}

std::string RoutedBackend::name() const {
  if (devices_.empty()) return cpu_->name();
  std::string devs;
  if (devices_.size() == 1) {
    devs = devices_[0]->name();
  } else {
    // "cuda x2 NVIDIA H200" when the devices are alike, else the list.
    std::vector<std::string> names;
    for (const std::unique_ptr<Backend>& d : devices_) names.push_back(d->name());
    const auto first = SplitDeviceName(names[0]);
    bool alike = !first.second.empty();
    for (const std::string& n : names) alike = alike && SplitDeviceName(n) == first;
    devs = alike ? absl::StrCat(first.first, " x", names.size(), " ", first.second) : absl::StrJoin(names, ", ");
  }
  if (cpu_ == nullptr) return devs;
  return absl::StrCat(devs, " + ", cpu_->name(), " (m < ", gpu_min_m_, ")");
}

int RoutedBackend::Route(int64_t m, uint64_t placement_key) const {
  if (cpu_ != nullptr && (devices_.empty() || m < gpu_min_m_)) return kCpu;
  return static_cast<int>(placement_key % devices_.size());
}

namespace {

// One child's SealBatch on a worker thread or the caller's: exceptions become
// statuses (one must not escape a worker thread: std::terminate), and a
// failure names the child.
absl::Status SealOnChild(Backend& child, absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) {
  absl::Status status;
  try {
    status = child.SealBatch(inputs, out);
  } catch (const std::bad_alloc&) {
    status = absl::ResourceExhaustedError("out of host memory");
  } catch (const std::exception& e) {
    status = absl::InternalError(e.what());
  }
  return status.ok() ? status : WithChildName(status, child.name());
}

}  // namespace

absl::Status RoutedBackend::SealBatch(absl::Span<const SealInput> inputs, absl::Span<SealMoments> out) {
  if (out.size() != inputs.size())
    return absl::InvalidArgumentError("SealBatch: output size differs from input size");
  // Shapes first (O(1) each): an invalid argument fails the call before any work,
  // as in the other backends. The children check finiteness.
  for (const SealInput& input : inputs) {
    if (absl::Status s = ValidateSealShape(input); !s.ok()) return s;
  }
  if (inputs.empty()) return absl::OkStatus();

  // One group per child: slot 0 = CPU, slot 1 + d = device d.
  const size_t slots = 1 + devices_.size();
  std::vector<std::vector<size_t>> index(slots);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int route = Route(inputs[i].rows.m, inputs[i].placement_key);
    index[static_cast<size_t>(route + 1)].push_back(i);
  }
  auto child_of_slot = [&](size_t slot) -> Backend& { return Child(static_cast<int>(slot) - 1); };

  // Everything on one child: hand the spans through untouched.
  for (size_t slot = 0; slot < slots; ++slot) {
    if (index[slot].size() != inputs.size()) continue;
    Backend& child = child_of_slot(slot);
    absl::Status s = child.SealBatch(inputs, out);
    return s.ok() ? s : WithChildName(s, child.name());
  }

  struct Group {
    size_t slot = 0;
    std::vector<SealInput> inputs;
    std::vector<SealMoments> out;
    absl::Status status;
  };
  std::vector<Group> groups;  // CPU group (if any) first: it runs on this thread
  for (size_t slot = 0; slot < slots; ++slot) {
    if (index[slot].empty()) continue;
    Group g;
    g.slot = slot;
    g.inputs.reserve(index[slot].size());
    for (size_t i : index[slot]) g.inputs.push_back(inputs[i]);
    g.out.resize(index[slot].size());
    groups.push_back(std::move(g));
  }
  auto run = [&](Group& g) { g.status = SealOnChild(child_of_slot(g.slot), g.inputs, absl::MakeSpan(g.out)); };
  // groups[1..] on their own threads (one per device), groups[0] here.
  std::vector<std::thread> threads;
  threads.reserve(groups.size() - 1);
  for (size_t k = 1; k < groups.size(); ++k) {
    try {
      threads.emplace_back(run, std::ref(groups[k]));
    } catch (const std::system_error&) {
      run(groups[k]);  // no thread to be had: run it here, sequentially
    }
  }
  run(groups[0]);
  for (std::thread& t : threads) t.join();

  // Results back in input order; the first failure by earliest input.
  absl::Status result;
  size_t failed_first_input = std::numeric_limits<size_t>::max();
  for (const Group& g : groups) {
    const std::vector<size_t>& idx = index[g.slot];
    if (!g.status.ok()) {
      if (idx.front() < failed_first_input) {
        failed_first_input = idx.front();
        result = g.status;
      }
      continue;
    }
    for (size_t k = 0; k < idx.size(); ++k) out[idx[k]] = g.out[k];
  }
  return result;
}

}  // namespace sigma
