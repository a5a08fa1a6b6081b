// sigmactl subcommands. Each takes the arguments after its name and returns
// the process exit code (0 ok, 1 failure, 2 usage error); output goes to
// `out`, diagnostics to `err`.
#ifndef SIGMA_CLIENT_CLI_COMMANDS_H_
#define SIGMA_CLIENT_CLI_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

namespace sigma::cli {

using Args = std::vector<std::string>;

// sigmactl eval FILE [--json] [--n N] [--n-a K] [--delta D] [--rho R]
//   [--preprocessing l2|none] [--seed S] [--backend auto|cpu|cuda]
int RunEval(const Args& args, std::ostream& out, std::ostream& err);

}  // namespace sigma::cli

#endif  // SIGMA_CLIENT_CLI_COMMANDS_H_
