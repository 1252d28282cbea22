// Reading one JSON object of a specification (a policy, a deployment, a server's configuration):
// typed fields with defaults, and a refusal, naming it, of any field nobody asked for.
#pragma once

#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>

#include "lepton/common/errors.h"

namespace lepton {

// Reads the fields of one JSON object, refusing those it does not know.
class Fields {
 public:
  Fields(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {
    if (!j_.is_object()) throw InvalidArgument(where_ + " must be a JSON object");
  }
  ~Fields() noexcept(false) {
    if (std::uncaught_exceptions()) return;
    for (const auto& [k, v] : j_.items()) {
      if (!seen_.count(k)) {
        throw InvalidArgument(where_ + " has an unknown field '" + k + "'");
      }
    }
  }
  bool has(const std::string& k) {
    seen_.insert(k);
    return j_.contains(k) && !j_.at(k).is_null();
  }
  template <typename T>
  T get(const std::string& k, const char* type) {
    if (!has(k)) throw InvalidArgument(where_ + " needs the field '" + k + "'");
    return as<T>(k, type);
  }
  template <typename T>
  T get(const std::string& k, const char* type, T fallback) {
    return has(k) ? as<T>(k, type) : fallback;
  }
  template <typename T>
  std::optional<T> maybe(const std::string& k, const char* type) {
    if (!has(k)) return std::nullopt;
    return as<T>(k, type);
  }
  const nlohmann::json& raw(const std::string& k) {
    if (!has(k)) throw InvalidArgument(where_ + " needs the field '" + k + "'");
    return j_.at(k);
  }
  const std::string& where() const { return where_; }

 private:
  template <typename T>
  T as(const std::string& k, const char* type) {
    // nlohmann converts 1.5 to the integer 1 without a word; an integer field takes integers.
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      if (!j_.at(k).is_number_integer()) {
        throw InvalidArgument(where_ + ": '" + k + "' must be " + type + ", got " +
                              j_.at(k).dump());
      }
    }
    try {
      return j_.at(k).get<T>();
    } catch (const nlohmann::json::exception&) {
      throw InvalidArgument(where_ + ": '" + k + "' must be " + type + ", got " + j_.at(k).dump());
    }
  }
  const nlohmann::json& j_;
  std::string where_;
  std::set<std::string> seen_;
};

}  // namespace lepton
