#include "json_input.h"

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sigma::cli {

absl::StatusOr<SnapshotFile> ReadSnapshotJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not valid JSON: ", e.what()));
  }
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': ", what));
  };
  if (!doc.is_object()) return bad("expected a JSON object");
  SnapshotFile file;
  if (!doc.contains("rows") || !doc["rows"].is_array() || doc["rows"].empty())
    return bad("field 'rows' must be a non-empty array of rows");
  const auto& rows = doc["rows"];
  if (!rows[0].is_array() || rows[0].empty()) return bad("'rows[0]' must be a non-empty array");
  file.m = static_cast<int64_t>(rows[0].size());
  file.n_a = static_cast<int64_t>(rows.size());
  if (doc.contains("m") && (!doc["m"].is_number_integer() || doc["m"].get<int64_t>() != file.m))
    return bad(absl::StrFormat("field 'm' does not match the rows' width %d", file.m));
  if (doc.contains("n_A") &&
      (!doc["n_A"].is_number_integer() || doc["n_A"].get<int64_t>() != file.n_a))
    return bad(absl::StrFormat("field 'n_A' does not match the number of rows %d", file.n_a));
  file.rows.reserve(static_cast<size_t>(file.n_a * file.m));
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r].is_array() || static_cast<int64_t>(rows[r].size()) != file.m)
      return bad(absl::StrFormat("row %d has %d values, expected m = %d", r,
                                 rows[r].is_array() ? rows[r].size() : 0, file.m));
    for (size_t c = 0; c < rows[r].size(); ++c) {
      if (!rows[r][c].is_number())
        return bad(absl::StrFormat("rows[%d][%d] is not a number", r, c));
      const double v = rows[r][c].get<double>();
      if (!std::isfinite(v)) return bad(absl::StrFormat("rows[%d][%d] is not finite", r, c));
      file.rows.push_back(v);
    }
  }
  auto number = [&](const char* key, std::optional<double>* out) -> absl::Status {
    if (!doc.contains(key) || doc[key].is_null()) return absl::OkStatus();
    if (!doc[key].is_number()) return bad(absl::StrCat("field '", key, "' must be a number"));
    *out = doc[key].get<double>();
    return absl::OkStatus();
  };
  if (absl::Status s = number("n", &file.n); !s.ok()) return s;
  if (absl::Status s = number("delta", &file.delta); !s.ok()) return s;
  if (absl::Status s = number("rho", &file.rho); !s.ok()) return s;
  if (doc.contains("preprocessing")) {
    if (!doc["preprocessing"].is_string()) return bad("field 'preprocessing' must be a string");
    file.preprocessing = ParsePreprocessing(doc["preprocessing"].get<std::string>());
    if (!file.preprocessing) return bad("field 'preprocessing' must be 'l2' or 'none'");
  }
  return file;
}

}  // namespace sigma::cli
