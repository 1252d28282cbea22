// What both fuzz targets require of every request the codec decodes.
#pragma once

#include <cstdint>
#include <cstdlib>

#include "lepton/common/errors.h"
#include "lepton/protocol/oip.h"

namespace lepton::fuzz {

// Each tensor's bytes agree with its shape (BYTES: exactly as many well-formed length-prefixed
// elements), and all of them together stay within the limits; aborts otherwise.
inline void CheckDecoded(const oip::InferRequest& r, const oip::Limits& limits) {
  int64_t total = 0;
  for (const auto& t : r.inputs) {
    if (t.datatype == oip::DataType::kString) {
      try {
        oip::SplitBytesElements(t.data, t.elements(), t.name);
      } catch (const InvalidArgument&) {
        std::abort();  // decoded BYTES data that does not hold its shape's elements
      }
    } else if (t.data.size() != static_cast<size_t>(t.elements()) * oip::ElementSize(t.datatype)) {
      std::abort();  // a decoded tensor whose bytes disagree with its shape
    }
    total += t.elements();
  }
  if (total > limits.max_elements) std::abort();
}

// A response that echoes the decoded request's inputs as its outputs.
inline oip::InferResponse EchoResponse(const oip::InferRequest& r) {
  oip::InferResponse response;
  response.model = r.id;
  response.version = r.key.value_or("");
  response.id = r.id;
  response.outputs = r.inputs;
  return response;
}

}  // namespace lepton::fuzz
