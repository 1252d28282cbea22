#include "transport_impl.h"

namespace lepton::http {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool PercentDecode(std::string_view in, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      const int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out->push_back(' ');
    } else {
      out->push_back(c);
    }
  }
  return true;
}

}  // namespace

bool SplitTarget(std::string_view target, std::string* path,
                 std::map<std::string, std::string>* query) {
  const size_t q = target.find('?');
  if (!PercentDecode(target.substr(0, q), false, path)) return false;
  if (q == std::string_view::npos) return true;
  std::string_view rest = target.substr(q + 1);
  std::string key, value;
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view kv = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (kv.empty()) continue;
    const size_t eq = kv.find('=');
    if (!PercentDecode(kv.substr(0, eq), true, &key)) return false;
    if (eq == std::string_view::npos) {
      value.clear();
    } else if (!PercentDecode(kv.substr(eq + 1), true, &value)) {
      return false;
    }
    (*query)[key] = value;
  }
  return true;
}

// One event loop: an io_context run by one thread, which handles its connections' requests
// where it parses them. While that thread is inside a handler for longer than the stall limit,
// a helper thread runs the loop, so a slow model cannot hold up the loop's other connections.

Transport::Transport(TransportOptions options, Handler handler)
    : impl_(std::make_shared<Impl>(std::move(options), std::move(handler))) {}
Transport::~Transport() { impl_->Stop(); }
int Transport::Listen(const std::string& host, int port) { return impl_->Listen(host, port); }
void Transport::Start() { impl_->Start(); }
void Transport::Stop() { impl_->Stop(); }
size_t Transport::buffered_bytes() const { return impl_->buffered(); }

}  // namespace lepton::http
