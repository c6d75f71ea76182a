// Row loops of the fused HIIF operators shared by the whole-chunk CPU kernels
// (hiif_kernels_cpu.cpp) and the tiled CPU paths (hiif_tiles_cpu.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ik/hiif_decode.h"

namespace ik {
namespace hiif {

// Calls f(d) with the head width d as a compile-time 16 (the paper's: loops over a
// head's channels then unroll and vectorise), or else as a runtime value.
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
inline T lane_sum(int64_t n, const F& term) {
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
inline T normalise_level_row(const T* x, int64_t c, T qy, T qx, int64_t h, int64_t w, int64_t level,
                             bool public_centres, T* out) {
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
template <typename T>
inline T normalise_row(T* v, int64_t d) {
  const T mean = lane_sum<T>(d, [&](int64_t e) { return v[e]; }) / static_cast<T>(d);
  const T var = lane_sum<T>(d, [&](int64_t e) { return (v[e] - mean) * (v[e] - mean); });
  const T r = T(1) / sqrt_val(var / static_cast<T>(d) + static_cast<T>(kLnEps));
  for (int64_t e = 0; e < d; ++e) v[e] = (v[e] - mean) * r;
  return r;
}

// Backward of y = normalise_row(v): the gradient of v from gy (both d values) and rstd,
// written over gy.
template <typename T>
inline void normalise_row_backward(T* gy, const T* y, T rstd, int64_t d) {
  const T mean_g = lane_sum<T>(d, [&](int64_t e) { return gy[e]; }) / static_cast<T>(d);
  const T mean_gy = lane_sum<T>(d, [&](int64_t e) { return gy[e] * y[e]; }) / static_cast<T>(d);
  for (int64_t e = 0; e < d; ++e) gy[e] = rstd * (gy[e] - mean_g - y[e] * mean_gy);
}

}  // namespace hiif
}  // namespace ik
