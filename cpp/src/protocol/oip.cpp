// The codec's shared parts: datatypes, half-precision conversions and request parameters.
#include "lepton/protocol/oip.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "lepton/common/errors.h"

namespace lepton::oip {

uint16_t HalfFromFloat(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) {  // inf or NaN (a NaN keeps a payload bit)
    return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0);
  }
  if (abs >= 0x477ff000) return sign | 0x7c00;  // rounds past 65504: inf
  if (abs < 0x38800000) {                       // a half subnormal, or zero
    if (abs < 0x33000000) return sign;          // under half the smallest subnormal
    const uint32_t mant = (abs & 0x7fffff) | 0x800000;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14..24
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((abs - 0x38000000) >> 13);  // rebias the exponent, keep 10 mantissa bits
  const uint32_t rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

float FloatFromHalf(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t x;
  if (exp == 0x1f) {
    x = sign | 0x7f800000 | (mant << 13);
  } else if (exp != 0) {
    x = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    x = sign;
  } else {  // subnormal: normalise
    int e = -1;
    uint32_t m = mant;
    do {
      ++e;
      m <<= 1;
    } while (!(m & 0x400));
    x = sign | (static_cast<uint32_t>(112 - e) << 23) | ((m & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t Bf16FromFloat(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fff + ((x >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

float FloatFromBf16(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

std::optional<DataType> ParseDataType(std::string_view n) {
  const DTypeInfo* d = DTypeOnWire(n);
  if (!d || !(d->numeric_on_wire || d->type == DataType::kString)) return std::nullopt;
  return d->type;
}

const char* DataTypeName(DataType t) { return InfoOf(t).wire; }

size_t ElementSize(DataType t) { return InfoOf(t).size; }

void AppendBytesElement(std::string& out, std::string_view element) {
  if (element.size() > std::numeric_limits<uint32_t>::max()) {
    throw InvalidArgument("a BYTES element of " + std::to_string(element.size()) +
                          " bytes is longer than its 4-byte length can say");
  }
  const uint32_t n = static_cast<uint32_t>(element.size());
  char b[4];
  std::memcpy(b, &n, 4);
  out.append(b, 4);
  out.append(element);
}

std::vector<std::string_view> SplitBytesElements(std::string_view data, int64_t count,
                                                 const std::string& where) {
  std::vector<std::string_view> out;
  // Every element takes at least its 4-byte length: a count beyond that is a lie, not a reserve.
  out.reserve(static_cast<size_t>(std::min<int64_t>(count, int64_t(data.size() / 4))));
  size_t at = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (data.size() - at < 4) {
      throw InvalidArgument(where + ": BYTES data ends before element " + std::to_string(i) +
                            " of " + std::to_string(count) + " (each takes a 4-byte length)");
    }
    uint32_t n;
    std::memcpy(&n, data.data() + at, 4);
    at += 4;
    if (n > data.size() - at) {
      throw InvalidArgument(where + ": BYTES element " + std::to_string(i) + " says " +
                            std::to_string(n) + " bytes but " + std::to_string(data.size() - at) +
                            " are left");
    }
    out.push_back(data.substr(at, n));
    at += n;
  }
  if (at != data.size()) {
    throw InvalidArgument(where + ": " + std::to_string(data.size() - at) +
                          " bytes of BYTES data follow the " + std::to_string(count) +
                          " elements the shape holds");
  }
  return out;
}

int64_t WireTensor::elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

bool WantsBinary(const InferRequest& request, const std::string& name) {
  for (const auto& [n, binary] : request.binary_output) {
    if (n == name) return binary;
  }
  return request.binary_outputs;
}

// Binary tensor data is little-endian; tensors are copied to and from it byte for byte.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "binary tensor data is little-endian");

namespace {

// lepton's priorities run from -kTopPriority to kTopPriority, higher first.
constexpr int64_t kTopPriority = 1000000;

}  // namespace

void ApplyRequestParameter(InferRequest& r, std::string_view key, const ParameterValue& v) {
  const auto* b = std::get_if<bool>(&v);
  const auto* i = std::get_if<int64_t>(&v);
  const auto* u = std::get_if<uint64_t>(&v);
  const auto* d = std::get_if<double>(&v);
  const auto* s = std::get_if<std::string_view>(&v);
  if (key == "key") {
    if (!s) throw InvalidArgument("parameter 'key' must be a string");
    r.key = std::string(*s);
  } else if (key == "timeout" || key == "lepton_timeout") {
    // Triton's clients send "timeout" in microseconds; lepton's own name takes seconds.
    const bool micros = key == "timeout";
    const double x = i ? double(*i) : u ? double(*u) : d ? *d : 0;
    if (!(x > 0) || !std::isfinite(x)) {
      throw InvalidArgument("parameter '" + std::string(key) + "' must be a positive number of " +
                            (micros ? "microseconds" : "seconds"));
    }
    r.timeout_s = micros ? x * 1e-6 : x;
  } else if (key == "priority") {
    // Triton's meaning: 0 is the default, 1 the highest, larger numbers lower. lepton serves
    // higher numbers first, so p becomes kTopPriority - p (1 the highest of all).
    if (!(u || (i && *i >= 0))) {
      throw InvalidArgument(
          "parameter 'priority' must be a non-negative integer (1 is the highest; 0 the "
          "default)");
    }
    const uint64_t p = u ? *u : uint64_t(*i);
    if (p > 0) {
      r.priority = static_cast<int>(kTopPriority -
                                    static_cast<int64_t>(std::min<uint64_t>(p, 2 * kTopPriority)));
    }
  } else if (key == "lepton_priority") {
    if (!i || std::abs(*i) > kTopPriority) {
      throw InvalidArgument("parameter 'lepton_priority' must be an integer in [-" +
                            std::to_string(kTopPriority) + ", " + std::to_string(kTopPriority) +
                            "] (higher is served first)");
    }
    r.priority = static_cast<int>(*i);
  } else if (key == "binary_data_output") {
    if (!b) throw InvalidArgument("parameter 'binary_data_output' must be true or false");
    r.binary_outputs = *b;
  }
  // Other parameters are the protocol's extension point and are ignored, as it asks.
}

}  // namespace lepton::oip
