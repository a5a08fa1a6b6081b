// sigmactl online commands: they talk to sigmad through the C++ client
// (client/cpp). Same conventions as commands.h: each takes the arguments after
// its name and returns the exit code: 0 ok, 1 failure (an RPC error prints
// "sigmactl: CODE: message" on `err`), 2 usage error. `--help` prints the
// command's flags on `out` and returns 0.
//
// Every online command accepts
//   --target HOST:PORT   sigmad address; repeat it or give a comma list to
//                        spread jobs over several daemons by rendezvous
//                        hashing (default: $SIGMA_TARGET, else 127.0.0.1:50051)
//   --timeout SECONDS    deadline of each attempt (default 120)
//   --retries N          retries on UNAVAILABLE / DEADLINE_EXCEEDED (default 5)
//   --tls, --tls-ca FILE, --tls-cert FILE --tls-key FILE, --tls-server-name N
//                        TLS (system roots or the given CA; optional client cert)
#ifndef SIGMA_CLIENT_CLI_ONLINE_COMMANDS_H_
#define SIGMA_CLIENT_CLI_ONLINE_COMMANDS_H_

#include <ostream>

#include "commands.h"

namespace sigma::cli {

// sigmactl send FILE.npy [FILE2.npy ...] --job J --generation K [--tap T]
//   [--rank R --world-size W] [--corpus-size N] [--n-a K --delta D --rho R
//   --preprocessing l2|none --seed S] [--batch-rows N] [--close] [--json]
int RunSend(const Args& args, std::ostream& out, std::ostream& err);

// sigmactl report --job J [--tap T] [--generation K] [--json | --csv]
int RunReport(const Args& args, std::ostream& out, std::ostream& err);

// sigmactl jobs [--json]
int RunJobs(const Args& args, std::ostream& out, std::ostream& err);

// sigmactl configure --job J [--create] [--n-a ...] [--drift-warning ...] [--json]
int RunConfigure(const Args& args, std::ostream& out, std::ostream& err);

// sigmactl health [--service S] [--json]
int RunHealth(const Args& args, std::ostream& out, std::ostream& err);

// sigmactl job --job J [--m M] [--json]   (GetJob; query_commands.cc)
int RunJob(const Args& args, std::ostream& out, std::ostream& err);

// sigmactl close --job J [--tap T] --generation K [--json]
int RunClose(const Args& args, std::ostream& out, std::ostream& err);

// Job lifecycle (issue 15 item 4; lifecycle_commands.cc):
// sigmactl delete-job --job J [--run R] [--json]
int RunDeleteJob(const Args& args, std::ostream& out, std::ostream& err);
// sigmactl finish-job --job J [--json]
int RunFinishJob(const Args& args, std::ostream& out, std::ostream& err);
// sigmactl snapshots [--job J] [--json]
int RunSnapshots(const Args& args, std::ostream& out, std::ostream& err);

}  // namespace sigma::cli

#endif  // SIGMA_CLIENT_CLI_ONLINE_COMMANDS_H_
