// The frames between a deployment and a worker (protocol/worker.proto): a 4-byte little-endian
// length, then one message. Reading and writing them on a blocking socket within a deadline, and
// tensors to and from their wire form. Private to the runtime layer.
#pragma once

#include <google/protobuf/message_lite.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lepton/runtime/servable.h"
#include "worker.pb.h"

namespace lepton {

// The largest frame either side accepts (1 GiB).
constexpr size_t kMaxWorkerFrame = size_t{1} << 30;

// What a socket call found, when it did not complete.
enum class WireStatus { kOk, kClosed, kTimeout };

// The bytes one connection has read and not yet used: a frame is read with as few calls as the
// socket allows (usually one), so the start of the tensors behind a message often comes with it.
struct WireInput {
  std::string bytes;
  size_t begin = 0;  // the unread bytes are bytes[begin, end)
  size_t end = 0;
  size_t pending() const { return end - begin; }
};

// Writes one frame, then the bytes of `payload` (the message's tensors, as TensorsToWire gave
// them), in one system call where the socket takes it all; kClosed when the peer is gone,
// kTimeout at the deadline.
WireStatus WriteFrame(int fd, const google::protobuf::MessageLite& message,
                      std::optional<Clock::time_point> deadline, std::string& scratch,
                      const Tensors* payload = nullptr);
// Whether waiting awake for a frame pays with `busy` requests (this one included) between this
// process and its peers: each takes two cores, one on either side, and they must fit the machine.
bool CoresToSpare(int busy);

// Several frames, each a message and its tensors' bytes, written together.
struct OutFrame {
  const google::protobuf::MessageLite* message = nullptr;
  const Tensors* payload = nullptr;
};
WireStatus WriteFrames(int fd, const std::vector<OutFrame>& frames,
                       std::optional<Clock::time_point> deadline, std::string& scratch);
// The same frames laid out for writing elsewhere: each frame's length and message in `scratch`,
// then its tensors' bytes where they are, as pieces in order.
struct FramePieces {
  std::vector<std::pair<const char*, size_t>> pieces;
  size_t total = 0;
  // Copies the pieces, in order, into `out`, which holds at least `total` bytes.
  void CopyTo(char* out) const;
  // Copies `n` bytes from offset `from` of the pieces laid end to end into `out`.
  void CopyRange(size_t from, size_t n, char* out) const;
};
FramePieces LayOutFrames(const std::vector<OutFrame>& frames, std::string& scratch);
// Reads one frame into `message`; kClosed on end of file or a reset (the peer died), kTimeout at
// the deadline. A frame that is too long or does not parse throws Internal.
// With `spin_s`, it first looks for the frame that long without sleeping.
WireStatus ReadFrame(int fd, google::protobuf::MessageLite& message,
                     std::optional<Clock::time_point> deadline, WireInput& in, double spin_s = 0);

// Tensors (with the string tensors beside them, by position) to their wire form: their
// descriptions in `out`, and in `payload` the contiguous tensors whose bytes follow the message.
void TensorsToWire(const Tensors& tensors, const StringTensors* strings,
                   google::protobuf::RepeatedPtrField<worker::Tensor>* out, Tensors& payload);
// Reads the bytes that follow a message (those `in` holds first, then the socket's) into new
// tensors. InvalidArgument when a description does not fit its dtype and shape (the connection is
// then out of step and must be closed).
WireStatus TensorsFromWire(int fd, const google::protobuf::RepeatedPtrField<worker::Tensor>& wire,
                           std::optional<Clock::time_point> deadline, WireInput& in, Tensors& out,
                           StringTensors& strings);

}  // namespace lepton
