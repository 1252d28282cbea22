// The protocol codec's FP16 and BF16 conversions agree with LibTorch's bit for bit.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "lepton/protocol/oip.h"

namespace lepton {
namespace {

uint32_t Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}

TEST(HalfFloats, EveryHalfAndBfloat16ReadsAsLibTorchReadsIt) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float ours = oip::FloatFromHalf(static_cast<uint16_t>(h));
    const float theirs =
        static_cast<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()));
    if (std::isnan(theirs)) {
      EXPECT_TRUE(std::isnan(ours)) << h;
    } else {
      EXPECT_EQ(Bits(ours), Bits(theirs)) << h;
    }
    const float b_ours = oip::FloatFromBf16(static_cast<uint16_t>(h));
    const float b_theirs =
        static_cast<float>(c10::BFloat16(static_cast<uint16_t>(h), c10::BFloat16::from_bits()));
    if (!std::isnan(b_theirs)) EXPECT_EQ(Bits(b_ours), Bits(b_theirs)) << h;
  }
}

TEST(HalfFloats, FloatsRoundToTheSameHalfAndBfloat16AsLibTorch) {
  std::mt19937 rng(20261201);
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 2000000; ++i) {
    uint32_t x = any(rng);
    // Half the draws near half's range, where rounding, subnormals and overflow happen.
    if (i % 2) x = (x & 0x807fffff) | ((100 + (x >> 23) % 60) << 23);
    float f;
    std::memcpy(&f, &x, 4);
    if (std::isnan(f)) continue;
    ASSERT_EQ(oip::HalfFromFloat(f), c10::Half(f).x) << f;
    ASSERT_EQ(oip::Bf16FromFloat(f), c10::BFloat16(f).x) << f;
  }
}

}  // namespace
}  // namespace lepton
