// Notices when gRPC's listener has stopped accepting connections.
//
// gRPC (up to at least 1.51, Debian 12's) stops its listener for good when
// accept4() fails with anything but EAGAIN/ECONNABORTED, e.g. EMFILE when the
// process is out of file descriptors: it logs "Failed accept4: Too many open
// files" once and never re-arms the listening socket (grpc/grpc#16058, #20418),
// so the daemon no longer accepts connections even after descriptors are free.
// sigmad installs a gRPC log function that forwards every line to stderr as
// gRPC would and counts these failures; the daemon's watchdog restarts the
// gRPC server on the same port once descriptors are free again
// (docs/reliability.md, "File descriptors").
//
// Thread-safety: everything here is safe from any thread.
#ifndef SIGMA_SERVER_GRPC_ACCEPT_WATCH_H_
#define SIGMA_SERVER_GRPC_ACCEPT_WATCH_H_

#include <cstdint>

namespace sigma::server {

// Installs the log function (idempotent; process-wide).
void InstallGrpcAcceptWatch();
// How many times gRPC's listener failed to accept since the process started.
int64_t GrpcAcceptFailures();
// Descriptors this process may still open: the soft RLIMIT_NOFILE minus the
// open ones (/proc/self/fd); a large number when unknown.
int64_t FreeFileDescriptors();

}  // namespace sigma::server

#endif  // SIGMA_SERVER_GRPC_ACCEPT_WATCH_H_
