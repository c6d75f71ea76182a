// Per-element pieces of the fused DIIF decode (docs/diif.md), shared by the CPU loops
// (csrc/cpu/diif_kernels_cpu.cpp) and the CUDA kernels (csrc/cuda/diif_kernels.cu).
//
// The decode runs in three element-wise steps around dense layers (csrc/diif_decode.cpp):
//   1. slice_key:    each output pixel -> the key of its slice (image, first pixel);
//   2. slice_inputs: each distinct slice -> for its 4 vertices, the coarse stage's
//                    coordinate inputs [rel(first, v_t), rel(last, v_t), cell] and the
//                    flat index of the vertex in the corner-projection map;
//   3. blend:        each pixel -> the fine stage's first pre-activation
//                    b + W_d·d + Σ_t w_t(d) G_t, with G_t = W_h·H_t of its slice.
// Geometry is computed in `T` (float or double; half types use float).
#pragma once

#include "ik/geometry.h"

namespace ik {
namespace diif {

// Sizes of one decode: LR feature map h x w, output h_out x w_out; and whether the slice
// ensemble runs (4 vertices at the group's LR-grid corners) or not (the "w/o se"
// ablation: one vertex, the group's own LR pixel, at offset 0 with weight 1).
struct Dims {
  index_t h, w, h_out, w_out;
  bool slice_ensemble;
};

// Inputs of the coarse stage's first layer besides the corner code, per vertex.
constexpr int kCoordInputs = 6;
constexpr int kVertices = 4;

// Vertices per slice: kVertices with the slice ensemble, else 1.
IK_HD int vertex_count(const Dims& d) { return d.slice_ensemble ? kVertices : 1; }

// Key of the slice holding pixel (r, c) of image b: its image and first pixel, which
// identify a slice in every slicing mode.
IK_HD index_t slice_key(index_t b, index_t r, index_t c, const Dims& d, Slicing slicing) {
  const DiifSlice s = diif_slice(r, c, d.h, d.w, d.h_out, d.w_out, slicing);
  return (b * d.h_out + s.first_r) * d.w_out + s.first_c;
}

// For the slice with key `key`: coords[t * 6 + k] = [rel(first, v_t), rel(last, v_t),
// cell] of vertex t (geometry.VERTICES order) in LIIF units, and corner[t] = flat index
// (b, i + a, j + b) of vertex t in the (B, h + 1, w + 1) corner map.
// rel(x, v_t) = rel(x, v*) - (2a - 1, 2b - 1): the vertex sits half an LR pixel (one
// LIIF unit) from the centre on each axis.  Without the slice ensemble, the one vertex is
// the group's own pixel: offset 0, corner[0] = flat (b, i, j) of the (B, h, w) map.
template <typename T>
IK_HD void slice_inputs(index_t key, const Dims& d, Slicing slicing, T* coords, index_t* corner) {
  const index_t first_c = floor_mod(key, d.w_out);
  const index_t rest = floor_div(key, d.w_out);
  const index_t first_r = floor_mod(rest, d.h_out);
  const index_t b = floor_div(rest, d.h_out);
  // The slice of a slice's first pixel is that slice.
  const DiifSlice s = diif_slice(first_r, first_c, d.h, d.w, d.h_out, d.w_out, slicing);
  const T fy = diif_rel<T>(s.first_r, s.group_r, d.h, d.h_out);
  const T fx = diif_rel<T>(s.first_c, s.group_c, d.w, d.w_out);
  const T ly = diif_rel<T>(s.last_r, s.group_r, d.h, d.h_out);
  const T lx = diif_rel<T>(s.last_c, s.group_c, d.w, d.w_out);
  const T cy = div_rn(mul_rn(T(2), static_cast<T>(d.h)), static_cast<T>(d.h_out));
  const T cx = div_rn(mul_rn(T(2), static_cast<T>(d.w)), static_cast<T>(d.w_out));
  if (!d.slice_ensemble) {
    coords[0] = fy;
    coords[1] = fx;
    coords[2] = ly;
    coords[3] = lx;
    coords[4] = cy;
    coords[5] = cx;
    corner[0] = (b * d.h + s.group_r) * d.w + s.group_c;
    return;
  }
  for (int t = 0; t < kVertices; ++t) {
    const int a = t >> 1, bb = t & 1;
    const T oy = static_cast<T>(2 * a - 1), ox = static_cast<T>(2 * bb - 1);
    T* x = coords + t * kCoordInputs;
    x[0] = sub_rn(fy, oy);
    x[1] = sub_rn(fx, ox);
    x[2] = sub_rn(ly, oy);
    x[3] = sub_rn(lx, ox);
    x[4] = cy;
    x[5] = cx;
    corner[t] = (b * (d.h + 1) + s.group_r + a) * (d.w + 1) + s.group_c + bb;
  }
}

// Offset d = rel(x, v*) of pixel (r, c) from its group's centre and its vertex weights
// (geometry.diif_rel and slice_ensemble_weights; without the slice ensemble, weight[0] = 1
// and only it is written).
template <typename T>
IK_HD void pixel_offset_weights(index_t r, index_t c, const Dims& d, T offset[2], T weight[4]) {
  offset[0] = diif_rel<T>(r, group_index(r, d.h, d.h_out), d.h, d.h_out);
  offset[1] = diif_rel<T>(c, group_index(c, d.w, d.w_out), d.w, d.w_out);
  if (d.slice_ensemble) {
    slice_ensemble_weights(offset[0], offset[1], weight);
  } else {
    weight[0] = T(1);
  }
}

// z + Σ_t weight[t] * rows[t * df + j]: channel j of the slice-ensemble sum of a pixel's
// `vertices` rows (`df` wide, consecutive).  Acc accumulates (float for half element
// types). Ptr: a pointer to the elements, or anything indexed like one (the CUDA kernels'
// checked global pointers).
template <typename Acc, typename Ptr>
IK_HD Acc add_vertex_sum(Acc z, index_t j, index_t df, int vertices, Ptr rows,
                         const Acc weight[4]) {
  // A fixed trip count keeps `weight` in registers on the GPU.
#pragma unroll
  for (int t = 0; t < kVertices; ++t) {
    if (t < vertices) z += weight[t] * static_cast<Acc>(rows[t * df + j]);
  }
  return z;
}

// bias[j] + wd[j, 0] * dy + wd[j, 1] * dx: channel j of the fine stage's first layer's
// offset part.
template <typename Acc, typename Ptr>
IK_HD Acc offset_channel(index_t j, Ptr wd, Ptr bias, const Acc offset[2]) {
  return static_cast<Acc>(bias[j]) + static_cast<Acc>(wd[2 * j]) * offset[0] +
         static_cast<Acc>(wd[2 * j + 1]) * offset[1];
}

// Fine stage's first pre-activation of one pixel, channel j:
// z[j] = bias[j] + wd[j, 0] * dy + wd[j, 1] * dx + Σ_t weight[t] * g[t * df + j]
// (g: the pixel's slice's `vertices` x df block of W_h·H_t).
template <typename Acc, typename Ptr>
IK_HD Acc blend_channel(index_t j, index_t df, int vertices, Ptr g, Ptr wd, Ptr bias,
                        const Acc offset[2], const Acc weight[4]) {
  return add_vertex_sum<Acc>(offset_channel<Acc>(j, wd, bias, offset), j, df, vertices, g, weight);
}

}  // namespace diif
}  // namespace ik
