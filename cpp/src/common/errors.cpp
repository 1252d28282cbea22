#include "lepton/common/errors.h"

#include <exception>

namespace lepton {

const std::vector<ErrorKind>& ErrorKinds() {
  static const std::vector<ErrorKind> kinds = {
      {ErrorCode::kInvalidArgument, "InvalidArgument", "ValueError",
       "An argument is malformed or out of range.", 400, FailureReason::kInvalidInput, "", ""},
      {ErrorCode::kNotFound, "NotFound", "LookupError",
       "A model, version, alias or file does not exist.", 404, FailureReason::kNotFound, "", ""},
      {ErrorCode::kConflict, "Conflict", nullptr, "The request clashes with the current state.",
       409, FailureReason::kInternal, "", ""},
      {ErrorCode::kIntegrity, "IntegrityError", nullptr,
       "Stored data does not match its checksum or is missing.", 500, FailureReason::kInternal,
       "a stored artifact failed its integrity check", "integrity_error"},
      {ErrorCode::kStorage, "StorageError", "OSError", "The storage layer failed.", 500,
       FailureReason::kInternal, "the registry's storage failed", "storage_error"},
      {ErrorCode::kOverloaded, "Overloaded", nullptr, "A queue is full; the request was refused.",
       429, FailureReason::kOverloaded, "", ""},
      {ErrorCode::kTimeout, "Timeout", "TimeoutError",
       "A deadline passed before the work completed.", 504, FailureReason::kTimeout, "", ""},
      {ErrorCode::kModel, "ModelError", nullptr, "A model's forward failed or returned no tensors.",
       500, FailureReason::kModelError, "the model failed on this request", "model_error"},
      {ErrorCode::kLoad, "LoadError", nullptr,
       "A version could not be loaded to answer: its artifact, its code or its warm-up failed.",
       500, FailureReason::kUnavailable, "the version could not be loaded", "load_failed"},
      {ErrorCode::kUnavailable, "Unavailable", nullptr,
       "The target is not ready, unloaded or closed.", 503, FailureReason::kUnavailable, "", ""},
      {ErrorCode::kInternal, "LeptonError", nullptr, "Base class of every lepton error.", 500,
       FailureReason::kInternal, "internal error", "internal_error"},
  };
  return kinds;
}

const ErrorKind& KindOf(ErrorCode code) { return ErrorKinds()[static_cast<size_t>(code)]; }

CurrentError CurrentErrorOf() {
  try {
    throw;
  } catch (const Error& e) {
    return {e.code(), e.what()};
  } catch (const std::exception& e) {
    return {ErrorCode::kInternal, e.what()};
  } catch (...) {
    return {ErrorCode::kInternal, "unknown exception"};
  }
}

const char* FailureReasonName(FailureReason r) {
  switch (r) {
    case FailureReason::kInvalidInput:
      return "invalid_input";
    case FailureReason::kNotFound:
      return "not_found";
    case FailureReason::kTimeout:
      return "timeout";
    case FailureReason::kOverloaded:
      return "overloaded";
    case FailureReason::kModelError:
      return "model_error";
    case FailureReason::kUnavailable:
      return "unavailable";
    default:
      return "internal";
  }
}

std::optional<ErrorCode> ErrorCodeOfHttp(int status, std::string_view message) {
  std::optional<ErrorCode> only;
  int matches = 0;
  for (const auto& k : ErrorKinds()) {
    if (k.http_status != status) continue;
    ++matches;
    only = k.code;
    if (*k.summary && message.substr(0, std::string_view(k.summary).size()) == k.summary) {
      return k.code;
    }
  }
  return matches == 1 ? only : std::nullopt;
}

void ThrowErrorOf(ErrorCode code, const std::string& what) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      throw InvalidArgument(what);
    case ErrorCode::kNotFound:
      throw NotFound(what);
    case ErrorCode::kConflict:
      throw Conflict(what);
    case ErrorCode::kIntegrity:
      throw IntegrityError(what);
    case ErrorCode::kStorage:
      throw StorageError(what);
    case ErrorCode::kOverloaded:
      throw Overloaded(what);
    case ErrorCode::kTimeout:
      throw Timeout(what);
    case ErrorCode::kModel:
      throw ModelError(what);
    case ErrorCode::kLoad:
      throw LoadError(what);
    case ErrorCode::kUnavailable:
      throw Unavailable(what);
    case ErrorCode::kInternal:
      break;
  }
  throw Error(what);
}

}  // namespace lepton
