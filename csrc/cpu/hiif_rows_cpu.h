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

}  // namespace hiif
}  // namespace ik
