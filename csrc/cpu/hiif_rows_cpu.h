// Row loops of the fused HIIF operators shared by the whole-chunk CPU kernels
// (hiif_kernels_cpu.cpp) and the tiled CPU paths (hiif_tiles_cpu.cpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "ik/hiif_decode.h"

namespace ik {
namespace hiif {

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
  for (int64_t j = 0; j < c; ++j) mean += x[j];
  mean /= static_cast<T>(width);
  T var = 0;
  for (int64_t j = 0; j < c; ++j) var += (x[j] - mean) * (x[j] - mean);
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
  T mean = 0;
  for (int64_t e = 0; e < d; ++e) mean += v[e];
  mean /= static_cast<T>(d);
  T var = 0;
  for (int64_t e = 0; e < d; ++e) var += (v[e] - mean) * (v[e] - mean);
  const T r = T(1) / sqrt_val(var / static_cast<T>(d) + static_cast<T>(kLnEps));
  for (int64_t e = 0; e < d; ++e) v[e] = (v[e] - mean) * r;
  return r;
}

// Backward of y = normalise_row(v): the gradient of v from gy (both d values) and rstd,
// written over gy.
template <typename T>
inline void normalise_row_backward(T* gy, const T* y, T rstd, int64_t d) {
  T mean_g = 0, mean_gy = 0;
  for (int64_t e = 0; e < d; ++e) {
    mean_g += gy[e];
    mean_gy += gy[e] * y[e];
  }
  mean_g /= static_cast<T>(d);
  mean_gy /= static_cast<T>(d);
  for (int64_t e = 0; e < d; ++e) gy[e] = rstd * (gy[e] - mean_g - y[e] * mean_gy);
}

}  // namespace hiif
}  // namespace ik
