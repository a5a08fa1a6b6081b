// sigmactl --json: numbers as JSON numbers.
#ifndef SIGMA_CLI_JSON_OUTPUT_H_
#define SIGMA_CLI_JSON_OUTPUT_H_

#include <nlohmann/json.hpp>

#include "google/protobuf/descriptor.h"

namespace sigma::cli {

// The proto3 JSON mapping (sigma::client::MessageToJson) prints 64-bit integers as
// strings; sigmactl prints numbers. Converts, in place, the (u)int64 fields of `json`
// (the JSON of a message of type `d`), nested and repeated ones too.
void Int64AsNumbers(const google::protobuf::Descriptor* d, nlohmann::json& json);

}  // namespace sigma::cli

#endif  // SIGMA_CLI_JSON_OUTPUT_H_
