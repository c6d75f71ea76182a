// Device-specific steps of the fused LIIF and LTE decodes, at the ATen level, and the host
// side of their shared local ensemble (host code only: it lives outside csrc/include/ik,
// whose headers must stay free of ATen for nvcc).
//
// csrc/liif_decode.cpp and csrc/lte_decode.cpp run the decodes: on CPU tensors in tiles of
// member rows (the end of this header), otherwise with whole-tensor ATen matmuls and these
// element-wise steps of ik/liif_decode.h and ik/lte_decode.h, each with a CPU
// implementation (csrc/cpu/liif_kernels_cpu.cpp) and, in CUDA builds, a CUDA one
// (csrc/cuda/liif_kernels_glue.cpp over csrc/cuda/liif_kernels.cu).
// Rows of the member tensors are query-major: row 4p + t is member t of query p.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "ik/lte_decode.h"
#include "mlp.h"
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

#if defined(IK_CUDA_KERNELS)
// The fused forward on the CUDA kernels (csrc/cuda/liif_fused_glue.cpp): one kernel from
// the queries coord, cell (B, Q, 2) to the output (B, Q, o), with the activations on chip.
// Whether it takes an MLP on `in`-wide inputs (widths, depth; ReLU between layers only).
bool fused_forward_fits(const Mlp& mlp, int64_t in);
// LIIF from proj (B, h, w, D), w_rc (D, 4), b0 (D) and the layers after the first, `rest`
// (at least one).
at::Tensor liif_fused_forward_cuda(const at::Tensor& proj, const at::Tensor& w_rc,
                                   const at::Tensor& b0, const Mlp& rest, const at::Tensor& coord,
                                   const at::Tensor& cell);
// LTE from coef, freq (B, h, w, 2m), phase (m, 2) and the MLP `imnet`.
at::Tensor lte_fused_forward_cuda(const at::Tensor& coef, const at::Tensor& freq,
                                  const at::Tensor& phase, const Mlp& imnet,
                                  const at::Tensor& coord, const at::Tensor& cell);
#endif

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

// The forward's record as an operator output (the `_train` operators' second result):
//   [index (4n,), inputs (4n, 4), weights (n, 4), acts (4n, width_i)...]
// where acts are the MLP's input and each layer's output but the last.
std::vector<at::Tensor> pack_record(const Ensemble& e, const std::vector<at::Tensor>& acts);
// The record of a call without queries, for `mlp` on `in`-wide inputs.
std::vector<at::Tensor> empty_record(const at::Tensor& like, const Mlp& mlp, int64_t in);
// The inverse of pack_record, checked against the call's n queries and `mlp`.
void unpack_record(at::TensorList saved, int64_t n, const Mlp& mlp, Ensemble* e,
                   std::vector<at::Tensor>* acts);

// ---------------------------------------------------------------------------------------
// The decodes on CPU tensors (runs_cpu_tiles) in tiles of member rows, a tile holding whole
// queries (csrc/cpu/liif_tiles_cpu.cpp, over csrc/cpu/tiles.h): per tile the MLP's input
// is formed, the MLP runs one GEMM per layer, and the tile's queries are blended, so no
// (4n, width) activation exists unless the backward needs it.  The backward runs per tile
// from the forward's record, adding weight and map gradients into per-thread sums.
// `record`: the MLP's input and each layer's output but the last, (4n, width_i) each.
// ---------------------------------------------------------------------------------------

// LIIF: out (n, o) from proj (B, h, w, D), w_rc (D, 4), b0 (D) and the layers after the
// first, `rest` (the first layer's ReLU'd output is the record's first entry).
at::Tensor liif_forward_tiles_cpu(const at::Tensor& proj, const at::Tensor& w_rc,
                                  const at::Tensor& b0, const Mlp& rest, const Ensemble& e,
                                  std::vector<at::Tensor>* record);

// LIIF's backward from grad_out (n, o): fills grad_w/grad_b of `rest` and returns the
// gradients of proj, w_rc and b0.
std::tuple<at::Tensor, at::Tensor, at::Tensor> liif_backward_tiles_cpu(
    const at::Tensor& proj, const at::Tensor& w_rc, const at::Tensor& b0, const Mlp& rest,
    const Ensemble& e, const std::vector<at::Tensor>& record, const at::Tensor& grad_out,
    std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b);

// LTE: out (n, o) from coef, freq (B, h, w, 2m), phase (m, 2) and the MLP `imnet` (the
// Fourier features are the record's first entry).
at::Tensor lte_forward_tiles_cpu(const at::Tensor& coef, const at::Tensor& freq,
                                 const at::Tensor& phase, const Mlp& imnet, const Ensemble& e,
                                 std::vector<at::Tensor>* record);

// LTE's backward from grad_out (n, o): fills grad_w/grad_b of `imnet` and returns the
// gradients of coef, freq and phase.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_backward_tiles_cpu(
    const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase, const Mlp& imnet,
    const Ensemble& e, const std::vector<at::Tensor>& record, const at::Tensor& grad_out,
    std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b);

}  // namespace liif
}  // namespace ik
