// Reading a whole file.
#pragma once

#include <string>

namespace lepton {

// The bytes of the file at `path`; NotFound naming it as `what` ("model file", ...) when it cannot
// be opened.
std::string ReadWholeFile(const std::string& path, const std::string& what);

}  // namespace lepton
