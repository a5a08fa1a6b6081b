// A minimal JSON reader for the test vectors (shared/testvectors/*.json) and
// the numpy references written by make_reference.py. Test-only: no escapes
// beyond \" \\ \/ \n \t, numbers via strtod (round-trips Python's repr).
#ifndef SIGMA_TESTS_GPU_JSON_LITE_H_
#define SIGMA_TESTS_GPU_JSON_LITE_H_

#include <cctype>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sigma::testing {

struct Json {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject } type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::map<std::string, Json> object;

  bool Has(const std::string& key) const { return type == Type::kObject && object.count(key) > 0; }
  const Json& operator[](const std::string& key) const {
    auto it = object.find(key);
    if (type != Type::kObject || it == object.end()) throw std::runtime_error("missing JSON key " + key);
    return it->second;
  }
  const Json& operator[](size_t i) const { return array.at(i); }
  double Num() const {
    if (type != Type::kNumber) throw std::runtime_error("JSON value is not a number");
    return number;
  }
  bool Bool() const {
    if (type != Type::kBool) throw std::runtime_error("JSON value is not a bool");
    return boolean;
  }
  const std::string& Str() const {
    if (type != Type::kString) throw std::runtime_error("JSON value is not a string");
    return string;
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}
  Json Parse() {
    Json v = Value();
    Skip();
    if (i_ != s_.size()) throw std::runtime_error("trailing characters in JSON");
    return v;
  }

 private:
  void Skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  char Peek() {
    Skip();
    if (i_ >= s_.size()) throw std::runtime_error("unexpected end of JSON");
    return s_[i_];
  }
  void Expect(char c) {
    if (Peek() != c) throw std::runtime_error(std::string("expected '") + c + "' in JSON");
    ++i_;
  }
  bool Literal(const char* word) {
    const std::string w(word);
    if (s_.compare(i_, w.size(), w) == 0) {
      i_ += w.size();
      return true;
    }
    return false;
  }
  Json Value() {
    Json v;
    const char c = Peek();
    if (c == '{') {
      ++i_;
      v.type = Json::Type::kObject;
      if (Peek() == '}') {
        ++i_;
        return v;
      }
      while (true) {
        std::string key = String();
        Expect(':');
        v.object.emplace(std::move(key), Value());
        if (Peek() == ',') {
          ++i_;
          continue;
        }
        Expect('}');
        return v;
      }
    }
    if (c == '[') {
      ++i_;
      v.type = Json::Type::kArray;
      if (Peek() == ']') {
        ++i_;
        return v;
      }
      while (true) {
        v.array.push_back(Value());
        if (Peek() == ',') {
          ++i_;
          continue;
        }
        Expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.type = Json::Type::kString;
      v.string = String();
      return v;
    }
    if (Literal("true")) {
      v.type = Json::Type::kBool;
      v.boolean = true;
      return v;
    }
    if (Literal("false")) {
      v.type = Json::Type::kBool;
      return v;
    }
    if (Literal("null")) return v;
    if (Literal("NaN")) {
      v.type = Json::Type::kNumber;
      v.number = std::strtod("nan", nullptr);
      return v;
    }
    const char* start = s_.c_str() + i_;
    char* end = nullptr;
    v.number = std::strtod(start, &end);
    if (end == start) throw std::runtime_error("bad JSON value");
    i_ += static_cast<size_t>(end - start);
    v.type = Json::Type::kNumber;
    return v;
  }
  std::string String() {
    Expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c == '\\' && i_ < s_.size()) {
        const char e = s_[i_++];
        c = e == 'n' ? '\n' : e == 't' ? '\t' : e;
      }
      out.push_back(c);
    }
    if (i_ >= s_.size()) throw std::runtime_error("unterminated JSON string");
    ++i_;
    return out;
  }

  const std::string& s_;
  size_t i_ = 0;
};

inline Json ParseJson(const std::string& text) { return JsonParser(text).Parse(); }

}  // namespace sigma::testing

#endif  // SIGMA_TESTS_GPU_JSON_LITE_H_
