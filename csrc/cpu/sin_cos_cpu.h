// sin and cos of a row of angles in one vectorised loop, for LTE's Fourier features on the
// CPU (csrc/cpu/sin_cos_cpu.cpp).
//
// Why not ATen's sin/cos: on x86 they call MKL's vector math, which opens its own OpenMP
// region on every call; inside our tile workers (already an OpenMP region) that costs a
// futex round trip per tile and made the two-thread LTE forward 25 % slower than the
// same work without sin and cos.
#pragma once

#include <cstdint>

namespace ik {
namespace cpu {

// Angles up to this magnitude take the polynomial path (error ≤ 1e-7 absolute); a row
// with a larger, infinite or NaN angle takes std::sin/std::cos.
constexpr float kSinCosFastLimit = 8192.0f;

void sin_cos_row(const float* angle, int64_t n, float* sin, float* cos);
void sin_cos_row(const double* angle, int64_t n, double* sin, double* cos);

}  // namespace cpu
}  // namespace ik
