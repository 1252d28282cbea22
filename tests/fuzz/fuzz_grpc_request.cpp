// libFuzzer target for the gRPC side of the protocol codec: any byte string that parses as a
// ModelInferRequest must either decode into tensors whose sizes agree with their shapes and the
// limits, or raise InvalidArgument; whatever decodes must encode back into a response that
// serialises, parses again, and carries each tensor's bytes as its raw contents.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_checks.h"
#include "inference.pb.h"
#include "lepton/common/errors.h"
#include "lepton/protocol/oip_grpc.h"

// protobuf logs each string that is not UTF-8; the fuzzer makes millions.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  inference::ModelInferRequest message;
  if (!message.ParseFromArray(data, static_cast<int>(size))) return 0;
  lepton::oip::Limits limits;
  limits.max_elements = 1 << 16;
  try {
    const auto r = lepton::oip::DecodeGrpcInferRequest(message, limits);
    lepton::fuzz::CheckDecoded(r, limits);
    lepton::oip::InferResponse response = lepton::fuzz::EchoResponse(r);
    response.parameters = "{\"lepton_request_id\":\"x\",\"lepton_latency_ms\":1.5,\"n\":3}";
    inference::ModelInferResponse out;
    lepton::oip::EncodeGrpcInferResponse(std::move(response), &out);
    inference::ModelInferResponse back;
    if (!back.ParseFromString(out.SerializeAsString())) std::abort();
    if (back.outputs_size() != static_cast<int>(r.inputs.size()) ||
        back.raw_output_contents_size() != back.outputs_size()) {
      std::abort();
    }
    for (size_t k = 0; k < r.inputs.size(); ++k) {
      if (back.raw_output_contents(static_cast<int>(k)) != r.inputs[k].data) std::abort();
    }
  } catch (const lepton::InvalidArgument&) {
  }
  return 0;
}
