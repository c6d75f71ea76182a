// Per-query pieces of the fused HIIF operators (docs/hiif.md), shared by the CPU loops
// (csrc/cpu/hiif_kernels_cpu.cpp) and the CUDA kernels (csrc/cuda/hiif_kernels.cu).
//
// Two element-wise steps sit between the dense layers of csrc/hiif_decode.cpp:
//   1. level 0's first pre-activation before its normalisation, from the per-LR-pixel
//      maps of the split first layer (implicit_kernels/torch_impl/hiif.py derives it):
//      per query, the four codes' area weights, the LayerNorm statistics of
//      x = [w_t z_t, cell, level-0 bits] from the codes' channel means and centred sums
//      of squares, and per channel j the sum
//        u_j = Σ_t (w_t A_tj + dev_t R_tj) + Σ_e ed_e W_je,   pre_j = u_j · rstd + bias_j
//      with dev_t = w_t m_t - μ, ed_e = e_e - μ (every term centred; the backward needs
//      u, so the caller applies rstd and the bias);
//   2. the normalised input of a later level, ([x, level-l bits] - μ) · rstd.
// Geometry and statistics run in Acc (double for double, float otherwise).
#pragma once

#include "ik/hiif_codes.h"

namespace ik {
namespace hiif {

// LayerNorm epsilon of every norm in HIIF (reference.hiif.LN_EPS).
constexpr double kLnEps = 1e-5;

// Per-query values level 0 computes and its backward reuses, in this order per row of the
// auxiliary output: weights w_t (4), dev_t (4), ed_e (4: cell y, cell x, bit y, bit x),
// rstd (1).
constexpr int kAuxWeight = 0, kAuxDev = 4, kAuxExtraDev = 8, kAuxRstd = 12, kAuxWidth = 13;

// Level 0's statistics of one query of image b.  `maps` is (B, h, w, 4, hidden + 2): for
// every LR pixel and member t, a row W'_t (z - m) (hidden) then m and s of the pixel's
// code.  Writes the indices of the four members' map rows to `row`, the aux values to
// `aux`.  `cell_y`, `cell_x` are the unscaled cell; `channels` the code width C;
// `public_centres` as in query().
template <typename Acc, typename T>
IK_HD void level0_stats(Acc qy, Acc qx, Acc cell_y, Acc cell_x, index_t b, index_t h, index_t w,
                        bool public_centres, const T* maps, index_t hidden, index_t channels,
                        index_t row[4], Acc aux[kAuxWidth]) {
  const Query<Acc> q = query(qy, qx, h, w, public_centres);
  const index_t stride = hidden + 2;
  const Acc c = static_cast<Acc>(channels);
  const Acc width = static_cast<Acc>(4 * channels + 4);
  const Acc extra[4] = {mul_rn(cell_y, static_cast<Acc>(h)), mul_rn(cell_x, static_cast<Acc>(w)),
                        level_bit(q.local_y, 0), level_bit(q.local_x, 0)};
  Acc wm[4], sum_wm = 0, sum_extra = 0;
  for (int t = 0; t < 4; ++t) {
    row[t] = (b * h * w + q.pixel[t]) * 4 + t;
    wm[t] = q.weight[t] * static_cast<Acc>(maps[row[t] * stride + hidden]);
    sum_wm += wm[t];
    sum_extra += extra[t];
  }
  const Acc mu = (c * sum_wm + sum_extra) / width;
  Acc var = 0;
  for (int t = 0; t < 4; ++t) {
    aux[kAuxWeight + t] = q.weight[t];
    aux[kAuxDev + t] = wm[t] - mu;
    aux[kAuxExtraDev + t] = extra[t] - mu;
    var += q.weight[t] * q.weight[t] * static_cast<Acc>(maps[row[t] * stride + hidden + 1]) +
           c * aux[kAuxDev + t] * aux[kAuxDev + t] + aux[kAuxExtraDev + t] * aux[kAuxExtraDev + t];
  }
  aux[kAuxRstd] = Acc(1) / sqrt_val(var / width + static_cast<Acc>(kLnEps));
}

// Channel j of level 0's unnormalised sum u (module comment): `row_sums` R (4 x hidden),
// `w_extra` (hidden x 4).
template <typename Acc, typename T>
IK_HD Acc level0_channel(index_t j, index_t hidden, const T* maps, const index_t row[4],
                         const Acc aux[kAuxWidth], const T* row_sums, const T* w_extra) {
  Acc u = 0;
  for (int t = 0; t < 4; ++t) {
    u += aux[kAuxWeight + t] * static_cast<Acc>(maps[row[t] * (hidden + 2) + j]) +
         aux[kAuxDev + t] * static_cast<Acc>(row_sums[t * hidden + j]) +
         aux[kAuxExtraDev + t] * static_cast<Acc>(w_extra[j * 4 + t]);
  }
  return u;
}

}  // namespace hiif
}  // namespace ik
