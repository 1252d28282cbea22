// Every test starts from the same random seed, so statistical tests repeat exactly.
#include <gtest/gtest.h>

#include "lepton/policy/policies.h"

namespace {

class SeedEachTest : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo&) override { lepton::SeedRandom(20261123); }
};

const bool kRegistered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedEachTest);
  return true;
}();

}  // namespace
