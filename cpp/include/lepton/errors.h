// The error taxonomy of lepton: every failure a caller can act on is one of these types, and each
// maps one-to-one to a Python exception class under lepton.LeptonError.
#pragma once

#include <stdexcept>
#include <string>

namespace lepton {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The caller passed something malformed: a bad name, a bad reference, a file of the wrong format.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A model, version, alias or file that does not exist.
class NotFound : public Error {
 public:
  using Error::Error;
};

// The request clashes with the current state: a duplicate label, a compare-and-swap mismatch, a
// deletion refused because an alias points at the version.
class Conflict : public Error {
 public:
  using Error::Error;
};

// Stored data does not match its checksum, or a referenced artifact is missing.
class IntegrityError : public Error {
 public:
  using Error::Error;
};

// The storage layer failed (I/O error, database locked past its timeout, disk full).
// It carries the operating system's errno when one caused it (ENOSPC for a full disk), else 0.
class StorageError : public Error {
 public:
  explicit StorageError(const std::string& what, int os_errno = 0)
      : Error(what), os_errno_(os_errno) {}
  int os_errno() const { return os_errno_; }

 private:
  int os_errno_;
};

// A queue is full; the request was refused at once.
class Overloaded : public Error {
 public:
  using Error::Error;
};

// A deadline passed before the work completed.
class Timeout : public Error {
 public:
  using Error::Error;
};

// A model's own code failed: its forward raised, or it returned something that is not tensors.
class ModelError : public Error {
 public:
  using Error::Error;
};

// The target cannot serve now: not ready, draining past its deadline, unloaded, or closed.
class Unavailable : public Error {
 public:
  using Error::Error;
};

}  // namespace lepton
