// Registers versions into <root> forever (or <count> times) so a test can SIGKILL it mid-write.
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>

#include "lepton/registry/registry.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: lepton_register_crasher ROOT COUNT SEED\n";
    return 2;
  }
  lepton::Registry::Options options;
  options.actor = "crasher";
  lepton::Registry reg(argv[1], options);
  const long count = std::strtol(argv[2], nullptr, 10);
  std::mt19937 rng(static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10)));
  for (long i = 0; i < count; ++i) {
    // Some payloads repeat, so deduplicated writes are interrupted too.
    const bool repeat = rng() % 4 == 0;
    const unsigned kind = static_cast<unsigned>(rng() % 3);
    std::string payload(repeat ? 50000 * (kind + 1) : 1 + rng() % 200000, '\0');
    std::mt19937 fill(repeat ? kind : static_cast<unsigned>(rng()));
    for (auto& c : payload) c = static_cast<char>(fill());
    lepton::RegisterOptions o;
    o.tags = {{"i", std::to_string(i)}};
    o.metrics = {{"m", static_cast<double>(i)}};
    reg.RegisterBytes("crash", payload, o);
  }
  return 0;
}
