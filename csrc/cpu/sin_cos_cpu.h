// sin and cos of a row of angles in one vectorised loop, for LTE's Fourier features on the
// CPU (csrc/cpu/sin_cos_cpu.cpp).
//
// Why not ATen's sin/cos: on x86 they call MKL's vector math, which opens its own OpenMP
// region on every call; inside our tile workers (already an OpenMP region) that costs a
// futex round trip per tile and made the two-thread LTE forward 25 % slower than the
// same work without sin and cos.
#pragma once

#include <cstdint>

#include "ik/lte_decode.h"

namespace ik {
namespace cpu {

// Angles up to this magnitude take the polynomial path (error ≤ 1e-7 absolute); a row
// with a larger, infinite or NaN angle takes std::sin/std::cos.
constexpr float kSinCosFastLimit = 8192.0f;

void sin_cos_row(const float* angle, int64_t n, float* sin, float* cos);
void sin_cos_row(const double* angle, int64_t n, double* sin, double* cos);

// sin and cos of π·phi_i (ik::lte::phase_angle) for pairs i < m of one LTE member row
// (its frequency row, the phase weight, its inputs with `ends` offsets) into sin and cos;
// `angle` is m values of scratch.
template <typename T>
inline void lte_member_sin_cos(const T* freq_row, const T* phase_w, const T* in, int ends,
                               int64_t m, T* angle, T* sin, T* cos) {
  for (int64_t i = 0; i < m; ++i) {
    angle[i] = lte::pi<T>() * lte::phase_angle<T>(i, freq_row, phase_w, in, ends);
  }
  sin_cos_row(angle, m, sin, cos);
}

}  // namespace cpu
}  // namespace ik
