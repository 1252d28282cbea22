#include "lepton/common/files.h"

#include <fstream>
#include <sstream>

#include "lepton/common/errors.h"

namespace lepton {

std::string ReadWholeFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound(what + " '" + path + "' cannot be opened");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace lepton
