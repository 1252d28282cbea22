// The error taxonomy of lepton: every failure a caller can act on is one of these types, each with
// a code, and one table (ErrorKinds) maps each code to its Python exception class, its HTTP status
// and the failure reason that metrics count it under.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace lepton {

enum class ErrorCode {
  kInvalidArgument,  // the caller passed something malformed
  kNotFound,         // a model, version, alias or file that does not exist
  kConflict,         // clashes with the current state (compare-and-swap, duplicate label)
  kIntegrity,        // stored data does not match its checksum, or is missing
  kStorage,          // the storage layer failed (I/O, database locked past its timeout, disk full)
  kOverloaded,       // a queue is full; refused at once
  kTimeout,          // a deadline passed before the work completed
  kModel,            // a model's own code failed
  kLoad,             // a version could not be loaded to answer (artifact, code or warm-up)
  kUnavailable,      // the target cannot serve now (not ready, draining, unloaded, closed)
  kInternal,         // anything else: a bug, or a library's failure
};

// The reasons a request's failure is counted under in the metrics.
enum class FailureReason {
  kInvalidInput,
  kNotFound,
  kTimeout,
  kOverloaded,
  kModelError,
  kUnavailable,
  kInternal,
  kCount
};
const char* FailureReasonName(FailureReason r);

// One row of the error table.
struct ErrorKind {
  ErrorCode code;
  const char* name;            // the Python class, lepton.<name> (LeptonError for kInternal)
  const char* python_builtin;  // a builtin exception it also derives from, or nullptr
  const char* doc;
  int http_status;
  FailureReason failure;
  // For server-side failures (5xx): the short account a client gets, and the event-log kind under
  // which the details go.
  const char* summary;
  const char* event;
};

// Every kind, in ErrorCode order.
const std::vector<ErrorKind>& ErrorKinds();
const ErrorKind& KindOf(ErrorCode code);

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : Error(ErrorCode::kInternal, what) {}
  Error(ErrorCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// The code and message of the exception being handled: a lepton::Error's own code, kInternal for
// any other exception. Call only inside a catch block.
struct CurrentError {
  ErrorCode code;
  std::string message;
};
CurrentError CurrentErrorOf();

// One type per code, each for catching one kind of failure.
class InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& what) : Error(ErrorCode::kInvalidArgument, what) {}
};

class NotFound : public Error {
 public:
  explicit NotFound(const std::string& what) : Error(ErrorCode::kNotFound, what) {}
};

class Conflict : public Error {
 public:
  explicit Conflict(const std::string& what) : Error(ErrorCode::kConflict, what) {}
};

class IntegrityError : public Error {
 public:
  explicit IntegrityError(const std::string& what) : Error(ErrorCode::kIntegrity, what) {}
};

class LoadError : public Error {
 public:
  explicit LoadError(const std::string& what) : Error(ErrorCode::kLoad, what) {}
};

class Overloaded : public Error {
 public:
  explicit Overloaded(const std::string& what) : Error(ErrorCode::kOverloaded, what) {}
};

class Timeout : public Error {
 public:
  explicit Timeout(const std::string& what) : Error(ErrorCode::kTimeout, what) {}
};

class ModelError : public Error {
 public:
  explicit ModelError(const std::string& what) : Error(ErrorCode::kModel, what) {}
};

class Unavailable : public Error {
 public:
  explicit Unavailable(const std::string& what) : Error(ErrorCode::kUnavailable, what) {}
};

// It carries the operating system's errno when one caused it (ENOSPC for a full disk), else 0.
class StorageError : public Error {
 public:
  explicit StorageError(const std::string& what, int os_errno = 0)
      : Error(ErrorCode::kStorage, what), os_errno_(os_errno) {}
  int os_errno() const { return os_errno_; }

 private:
  int os_errno_;
};

// The code an HTTP status of lepton's (the table's `http_status`) stands for; for a status several
// codes share (500), the one whose `summary` begins `message`. nullopt when none does.
std::optional<ErrorCode> ErrorCodeOfHttp(int status, std::string_view message);

// Throws the type of `code` (InvalidArgument for kInvalidArgument, ...) with `what`: for an error
// that crossed a process boundary as its code and message.
[[noreturn]] void ThrowErrorOf(ErrorCode code, const std::string& what);

}  // namespace lepton
