// libFuzzer target: sigmad's text parsers. The first byte picks the parser,
// the rest is its input: 0 the YAML config (--config), 1 the tokens file
// (--tokens), 2 the metrics basic-auth file, 3 the command line (NUL-separated
// arguments). Every input must give a status, never a crash or an exception.
#include <cstdint>
#include <string>
#include <vector>

#include "sigma/server/auth.h"
#include "sigma/server/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 4) {
    case 0: {
      sigma::server::DaemonOptions options;
      if (sigma::server::LoadConfigText(text, "fuzz", &options).ok()) (void)sigma::server::ValidateOptions(options);
      break;
    }
    case 1:
      (void)sigma::server::Authorizer::Parse(text, "fuzz");
      break;
    case 2:
      (void)sigma::server::BasicAuth::Parse(text, "fuzz");
      break;
    case 3: {
      std::vector<std::string> args{"sigmad"};
      size_t start = 0;
      for (size_t i = 0; i <= text.size(); ++i) {
        if (i == text.size() || text[i] == '\0') {
          args.push_back(text.substr(start, i - start));
          start = i + 1;
        }
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      bool help = false;
      // --config would read a file: only the flag parser itself is fuzzed.
      bool has_config = false;
      for (const auto& a : args) has_config |= a.find("config") != std::string::npos;
      if (!has_config) (void)sigma::server::ParseCommandLine(static_cast<int>(argv.size()), argv.data(), &help);
      break;
    }
  }
  return 0;
}
