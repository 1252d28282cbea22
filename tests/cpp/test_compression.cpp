// HTTP content codings: what clients send in Accept-Encoding, inflating within a limit, and
// bodies compressed one way read back the other.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "lepton/http/compression.h"

namespace lepton::http {
namespace {

TEST(Compression, PicksWhatTheClientAccepts) {
  EXPECT_EQ(PreferredCoding("gzip, deflate"), Coding::kGzip);
  EXPECT_EQ(PreferredCoding("deflate"), Coding::kDeflate);
  EXPECT_EQ(PreferredCoding("br;q=1.0, gzip;q=0"), Coding::kIdentity);
  EXPECT_EQ(PreferredCoding("identity"), Coding::kIdentity);
  EXPECT_EQ(ParseContentEncoding(" GZIP "), Coding::kGzip);
  EXPECT_EQ(ParseContentEncoding(""), Coding::kIdentity);
  EXPECT_THROW(ParseContentEncoding("br"), std::invalid_argument);
}

TEST(Compression, RoundTripsBothCodings) {
  std::string text;
  for (int i = 0; i < 10000; ++i) text += std::to_string(i) + ",";
  for (Coding c : {Coding::kGzip, Coding::kDeflate}) {
    const std::string packed = Compress(text, c);
    EXPECT_LT(packed.size(), text.size() / 2);
    std::string out;
    ASSERT_TRUE(Inflate(packed, text.size(), nullptr, &out));
    EXPECT_EQ(out, text);
  }
}

TEST(Compression, SkipsBodiesThatBarelyShrink) {
  std::string numbers;
  while (numbers.size() < (1 << 20)) numbers += std::to_string(numbers.size()) + ",";
  EXPECT_TRUE(WorthCompressing(numbers));
  // A JSON header followed by a megabyte of pseudo-random floats' bytes (fixed seed).
  std::string binary = R"({"model_name":"m","outputs":[]})";
  uint64_t x = 20261201;
  while (binary.size() < (1 << 20)) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    binary.push_back(static_cast<char>(x >> 56));
  }
  EXPECT_FALSE(WorthCompressing(binary));
  EXPECT_TRUE(WorthCompressing(binary.substr(0, 1000)));  // small: cheap either way
}

TEST(Compression, StopsAtTheLimitAndRefusesCorruptBodies) {
  const std::string big(8 << 20, 'a');
  const std::string bomb = Compress(big, Coding::kGzip);
  ASSERT_LT(bomb.size(), 64u << 10);
  std::string out;
  size_t reserved = 0;
  EXPECT_FALSE(Inflate(
      bomb, 1 << 20, [&](size_t n) { return (reserved += n) < (4u << 20); }, &out));
  EXPECT_LE(out.size(), (1u << 20) + 1);  // never inflated much past the limit
  EXPECT_LT(reserved, 2u << 20);
  EXPECT_THROW(Inflate(
                   bomb, 16 << 20, [](size_t) { return false; }, &out),
               std::length_error);
  EXPECT_THROW(Inflate("not compressed", 1 << 20, nullptr, &out), std::invalid_argument);
  EXPECT_THROW(Inflate(bomb.substr(0, bomb.size() / 2), 16 << 20, nullptr, &out),
               std::invalid_argument);
}

}  // namespace
}  // namespace lepton::http
