#include "lepton/common/names.h"

#include "lepton/common/errors.h"

namespace lepton {
namespace {

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// The length of the UTF-8 sequence that starts with `lead` (1 for a stray byte).
size_t Utf8Length(unsigned char lead) {
  if (lead >= 0xf0 && lead < 0xf8) return 4;
  if (lead >= 0xe0) return lead < 0xf0 ? 3 : 1;
  if (lead >= 0xc0) return 2;
  return 1;
}

// The longest prefix of at most `max_bytes` bytes that does not cut a UTF-8 character in two.
std::string_view Utf8Prefix(std::string_view s, size_t max_bytes) {
  size_t end = 0;
  while (end < s.size()) {
    const size_t n = Utf8Length(static_cast<unsigned char>(s[end]));
    if (end + n > max_bytes || end + n > s.size()) break;
    end += n;
  }
  return s.substr(0, end);
}

std::string Quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out += kHex[(c >> 4) & 0xf];
      out += kHex[c & 0xf];
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

void ValidateName(std::string_view value, std::string_view what) {
  const std::string field(what);
  if (value.empty()) throw InvalidArgument(field + " must not be empty");
  if (value.size() > 128) {
    throw InvalidArgument(field + " " + Quote(Utf8Prefix(value, 32)) + "... is " +
                          std::to_string(value.size()) + " characters long; the limit is 128");
  }
  bool only_dots = true;
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (!IsNameChar(c)) {
      // The whole character, not its first byte: half a UTF-8 sequence makes the message
      // undecodable.
      const std::string_view bad =
          Utf8Prefix(value.substr(i), Utf8Length(static_cast<unsigned char>(c)));
      throw InvalidArgument(field + " " + Quote(value) + " contains " +
                            Quote(bad.empty() ? value.substr(i, 1) : bad) +
                            "; allowed are ASCII letters, digits, '.', '_' and '-'");
    }
    if (c != '.') only_dots = false;
  }
  if (only_dots)
    throw InvalidArgument(field + " " + Quote(value) + " must not be made of dots only");
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& s : names) out += (out.empty() ? "" : ", ") + s;
  return out.empty() ? "none" : out;
}

std::string Reference::ToString() const {
  switch (kind) {
    case Kind::kLabel:
      return model + ":" + value;
    case Kind::kAlias:
      return model + "@" + value;
    case Kind::kLatest:
      break;
  }
  return model;
}

Reference ParseReference(std::string_view text) {
  Reference ref;
  const size_t colon = text.find(':');
  const size_t at = text.find('@');
  if (colon != std::string_view::npos && at != std::string_view::npos) {
    throw InvalidArgument("reference " + Quote(text) +
                          " has both ':' and '@'; use name, name:LABEL or name@ALIAS");
  }
  const size_t sep = colon != std::string_view::npos ? colon : at;
  ref.model = std::string(text.substr(0, sep));
  ValidateName(ref.model, "model name in reference " + Quote(text));
  if (sep == std::string_view::npos) return ref;
  ref.value = std::string(text.substr(sep + 1));
  if (colon != std::string_view::npos) {
    ValidateName(ref.value, "version label in reference " + Quote(text));
    ref.kind = Reference::Kind::kLabel;
  } else {
    ValidateName(ref.value, "alias in reference " + Quote(text));
    ref.kind = ref.value == kLatestAlias ? Reference::Kind::kLatest : Reference::Kind::kAlias;
    if (ref.kind == Reference::Kind::kLatest) ref.value.clear();
  }
  return ref;
}

Reference ParseVersionIn(std::string_view model, std::string_view text) {
  if (!text.empty() && text.front() == '@') {
    return ParseReference(std::string(model) + std::string(text));
  }
  if (text.find(':') == std::string_view::npos && text.find('@') == std::string_view::npos) {
    ValidateName(text, "version label");
    Reference ref;
    ref.model = std::string(model);
    ref.kind = Reference::Kind::kLabel;
    ref.value = std::string(text);
    return ref;
  }
  Reference ref = ParseReference(text);
  if (ref.model != model) {
    throw InvalidArgument("reference " + Quote(text) + " names model " + Quote(ref.model) +
                          ", expected a version of " + Quote(model));
  }
  return ref;
}

}  // namespace lepton
