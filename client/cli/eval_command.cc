// sigmactl eval: offline Track I/II of one snapshot (spec §3) from a test-vector
// JSON file or a .npy array [rows, m].
#include <chrono>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "commands.h"
#include "json_input.h"
#include "npy.h"
#include "sigma/kernels/backend_factory.h"
#include "sigma/kernels/estimator.h"
#include "sigma/kernels/sketch.h"

namespace sigma::cli {
namespace {

constexpr char kEvalUsage[] =
    "usage: sigmactl eval FILE [--json] [--n N] [--n-a K] [--delta D] [--rho R]\n"
    "                     [--preprocessing l2|none] [--seed S] [--backend auto|cpu|cuda]\n"
    "FILE: a test-vector .json (m, n_A, n, delta, rho, preprocessing, rows) or a .npy\n"
    "array [rows, m] of float16/float32/float64. Flags override the file's values.\n"
    "  --n N               corpus size (default: the file's n, else the rows given)\n"
    "  --n-a K             sub-sample size; rows beyond K are dropped by the bottom-k\n"
    "                      sketch with ids = row index (default: all rows of a .json,\n"
    "                      max(4096, 16 m) for a .npy)\n"
    "  --delta D           regulariser (default 1e-6)\n"
    "  --rho R             energy budget per column (default 1)\n"
    "  --preprocessing P   l2 (default) or none\n"
    "  --seed S            sketch seed (default 0)\n"
    "  --backend B         auto (default), cpu or cuda\n"
    "  --json              print one JSON object instead of a table (with seal_seconds,\n"
    "                      the wall time of the seal itself)\n";

struct EvalFlags {
  std::string path;
  bool json = false;
  std::optional<double> n, delta, rho;
  std::optional<int64_t> n_a;
  std::optional<Preprocessing> preprocessing;
  uint64_t seed = 0;
  BackendKind backend = BackendKind::kAuto;
};

absl::StatusOr<EvalFlags> ParseFlags(const Args& args) {
  EvalFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> absl::StatusOr<std::string> {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(arg + " needs a value");
      return args[++i];
    };
    auto as_double = [&](std::optional<double>* out) -> absl::Status {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      double d;
      if (!absl::SimpleAtod(*v, &d) || !std::isfinite(d))
        return absl::InvalidArgumentError(arg + ": not a number: " + *v);
      *out = d;
      return absl::OkStatus();
    };
    absl::Status status;
    if (arg == "--json") {
      flags.json = true;
    } else if (arg == "--n") {
      status = as_double(&flags.n);
    } else if (arg == "--delta") {
      status = as_double(&flags.delta);
    } else if (arg == "--rho") {
      status = as_double(&flags.rho);
    } else if (arg == "--n-a") {
      absl::StatusOr<std::string> v = value();
      int64_t k;
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &k) || k <= 0)
        return absl::InvalidArgumentError("--n-a must be a positive integer, got " + *v);
      flags.n_a = k;
    } else if (arg == "--seed") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &flags.seed))
        return absl::InvalidArgumentError("--seed must be an unsigned integer, got " + *v);
    } else if (arg == "--preprocessing") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      flags.preprocessing = ParsePreprocessing(*v);
      if (!flags.preprocessing)
        return absl::InvalidArgumentError("--preprocessing must be l2 or none, got " + *v);
    } else if (arg == "--backend") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      std::optional<BackendKind> kind = ParseBackendKind(*v);
      if (!kind) return absl::InvalidArgumentError("--backend must be auto, cpu or cuda, got " + *v);
      flags.backend = *kind;
    } else if (absl::StartsWith(arg, "-")) {
      return absl::InvalidArgumentError("unknown flag " + arg);
    } else if (flags.path.empty()) {
      flags.path = arg;
    } else {
      return absl::InvalidArgumentError("more than one FILE given: " + arg);
    }
    if (!status.ok()) return status;
  }
  if (flags.path.empty()) return absl::InvalidArgumentError("missing FILE");
  return flags;
}

// The rows of one evaluation, with everything needed to seal them.
struct EvalData {
  std::vector<unsigned char> bytes;  // all rows [rows, m] in `dtype`
  DType dtype = DType::kFloat64;
  int64_t rows = 0;
  int64_t m = 0;
  double n = 0;
  int64_t n_a = 0;
  double delta = 1e-6;
  double rho = 1.0;
  Preprocessing preprocessing = Preprocessing::kL2;
};

absl::StatusOr<EvalData> LoadData(const EvalFlags& flags) {
  EvalData data;
  if (absl::EndsWith(flags.path, ".npy")) {
    absl::StatusOr<NpyArray> array = ReadNpy(flags.path);
    if (!array.ok()) return array.status();
    if (absl::Status s = CheckFinite(array->block()); !s.ok())
      return absl::InvalidArgumentError(absl::StrCat("'", flags.path, "': ", s.message()));
    data.dtype = array->dtype;
    data.rows = array->rows;
    data.m = array->cols;
    data.bytes = std::move(array->data);
    data.n_a = flags.n_a.value_or(DefaultNA(data.m));
    data.n = flags.n.value_or(static_cast<double>(data.rows));
  } else {
    absl::StatusOr<SnapshotFile> file = ReadSnapshotJson(flags.path);
    if (!file.ok()) return file.status();
    data.dtype = DType::kFloat64;
    data.rows = file->n_a;
    data.m = file->m;
    data.bytes.resize(file->rows.size() * sizeof(double));
    std::memcpy(data.bytes.data(), file->rows.data(), data.bytes.size());
    data.n_a = flags.n_a.value_or(file->n_a);
    data.n = flags.n.value_or(file->n.value_or(static_cast<double>(data.rows)));
    if (file->delta) data.delta = *file->delta;
    if (file->rho) data.rho = *file->rho;
    if (file->preprocessing) data.preprocessing = *file->preprocessing;
  }
  if (flags.delta) data.delta = *flags.delta;
  if (flags.rho) data.rho = *flags.rho;
  if (flags.preprocessing) data.preprocessing = *flags.preprocessing;
  return data;
}

nlohmann::json ToJson(const TrackValues& v, const EvalData& data, const std::string& backend) {
  nlohmann::json out;
  out["m"] = v.m;
  out["n_a"] = v.n_a;  // as GenerationReport.n_a in sigmactl report/send --json
  out["n"] = v.n;
  out["n_a_over_m"] = static_cast<double>(v.n_a) / static_cast<double>(v.m);
  out["delta"] = data.delta;
  out["rho"] = data.rho;
  out["preprocessing"] = std::string(PreprocessingName(data.preprocessing));
  out["backend"] = backend;
  if (!v.flags.cholesky_failed) {
    out["track1_lower"] = v.track1_lower;
    out["track1_upper"] = v.track1_upper;
    out["track2"] = v.track2;
    out["track2_raw"] = v.track2_raw;
    out["track2_bias"] = v.track2_bias;
    out["track2_ci_halfwidth"] = v.track2_ci_halfwidth;
  }
  out["max_energy"] = v.max_energy;
  out["mean_energy"] = v.mean_energy;
  out["rho_violations"] = v.rho_violations;
  out["flags"] = {{"rho_violated", v.flags.rho_violated},
                  {"n_a_below_m", v.flags.n_a_below_m},
                  {"low_confidence", v.flags.low_confidence},
                  {"cholesky_failed", v.flags.cholesky_failed}};
  if (v.flags.cholesky_failed) out["flags"]["failure_reason"] = v.flags.failure_reason;
  return out;
}

void PrintTable(const TrackValues& v, const EvalData& data, const std::string& backend,
                std::ostream& out) {
  out << absl::StrFormat("snapshot: m = %d, n_A = %d (n_A/m = %.2f), n = %.0f, f = %.6g\n", v.m,
                         v.n_a, static_cast<double>(v.n_a) / v.m, v.n, v.n_a / v.n);
  out << absl::StrFormat("params:   delta = %g, rho = %g, preprocessing = %s, backend = %s\n",
                         data.delta, data.rho, PreprocessingName(data.preprocessing), backend);
  if (v.flags.cholesky_failed) {
    out << "FAILED:   " << v.flags.failure_reason << "\n";
  } else {
    out << absl::StrFormat("  %-22s %20.12f\n", "track1_lower", v.track1_lower);
    out << absl::StrFormat("  %-22s %20.12f\n", "track1_upper", v.track1_upper);
    out << absl::StrFormat("  %-22s %20.12f  (95%% CI +/- %.6g)\n", "track2", v.track2,
                           v.track2_ci_halfwidth);
    out << absl::StrFormat("  %-22s %20.12f\n", "track2_raw", v.track2_raw);
    out << absl::StrFormat("  %-22s %20.12f\n", "track2_bias", v.track2_bias);
  }
  out << absl::StrFormat("energy:   max %.6g, mean %.6g, rho violations %d\n", v.max_energy,
                         v.mean_energy, v.rho_violations);
  out << absl::StrFormat("flags:    rho_violated=%d n_a_below_m=%d low_confidence=%d\n",
                         v.flags.rho_violated, v.flags.n_a_below_m, v.flags.low_confidence);
}

}  // namespace

int RunEval(const Args& args, std::ostream& out, std::ostream& err) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      out << kEvalUsage;
      return 0;
    }
  }
  absl::StatusOr<EvalFlags> flags = ParseFlags(args);
  if (!flags.ok()) {
    err << "sigmactl eval: " << flags.status().message() << "\nsee 'sigmactl eval --help'\n";
    return 2;
  }
  absl::StatusOr<EvalData> data = LoadData(*flags);
  if (!data.ok()) {
    err << "sigmactl eval: " << data.status().message() << "\n";
    return 1;
  }
  std::string fallback;
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend({flags->backend, 0}, &fallback);
  if (!backend.ok()) {
    err << "sigmactl eval: " << backend.status().message() << "\n";
    return 1;
  }

  // Energies of every row (spec §3: rho applies to all streamed columns).
  const RowBlock all{data->bytes.data(), data->dtype, data->rows, data->m};
  // The rows sigmad would refuse (zero or unrepresentable norms) are refused here too.
  if (absl::Status s = CheckRowNorms(all, data->preprocessing); !s.ok()) {
    err << "sigmactl eval: " << s.message() << "\n";
    return 1;
  }
  EnergyStats energy;
  {
    std::vector<double> converted(static_cast<size_t>(data->rows * data->m));
    ConvertToDouble(all, converted.data());
    PreprocessRows(data->preprocessing, data->rho, converted.data(), data->rows, data->m, &energy);
  }

  // I_A: all rows when they fit, else the bottom-k sketch over ids = row index.
  std::vector<unsigned char> selected_bytes;
  RowBlock sample = all;
  if (data->rows > data->n_a) {
    std::vector<uint64_t> ids(static_cast<size_t>(data->rows));
    for (int64_t i = 0; i < data->rows; ++i) ids[i] = DefaultSampleId(0, i);
    const size_t row_bytes = static_cast<size_t>(data->m) * DTypeWidth(data->dtype);
    for (int64_t index : SelectBottomK(flags->seed, data->n_a, ids)) {
      const unsigned char* row = data->bytes.data() + static_cast<size_t>(index) * row_bytes;
      selected_bytes.insert(selected_bytes.end(), row, row + row_bytes);
    }
    sample = RowBlock{selected_bytes.data(), data->dtype, data->n_a, data->m};
  }
  const SealInput input{sample, data->preprocessing, data->n, data->delta, data->rho};
  if (absl::Status s = ValidateSealInput(input); !s.ok()) {
    err << "sigmactl eval: " << s.message() << "\n";
    return 1;
  }
  SealMoments moments;
  const auto seal_start = std::chrono::steady_clock::now();
  if (absl::Status s = (*backend)->SealBatch({&input, 1}, {&moments, 1}); !s.ok()) {
    err << "sigmactl eval: " << s.ToString() << "\n";
    return 1;
  }
  const double seal_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - seal_start).count();
  const TrackValues values = EstimateTracks(moments, data->n, data->delta, data->rho, energy);
  const std::string backend_name = (*backend)->name();
  if (flags->json) {
    nlohmann::json json = ToJson(values, *data, backend_name);
    json["seal_seconds"] = seal_seconds;  // SealBatch wall time (bench/numpy_reference.py)
    out << json.dump() << "\n";
  } else {
    PrintTable(values, *data, backend_name, out);
  }
  if (values.flags.cholesky_failed) {
    err << "sigmactl eval: " << values.flags.failure_reason << "\n";
    return 1;
  }
  return 0;
}

}  // namespace sigma::cli
