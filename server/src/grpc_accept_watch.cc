#include "sigma/server/grpc_accept_watch.h"

#include <dirent.h>
#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "grpc/support/log.h"

namespace sigma::server {
namespace {

std::atomic<int64_t> accept_failures{0};

// Same shape as gRPC's default: "E file:line] message" on stderr.
void ForwardAndCount(gpr_log_func_args* args) {
  if (args->message != nullptr && std::strstr(args->message, "Failed accept4") != nullptr) ++accept_failures;
  const char* file = args->file != nullptr ? std::strrchr(args->file, '/') : nullptr;
  std::fprintf(stderr, "%s %s:%d] %s\n", gpr_log_severity_string(args->severity),
               file != nullptr ? file + 1 : (args->file != nullptr ? args->file : "?"), args->line,
               args->message != nullptr ? args->message : "");
}

}  // namespace

void InstallGrpcAcceptWatch() {
  static std::once_flag once;
  std::call_once(once, [] { gpr_set_log_function(ForwardAndCount); });
}

int64_t GrpcAcceptFailures() { return accept_failures.load(); }

int64_t FreeFileDescriptors() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return INT64_MAX;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return errno == EMFILE ? 0 : INT64_MAX;
  int64_t open = -1;  // the directory's own descriptor
  while (readdir(dir) != nullptr) ++open;
  closedir(dir);
  open -= 2;  // "." and ".."
  return static_cast<int64_t>(lim.rlim_cur) - open;
}

}  // namespace sigma::server
