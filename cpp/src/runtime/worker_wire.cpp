#include "worker_wire.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "lepton/common/dtypes.h"
#include "lepton/common/errors.h"
#include "lepton/common/process.h"
#include "lepton/runtime/tensor_types.h"

namespace lepton {
namespace {

// Waits until `fd` is ready for `events` or the deadline passes; true when ready.
bool WaitReady(int fd, short events, std::optional<Clock::time_point> deadline) {
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      const auto left = *deadline - Clock::now();
      if (left <= Clock::duration::zero()) return false;
      timeout_ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
    }
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, timeout_ms);
    if (r > 0) return true;
    if (r == 0) continue;             // the deadline check above decides
    if (errno != EINTR) return true;  // let the read or write report the error
  }
}

// sendmsg and recv on a socket (without SIGPIPE, and without blocking past a deadline); writev
// and read, after poll, on a pipe (the ready pipe and the lifeline).
ssize_t SendVec(int fd, iovec* iov, size_t count, bool nonblocking,
                std::optional<Clock::time_point> deadline) {
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = count;
  const ssize_t w = ::sendmsg(fd, &m, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
  if (w >= 0 || errno != ENOTSOCK) return w;
  if (deadline && !WaitReady(fd, POLLOUT, deadline)) {
    errno = EAGAIN;
    return -1;
  }
  return ::writev(fd, iov, static_cast<int>(count));
}

ssize_t Recv(int fd, char* data, size_t n, bool nonblocking,
             std::optional<Clock::time_point> deadline) {
  const ssize_t r = ::recv(fd, data, n, nonblocking ? MSG_DONTWAIT : 0);
  if (r >= 0 || errno != ENOTSOCK) return r;
  if (deadline && !WaitReady(fd, POLLIN, deadline)) {
    errno = EAGAIN;
    return -1;
  }
  return ::read(fd, data, n);
}

WireStatus WriteAll(int fd, std::vector<iovec>& iov, std::optional<Clock::time_point> deadline) {
  size_t first = 0;
  while (first < iov.size() && iov[first].iov_len == 0) ++first;
  while (first < iov.size()) {
    const size_t count = std::min<size_t>(iov.size() - first, IOV_MAX);
    ssize_t w = SendVec(fd, &iov[first], count, deadline.has_value(), deadline);
    if (w > 0) {
      // Skip what went out; a part written in part goes on from where it stopped.
      while (first < iov.size() && static_cast<size_t>(w) >= iov[first].iov_len) {
        w -= static_cast<ssize_t>(iov[first].iov_len);
        ++first;
      }
      if (first < iov.size()) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + w;
        iov[first].iov_len -= static_cast<size_t>(w);
      }
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!WaitReady(fd, POLLOUT, deadline)) return WireStatus::kTimeout;
      continue;
    }
    return WireStatus::kClosed;
  }
  return WireStatus::kOk;
}

// Reads at least `least` bytes into data[0, capacity), taking whatever more the socket has ready
// in the same calls; `got` says how many came.
WireStatus ReadAtLeast(int fd, char* data, size_t capacity, size_t least, size_t& got,
                       std::optional<Clock::time_point> deadline) {
  got = 0;
  while (got < least) {
    // Never a blocking recv: a thread asleep in one is woken each time the peer consumes what
    // this side wrote (the socket's write-space wake-up), while one asleep in poll for POLLIN
    // sleeps on until there is something to read.
    const ssize_t r = Recv(fd, data + got, capacity - got, /*nonblocking=*/true, deadline);
    if (r > 0) {
      got += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) return WireStatus::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!WaitReady(fd, POLLIN, deadline)) return WireStatus::kTimeout;
      continue;
    }
    return WireStatus::kClosed;
  }
  return WireStatus::kOk;
}

WireStatus ReadAll(int fd, char* data, size_t n, std::optional<Clock::time_point> deadline) {
  size_t got = 0;
  return ReadAtLeast(fd, data, n, n, got, deadline);
}

// Reads until `in` holds at least `need` unread bytes, taking whatever else the socket has
// ready (up to the buffer's size) in the same call.
WireStatus Fill(int fd, WireInput& in, size_t need, std::optional<Clock::time_point> deadline) {
  constexpr size_t kReadAhead = 64 << 10;
  if (in.pending() >= need) return WireStatus::kOk;
  if (in.begin > 0) {
    std::memmove(in.bytes.data(), in.bytes.data() + in.begin, in.pending());
    in.end -= in.begin;
    in.begin = 0;
  }
  if (in.bytes.size() < std::max(need, kReadAhead)) in.bytes.resize(std::max(need, kReadAhead));
  size_t got = 0;
  const WireStatus s = ReadAtLeast(fd, in.bytes.data() + in.end, in.bytes.size() - in.end,
                                   need - in.end, got, deadline);
  in.end += got;
  return s;
}

}  // namespace

bool CoresToSpare(int busy) {
  static const int cores = UsableCores();
  return 2 * busy <= cores;
}

WireStatus WriteFrame(int fd, const google::protobuf::MessageLite& message,
                      std::optional<Clock::time_point> deadline, std::string& scratch,
                      const Tensors* payload) {
  return WriteFrames(fd, {OutFrame{&message, payload}}, deadline, scratch);
}

FramePieces LayOutFrames(const std::vector<OutFrame>& frames, std::string& scratch) {
  std::vector<size_t> sizes;
  sizes.reserve(frames.size());
  size_t heads = 0;
  for (const OutFrame& f : frames) {
    const size_t n = f.message->ByteSizeLong();
    if (n > kMaxWorkerFrame) {
      throw InvalidArgument("a request of " + std::to_string(n) +
                            " bytes is over the worker's frame limit");
    }
    sizes.push_back(n);
    heads += 4 + n;
  }
  scratch.resize(heads);
  FramePieces out;
  size_t at = 0;
  for (size_t i = 0; i < frames.size(); ++i) {
    const uint32_t len = static_cast<uint32_t>(sizes[i]);
    for (int b = 0; b < 4; ++b) scratch[at + b] = static_cast<char>((len >> (8 * b)) & 0xff);
    frames[i].message->SerializeWithCachedSizesToArray(
        reinterpret_cast<uint8_t*>(&scratch[at + 4]));
    out.pieces.emplace_back(&scratch[at], 4 + sizes[i]);
    out.total += 4 + sizes[i];
    at += 4 + sizes[i];
    if (frames[i].payload) {
      for (const auto& t : *frames[i].payload) {
        out.pieces.emplace_back(static_cast<const char*>(t.data_ptr()), t.nbytes());
        out.total += t.nbytes();
      }
    }
  }
  return out;
}

void FramePieces::CopyTo(char* out) const { CopyRange(0, total, out); }

void FramePieces::CopyRange(size_t from, size_t n, char* out) const {
  size_t at = 0;  // where the current piece starts
  for (const auto& [data, size] : pieces) {
    if (n == 0) break;
    if (from < at + size) {
      const size_t skip = from > at ? from - at : 0;
      const size_t take = std::min(size - skip, n);
      std::memcpy(out, data + skip, take);
      out += take;
      from += take;
      n -= take;
    }
    at += size;
  }
}

WireStatus WriteFrames(int fd, const std::vector<OutFrame>& frames,
                       std::optional<Clock::time_point> deadline, std::string& scratch) {
  const FramePieces laid = LayOutFrames(frames, scratch);
  std::vector<iovec> iov;
  iov.reserve(laid.pieces.size());
  for (const auto& [data, n] : laid.pieces) iov.push_back({const_cast<char*>(data), n});
  return WriteAll(fd, iov, deadline);
}

WireStatus ReadFrame(int fd, google::protobuf::MessageLite& message,
                     std::optional<Clock::time_point> deadline, WireInput& in, double spin_s) {
  if (spin_s > 0 && in.pending() == 0) {
    // The answer of a short forward comes within microseconds: looking for it without sleeping
    // saves the wake-up.
    const auto until = Clock::now() + DeadlineIn(spin_s);
    pollfd p{fd, POLLIN, 0};
    while (::poll(&p, 1, 0) == 0 && Clock::now() < until) {
    }
  }
  WireStatus s = Fill(fd, in, 4, deadline);
  if (s != WireStatus::kOk) return s;
  const auto* head = reinterpret_cast<const unsigned char*>(in.bytes.data() + in.begin);
  const size_t n =
      size_t{head[0]} | size_t{head[1]} << 8 | size_t{head[2]} << 16 | size_t{head[3]} << 24;
  if (n > kMaxWorkerFrame) throw Error("a worker frame of " + std::to_string(n) + " bytes");
  s = Fill(fd, in, 4 + n, deadline);
  if (s != WireStatus::kOk) return s;
  if (!message.ParseFromArray(in.bytes.data() + in.begin + 4, static_cast<int>(n))) {
    throw Error("a worker frame that does not parse");
  }
  in.begin += 4 + n;
  return WireStatus::kOk;
}

void TensorsToWire(const Tensors& tensors, const StringTensors* strings,
                   google::protobuf::RepeatedPtrField<worker::Tensor>* out, Tensors& payload) {
  out->Reserve(static_cast<int>(tensors.size()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    worker::Tensor* w = out->Add();
    if (strings) {
      auto it = strings->find(i);
      if (it != strings->end()) {
        w->set_dtype(InfoOf(DType::kString).name);
        for (int64_t d : it->second.shape) w->add_shape(d);
        for (const auto& v : it->second.values) w->add_strings(v);
        continue;
      }
    }
    const at::Tensor& t = tensors[i];
    if (!t.defined()) {
      w->set_undefined(true);
      continue;
    }
    at::Tensor c = t.device().is_cpu() ? t.contiguous() : t.cpu().contiguous();
    w->set_dtype(DTypeName(c.scalar_type()));
    for (int64_t d : c.sizes()) w->add_shape(d);
    w->set_data_bytes(c.nbytes());
    payload.push_back(std::move(c));
  }
}

WireStatus TensorsFromWire(int fd, const google::protobuf::RepeatedPtrField<worker::Tensor>& wire,
                           std::optional<Clock::time_point> deadline, WireInput& in, Tensors& out,
                           StringTensors& strings) {
  out.clear();
  out.reserve(wire.size());
  for (int i = 0; i < wire.size(); ++i) {
    const worker::Tensor& w = wire.Get(i);
    if (w.undefined()) {
      out.emplace_back();
      continue;
    }
    std::vector<int64_t> shape(w.shape().begin(), w.shape().end());
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0 || (d > 0 && n > (int64_t{1} << 40) / d)) {
        throw InvalidArgument("a worker tensor with a dimension out of range");
      }
      n *= d;
    }
    const DTypeInfo* info = DTypeNamed(w.dtype());
    if (!info) throw InvalidArgument("a worker tensor of unknown dtype '" + w.dtype() + "'");
    if (info->type == DType::kString) {
      if (static_cast<int64_t>(w.strings_size()) != n) {
        throw InvalidArgument("a worker string tensor whose elements do not fit its shape");
      }
      strings[static_cast<size_t>(i)] =
          StringTensor{shape, std::vector<std::string>(w.strings().begin(), w.strings().end())};
      out.emplace_back();
      continue;
    }
    if (w.data_bytes() != static_cast<uint64_t>(n) * info->size ||
        w.data_bytes() > kMaxWorkerFrame) {
      throw InvalidArgument("a worker tensor whose bytes do not fit its dtype and shape");
    }
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(ScalarTypeOf(info->type)));
    auto* data = static_cast<char*>(t.data_ptr());
    const size_t bytes = w.data_bytes();
    // What came with the message first, then straight from the socket into the tensor.
    const size_t buffered = std::min(bytes, in.pending());
    if (buffered > 0) std::memcpy(data, in.bytes.data() + in.begin, buffered);
    in.begin += buffered;
    if (bytes > buffered) {
      const WireStatus s = ReadAll(fd, data + buffered, bytes - buffered, deadline);
      if (s != WireStatus::kOk) return s;
    }
    out.push_back(std::move(t));
  }
  return WireStatus::kOk;
}

}  // namespace lepton
