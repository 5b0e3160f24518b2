#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/dtype.h"

namespace mlaforge {

TEST(DType, HalfRoundTripsEveryFiniteValue) {
  int checked = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    if (((bits >> 10) & 0x1f) == 0x1f) continue;  // inf / nan
    EXPECT_EQ(float_to_half(half_to_float(bits)), bits) << std::hex << h;
    ++checked;
  }
  EXPECT_EQ(checked, 63488);
  EXPECT_FLOAT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_FLOAT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_FLOAT_EQ(half_to_float(0x0001), 5.9604644775390625e-08f);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  float f;
  uint32_t u = 0x3f808000u;  // exactly halfway between 0x3f80 and 0x3f81 -> even (0x3f80)
  std::memcpy(&f, &u, 4);
  EXPECT_EQ(float_to_bf16(f), 0x3f80);
  u = 0x3f818000u;  // halfway, odd lower -> rounds up to 0x3f82
  std::memcpy(&f, &u, 4);
  EXPECT_EQ(float_to_bf16(f), 0x3f82);
  EXPECT_FLOAT_EQ(bf16_to_float(0x4049), 3.140625f);
}

TEST(DType, NamesRoundTrip) {
  for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16,
                  DType::I8, DType::U8, DType::Bool}) {
    EXPECT_EQ(dtype_from_name(dtype_name(d)), d);
  }
  EXPECT_FALSE(dtype_from_name("F8_E4M3").has_value());
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
}

}  // namespace mlaforge
