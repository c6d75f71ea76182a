// Row loops of the fused HIIF operators shared by the whole-chunk CPU kernels
// (hiif_kernels_cpu.cpp) and the tiled CPU paths (hiif_tiles_cpu.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "avx2_clone.h"
#include "ik/hiif_decode.h"

namespace ik {
namespace hiif {

// Calls f(d) with the head width d as a compile-time 16 (the paper's: loops over a
// head's channels then unroll and vectorise), or else as a runtime value.  f should call
// a function template taking d (a lambda's own body is compiled for the baseline even
// inside an AVX2 clone: IK_CLONE_INLINE).
template <typename F>
inline void with_head_dim(int64_t d, const F& f) {
  if (d == 16) {
    f(std::integral_constant<int64_t, 16>{});
  } else {
    f(d);
  }
}

// Σ_j term(j) for j < n, in 8 interleaved partial sums: independent chains the compiler
// can vectorise (without reassociation, one running sum is a serial chain of adds).
template <typename T, typename F>
IK_CLONE_INLINE T lane_sum(int64_t n, const F& term) {
  T lane[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int k = 0; k < 8; ++k) lane[k] += term(j + k);
  }
  T tail = 0;
  for (; j < n; ++j) tail += term(j);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7])) +
         tail;
}

// One query's normalised input of a later level: out = ([x, bits] - μ) · rstd, `x` the
// c features of the query, `out` c + 2 values (the level's row bit, then column bit,
// last); returns rstd.  Bits from the query's position (qy, qx) on an h x w map.
template <typename T>
IK_CLONE_INLINE T normalise_level_row(const T* x, int64_t c, T qy, T qx, int64_t h, int64_t w,
                                      int64_t level, bool public_centres, T* out) {
  const int64_t width = c + 2;
  T ly, lx;
  local_of<T>(qy, qx, h, w, public_centres, &ly, &lx);
  out[c] = level_bit(ly, static_cast<int>(level));
  out[c + 1] = level_bit(lx, static_cast<int>(level));
  T mean = out[c] + out[c + 1];
  mean += lane_sum<T>(c, [&](int64_t j) { return x[j]; });
  mean /= static_cast<T>(width);
  T var = lane_sum<T>(c, [&](int64_t j) { return (x[j] - mean) * (x[j] - mean); });
  var += (out[c] - mean) * (out[c] - mean) + (out[c + 1] - mean) * (out[c + 1] - mean);
  const T r = T(1) / sqrt_val(var / static_cast<T>(width) + static_cast<T>(kLnEps));
  for (int64_t j = 0; j < c; ++j) out[j] = (x[j] - mean) * r;
  out[c] = (out[c] - mean) * r;
  out[c + 1] = (out[c + 1] - mean) * r;
  return r;
}

// LayerNorm without affine of d values in place: v = (v - mean) · rstd; returns rstd.
template <typename T, typename D>
IK_CLONE_INLINE T normalise_row(T* v, D d) {
  const T mean = lane_sum<T>(d, [&](int64_t e) { return v[e]; }) / static_cast<T>(d);
  const T var = lane_sum<T>(d, [&](int64_t e) { return (v[e] - mean) * (v[e] - mean); });
  const T r = T(1) / sqrt_val(var / static_cast<T>(d) + static_cast<T>(kLnEps));
  for (int64_t e = 0; e < d; ++e) v[e] = (v[e] - mean) * r;
  return r;
}

// The per-head products of the attention, for one row and head (d values).  Where d is a
// compile-time multiple of a 32-byte vector's lanes (the paper's 16), the row's d
// accumulators are GCC vector registers: left to itself the compiler assumed the output
// aliased the inputs, or vectorised across the wrong loop with shuffles, and these loops
// took a fifth of a small decode.  Other widths take the plain loops.

// A 32-byte vector of T (8 floats, 4 doubles): one AVX register in the AVX2 clones, two
// SSE registers in the baseline.
template <typename T>
struct Vec32Of;
template <>
struct Vec32Of<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32Of<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec32 = typename Vec32Of<T>::type;
template <typename T>
constexpr int64_t kVecLanes = 32 / sizeof(T);

template <typename T>
IK_CLONE_INLINE void load_vec(Vec32<T>& v, const T* p) {
  __builtin_memcpy(&v, p, sizeof(v));
}

template <typename T>
IK_CLONE_INLINE void store_vec(T* p, const Vec32<T>& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// out = v · m for v (d) and m (d × d, row-major): out_e = Σ_a v_a m_ae.
template <typename T, typename D>
IK_CLONE_INLINE void row_times_matrix(const T* v, const T* m, T* out, D d) {
  if constexpr (std::is_integral_v<D>) {
    for (int64_t e = 0; e < d; ++e) out[e] = 0;
    for (int64_t a = 0; a < d; ++a) {
      for (int64_t e = 0; e < d; ++e) out[e] += v[a] * m[a * d + e];
    }
  } else if constexpr (D::value % kVecLanes<T> != 0) {
    row_times_matrix(v, m, out, static_cast<int64_t>(d));
  } else {
    constexpr int64_t n = D::value / kVecLanes<T>;
    Vec32<T> acc[n] = {};
    for (int64_t a = 0; a < D::value; ++a) {
      for (int64_t i = 0; i < n; ++i) {
        Vec32<T> row;
        load_vec(row, m + a * D::value + i * kVecLanes<T>);
        acc[i] += v[a] * row;
      }
    }
    for (int64_t i = 0; i < n; ++i) store_vec(out + i * kVecLanes<T>, acc[i]);
  }
}

// s += uᵀ v for u, v (d) and s (d × d, row-major).
template <typename T, typename D>
IK_CLONE_INLINE void add_outer_product(const T* u, const T* v, T* s, D d) {
  if constexpr (std::is_integral_v<D>) {
    for (int64_t a = 0; a < d; ++a) {
      for (int64_t e = 0; e < d; ++e) s[a * d + e] += u[a] * v[e];
    }
  } else if constexpr (D::value % kVecLanes<T> != 0) {
    add_outer_product(u, v, s, static_cast<int64_t>(d));
  } else {
    constexpr int64_t n = D::value / kVecLanes<T>;
    Vec32<T> vv[n];
    for (int64_t i = 0; i < n; ++i) load_vec(vv[i], v + i * kVecLanes<T>);
    for (int64_t a = 0; a < D::value; ++a) {
      T* row = s + a * D::value;
      for (int64_t i = 0; i < n; ++i) {
        Vec32<T> acc;
        load_vec(acc, row + i * kVecLanes<T>);
        store_vec(row + i * kVecLanes<T>, acc + u[a] * vv[i]);
      }
    }
  }
}

// out = v ⊙ w + b (d values; out may be v).
template <typename T, typename D>
IK_CLONE_INLINE void scale_shift(const T* v, const T* __restrict w, const T* __restrict b, T* out,
                                 D d) {
  for (int64_t e = 0; e < d; ++e) out[e] = v[e] * w[e] + b[e];
}

// Backward of y = v ⊙ w + b from gy (d values, overwritten by gv = gy ⊙ w), adding w's
// and b's gradients into gw and gb.
template <typename T, typename D>
IK_CLONE_INLINE void scale_shift_backward(T* __restrict gy, const T* __restrict v,
                                          const T* __restrict w, T* __restrict gw, T* __restrict gb,
                                          D d) {
  for (int64_t e = 0; e < d; ++e) {
    gw[e] += gy[e] * v[e];
    gb[e] += gy[e];
    gy[e] *= w[e];
  }
}

// Backward of y = normalise_row(v): the gradient of v from gy (both d values) and rstd,
// written over gy.
template <typename T, typename D>
IK_CLONE_INLINE void normalise_row_backward(T* gy, const T* y, T rstd, D d) {
  const T mean_g = lane_sum<T>(d, [&](int64_t e) { return gy[e]; }) / static_cast<T>(d);
  const T mean_gy = lane_sum<T>(d, [&](int64_t e) { return gy[e] * y[e]; }) / static_cast<T>(d);
  for (int64_t e = 0; e < d; ++e) gy[e] = rstd * (gy[e] - mean_g - y[e] * mean_gy);
}

}  // namespace hiif
}  // namespace ik
