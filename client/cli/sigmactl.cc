// sigmactl: the SIGMA monitor command line. `sigmactl help` lists commands.
#include <iostream>
#include <string>
#include <string_view>

#include "commands.h"
#include "online_commands.h"
#include "sigma/version.h"

namespace {

struct Command {
  std::string_view name;
  int (*run)(const sigma::cli::Args&, std::ostream&, std::ostream&);
  std::string_view summary;
};

constexpr Command kCommands[] = {
    {"eval", sigma::cli::RunEval,
     "FILE [--json] ...   offline: Track I/II of a test-vector .json or a [rows, m] .npy"},
    {"send", sigma::cli::RunSend,
     "FILE.npy... --job J --generation K ...   stream embeddings as one snapshot to sigmad"},
    {"report", sigma::cli::RunReport,
     "--job J [--tap T] [--generation K] [--json]   history of a job, or one report"},
    {"jobs", sigma::cli::RunJobs, "[--json]   list jobs and their configuration"},
    {"job", sigma::cli::RunJob, "--job J [--m M] [--json]   one job's effective settings, taps, open snapshots"},
    {"configure", sigma::cli::RunConfigure,
     "--job J [--create] [--n-a K ...] [--drift-warning X ...]   update (or create) a job's configuration"},
    {"close", sigma::cli::RunClose,
     "--job J [--tap T] --generation K   seal a snapshot now and print its report"},
    {"health", sigma::cli::RunHealth, "[--service S]   gRPC health check of each target"},
    {"snapshots", sigma::cli::RunSnapshots, "[--job J]   open snapshots: age, ranks finished and missing"},
    {"finish-job", sigma::cli::RunFinishJob, "--job J   mark a job finished (history kept, no new generations)"},
    {"delete-job", sigma::cli::RunDeleteJob, "--job J [--run R]   delete a job or one run: reports, snapshots, metrics (admin)"},
};

int Usage(std::ostream& os) {
  os << "usage: sigmactl COMMAND [ARGS] | --version\n\ncommands:\n";
  for (const Command& c : kCommands) os << "  " << c.name << " " << c.summary << "\n";
  os << "\n`sigmactl COMMAND --help` describes a command's flags.\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(std::cerr);
  const std::string_view name = argv[1];
  if (name == "help" || name == "--help" || name == "-h") {
    Usage(std::cout);
    return 0;
  }
  if (name == "--version" || name == "version") {
    std::cout << "sigmactl " << sigma::kSigmaVersion << " (revision " << sigma::kSigmaRevision << ")\n";
    return 0;
  }
  for (const Command& c : kCommands) {
    if (c.name == name) return c.run(sigma::cli::Args(argv + 2, argv + argc), std::cout, std::cerr);
  }
  std::cerr << "sigmactl: unknown command '" << name << "'\nsee 'sigmactl help'\n";
  return 2;
}
