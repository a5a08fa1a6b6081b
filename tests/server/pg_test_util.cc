#include "pg_test_util.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"

namespace sigma::server::testing {
namespace {

namespace fs = std::filesystem;

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// The newest /usr/lib/postgresql/N/bin holding initdb and pg_ctl.
std::string FindBinDir() {
  std::string best;
  int best_version = -1;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    const std::string bin = (e.path() / "bin").string();
    const int v = std::atoi(e.path().filename().c_str());
    if (fs::exists(bin + "/initdb") && fs::exists(bin + "/pg_ctl") && v > best_version) {
      best = bin;
      best_version = v;
    }
  }
  return best;
}

int Sh(const std::string& cmd) { return std::system(cmd.c_str()); }

}  // namespace

PgServer* PgServer::Get(std::string* why) {
  static std::unique_ptr<PgServer> server;
  static std::string reason;
  static bool tried = false;
  if (!tried) {
    tried = true;
    std::unique_ptr<PgServer> s(new PgServer());
    if (absl::Status st = s->Init(); st.ok())
      server = std::move(s);
    else
      reason = std::string(st.message());
  }
  if (!server) *why = reason;
  return server.get();
}

std::string PgServer::Cmd(const std::string& tool) const {
  return absl::StrCat(as_postgres_ ? "runuser -u postgres -- " : "", bin_dir_, "/", tool);
}

absl::Status PgServer::Init() {
  bin_dir_ = FindBinDir();
  if (bin_dir_.empty())
    return absl::UnavailableError("no /usr/lib/postgresql/*/bin/initdb (install the postgresql package: make deps)");
  as_postgres_ = geteuid() == 0;
  if (as_postgres_ && getpwnam("postgres") == nullptr)
    return absl::UnavailableError("running as root and there is no postgres user to run the server as");
  const std::string owner = as_postgres_ ? "postgres" : "";
  // The template cluster: initdb once per version and uid.
  const std::string tmp = fs::temp_directory_path().string();
  const std::string version = fs::path(bin_dir_).parent_path().filename().string();
  const std::string tmpl = absl::StrCat(tmp, "/sigma-pg-template-", version, "-", geteuid());
  {
    const int lock = ::open((tmpl + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || ::flock(lock, LOCK_EX) != 0) return absl::UnavailableError("cannot lock " + tmpl + ".lock");
    if (!fs::exists(tmpl + "/PG_VERSION")) {
      const std::string part = tmpl + ".part";
      Sh("rm -rf '" + part + "'");
      fs::create_directories(part);
      if (as_postgres_) Sh("chown postgres '" + part + "'");
      const int rc = Sh(absl::StrCat(Cmd("initdb"), " -D '", part, "' -A trust -U sigma -E UTF8 --no-sync >'",
                                     part, ".log' 2>&1"));
      if (rc != 0 || std::rename(part.c_str(), tmpl.c_str()) != 0) {
        ::close(lock);
        return absl::UnavailableError(absl::StrCat("initdb failed (see ", part, ".log)"));
      }
    }
    ::close(lock);
  }
  char dir[] = "/tmp/sigma-pg-XXXXXX";
  if (mkdtemp(dir) == nullptr) return absl::UnavailableError("mkdtemp failed");
  dir_ = dir;
  ::chmod(dir_.c_str(), 0755);
  if (Sh(absl::StrCat("cp -a '", tmpl, "' '", dir_, "/data'")) != 0)
    return absl::UnavailableError("cannot copy the template cluster " + tmpl);
  if (as_postgres_) Sh("chown -R postgres '" + dir_ + "'");
  port_ = FreePort();
  return Start();
}

absl::Status PgServer::Start() {
  // fsync off: the tests kill sigmad replicas, never the database host.
  const std::string cmd = absl::StrCat(
      Cmd("pg_ctl"), " -D '", dir_, "/data' -l '", dir_, "/server.log' -w -t 60 -o \"-p ", port_,
      " -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c max_connections=200\" start"
      " >/dev/null 2>&1");
  if (Sh(cmd) != 0) return absl::UnavailableError(absl::StrCat("pg_ctl start failed (see ", dir_, "/server.log)"));
  return absl::OkStatus();
}

absl::Status PgServer::Stop() {
  if (Sh(absl::StrCat(Cmd("pg_ctl"), " -D '", dir_, "/data' -m fast -w stop >/dev/null 2>&1")) != 0)
    return absl::InternalError("pg_ctl stop failed");
  return absl::OkStatus();
}

PgServer::~PgServer() {
  Sh(absl::StrCat(Cmd("pg_ctl"), " -D '", dir_, "/data' -m immediate -w stop >/dev/null 2>&1"));
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

std::string PgServer::Url(const std::string& dbname) const {
  return absl::StrCat("postgresql://sigma@127.0.0.1:", port_, "/", dbname);
}

std::string PgServer::NewDatabase() {
  const std::string name = absl::StrCat("t", getpid(), "_", next_db_++);
  auto r = Query(Url("postgres"), "CREATE DATABASE " + name);
  if (!r.ok()) std::abort();
  return Url(name);
}

absl::StatusOr<std::vector<std::string>> PgServer::Query(const std::string& url, const std::string& sql) {
  PGconn* c = PQconnectdb(url.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    const std::string msg = PQerrorMessage(c);
    PQfinish(c);
    return absl::UnavailableError(msg);
  }
  PGresult* r = PQexec(c, sql.c_str());
  std::vector<std::string> out;
  absl::Status s;
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    for (int i = 0; i < PQntuples(r); ++i) out.emplace_back(PQgetvalue(r, i, 0));
  } else if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    s = absl::InternalError(PQresultErrorMessage(r));
  }
  PQclear(r);
  PQfinish(c);
  if (!s.ok()) return s;
  return out;
}

}  // namespace sigma::server::testing
