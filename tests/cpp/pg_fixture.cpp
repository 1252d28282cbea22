// ctest's PostgreSQL fixture: `start FILE` starts one server for every test process of the run
// and writes where it is to FILE; `stop FILE` stops it and removes its directory.
#include <cstdio>
#include <cstring>
#include <exception>

#include "pg_test_server.h"

int main(int argc, char** argv) {
  if (argc != 3 || (std::strcmp(argv[1], "start") != 0 && std::strcmp(argv[1], "stop") != 0)) {
    std::fprintf(stderr, "usage: %s start|stop FILE\n", argv[0]);
    return 2;
  }
  try {
    if (std::strcmp(argv[1], "start") == 0) {
      lepton::testing::PostgresTestServer::StartShared(argv[2]);
    } else {
      lepton::testing::PostgresTestServer::StopShared(argv[2]);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
