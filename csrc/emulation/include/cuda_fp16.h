// Emulated builds only: __half, IEEE binary16 storage with float arithmetic, converted
// as the CUDA headers do (round to nearest, ties to even).
#pragma once

#include <cstdint>
#include <cstring>

struct __half {
  __half() = default;
  __half(float value) : bits(from_float(value)) {}  // NOLINT: implicit, as CUDA's
  operator float() const { return to_float(bits); }

  uint16_t bits;

 private:
  static uint16_t from_float(float value) {
    uint32_t f;
    std::memcpy(&f, &value, sizeof f);
    const uint32_t sign = (f >> 16) & 0x8000u;
    const uint32_t magnitude = f & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
    if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow
    if (magnitude < 0x38800000u) {
      // Subnormal or zero: the value in units of 2^-24, rounded to nearest even.
      const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
      const int shift = 126 - static_cast<int>(magnitude >> 23);  // 14 + (113 - exponent)
      if (shift > 24) return static_cast<uint16_t>(sign);
      const uint32_t half_ulp = 1u << (shift - 1), rest = mantissa & ((1u << shift) - 1);
      uint32_t h = mantissa >> shift;
      if (rest > half_ulp || (rest == half_ulp && (h & 1u))) ++h;
      return static_cast<uint16_t>(sign | h);
    }
    // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
    uint32_t h = (magnitude - 0x38000000u) >> 13;
    const uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }

  static float to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    uint32_t f;
    if (exponent == 0x1fu) {
      f = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
      f = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
      f = sign;
    } else {
      const float value = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
      std::memcpy(&f, &value, sizeof f);
      f |= sign;
    }
    float value;
    std::memcpy(&value, &f, sizeof value);
    return value;
  }
};

inline __half __float2half(float value) { return __half(value); }
inline float __half2float(__half value) { return static_cast<float>(value); }
