// Device-specific steps of the fused LIIF and LTE decodes, at the ATen level, and the host
// side of their shared local ensemble (host code only: it lives outside csrc/include/ik,
// whose headers must stay free of ATen for nvcc).
//
// csrc/liif_decode.cpp and csrc/lte_decode.cpp run the decodes (dense layers through ATen
// matmuls) and call these for the element-wise steps of ik/liif_decode.h and
// ik/lte_decode.h; each has a CPU implementation (csrc/cpu/liif_kernels_cpu.cpp) and, in
// CUDA builds, a CUDA one (csrc/cuda/liif_kernels_glue.cpp over csrc/cuda/liif_kernels.cu).
// Rows of the member tensors are query-major: row 4p + t is member t of query p.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "ik/lte_decode.h"
#include "op_utils.h"

namespace ik {
namespace liif {

#define IK_LIIF_KERNELS(SUFFIX)                                                                \
  /* Queries coord, cell (n, 2) of the maps' type -> member indices (4n,) int64 into the       \
     flat (B*h*w) map, coordinate inputs (4n, 4) and area weights (n, 4) of type `type`. */    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> members_##SUFFIX(                             \
      const at::Tensor& coord, const at::Tensor& cell, const Dims& dims, at::ScalarType type); \
  /* LIIF: the MLP's input (4n, D) from proj (B*h*w, D), w_rc (D, 4), b0 (D) of one type. */   \
  at::Tensor liif_first_layer_##SUFFIX(const at::Tensor& proj, const at::Tensor& index,        \
                                       const at::Tensor& inputs, const at::Tensor& w_rc,       \
                                       const at::Tensor& b0, bool relu);                       \
  /* LTE: the MLP's input (rows, 2m) from coef, freq (B*h*w, 2m), phase_w (m, 2) and inputs    \
     (rows, 2 ends + 2): `ends` offsets then the scaled cell (features_ends; DLTE: 2). */      \
  at::Tensor lte_features_##SUFFIX(const at::Tensor& coef, const at::Tensor& freq,             \
                                   const at::Tensor& phase_w, const at::Tensor& index,         \
                                   const at::Tensor& inputs);                                  \
  /* LTE backward from grad_x (rows, 2m): gradients of the gathered coef and freq rows         \
     (rows, 2m) and of phi summed over each 4 rows (a query's members, DLTE: a slice's         \
     vertices) (rows / 4, m), of inputs' type. */                                              \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_features_backward_##SUFFIX(               \
      const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& freq,                \
      const at::Tensor& phase_w, const at::Tensor& index, const at::Tensor& inputs);

// Offsets per row of the Fourier features' `inputs` (rows, 2 ends + 2): LTE 1, DLTE 2.
inline int features_ends(const at::Tensor& inputs) {
  return static_cast<int>(inputs.size(1) / 2 - 1);
}

IK_LIIF_KERNELS(cpu)
#if defined(IK_CUDA_KERNELS)
IK_LIIF_KERNELS(cuda)
#endif
#undef IK_LIIF_KERNELS

// The element-wise steps for one device.
struct Kernels {
  decltype(&members_cpu) members;
  decltype(&liif_first_layer_cpu) liif_first_layer;
  decltype(&lte_features_cpu) lte_features;
  decltype(&lte_features_backward_cpu) lte_features_backward;
};

// ---------------------------------------------------------------------------------------
// Host side of the local ensemble (csrc/liif_ensemble.cpp), shared by both operators.
// `op` names the operator in error messages.
// ---------------------------------------------------------------------------------------

// The steps for `map`'s device and dtype (CPU: float32 or float64).
Kernels kernels_for(const at::Tensor& map, const char* op);

// Checks a per-LR-pixel map (B, h, w, D) against the queries coord and cell (B, Q, 2):
// shapes, dtype, device, and finite coordinates (they become indices).
void check_queries(const at::Tensor& map, const at::Tensor& coord, const at::Tensor& cell,
                   const char* op);

// The members of one call's n = B*Q queries (rows query-major).
struct Ensemble {
  at::Tensor index;    // (4n,) int64: flat (b, iy, ix) of the member's LR pixel
  at::Tensor inputs;   // (4n, 4): [rel_y, rel_x, cell_y*h, cell_x*w], accumulation type
  at::Tensor weights;  // (n, 4): area weights, accumulation type
};

Ensemble make_ensemble(const Kernels& k, const at::Tensor& map, const at::Tensor& coord,
                       const at::Tensor& cell);

// Σ_t w_t·preds_t: the (B, Q, o) output from the members' predictions (4n, o).
at::Tensor blend(const Ensemble& e, const at::Tensor& preds, at::IntArrayRef out_shape);

// Gradient of the predictions (4n, o), of `type`, from the output's grad_out (B, Q, o).
at::Tensor blend_backward(const Ensemble& e, const at::Tensor& grad_out, at::ScalarType type);

// Gradient of a per-LR-pixel map shaped like `map` (B, h, w, D) from the gradients of its
// gathered member rows (4n, D), accumulated in the accumulation type.
at::Tensor scatter_rows(const Ensemble& e, const at::Tensor& rows, const at::Tensor& map);

}  // namespace liif
}  // namespace ik
