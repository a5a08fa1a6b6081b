#include "sigma/client/json.h"

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sigma/v1/sigma.pb.h"
#include "google/protobuf/stubs/common.h"
#include "google/protobuf/util/json_util.h"

namespace sigma::client {
namespace {

// A report always has its flags and per-dimension values, even when every
// value is zero: make those sub-messages present so that their keys print.
void FillReportSubmessages(google::protobuf::Message* message) {
  if (auto* report = dynamic_cast<v1::GenerationReport*>(message)) {
    report->mutable_flags();
    report->mutable_per_dim();
  }
  const google::protobuf::Reflection* reflection = message->GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(*message, &fields);
  for (const google::protobuf::FieldDescriptor* field : fields) {
    if (field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (field->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(*message, field); ++i)
        FillReportSubmessages(reflection->MutableRepeatedMessage(message, field, i));
    } else {
      FillReportSubmessages(reflection->MutableMessage(message, field));
    }
  }
}

}  // namespace

absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message) {
  std::unique_ptr<google::protobuf::Message> copy(message.New());
  copy->CopyFrom(message);
  FillReportSubmessages(copy.get());
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.preserve_proto_field_names = true;
#if GOOGLE_PROTOBUF_VERSION >= 5026000
  options.always_print_fields_with_no_presence = true;
#else
  options.always_print_primitive_fields = true;
#endif
  std::string out;
  const auto status = google::protobuf::util::MessageToJsonString(*copy, &out, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print ", message.GetTypeName(),
                                            " as JSON: ", status.ToString()));
  }
  return out;
}

}  // namespace sigma::client
