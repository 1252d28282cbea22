// The Open Inference Protocol's gRPC messages (inference.proto) to and from the codec's requests
// and responses. No torch here, so that the decoder can be fuzzed on its own.
#pragma once

#include "lepton/protocol/oip.h"

namespace inference {
class ModelInferRequest;
class ModelInferResponse;
}  // namespace inference

namespace lepton::oip {

// Throws InvalidArgument naming the field at fault, as DecodeInferRequest does: no inputs, a
// datatype that is not carried, a shape past the limits, raw contents for some inputs but not
// all, contents whose length disagrees with the shape, values out of the datatype's range.
// Raw input contents are moved out of `message` into the tensors' bytes, not copied.
InferRequest DecodeGrpcInferRequest(inference::ModelInferRequest& message,
                                    const Limits& limits = {});

// Every output goes back as raw contents (moved out of `response`), one per output in order;
// the response's parameters (a JSON object) become InferParameters.
void EncodeGrpcInferResponse(InferResponse&& response, inference::ModelInferResponse* message);

}  // namespace lepton::oip
