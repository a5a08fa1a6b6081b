#include "json_output.h"

#include <cstdint>
#include <string>

#include "absl/strings/numbers.h"
#include "sigma/client/json.h"

namespace sigma::cli {

// Walks `json` along the message's descriptor (a generation or n_a is a number in every
// other output of the project).
void Int64AsNumbers(const google::protobuf::Descriptor* d, nlohmann::json& json) {
  using FD = google::protobuf::FieldDescriptor;
  if (!json.is_object()) return;
  for (int i = 0; i < d->field_count(); ++i) {
    const FD* f = d->field(i);
    auto it = json.find(std::string(f->name()));
    if (it == json.end()) continue;
    auto convert = [&](nlohmann::json& v) {
      if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
        Int64AsNumbers(f->message_type(), v);
      } else if (v.is_string() && f->cpp_type() == FD::CPPTYPE_INT64) {
        int64_t x;
        if (absl::SimpleAtoi(v.get<std::string>(), &x)) v = x;
      } else if (v.is_string() && f->cpp_type() == FD::CPPTYPE_UINT64) {
        uint64_t x;
        if (absl::SimpleAtoi(v.get<std::string>(), &x)) v = x;
      }
    };
    if (it->is_array()) {
      for (nlohmann::json& v : *it) convert(v);
    } else {
      convert(*it);
    }
  }
}

int PrintJson(const google::protobuf::Message& message, std::ostream& out, std::ostream& err) {
  absl::StatusOr<std::string> json = client::MessageToJson(message);
  if (!json.ok()) {
    err << "sigmactl: " << json.status().message() << "\n";
    return 1;
  }
  nlohmann::json doc = nlohmann::json::parse(*json);
  Int64AsNumbers(message.GetDescriptor(), doc);
  out << doc.dump() << "\n";
  return 0;
}

}  // namespace sigma::cli
