// Helpers of the CUDA tensor glue (csrc/cuda/*_glue.cpp, CUDA and emulated builds): ATen
// dtype to the launchers' DType, launch-error checks naming the operator, the device
// guard and the current stream, parameters zero-padded to the kernels' widths.  The emulated build
// (IK_EMULATE_CUDA) runs the kernels on CPU tensors on the calling thread: no device to select, no
// stream, no CUDA headers.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
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

// `t` zero-padded to `sizes` (the kernels' widths, multiples of kWidthAlign: the padded
// channels stay 0 through every layer), contiguous and 32-byte aligned (WMMA's loads);
// t itself where it already is all three.
inline at::Tensor zero_padded(const at::Tensor& t, at::IntArrayRef sizes) {
  at::Tensor c = t.contiguous();
  if (c.sizes() == sizes && reinterpret_cast<uintptr_t>(c.data_ptr()) % 32 == 0) return c;
  at::Tensor out = at::zeros(sizes, t.options());
  at::Tensor part = out;
  for (int64_t d = 0; d < t.dim(); ++d) part = part.narrow(d, 0, t.size(d));
  part.copy_(t);
  return out;
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
