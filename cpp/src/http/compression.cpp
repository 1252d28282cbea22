#include "lepton/http/compression.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace lepton::http {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

constexpr size_t kChunk = 256 << 10;

}  // namespace

Coding ParseContentEncoding(std::string_view value) {
  const std::string v = Lower(Trim(value));
  if (v.empty() || v == "identity") return Coding::kIdentity;
  if (v == "gzip" || v == "x-gzip") return Coding::kGzip;
  if (v == "deflate") return Coding::kDeflate;
  throw std::invalid_argument("Content-Encoding '" + std::string(value) +
                              "' is not supported (gzip, deflate or identity)");
}

Coding PreferredCoding(std::string_view accept_encoding) {
  bool gzip = false, deflate = false;
  size_t start = 0;
  while (start <= accept_encoding.size()) {
    const size_t comma = std::min(accept_encoding.find(',', start), accept_encoding.size());
    std::string item = Lower(Trim(accept_encoding.substr(start, comma - start)));
    start = comma + 1;
    const size_t semi = item.find(';');
    const std::string coding = Trim(item.substr(0, semi));
    // "q=0" refuses a coding.
    const bool refused = semi != std::string::npos &&
                         Trim(item.substr(semi + 1)).rfind("q=0", 0) == 0 &&
                         item.find_first_of("123456789", semi) == std::string::npos;
    if (refused) continue;
    gzip = gzip || coding == "gzip" || coding == "x-gzip";
    deflate = deflate || coding == "deflate";
  }
  return gzip ? Coding::kGzip : deflate ? Coding::kDeflate : Coding::kIdentity;
}

const char* CodingName(Coding coding) {
  switch (coding) {
    case Coding::kGzip:
      return "gzip";
    case Coding::kDeflate:
      return "deflate";
    default:
      return "identity";
  }
}

bool Inflate(std::string_view in, size_t limit, const std::function<bool(size_t)>& reserve,
             std::string* out) {
  z_stream z{};
  // 32 + MAX_WBITS: a gzip or a zlib header, whichever the body has.
  if (inflateInit2(&z, 32 + MAX_WBITS) != Z_OK) throw std::runtime_error("zlib: inflateInit2");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&z};
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  out->clear();
  for (;;) {
    const size_t room = std::min(kChunk, limit + 1 - std::min(limit + 1, out->size()));
    if (room == 0) return false;  // past the limit
    if (reserve && !reserve(room)) throw std::length_error("no memory budget left to inflate");
    const size_t before = out->size();
    out->resize(before + room);
    z.next_out = reinterpret_cast<Bytef*>(out->data() + before);
    z.avail_out = static_cast<uInt>(room);
    const int rc = inflate(&z, Z_NO_FLUSH);
    out->resize(before + (room - z.avail_out));
    if (out->size() > limit) return false;
    if (rc == Z_STREAM_END) {
      if (z.avail_in != 0) throw std::invalid_argument("data after the end of the compressed body");
      return true;
    }
    if (rc == Z_BUF_ERROR && z.avail_in == 0) {
      throw std::invalid_argument("the compressed body is truncated");
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      throw std::invalid_argument(
          std::string("the compressed body is corrupt: ") +
          (z.msg ? std::string(z.msg) : "zlib error " + std::to_string(rc)));
    }
  }
}

std::string Compress(std::string_view in, Coding coding) {
  z_stream z{};
  const int bits = coding == Coding::kGzip ? 16 + MAX_WBITS : MAX_WBITS;
  if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    throw std::runtime_error("zlib: deflateInit2");
  }
  std::string out(deflateBound(&z, static_cast<uLong>(in.size())), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&z, Z_FINISH);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) throw std::runtime_error("zlib: deflate did not finish");
  return out;
}

bool WorthCompressing(std::string_view body) {
  constexpr size_t kProbe = 8 << 10, kFrom = 64 << 10;
  if (body.size() < kFrom) return true;
  // Samples from the start, the middle and the end: a binary response starts with its JSON.
  std::string sample;
  sample.reserve(3 * kProbe);
  for (const size_t at : {size_t{0}, body.size() / 2, body.size() - kProbe}) {
    sample.append(body.substr(at, kProbe));
  }
  return Compress(sample, Coding::kDeflate).size() < sample.size() * 9 / 10;
}

}  // namespace lepton::http
