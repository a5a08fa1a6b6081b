// sigmad: the SIGMA monitoring daemon. See docs/server.md.
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstring>
#include <iostream>

#include "sigma/server/config.h"
#include "sigma/server/daemon.h"
#include "sigma/version.h"

namespace {

// Raises the soft limit on open files to the hard limit: every gRPC stream,
// metrics connection and SQLite file holds a descriptor (docs/reliability.md,
// "File descriptors"). Returns the soft limit in force.
rlim_t RaiseOpenFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) return raised.rlim_cur;
  }
  return lim.rlim_cur;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--version") == 0) {
      std::cout << "sigmad " << sigma::kSigmaVersion << " (revision " << sigma::kSigmaRevision << ")\n";
      return 0;
    }
  }
  // Block SIGTERM/SIGINT in every thread; the main thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  bool help = false;
  auto options = sigma::server::ParseCommandLine(argc, argv, &help);
  if (help) {
    std::cout << sigma::server::UsageText();
    return 0;
  }
  if (!options.ok()) {
    std::cerr << "sigmad: " << options.status().message() << "\n" << sigma::server::UsageText();
    return 2;
  }
  const rlim_t open_files = RaiseOpenFileLimit();
  sigma::server::Daemon daemon;
  auto ports = daemon.Start(*options);
  if (!ports.ok()) {
    std::cerr << "sigmad: " << ports.status().message() << "\n";
    return 1;
  }
  for (const std::string& w : daemon.warnings()) std::cerr << "sigmad: warning: " << w << "\n";
  if (!daemon.fallback_reason().empty())
    std::cerr << "sigmad: CUDA not used: " << daemon.fallback_reason() << "\n";
  std::cout << daemon.Banner() << std::endl;
  if (open_files > 0 && open_files < 4096)
    std::cerr << "sigmad: warning: only " << open_files << " open files allowed (ulimit -n); each client "
              << "connection takes one: raise the hard limit (LimitNOFILE= in systemd)\n";
  if (!options->tls_cert.empty())
    std::cerr << "sigmad: gRPC uses TLS" << (options->tls_client_ca.empty() ? "" : " with client certificates")
              << "\n";
  if (!options->tokens_file.empty()) std::cerr << "sigmad: bearer tokens required (--tokens)\n";
  if (!options->metrics_basic_auth_file.empty()) std::cerr << "sigmad: /metrics requires basic auth\n";
  if (!options->port_file.empty()) {
    if (auto s = sigma::server::WritePortFile(options->port_file, *ports); !s.ok()) {
      std::cerr << "sigmad: " << s.message() << "\n";
      daemon.Shutdown();
      return 1;
    }
  }
  int sig = 0;
  sigwait(&signals, &sig);
  std::cout << "sigmad: signal " << sig << ", shutting down" << std::endl;
  daemon.Shutdown();
  std::cout << "sigmad: stopped" << std::endl;
  return 0;
}
