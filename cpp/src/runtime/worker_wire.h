// The frames between a deployment and a worker (protocol/worker.proto): a 4-byte little-endian
// length, then one message. Reading and writing them on a blocking socket within a deadline, and
// tensors to and from their wire form. Private to the runtime layer.
#pragma once

#include <google/protobuf/message_lite.h>

#include <optional>
#include <string>

#include "lepton/runtime/servable.h"
#include "worker.pb.h"

namespace lepton {

// The largest frame either side accepts (1 GiB).
constexpr size_t kMaxWorkerFrame = size_t{1} << 30;

// What a socket call found, when it did not complete.
enum class WireStatus { kOk, kClosed, kTimeout };

// Writes one frame; kClosed when the peer is gone, kTimeout at the deadline.
WireStatus WriteFrame(int fd, const google::protobuf::MessageLite& message,
                      std::optional<Clock::time_point> deadline, std::string& scratch);
// Reads one frame into `message`; kClosed on end of file or a reset (the peer died), kTimeout at
// the deadline. A frame that is too long or does not parse throws Internal.
WireStatus ReadFrame(int fd, google::protobuf::MessageLite& message,
                     std::optional<Clock::time_point> deadline, std::string& scratch);

// Tensors (with the string tensors beside them, by position) to their wire form and back.
void TensorsToWire(const Tensors& tensors, const StringTensors* strings,
                   google::protobuf::RepeatedPtrField<worker::Tensor>* out);
// InvalidArgument when a tensor's bytes do not fit its dtype and shape.
Tensors TensorsFromWire(const google::protobuf::RepeatedPtrField<worker::Tensor>& in,
                        StringTensors& strings);

}  // namespace lepton
