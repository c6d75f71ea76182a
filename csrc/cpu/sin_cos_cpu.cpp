// The float path of sin_cos_row (sin_cos_cpu.h) is the classic Cephes single-precision
// scheme: reduce |x| to z in [-π/4, π/4] by an even multiple j of π/4 (π/4 split in three
// parts so that j·part is exact while j < 2^16), evaluate the sine and cosine minimax
// polynomials of z, and pick and sign them by j's octant; branch-free, so the loop
// vectorises, with an AVX2 clone (avx2_clone.h).
#include "sin_cos_cpu.h"

#include <ATen/ATen.h>

#include <cmath>

#include "../library.h"
#include "avx2_clone.h"

namespace ik {
namespace cpu {
namespace {

IK_AVX2_CLONE bool all_fast(const float* angle, int64_t n) {
  int slow = 0;  // an int count, not a bool: the loop vectorises
  for (int64_t i = 0; i < n; ++i) slow += !(std::fabs(angle[i]) <= kSinCosFastLimit);
  return slow == 0;  // NaN counts as slow: the comparison is false
}

IK_AVX2_CLONE void sin_cos_polynomial(const float* angle, int64_t n, float* sin, float* cos) {
  constexpr float kFourOverPi = 1.27323954473516f;
  constexpr float kQuarterPi1 = 0.78515625f, kQuarterPi2 = 2.4187564849853515625e-4f,
                  kQuarterPi3 = 3.77489497744594108e-8f;
  constexpr float kS1 = -1.6666654611e-1f, kS2 = 8.3321608736e-3f, kS3 = -1.9515295891e-4f;
  constexpr float kC1 = 4.166664568298827e-2f, kC2 = -1.388731625493765e-3f,
                  kC3 = 2.443315711809948e-5f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = angle[i], ax = std::fabs(a);
    int j = static_cast<int>(ax * kFourOverPi);
    j += j & 1;
    const float y = static_cast<float>(j);
    const float z = ((ax - y * kQuarterPi1) - y * kQuarterPi2) - y * kQuarterPi3;
    const float zz = z * z;
    const float sin_z = z + z * zz * (kS1 + zz * (kS2 + zz * kS3));
    const float cos_z = 1.0f - 0.5f * zz + zz * zz * (kC1 + zz * (kC2 + zz * kC3));
    // j mod 8 is 0, 2, 4 or 6: sin|x| = sin z, cos z, -sin z, -cos z; cos x = cos z, -sin z,
    // -cos z, sin z.
    const bool swap = (j & 2) != 0;
    const float s = swap ? cos_z : sin_z, c = swap ? sin_z : cos_z;
    sin[i] = std::copysign(1.0f, a) * ((j & 4) != 0 ? -s : s);  // sin(-0) = -0
    cos[i] = ((j + 2) & 4) != 0 ? -c : c;
  }
}

template <typename T>
void sin_cos_libm(const T* angle, int64_t n, T* sin, T* cos) {
  for (int64_t i = 0; i < n; ++i) {
    sin[i] = std::sin(angle[i]);
    cos[i] = std::cos(angle[i]);
  }
}

// The operator sin_cos (csrc/ops.cpp): sin_cos_row over a tensor, for its accuracy test.
std::tuple<at::Tensor, at::Tensor> sin_cos_op(const at::Tensor& angle) {
  TORCH_CHECK(angle.scalar_type() == at::kFloat || angle.scalar_type() == at::kDouble,
              "sin_cos: angle must be float32 or float64, got ", angle.scalar_type());
  const at::Tensor a = angle.contiguous();
  at::Tensor sin = at::empty_like(a), cos = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sin_cos", [&] {
    sin_cos_row(a.data_ptr<scalar_t>(), a.numel(), sin.data_ptr<scalar_t>(),
                cos.data_ptr<scalar_t>());
  });
  return {sin, cos};
}

}  // namespace

void sin_cos_row(const float* angle, int64_t n, float* sin, float* cos) {
  if (all_fast(angle, n)) {
    sin_cos_polynomial(angle, n, sin, cos);
  } else {
    sin_cos_libm(angle, n, sin, cos);
  }
}

void sin_cos_row(const double* angle, int64_t n, double* sin, double* cos) {
  sin_cos_libm(angle, n, sin, cos);
}

IK_LIBRARY_IMPL(CPU, m) { m.impl("sin_cos", &sin_cos_op); }

}  // namespace cpu
}  // namespace ik
