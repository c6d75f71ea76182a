// Helpers of the CUDA tensor glue (csrc/cuda/*_glue.cpp, CUDA builds only): ATen dtype to
// the launchers' DType, launch-error checks naming the operator, the current stream.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launch.h"

namespace ik {
namespace cuda {

inline DType dtype_of(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kDouble:
      return DType::kFloat64;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": unsupported CUDA dtype ", t);
  }
}

inline void check_launch(cudaError_t err, const char* op, const char* step) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel ", step, " failed: ", cudaGetErrorString(err));
}

inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace cuda
}  // namespace ik
