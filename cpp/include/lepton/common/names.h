// Names and references: the validation rules for model names, version labels and aliases, and the
// parser for the three reference forms `name`, `name:LABEL` and `name@ALIAS`.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lepton {

// The alias that always resolves to the highest seq of a model; it cannot be set or moved.
inline constexpr std::string_view kLatestAlias = "latest";

// Throws InvalidArgument unless `value` is 1 to 128 characters of [A-Za-z0-9._-] and is not made of
// dots alone (so it can never be `.` or `..`). `what` names the field in the message.
void ValidateName(std::string_view value, std::string_view what);

struct Reference {
  enum class Kind { kLatest, kLabel, kAlias };
  std::string model;
  Kind kind = Kind::kLatest;
  std::string value;  // the label or alias; empty for kLatest

  std::string ToString() const;
};

// Parses `name`, `name:LABEL` or `name@ALIAS` (and `name@latest`, the same as `name`).
Reference ParseReference(std::string_view text);

// Resolves a version given within a known model: a bare label, `@ALIAS`, or a full reference whose
// model must be `model`.
Reference ParseVersionIn(std::string_view model, std::string_view text);

// "a, b, c" for messages; "none" when empty.
std::string JoinNames(const std::vector<std::string>& names);

}  // namespace lepton
