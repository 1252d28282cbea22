#include <gtest/gtest.h>

#include "lepton/common/errors.h"
#include "lepton/common/names.h"

namespace lepton {
namespace {

TEST(Names, AcceptsLettersDigitsDotUnderscoreDash) {
  EXPECT_NO_THROW(ValidateName("resnet-50_v1.2", "model name"));
  EXPECT_NO_THROW(ValidateName(std::string(128, 'a'), "model name"));
  EXPECT_NO_THROW(ValidateName(".hidden", "model name"));
}

TEST(Names, RejectsEmptyLongPathsAndDots) {
  EXPECT_THROW(ValidateName("", "model name"), InvalidArgument);
  EXPECT_THROW(ValidateName(std::string(129, 'a'), "model name"), InvalidArgument);
  EXPECT_THROW(ValidateName("a/b", "model name"), InvalidArgument);
  EXPECT_THROW(ValidateName("..", "model name"), InvalidArgument);
  EXPECT_THROW(ValidateName(".", "model name"), InvalidArgument);
  EXPECT_THROW(ValidateName("a b", "model name"), InvalidArgument);
  EXPECT_THROW(ValidateName(std::string("a\0b", 3), "model name"), InvalidArgument);
}

TEST(Names, MessageSaysWhatIsWrong) {
  try {
    ValidateName("../etc", "model name");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'/'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model name"), std::string::npos) << e.what();
  }
}

TEST(References, ParsesTheThreeForms) {
  Reference r = ParseReference("clf");
  EXPECT_EQ(r.model, "clf");
  EXPECT_EQ(r.kind, Reference::Kind::kLatest);
  r = ParseReference("clf:v1.1");
  EXPECT_EQ(r.kind, Reference::Kind::kLabel);
  EXPECT_EQ(r.value, "v1.1");
  EXPECT_EQ(r.ToString(), "clf:v1.1");
  r = ParseReference("clf@production");
  EXPECT_EQ(r.kind, Reference::Kind::kAlias);
  EXPECT_EQ(r.value, "production");
  EXPECT_EQ(ParseReference("clf@latest").kind, Reference::Kind::kLatest);
}

TEST(References, RejectsMalformed) {
  for (const char* bad : {"", ":v1", "@prod", "clf:", "clf@", "clf:v1@prod", "clf:a:b", "a/b:v1"}) {
    EXPECT_THROW(ParseReference(bad), InvalidArgument) << bad;
  }
}

TEST(References, VersionWithinModel) {
  EXPECT_EQ(ParseVersionIn("clf", "v2").ToString(), "clf:v2");
  EXPECT_EQ(ParseVersionIn("clf", "@prod").ToString(), "clf@prod");
  EXPECT_EQ(ParseVersionIn("clf", "clf:v3").ToString(), "clf:v3");
  EXPECT_THROW(ParseVersionIn("clf", "other:v3"), InvalidArgument);
}

}  // namespace
}  // namespace lepton
