// Per-element pieces of the fused LIIF decode (docs/liif-lte.md, "LIIF"), shared by the
// CPU loops (csrc/cpu/liif_kernels_cpu.cpp) and the CUDA kernels (csrc/cuda/liif_kernels.cu).
// LTE's decode (ik/lte_decode.h) uses the same local ensemble.
//
// The decode runs in two element-wise steps around dense layers (csrc/liif_decode.cpp):
//   1. query_members: each query -> its 4 local-ensemble members: the flat index of the LR
//                     pixel each reads, the first layer's coordinate inputs
//                     [rel_y, rel_x, cell_y·H, cell_x·W] of each, and the 4 area weights;
//   2. first_layer:   each member and channel -> the MLP's input
//                     relu(proj[pixel] + W_rc·inputs + b0), where proj = W_f·unfold(feat)
//                     is the first layer's feature part, formed once per LR pixel.
// Geometry is computed in `T` (float or double; half types use float).
#pragma once

#include "ik/geometry.h"

namespace ik {
namespace liif {

constexpr int kMembers = 4;
// Inputs of the first layer besides the feature part, per member: rel (y, x) and the
// scaled cell (y, x).
constexpr int kCoordInputs = 4;

// Sizes of one decode: LR feature map h x w, q queries per image.
struct Dims {
  index_t h, w, q;
};

// The local ensemble of query p (flat over B x Q; image p / q) at (qy, qx) with the
// unscaled cell (cy, cx): for member t in LIIF's order, index[t] = flat (b, iy, ix) index
// of its LR pixel in the (B, h, w) map and inputs[4t .. 4t+3] = [rel_y, rel_x, cy·h, cx·w]
// (geometry.ensemble_neighbours; the cell scaled in T, as `cell * (h, w)`); weight[t]
// its area weight (geometry.ensemble_weights).
template <typename T>
IK_HD void query_members(index_t p, T qy, T qx, T cy, T cx, const Dims& d, index_t index[kMembers],
                         T inputs[kMembers * kCoordInputs], T weight[kMembers]) {
  const index_t row0 = (p / d.q) * d.h;
  const T sy = mul_rn(cy, static_cast<T>(d.h)), sx = mul_rn(cx, static_cast<T>(d.w));
  T ry[kMembers], rx[kMembers];
  for (int t = 0; t < kMembers; ++t) {
    const EnsembleMember<T> m = ensemble_member(qy, qx, d.h, d.w, t);
    index[t] = (row0 + m.iy) * d.w + m.ix;
    ry[t] = m.ry;
    rx[t] = m.rx;
    T* x = inputs + t * kCoordInputs;
    x[0] = m.ry;
    x[1] = m.rx;
    x[2] = sy;
    x[3] = sx;
  }
  ensemble_weights(ry, rx, weight);
}

// The first layer's output channel j of one member: proj_row[j] + b0[j] + w_rc[j]·x
// (w_rc: D x 4, row-major; proj_row: the member's LR pixel's row of the projection),
// followed by ReLU when `relu` (every layer but the MLP's last).  NaN stays NaN, as in
// torch.relu.  Acc accumulates (float for half T).  Row and Params point to T: pointers,
// or the CUDA kernels' checked global pointers.
template <typename Acc, typename Row, typename Params>
IK_HD Acc first_layer(index_t j, Row proj_row, Params w_rc, Params b0, const Acc x[kCoordInputs],
                      bool relu) {
  Acc z = static_cast<Acc>(b0[j]);
  for (int k = 0; k < kCoordInputs; ++k) z += static_cast<Acc>(w_rc[kCoordInputs * j + k]) * x[k];
  z += static_cast<Acc>(proj_row[j]);
  return (relu && z < Acc(0)) ? Acc(0) : z;
}

}  // namespace liif
}  // namespace ik
