// The error table: one row per code, in code order, and what each exception type carries.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "lepton/common/errors.h"

namespace lepton {
namespace {

TEST(ErrorTable, OneRowPerCodeInCodeOrder) {
  const auto& kinds = ErrorKinds();
  std::set<std::string> names;
  for (size_t i = 0; i < kinds.size(); ++i) {
    EXPECT_EQ(static_cast<size_t>(kinds[i].code), i);
    EXPECT_TRUE(names.insert(kinds[i].name).second) << kinds[i].name;
    EXPECT_GE(kinds[i].http_status, 400);
  }
  // Failures whose messages carry a model's source, file paths or a library's words give clients
  // a short account and send the details to the event log.
  for (ErrorCode code :
       {ErrorCode::kModel, ErrorCode::kStorage, ErrorCode::kIntegrity, ErrorCode::kInternal}) {
    EXPECT_EQ(KindOf(code).http_status, 500);
    EXPECT_STRNE(KindOf(code).summary, "") << KindOf(code).name;
    EXPECT_STRNE(KindOf(code).event, "") << KindOf(code).name;
  }
  EXPECT_EQ(kinds.size(), static_cast<size_t>(ErrorCode::kInternal) + 1);
  EXPECT_EQ(KindOf(ErrorCode::kInvalidArgument).http_status, 400);
  EXPECT_EQ(KindOf(ErrorCode::kTimeout).failure, FailureReason::kTimeout);
}

TEST(ErrorTable, EachTypeCarriesItsCodeAndTheCurrentErrorIsRead) {
  auto code_of = [](auto thrower) {
    try {
      thrower();
    } catch (...) {
      return CurrentErrorOf().code;
    }
    return ErrorCode::kInternal;
  };
  EXPECT_EQ(code_of([] { throw NotFound("x"); }), ErrorCode::kNotFound);
  EXPECT_EQ(code_of([] { throw StorageError("x", 28); }), ErrorCode::kStorage);
  EXPECT_EQ(code_of([] { throw Error("x"); }), ErrorCode::kInternal);
  EXPECT_EQ(code_of([] { throw std::runtime_error("x"); }), ErrorCode::kInternal);
  try {
    throw StorageError("disk full", 28);
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<const StorageError&>(e).os_errno(), 28);
    EXPECT_STREQ(e.what(), "disk full");
  }
}

TEST(Errors, HttpStatusesMapBackThroughTheTableAndErrorsAreRethrownByType) {
  EXPECT_EQ(ErrorCodeOfHttp(400, "x"), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ErrorCodeOfHttp(404, "x"), ErrorCode::kNotFound);
  EXPECT_EQ(ErrorCodeOfHttp(429, "x"), ErrorCode::kOverloaded);
  EXPECT_EQ(ErrorCodeOfHttp(504, "x"), ErrorCode::kTimeout);
  // 500 is shared: the summary a lepton server sends says which.
  EXPECT_EQ(ErrorCodeOfHttp(500, std::string(KindOf(ErrorCode::kModel).summary) + "; details"),
            ErrorCode::kModel);
  EXPECT_EQ(ErrorCodeOfHttp(500, KindOf(ErrorCode::kInternal).summary), ErrorCode::kInternal);
  EXPECT_EQ(ErrorCodeOfHttp(500, "something else"), std::nullopt);
  EXPECT_EQ(ErrorCodeOfHttp(418, "x"), std::nullopt);
  for (const auto& k : ErrorKinds()) {
    try {
      ThrowErrorOf(k.code, "m");
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), k.code);
      EXPECT_STREQ(e.what(), "m");
    }
  }
  EXPECT_THROW(ThrowErrorOf(ErrorCode::kTimeout, "m"), Timeout);
  EXPECT_THROW(ThrowErrorOf(ErrorCode::kModel, "m"), ModelError);
}

}  // namespace
}  // namespace lepton
