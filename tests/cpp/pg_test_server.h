// A real PostgreSQL server for the C++ tests, as tests/python/pg_server.py makes for Python's:
// Debian's initdb and pg_ctl (run as the `postgres` account when the tests run as root), a
// temporary directory, a free local port. Started on first use in this process and stopped at
// its exit; each NewPostgresDatabase() is a fresh database on it.
#pragma once

#include <glob.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>

namespace lepton::testing {

class PostgresTestServer {
 public:
  static PostgresTestServer& Get() {
    static PostgresTestServer server;
    return server;
  }

  std::string NewDatabase() {
    std::lock_guard<std::mutex> lk(mu_);
    const std::string name = "db" + std::to_string(::getpid()) + "_" + std::to_string(next_++);
    Run(Bin("createdb") + " -h 127.0.0.1 -p " + std::to_string(port_) + " -U lepton " + name);
    return "postgresql://lepton@127.0.0.1:" + std::to_string(port_) + "/" + name;
  }

  ~PostgresTestServer() {
    if (::getpid() != owner_) return;  // a forked child leaves the parent's server alone
    std::system(
        (As() + Bin("pg_ctl") + " -D " + dir_ + "/data -m immediate -w stop >/dev/null 2>&1")
            .c_str());
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

 private:
  PostgresTestServer() : owner_(::getpid()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lepton-pg-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    if (::geteuid() == 0) Run("chown postgres:postgres " + dir_);
    port_ = FreePort();
    Run(As() + Bin("initdb") + " -D " + dir_ + "/data -U lepton --auth=trust -E UTF8 --no-sync");
    Run(As() + Bin("pg_ctl") + " -D " + dir_ + "/data -l " + dir_ + "/log -w -t 60 -o '-p " +
        std::to_string(port_) + " -k " + dir_ +
        " -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200' start");
  }

  static std::string As() { return ::geteuid() == 0 ? "runuser -u postgres -- " : ""; }

  static std::string Bin(const char* name) {
    glob_t g{};
    const std::string pattern = std::string("/usr/lib/postgresql/*/bin/") + name;
    std::string found = name;
    if (::glob(pattern.c_str(), 0, nullptr, &g) == 0 && g.gl_pathc > 0) {
      found = g.gl_pathv[g.gl_pathc - 1];
    }
    ::globfree(&g);
    return found;
  }

  static void Run(const std::string& command) {
    if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) {
      throw std::runtime_error("failed: " + command);
    }
  }

  static int FreePort() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
  }

  const pid_t owner_;
  std::string dir_;
  int port_ = 0;
  std::mutex mu_;
  int next_ = 0;
};

inline std::string NewPostgresDatabase() { return PostgresTestServer::Get().NewDatabase(); }

}  // namespace lepton::testing
