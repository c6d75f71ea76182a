// The fused DIIF backward on the CUDA kernels (csrc/cuda/diif_fused_backward.cu, glue in
// csrc/cuda/diif_fused_backward_glue.cpp): stages_backward for DIIF's split first layer,
// in two kernels that recompute each tile's activations, with the weight gradients as
// ATen GEMMs over the per-row buffers the kernels write.  Host code (ATen).
#pragma once

#include <ATen/ATen.h>

#include "diif_stages.h"

namespace ik {
namespace diif {

#if defined(IK_CUDA_KERNELS)

// DIIF's first coarse layer after the split (csrc/diif_decode.cpp): the projected vertex
// codes corner_proj (..., width), and w_coord (width, 6) and b0 (width) of the coordinate
// inputs.
struct CornerLayer {
  at::Tensor corner_proj, w_coord, b0;
};

// Whether stages_backward_fused takes these stages: tensors on the CUDA kernels
// (runs_cuda_kernels) and a decoder the fused forward takes (fused_forward_fits), whose
// coarse kernel recomputes G.
bool fused_backward_applies(const Stages& st, const CornerLayer& first);

// stages_backward of DIIF from `g` (S·V, df or df padded), G = fine_wh·H of every
// slice-vertex row (fused_slice_vertex_g): fills `grads` and returns the gradient of the
// first pre-activation (S·V, width), as stages_backward.
at::Tensor stages_backward_fused(const Stages& st, const CornerLayer& first, const Slices& sl,
                                 const Dims& dims, const at::Tensor& g, const at::Tensor& grad_out,
                                 StageGrads* grads);

#endif

}  // namespace diif
}  // namespace ik
