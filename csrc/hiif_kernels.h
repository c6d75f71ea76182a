// Device-specific steps of the fused HIIF operators, at the ATen level (host code only).
//
// csrc/hiif_decode.cpp runs the operators (dense layers, GELU and the attention through
// ATen) and calls these for the element-wise steps of ik/hiif_decode.h; each has a CPU
// implementation (csrc/cpu/hiif_kernels_cpu.cpp) and, in CUDA builds, a CUDA one
// (csrc/cuda/hiif_kernels_glue.cpp over csrc/cuda/hiif_kernels.cu).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "ik/hiif_decode.h"
#include "op_utils.h"

namespace ik {
namespace hiif {

#define IK_HIIF_KERNELS(SUFFIX)                                                                 \
  /* Level 0's unnormalised sum u (n, hidden) of queries coord, cell (n, 2) (image =            \
     row / q), from maps (B, h, w, 4, hidden + 2), row_sums (4, hidden), w_extra (hidden,       \
     4); with the members' map-row indices (n, 4) and the aux values (n, kAuxWidth, Acc). */    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> level0_sum_##SUFFIX(                           \
      const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,            \
      const at::Tensor& coord, const at::Tensor& cell, int64_t q, int64_t channels,             \
      bool public_centres);                                                                     \
  /* Normalised input y = ([x, bits_level] - μ) · rstd (n, C + 2) of a later level, x (n, C), \
     bits from coord (n, 2) on an h x w map; and rstd (n,) in Acc.  public_centres: the bits    \
     from LR centres rounded as the public code does (level_codes="public"). */                 \
  std::tuple<at::Tensor, at::Tensor> level_input_##SUFFIX(                                      \
      const at::Tensor& x, const at::Tensor& coord, int64_t h, int64_t w, int64_t level,        \
      bool public_centres);                                                                     \
  /* Every level's bits (n, levels, 2) of coord (n, 2), in coord's type (for tests). */         \
  at::Tensor codes_##SUFFIX(const at::Tensor& coord, int64_t h, int64_t w, int64_t levels,      \
                            bool public_centres);

IK_HIIF_KERNELS(cpu)
#if defined(IK_CUDA_KERNELS)
IK_HIIF_KERNELS(cuda)
#endif
#undef IK_HIIF_KERNELS

}  // namespace hiif
}  // namespace ik
