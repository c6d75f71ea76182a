// Coordinate and index geometry of the LIIF family, for CPU loops and CUDA kernels.
//
// A line-by-line port of implicit_kernels/geometry.py (docs/conventions.md and
// docs/diif.md, "Forward pass").  Results must be identical to the Python functions, bit
// for bit, so the float expressions keep PyTorch's operation order and rounding (see
// ik/common.h for why the *_rn helpers).
// Tested exactly against geometry.py by tests/test_geometry_cpp.py through the CPU ops
// in csrc/cpu/geometry_cpu.cpp; tests/test_cuda_compile.py compiles it for sm_80/sm_90.
//
// Conventions: an axis of n samples has pixel centres -1 + (2k + 1)/n; pairs are
// (row, col); "LIIF units" measure offsets so one LR pixel is 2 units wide.
#pragma once

#include "ik/common.h"

namespace ik {

// ---------------------------------------------------------------------------------------
// Pixel centres and LIIF's nearest latent code
// ---------------------------------------------------------------------------------------

// LIIF's tie-breaking shift and border clamp (geometry.ENSEMBLE_EPS).
constexpr double kEnsembleEps = 1e-6;
// Added to every ensemble area so that no weight is 0/0 (geometry.ensemble_weights).
constexpr double kAreaEps = 1e-9;

// Centre -1 + (2k + 1)/n of pixel k of an n-pixel axis, in T
// (geometry.axis_centres / pixel_coord: 2*k, +1, /n, then -1, each rounded in T).
template <typename T>
IK_HD T pixel_centre(index_t k, index_t n) {
  T t = add_rn(mul_rn(static_cast<T>(k), T(2)), T(1));
  return add_rn(div_rn(t, static_cast<T>(n)), T(-1));
}

// Centre of pixel k of an n-pixel axis as the public LIIF/HIIF code rounds it (LIIF's
// make_coord, geometry.CENTRES "public"): (-1 + r) + (2r)·k with r = 1/n, the two
// constants formed in double and rounded to T once each (Python floats applied to a
// tensor), the product and sum rounded in T.
template <typename T>
IK_HD T public_pixel_centre(index_t k, index_t n) {
  const double r = 1.0 / static_cast<double>(n);
  return add_rn(static_cast<T>(-1.0 + r), mul_rn(static_cast<T>(2.0 * r), static_cast<T>(k)));
}

// Offset (q - centre(k)) * n of coordinate q from the centre of pixel k, in LIIF units,
// the centre rounded as the project does or (`public_centres`) as the public code does.
template <typename T>
IK_HD T offset_from_centre(T q, index_t k, index_t n, bool public_centres = false) {
  const T centre = public_centres ? public_pixel_centre<T>(k, n) : pixel_centre<T>(k, n);
  return mul_rn(sub_rn(q, centre), static_cast<T>(n));
}

// Index of the pixel grid_sample(mode='nearest', align_corners=False) picks at q on an
// axis of n pixels: round_half_even(((q + 1) * n - 1) / 2), clamped to [0, n - 1]
// (geometry.nearest_index).  The clamp happens in T before the cast, as in torch.
template <typename T>
IK_HD index_t nearest_index(T q, index_t n) {
  T t = div_rn(sub_rn(mul_rn(add_rn(q, T(1)), static_cast<T>(n)), T(1)), T(2));
  t = clamp_val(round_half_even(t), T(0), static_cast<T>(n - 1));
  return static_cast<index_t>(t);
}

// Row / column shift (-1 or +1, in half LR pixels) of ensemble member t in LIIF's order
// ((-1,-1), (-1,1), (1,-1), (1,1)) (geometry.ENSEMBLE_SHIFTS).
IK_HD int ensemble_shift_y(int t) { return t < 2 ? -1 : 1; }
IK_HD int ensemble_shift_x(int t) { return (t & 1) ? 1 : -1; }

// The shifted query LIIF looks up for a member: q + (shift/n + 1e-6), with the scalar
// formed in double and added once in T (as a Python float added to a tensor), then
// clamped to [-1 + 1e-6, 1 - 1e-6] (bounds rounded to T, as torch.clamp does).
template <typename T>
IK_HD T shifted_query(T q, int shift, index_t n) {
  const double s = static_cast<double>(shift) / static_cast<double>(n) + kEnsembleEps;
  return clamp_val(add_rn(q, static_cast<T>(s)), static_cast<T>(-1 + kEnsembleEps),
                   static_cast<T>(1 - kEnsembleEps));
}

// One member of LIIF's local ensemble for a query (qy, qx) on an h x w feature map:
// the LR pixel (iy, ix) it reads and the offset (ry, rx) of the *unshifted* query from
// that pixel's centre, in LIIF units (geometry.ensemble_neighbours; `public_centres`:
// centres rounded as geometry.CENTRES "public").
template <typename T>
struct EnsembleMember {
  index_t iy, ix;
  T ry, rx;
};

template <typename T>
IK_HD EnsembleMember<T> ensemble_member(T qy, T qx, index_t h, index_t w, int t,
                                        bool public_centres = false) {
  EnsembleMember<T> m;
  m.iy = nearest_index(shifted_query(qy, ensemble_shift_y(t), h), h);
  m.ix = nearest_index(shifted_query(qx, ensemble_shift_x(t), w), w);
  m.ry = offset_from_centre(qy, m.iy, h, public_centres);
  m.rx = offset_from_centre(qx, m.ix, w, public_centres);
  return m;
}

// LIIF's area weights of the four members (geometry.ensemble_weights): member t gets the
// area |ry * rx| + 1e-9 of member 3 - t (the diagonally opposite one) over the sum of the
// four areas.  The sum is accumulated left to right, as torch sums four values.
template <typename T>
IK_HD void ensemble_weights(const T ry[4], const T rx[4], T weight[4]) {
  T area[4];
  for (int t = 0; t < 4; ++t) {
    area[t] = add_rn(abs_val(mul_rn(ry[t], rx[t])), static_cast<T>(kAreaEps));
  }
  const T total = add_rn(add_rn(add_rn(area[0], area[1]), area[2]), area[3]);
  for (int t = 0; t < 4; ++t) weight[t] = div_rn(area[3 - t], total);
}

// ---------------------------------------------------------------------------------------
// DIIF: coordinate grouping and slicing (docs/diif.md, "Grouping" and "Slicing")
// ---------------------------------------------------------------------------------------

// Slicing modes, in geometry.SLICINGS order.
enum class Slicing : int { kLinear = 0, kConstant = 1, kFixed4 = 2 };

// LR index of the group holding output index idx: floor((2 idx + 1) n_in / (2 n_out)),
// clamped to [0, n_in - 1] (geometry.group_index).  Exact integer arithmetic: ties go to
// the lower group.
IK_HD index_t group_index(index_t idx, index_t n_in, index_t n_out) {
  const index_t g = floor_div((2 * idx + 1) * n_in, 2 * n_out);
  return min_val<index_t>(max_val<index_t>(g, 0), n_in - 1);
}

// First output index of LR group g: the smallest r with group_index(r) == g,
// ceil((2 g n_out - n_in) / (2 n_in)) clamped at 0 (geometry.group_start).
IK_HD index_t group_start(index_t g, index_t n_in, index_t n_out) {
  const index_t num = 2 * g * n_out - n_in;
  return max_val<index_t>(-floor_div(-num, 2 * n_in), 0);
}

// (group, first, last) output indices of the group holding output index idx
// (geometry.group_bounds); the last group runs to the end of the axis.
struct GroupBounds {
  index_t group, first, last;
};

IK_HD GroupBounds group_bounds(index_t idx, index_t n_in, index_t n_out) {
  GroupBounds b;
  b.group = group_index(idx, n_in, n_out);
  b.first = group_start(b.group, n_in, n_out);
  b.last = b.group == n_in - 1 ? n_out - 1 : group_start(b.group + 1, n_in, n_out) - 1;
  return b;
}

// The group of output pixel (r, c) and its slice's first and last output coordinate
// (geometry.diif_slices).  For kFixed4 the last run of a group may end on a virtual
// coordinate past the group: the raster continues with the group's width.
struct DiifSlice {
  index_t group_r, group_c;
  index_t first_r, first_c;
  index_t last_r, last_c;
};

IK_HD DiifSlice diif_slice(index_t r, index_t c, index_t h, index_t w, index_t h_out, index_t w_out,
                           Slicing slicing) {
  const GroupBounds gr = group_bounds(r, h, h_out);
  const GroupBounds gc = group_bounds(c, w, w_out);
  DiifSlice s;
  s.group_r = gr.group;
  s.group_c = gc.group;
  if (slicing == Slicing::kLinear) {
    s.first_r = r;
    s.first_c = gc.first;
    s.last_r = r;
    s.last_c = gc.last;
  } else if (slicing == Slicing::kConstant) {
    s.first_r = gr.first;
    s.first_c = gc.first;
    s.last_r = gr.last;
    s.last_c = gc.last;
  } else {
    // Raster position k of the pixel inside its group, rounded down to a multiple of 4.
    const index_t gw = gc.last - gc.first + 1;
    const index_t k0 = floor_div((r - gr.first) * gw + (c - gc.first), 4) * 4;
    const index_t k1 = k0 + 3;
    s.first_r = gr.first + floor_div(k0, gw);
    s.first_c = gc.first + floor_mod(k0, gw);
    s.last_r = gr.first + floor_div(k1, gw);
    s.last_c = gc.first + floor_mod(k1, gw);
  }
  return s;
}

// Offset of output pixel p (of n_out) from the centre of LR pixel g (of n_in), in LIIF
// units: (centre_out(p) - centre_in(g)) * n_in (one axis of geometry.diif_rel).
template <typename T>
IK_HD T diif_rel(index_t p, index_t g, index_t n_in, index_t n_out) {
  return offset_from_centre(pixel_centre<T>(p, n_out), g, n_in);
}

// Bilinear slice-ensemble weights of a pixel at offset (dy, dx) inside its group's
// square, for the vertices (0,0), (0,1), (1,0), (1,1) (geometry.slice_ensemble_weights):
// weight[2a + b] = wy[a] * wx[b] / 4 with wy = (1 - dy, 1 + dy), wx = (1 - dx, 1 + dx).
template <typename T>
IK_HD void slice_ensemble_weights(T dy, T dx, T weight[4]) {
  const T wy[2] = {sub_rn(T(1), dy), add_rn(T(1), dy)};
  const T wx[2] = {sub_rn(T(1), dx), add_rn(T(1), dx)};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) weight[2 * a + b] = div_rn(mul_rn(wy[a], wx[b]), T(4));
  }
}

}  // namespace ik
