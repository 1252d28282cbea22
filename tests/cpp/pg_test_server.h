// A real PostgreSQL server for the C++ tests, as tests/python/pg_server.py makes for Python's:
// Debian's initdb and pg_ctl (run as the `postgres` account when the tests run as root), a
// temporary directory, a free local port. Each NewPostgresDatabase() is a fresh database on it.
//
// Under ctest one server serves every test process: the `postgres.start` fixture starts it and
// writes where it is to the file named by LEPTON_TEST_PG_FILE, and `postgres.stop` stops it
// (tests/cpp/pg_fixture.cpp). A test binary run by hand starts its own on first use and stops it
// at its exit.
#pragma once

#include <glob.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>

namespace lepton::testing {

class PostgresTestServer {
 public:
  static PostgresTestServer& Get() {
    static PostgresTestServer server;
    return server;
  }

  // The fixture's two halves: a server that outlives this process, and its end.
  static void StartShared(const std::string& file) {
    PostgresTestServer server(/*shared=*/"");
    server.owner_ = -1;  // it stays up after this process
    std::ofstream(file) << server.port_ << " " << server.dir_ << "\n";
  }
  static void StopShared(const std::string& file) {
    if (!std::filesystem::exists(file)) return;
    PostgresTestServer server(file);
    server.owner_ = ::getpid();  // the destructor stops it
    std::filesystem::remove(file);
  }

  std::string NewDatabase() {
    std::lock_guard<std::mutex> lk(mu_);
    // Unique across the processes that share the server, even when a pid is reused.
    const std::string name = "db" + std::to_string(::getpid()) + "_" + std::to_string(next_++) +
                             "_" + std::to_string(std::random_device{}() % 1000000);
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
  PostgresTestServer() : PostgresTestServer(SharedFile()) {}

  // With `shared` naming a file that a fixture wrote: the server it started, left running.
  explicit PostgresTestServer(const std::string& shared) : owner_(::getpid()) {
    if (!shared.empty()) {
      std::ifstream in(shared);
      if (in >> port_ >> dir_) {
        owner_ = -1;
        return;
      }
    }
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

  static std::string SharedFile() {
    const char* file = std::getenv("LEPTON_TEST_PG_FILE");
    return file && std::filesystem::exists(file) ? file : "";
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

  pid_t owner_;
  std::string dir_;
  int port_ = 0;
  std::mutex mu_;
  int next_ = 0;
};

inline std::string NewPostgresDatabase() { return PostgresTestServer::Get().NewDatabase(); }

}  // namespace lepton::testing
