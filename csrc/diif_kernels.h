// Device-specific steps of the fused DIIF decode, at the ATen level (host code only:
// it lives outside csrc/include/ik, whose headers must stay free of ATen for nvcc).
//
// csrc/diif_decode.cpp runs the decode (dense layers through ATen matmuls) and calls these
// for the element-wise steps of ik/diif_decode.h; each has a CPU implementation
// (csrc/cpu/diif_kernels_cpu.cpp) and, in CUDA builds, a CUDA one
// (csrc/cuda/diif_kernels_glue.cpp over the kernels of csrc/cuda/diif_kernels.cu).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "ik/diif_decode.h"
#include "op_utils.h"

namespace ik {
namespace diif {

#define IK_DIIF_KERNELS(SUFFIX)                                                                  \
  /* (n,) slice key of each pixel; pixels (n, 2) int64, image = row / q. */                      \
  at::Tensor slice_keys_##SUFFIX(const at::Tensor& pixels, int64_t q, const Dims& dims,          \
                                 Slicing slicing);                                               \
  /* For (S,) slice keys: coordinate inputs (S * 4, 6) of type `type`, corner indices (S*4,). */ \
  std::tuple<at::Tensor, at::Tensor> slice_inputs_##SUFFIX(                                      \
      const at::Tensor& keys, const Dims& dims, Slicing slicing, at::ScalarType type);           \
  /* Fine stage's first pre-activation (n, Df) of pixels (n, 2) whose slices are slice_of        \
     (n,), from g (S * 4, Df), wd (Df, 2), bias (Df). */                                         \
  at::Tensor blend_##SUFFIX(const at::Tensor& pixels, const at::Tensor& slice_of,                \
                            const Dims& dims, const at::Tensor& g, const at::Tensor& wd,         \
                            const at::Tensor& bias);                                             \
  /* Offsets (n, 2) and slice-ensemble weights (n, 4) of pixels (n, 2), of type `type`. */       \
  std::tuple<at::Tensor, at::Tensor> offset_weights_##SUFFIX(                                    \
      const at::Tensor& pixels, const Dims& dims, at::ScalarType type);

IK_DIIF_KERNELS(cpu)
#if defined(IK_CUDA_KERNELS)
IK_DIIF_KERNELS(cuda)
#endif
#undef IK_DIIF_KERNELS

}  // namespace diif
}  // namespace ik
