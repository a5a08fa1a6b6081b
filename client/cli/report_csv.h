// sigmactl report --csv: one CSV row per sealed report, the same columns in the same
// order as `python -m sigma_client report --csv` (client/python/src/sigma_client/tables.py;
// docs/python-client.md lists them). Per-dimension columns are value / m.
#ifndef SIGMA_CLI_REPORT_CSV_H_
#define SIGMA_CLI_REPORT_CSV_H_

#include <ostream>
#include <vector>

#include "sigma/v1/sigma.pb.h"

namespace sigma::cli {

// Header line, then one line per report; doubles with 17 significant digits.
void WriteReportsCsv(const std::vector<v1::GenerationReport>& reports, std::ostream& out);

}  // namespace sigma::cli

#endif  // SIGMA_CLI_REPORT_CSV_H_
