// libFuzzer target for the Open Inference Protocol codec: any byte string must either decode into
// tensors whose sizes agree with their shapes, or raise InvalidArgument; whatever decodes must
// encode back (as a response, every other output as binary data) into valid JSON holding as many
// elements, followed by exactly the binary outputs' bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "fuzz_checks.h"
#include "lepton/common/errors.h"
#include "lepton/protocol/oip.h"

// An input that starts with byte 0x01 is a binary-data body: the next two bytes give the length
// of its JSON header (the Inference-Header-Content-Length header), the rest is the body.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lepton::oip::Limits limits;
  limits.max_elements = 1 << 16;
  std::optional<size_t> json_length;
  if (size >= 3 && data[0] == 0x01) {
    json_length = static_cast<size_t>(data[1]) | static_cast<size_t>(data[2]) << 8;
    data += 3;
    size -= 3;
  }
  try {
    const auto r = lepton::oip::DecodeInferRequest(
        std::string_view(reinterpret_cast<const char*>(data), size), limits, json_length);
    lepton::fuzz::CheckDecoded(r, limits);
    lepton::oip::InferResponse response = lepton::fuzz::EchoResponse(r);
    for (size_t k = 0; k < response.outputs.size(); ++k) response.outputs[k].binary = k % 2;
    std::optional<size_t> header;
    std::string encoded;
    try {
      encoded = lepton::oip::EncodeInferResponse(response, &header);
    } catch (const lepton::InvalidArgument&) {
      // Only BYTES that are not UTF-8 may be refused, and only as JSON.
      bool json_bytes = false;
      for (const auto& t : response.outputs) {
        json_bytes |= !t.binary && t.datatype == lepton::oip::DataType::kString;
      }
      if (!json_bytes) std::abort();
      return 0;
    }
    const auto j =
        nlohmann::json::parse(encoded.substr(0, header.value_or(encoded.size())), nullptr, false);
    if (j.is_discarded() || j["outputs"].size() != r.inputs.size()) std::abort();
    size_t binary = 0;
    for (size_t k = 0; k < r.inputs.size(); ++k) {
      const auto& out = j["outputs"][k];
      if (k % 2) {
        if (out["parameters"]["binary_data_size"] != r.inputs[k].data.size()) std::abort();
        binary += r.inputs[k].data.size();
      } else if (out["data"].size() != static_cast<size_t>(r.inputs[k].elements())) {
        std::abort();
      }
    }
    if (header.value_or(encoded.size()) + binary != encoded.size()) std::abort();
  } catch (const lepton::InvalidArgument&) {
  }
  return 0;
}
