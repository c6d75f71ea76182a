// ATen glue helpers shared by the CUDA kernels' tensor glue (csrc/cuda/*_glue.cpp): dtype
// mapping, launch checks, the current stream.  Host code of CUDA builds only; it lives
// outside csrc/cuda because headers there must stay torch-free (tests/test_cuda_compile.py).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/cuda_utils.h"

namespace ik {

// The kernels' DType of an ATen floating type; `op` names the operator in the error.
inline DType dtype_of(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, op, ": unsupported CUDA dtype ", t);
  }
}

// Raises the launcher's error, naming the operator and the step.
inline void check_launch(cudaError_t err, const char* op, const char* step) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel ", step, " failed: ",
              cudaGetErrorString(err));
}

inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace ik
