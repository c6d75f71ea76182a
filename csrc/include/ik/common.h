// Small helpers shared by the CPU loops and the CUDA kernels of implicit-kernels.
//
// Everything here is header-only, free of ATen/torch, and usable on host and device:
// functions are marked IK_HD (`__host__ __device__ inline` under nvcc, `inline` otherwise).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define IK_HD __host__ __device__ inline
#else
#define IK_HD inline
#endif

namespace ik {

// Indices are int64 everywhere: output grids of x30 super-resolution times batch times
// channels overflow int32 offsets long before memory runs out.
using index_t = int64_t;

// ---------------------------------------------------------------------------------------
// Correctly rounded float arithmetic that the compiler may not fuse.
//
// The geometry must reproduce PyTorch's float results bit for bit (nearest-code choice
// flips on one ulp).  nvcc contracts `a * b + c` into an FMA by default (--fmad=true),
// which skips one rounding; the `__f*_rn` / `__d*_rn` intrinsics are never contracted.
// Host code is compiled with -ffp-contract=off for the same reason.
// ---------------------------------------------------------------------------------------

IK_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
IK_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
IK_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
IK_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
IK_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
IK_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
IK_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
IK_HD double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// Round half to even (torch.round); rint uses the current rounding mode, which is
// round-to-nearest-even unless someone changed it with fesetround.
IK_HD float round_half_even(float x) { return rintf(x); }
IK_HD double round_half_even(double x) { return rint(x); }

IK_HD float abs_val(float x) { return fabsf(x); }
IK_HD double abs_val(double x) { return fabs(x); }

IK_HD float floor_val(float x) { return floorf(x); }
IK_HD double floor_val(double x) { return floor(x); }

IK_HD float sqrt_val(float x) { return sqrtf(x); }
IK_HD double sqrt_val(double x) { return sqrt(x); }
// sin(x) and cos(x) together (sincos on the device, where it is one evaluation; the
// accurate versions: the build never uses fast math).
IK_HD void sin_cos(float x, float* s, float* c) {
#if defined(__CUDA_ARCH__)
  sincosf(x, s, c);
#else
  *s = sinf(x);
  *c = cosf(x);
#endif
}
IK_HD void sin_cos(double x, double* s, double* c) {
#if defined(__CUDA_ARCH__)
  sincos(x, s, c);
#else
  *s = sin(x);
  *c = cos(x);
#endif
}

// torch.clamp(x, lo, hi) for floats: NaN passes through, otherwise min(max(x, lo), hi).
template <typename T>
IK_HD T clamp_val(T x, T lo, T hi) {
  if (x != x) return x;
  T y = x < lo ? lo : x;
  return y > hi ? hi : y;
}

template <typename T>
IK_HD T min_val(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
IK_HD T max_val(T a, T b) {
  return a < b ? b : a;
}

// Python/torch floor division and modulo for a positive divisor (C++ `/` truncates).
IK_HD index_t floor_div(index_t a, index_t b) {
  index_t q = a / b;
  return (q * b != a && a < 0) ? q - 1 : q;
}
IK_HD index_t floor_mod(index_t a, index_t b) { return a - floor_div(a, b) * b; }

}  // namespace ik
