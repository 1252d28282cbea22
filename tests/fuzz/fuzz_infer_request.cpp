// libFuzzer target for the Open Inference Protocol codec: any byte string must either decode into
// tensors whose sizes agree with their shapes, or raise InvalidArgument; whatever decodes must
// encode back (as a response) into valid JSON holding as many elements.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>

#include "lepton/errors.h"
#include "lepton/oip.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lepton::oip::Limits limits;
  limits.max_elements = 1 << 16;
  try {
    const auto r = lepton::oip::DecodeInferRequest(
        std::string_view(reinterpret_cast<const char*>(data), size), limits);
    int64_t total = 0;
    for (const auto& t : r.inputs) {
      if (t.data.size() !=
          static_cast<size_t>(t.elements()) * lepton::oip::ElementSize(t.datatype)) {
        std::abort();  // a decoded tensor whose bytes disagree with its shape
      }
      total += t.elements();
    }
    if (total > limits.max_elements) std::abort();
    lepton::oip::InferResponse response;
    response.model = r.id;
    response.version = r.key.value_or("");
    response.id = r.id;
    response.outputs = r.inputs;
    const auto j = nlohmann::json::parse(lepton::oip::EncodeInferResponse(response), nullptr, false);
    if (j.is_discarded() || j["outputs"].size() != r.inputs.size()) std::abort();
    for (size_t k = 0; k < r.inputs.size(); ++k) {
      if (j["outputs"][k]["data"].size() != static_cast<size_t>(r.inputs[k].elements())) {
        std::abort();
      }
    }
  } catch (const lepton::InvalidArgument&) {
  }
  return 0;
}
