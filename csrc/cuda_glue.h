// Helpers of the CUDA tensor glue (csrc/cuda/*_glue.cpp, CUDA and emulated builds): ATen
// dtype to the launchers' DType, launch-error checks naming the operator, the device
// guard and the current stream.  The emulated build (IK_EMULATE_CUDA) runs the kernels
// on CPU tensors on the calling thread: no device to select, no stream, no CUDA headers.
#pragma once

#include <ATen/ATen.h>
#if !defined(IK_EMULATE_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

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

#if defined(IK_EMULATE_CUDA)
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

inline cudaStream_t stream_of(const at::Tensor&) { return nullptr; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;

inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}
#endif

}  // namespace cuda
}  // namespace ik
