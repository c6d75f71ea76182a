// Per-element pieces of the fused LTE decode (docs/liif-lte.md), shared by the CPU loops
// (csrc/cpu/liif_kernels_cpu.cpp) and the CUDA kernels (csrc/cuda/liif_kernels.cu).
//
// LTE decodes each query from LIIF's 4 local-ensemble members (liif::query_members).  Per
// member, with the coefficient row c (2m) and frequency row f (2m) of its LR pixel, its
// offset (ry, rx) and the scaled cell (sy, sx), pair i of m:
//   phi_i = f[2i]·ry + f[2i+1]·rx + (P[i,0]·sy + P[i,1]·sx)       (P: phase weight, m x 2)
//   x[i]  = c[i]·cos(π phi_i),   x[m + i] = c[m + i]·sin(π phi_i)
// x is the MLP's input: the gather and the Fourier feature are one pass that writes
// nothing else.  DLTE's vertex features (csrc/dlte_decode.cpp) are the same with two
// offsets per row, `ends` = 2: `in` = [first_y, first_x, last_y, last_x, sy, sx], and
// pair i is dotted with offset i % ends (even pairs the slice's first pixel, odd its last).
// The backward recomputes phi and returns exact gradients for c, f and
// (summed over the query's members) phi, from which the phase weight's follows.
#pragma once

#include "ik/liif_decode.h"

namespace ik {
namespace lte {

// π as the reference multiplies a tensor by math.pi: rounded to the tensor's type.
template <typename Acc>
IK_HD Acc pi() {
  return static_cast<Acc>(3.14159265358979323846);
}

// phi_i of one member (see above); `in` = [ry, rx, sy, sx] of the member (`ends` = 1),
// or `ends` offsets (y, x) then the scaled cell.  Rows (here and below) point to the
// storage type: pointers, or the CUDA kernels' checked global pointers.
template <typename Acc, typename Rows>
IK_HD Acc phase_angle(index_t i, Rows freq_row, Rows phase_w, const Acc* in, int ends) {
  const Acc* rel = in + 2 * (i % ends);
  const Acc cell = static_cast<Acc>(phase_w[2 * i]) * in[2 * ends] +
                   static_cast<Acc>(phase_w[2 * i + 1]) * in[2 * ends + 1];
  return static_cast<Acc>(freq_row[2 * i]) * rel[0] +
         static_cast<Acc>(freq_row[2 * i + 1]) * rel[1] + cell;
}

// Fourier feature pair i of one member: writes x_row[i] and x_row[m + i] (x_row: a
// pointer to T, or a shared-memory one).
template <typename Acc, typename T, typename Rows, typename Out>
IK_HD void fourier_feature(index_t i, index_t m, Rows coef_row, Rows freq_row, Rows phase_w,
                           const Acc* in, Out x_row, int ends = 1) {
  Acc s, c;
  sin_cos(pi<Acc>() * phase_angle<Acc>(i, freq_row, phase_w, in, ends), &s, &c);
  x_row[i] = static_cast<T>(static_cast<Acc>(coef_row[i]) * c);
  x_row[m + i] = static_cast<T>(static_cast<Acc>(coef_row[m + i]) * s);
}

// Backward of fourier_feature for pair i of one member, given s, c = sin, cos(π phi_i),
// from the gradient row gx (2m) of x: writes the gradients of its coefficient row
// (g_coef[i], g_coef[m + i]) and frequency row (g_freq[2i], g_freq[2i + 1]), and returns
// d loss / d phi_i (= π·(-g_cos·c[i]·sin + g_sin·c[m+i]·cos)), whose sum over members,
// times the scaled cell, is the phase weight's gradient.
template <typename Acc, typename T>
IK_HD Acc fourier_pair_backward(index_t i, index_t m, const T* coef_row, Acc s, Acc c,
                                const Acc* in, const T* gx_row, Acc* g_coef, Acc* g_freq,
                                int ends = 1) {
  const Acc g_cos = static_cast<Acc>(gx_row[i]), g_sin = static_cast<Acc>(gx_row[m + i]);
  g_coef[i] = g_cos * c;
  g_coef[m + i] = g_sin * s;
  const Acc g_phi = pi<Acc>() * (g_sin * static_cast<Acc>(coef_row[m + i]) * c -
                                 g_cos * static_cast<Acc>(coef_row[i]) * s);
  const Acc* rel = in + 2 * (i % ends);
  g_freq[2 * i] = g_phi * rel[0];
  g_freq[2 * i + 1] = g_phi * rel[1];
  return g_phi;
}

// Backward of fourier_feature for pair i of one member (fourier_pair_backward, with phi
// recomputed).
template <typename Acc, typename T>
IK_HD Acc fourier_feature_backward(index_t i, index_t m, const T* coef_row, const T* freq_row,
                                   const T* phase_w, const Acc* in, const T* gx_row, Acc* g_coef,
                                   Acc* g_freq, int ends = 1) {
  Acc s, c;
  sin_cos(pi<Acc>() * phase_angle<Acc>(i, freq_row, phase_w, in, ends), &s, &c);
  return fourier_pair_backward<Acc>(i, m, coef_row, s, c, in, gx_row, g_coef, g_freq, ends);
}

}  // namespace lte
}  // namespace ik
