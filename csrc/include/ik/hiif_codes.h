// HIIF's query geometry and hierarchical codes (docs/hiif.md, "Forward pass", steps 3-6),
// for CPU loops and CUDA kernels.
//
// Bit-exact with implicit_kernels/reference/hiif.py (local_coord, hierarchical_code) and
// the torch backend: the same float operations in the same order (ik/common.h explains the
// *_rn helpers).  Checked exactly by tests/test_ops_cpu_hiif.py through the CPU operator
// implicit_kernels::hiif_codes.
#pragma once

#include "ik/geometry.h"

namespace ik {
namespace hiif {

// The four local-ensemble members of a query, in HIIF's units: flat LR-pixel indices
// (row * w + col) of the codes, their area weights (LIIF's diagonal swap, with offsets in
// LR pixels, as HIIF measures them), and the local coordinate of step 4.
template <typename T>
struct Query {
  index_t pixel[4];
  T weight[4];
  T local_y, local_x;
};

// Step 4: one axis of the query's position from its top-left code, `rel` in LR pixels.
// Components <= 0 (border clamp or an exact tie) are reflected as 1/n - rel, 1/n formed
// in double and rounded to T once (a Python float made a tensor of rel's dtype).
template <typename T>
IK_HD T local_coord(T rel, index_t n) {
  return rel <= T(0) ? sub_rn(static_cast<T>(1.0 / static_cast<double>(n)), rel) : rel;
}

// Step 6 (Eq. 6 with S = 2): digit `level + 1` of `local` in base 2, as T 0 or 1:
// floor(clamp(local - 1e-9, 0, 1) * 2^(level+1)) mod 2.  The scale is a power of two, so
// the product is exact; the floor is an integer, so the mod is exact.
template <typename T>
IK_HD T level_bit(T local, int level) {
  const T v = clamp_val(sub_rn(local, static_cast<T>(1e-9)), T(0), T(1));
  const T f = floor_val(mul_rn(v, static_cast<T>(index_t(1) << (level + 1))));
  return sub_rn(f, mul_rn(T(2), floor_val(mul_rn(f, T(0.5)))));
}

// Members, weights and local coordinate of query (qy, qx) on an h x w feature map.
// HIIF's offsets are LIIF's halved (exact: a power of two).  `public_centres`: LR centres
// rounded as the public code does (level_codes="public"), which decides its ties.
template <typename T>
IK_HD Query<T> query(T qy, T qx, index_t h, index_t w, bool public_centres) {
  Query<T> q;
  T ry[4], rx[4];
  for (int t = 0; t < 4; ++t) {
    const EnsembleMember<T> m = ensemble_member(qy, qx, h, w, t, public_centres);
    q.pixel[t] = m.iy * w + m.ix;
    ry[t] = mul_rn(m.ry, T(0.5));
    rx[t] = mul_rn(m.rx, T(0.5));
  }
  ensemble_weights(ry, rx, q.weight);
  q.local_y = local_coord(ry[0], h);
  q.local_x = local_coord(rx[0], w);
  return q;
}

// The local coordinate alone (member 0 of the ensemble), for the levels after level 0.
template <typename T>
IK_HD void local_of(T qy, T qx, index_t h, index_t w, bool public_centres, T* ly, T* lx) {
  const EnsembleMember<T> m = ensemble_member(qy, qx, h, w, 0, public_centres);
  *ly = local_coord(mul_rn(m.ry, T(0.5)), h);
  *lx = local_coord(mul_rn(m.rx, T(0.5)), w);
}

}  // namespace hiif
}  // namespace ik
