// sigmactl's output of reports and messages (online_commands.cc), shared with
// the GetJob / GetReport commands (query_commands.cc).
#ifndef SIGMA_CLI_ONLINE_OUTPUT_H_
#define SIGMA_CLI_ONLINE_OUTPUT_H_

#include <ostream>
#include <string>

#include "google/protobuf/message.h"
#include "online_flags.h"
#include "sigma/v1/sigma.pb.h"

namespace sigma::cli {

// The help text of the common flags (--target, --timeout, TLS, token).
const char* CommonFlagsHelp();
// `message` as one JSON object (proto field names, int64 as numbers); 1 on error.
int PrintJson(const google::protobuf::Message& message, std::ostream& out, std::ostream& err);
// "l2", "none" or "default".
std::string PreprocessingText(sigma::v1::Preprocessing p);
// "rule(severity[, direction]),..." or "-".
std::string AlertsText(const sigma::v1::GenerationReport& r);
// A report in full, as `close` and `send` print it.
void PrintReport(const sigma::v1::GenerationReport& r, std::ostream& out);

// report --generation K (GetReport): `p` parsed by RunReport, --job present.
int RunReportOne(const Parsed& p, const std::string& usage, std::ostream& out, std::ostream& err);

}  // namespace sigma::cli

#endif  // SIGMA_CLI_ONLINE_OUTPUT_H_
