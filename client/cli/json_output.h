// sigmactl --json: numbers as JSON numbers.
#ifndef SIGMA_CLI_JSON_OUTPUT_H_
#define SIGMA_CLI_JSON_OUTPUT_H_

#include <nlohmann/json.hpp>

#include <ostream>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace sigma::cli {

// The proto3 JSON mapping (sigma::client::MessageToJson) prints 64-bit integers as
// strings; sigmactl prints numbers. Converts, in place, the (u)int64 fields of `json`
// (the JSON of a message of type `d`), nested and repeated ones too.
void Int64AsNumbers(const google::protobuf::Descriptor* d, nlohmann::json& json);

// Prints `message` as one line of JSON (int64 as numbers) on `out`; 0, or 1
// with the error on `err`.
int PrintJson(const google::protobuf::Message& message, std::ostream& out, std::ostream& err);

}  // namespace sigma::cli

#endif  // SIGMA_CLI_JSON_OUTPUT_H_
