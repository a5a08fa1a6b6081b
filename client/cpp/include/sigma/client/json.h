// JSON output of API messages, as sigmactl --json prints them: one line, keys
// are the proto field names (snake_case), every field is present except the
// `optional` ones that are unset (e.g. generations_to_critical when no forecast
// could be fitted) and unset sub-messages (a GenerationReport's flags and
// per_dim always print), enums by name, 64-bit integers as strings (the proto3
// JSON mapping).
#ifndef SIGMA_CLIENT_JSON_H_
#define SIGMA_CLIENT_JSON_H_

#include <string>

#include "absl/status/statusor.h"
#include "google/protobuf/message.h"

namespace sigma::client {

absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message);

}  // namespace sigma::client

#endif  // SIGMA_CLIENT_JSON_H_
