// The fused DIIF forward on the CUDA kernels (csrc/cuda/diif_fused.cu): the plain decode's
// two kernels per call, for tensors whose steps run the CUDA kernels (runs_cuda_kernels).
#pragma once

#include <ATen/ATen.h>

#include "diif_stages.h"

namespace ik {
namespace diif {

#if defined(IK_CUDA_KERNELS)
// Whether the fused kernels take this decoder: every width (the first layer's `width`
// included) at most 256 and at most 8 layers per stage after its first; wider or deeper
// decoders keep stages_forward.
bool fused_forward_fits(const Stages& st, int64_t width);

// The decode's output (n, out) of the slices `sl`: corner_proj (.., D) contiguous, w_coord
// (D, 6) and b0 (D) the coarse first layer's rest (csrc/diif_decode.cpp).
at::Tensor fused_forward_cuda(const at::Tensor& corner_proj, const at::Tensor& w_coord,
                              const at::Tensor& b0, const Stages& st, const Slices& sl,
                              const Dims& dims);
#endif

}  // namespace diif
}  // namespace ik
