// Tensor glue of the fused DIIF decode's CUDA kernels: implements the *_cuda steps of
// csrc/diif_kernels.h by calling the launchers of diif_kernels.cu on the current stream
// of the tensors' device.  Compiled in CUDA builds and in the emulated build (csrc/emulation).
#include <ATen/ATen.h>

#include "../cuda_glue.h"
#include "../diif_kernels.h"
#include "../poison.h"
#include "diif_kernels_cuda.h"

namespace ik {
namespace diif {
namespace {

constexpr const char* kOp = "implicit_kernels::diif_decode";

DType dtype_of(at::ScalarType t) { return cuda::dtype_of(t, kOp); }

void check_launch(cudaError_t err, const char* step) { cuda::check_launch(err, kOp, step); }

using cuda::stream_of;

}  // namespace

at::Tensor slice_keys_cuda(const at::Tensor& pixels, int64_t q, const Dims& dims, Slicing slicing) {
  const cuda::DeviceGuard guard(pixels.device());
  at::Tensor keys = empty_poisoned({pixels.size(0)}, pixels.options());
  check_launch(launch_slice_keys(pixels.data_ptr<int64_t>(), pixels.size(0), q, dims, slicing,
                                 keys.data_ptr<int64_t>(), stream_of(pixels)),
               "slice_keys");
  return keys;
}

std::tuple<at::Tensor, at::Tensor> slice_inputs_cuda(const at::Tensor& keys, const Dims& dims,
                                                     Slicing slicing, at::ScalarType type) {
  const cuda::DeviceGuard guard(keys.device());
  const int64_t s = keys.size(0), v = vertex_count(dims);
  at::Tensor coords = empty_poisoned({s * v, kCoordInputs}, keys.options().dtype(type));
  at::Tensor corners = empty_poisoned({s * v}, keys.options());
  check_launch(launch_slice_inputs(keys.data_ptr<int64_t>(), s, dims, slicing, dtype_of(type),
                                   coords.data_ptr(), corners.data_ptr<int64_t>(), stream_of(keys)),
               "slice_inputs");
  return {coords, corners};
}

at::Tensor blend_cuda(const at::Tensor& pixels, const at::Tensor& slice_of, const Dims& dims,
                      const at::Tensor& g, const at::Tensor& wd, const at::Tensor& bias) {
  const cuda::DeviceGuard guard(g.device());
  const int64_t n = pixels.size(0), df = g.size(1);
  at::Tensor z = empty_poisoned({n, df}, g.options());
  check_launch(launch_blend(pixels.data_ptr<int64_t>(), slice_of.data_ptr<int64_t>(), n, dims,
                            dtype_of(g.scalar_type()), g.data_ptr(), df, wd.data_ptr(),
                            bias.data_ptr(), z.data_ptr(), stream_of(g)),
               "blend");
  return z;
}

std::tuple<at::Tensor, at::Tensor> offset_weights_cuda(const at::Tensor& pixels, const Dims& dims,
                                                       at::ScalarType type) {
  const cuda::DeviceGuard guard(pixels.device());
  const int64_t n = pixels.size(0);
  at::Tensor offsets = empty_poisoned({n, 2}, pixels.options().dtype(type));
  at::Tensor weights = empty_poisoned({n, vertex_count(dims)}, pixels.options().dtype(type));
  check_launch(launch_offset_weights(pixels.data_ptr<int64_t>(), n, dims, dtype_of(type),
                                     offsets.data_ptr(), weights.data_ptr(), stream_of(pixels)),
               "offset_weights");
  return {offsets, weights};
}

}  // namespace diif
}  // namespace ik
