// Emulated builds only: __nv_bfloat16, the upper half of an IEEE binary32, converted as
// the CUDA headers do (round to nearest, ties to even).
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  __nv_bfloat16() = default;
  __nv_bfloat16(float value) : bits(from_float(value)) {}  // NOLINT: implicit, as CUDA's
  operator float() const {
    const uint32_t f = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &f, sizeof value);
    return value;
  }

  uint16_t bits;

 private:
  static uint16_t from_float(float value) {
    uint32_t f;
    std::memcpy(&f, &value, sizeof f);
    if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);  // NaN
    return static_cast<uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
  }
};

inline __nv_bfloat16 __float2bfloat16(float value) { return __nv_bfloat16(value); }
inline float __bfloat162float(__nv_bfloat16 value) { return static_cast<float>(value); }
