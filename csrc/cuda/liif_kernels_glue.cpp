// Tensor glue of the fused LIIF and LTE decodes' CUDA kernels: implements the *_cuda steps
// of csrc/liif_kernels.h by calling the launchers of liif_kernels.cu on the current stream
// of the tensors' device.  Compiled in CUDA builds and in the emulated build (csrc/emulation).
#include <ATen/ATen.h>

#include "../cuda_glue.h"
#include "../liif_kernels.h"
#include "../poison.h"
#include "liif_kernels_cuda.h"

namespace ik {
namespace liif {
namespace {

// The LIIF and LTE operators share these steps; errors name both.
constexpr const char* kOp = "implicit_kernels::liif_decode/lte_decode";

using cuda::check_launch;
using cuda::dtype_of;
using cuda::stream_of;

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> members_cuda(const at::Tensor& coord,
                                                            const at::Tensor& cell,
                                                            const Dims& dims, at::ScalarType type) {
  const cuda::DeviceGuard guard(coord.device());
  const int64_t n = coord.size(0);
  at::Tensor index = empty_poisoned({n * kMembers}, coord.options().dtype(at::kLong));
  at::Tensor inputs = empty_poisoned({n * kMembers, kCoordInputs}, coord.options().dtype(type));
  at::Tensor weights = empty_poisoned({n, kMembers}, coord.options().dtype(type));
  check_launch(launch_members(coord.data_ptr(), cell.data_ptr(), n, dims,
                              dtype_of(coord.scalar_type(), kOp), index.data_ptr<int64_t>(),
                              inputs.data_ptr(), weights.data_ptr(), stream_of(coord)),
               kOp, "members");
  return {index, inputs, weights};
}

at::Tensor liif_first_layer_cuda(const at::Tensor& proj, const at::Tensor& index,
                                 const at::Tensor& inputs, const at::Tensor& w_rc,
                                 const at::Tensor& b0, bool relu) {
  const cuda::DeviceGuard guard(proj.device());
  const int64_t rows = index.size(0), d = proj.size(1);
  at::Tensor x = empty_poisoned({rows, d}, proj.options());
  check_launch(
      launch_liif_first_layer(proj.data_ptr(), index.data_ptr<int64_t>(), inputs.data_ptr(),
                              w_rc.data_ptr(), b0.data_ptr(), rows, d, relu,
                              dtype_of(proj.scalar_type(), kOp), x.data_ptr(), stream_of(proj)),
      kOp, "liif_first_layer");
  return x;
}

at::Tensor lte_features_cuda(const at::Tensor& coef, const at::Tensor& freq,
                             const at::Tensor& phase_w, const at::Tensor& index,
                             const at::Tensor& inputs) {
  const cuda::DeviceGuard guard(coef.device());
  const int64_t rows = index.size(0), width = coef.size(1);
  at::Tensor x = empty_poisoned({rows, width}, coef.options());
  check_launch(launch_lte_features(
                   coef.data_ptr(), freq.data_ptr(), phase_w.data_ptr(), index.data_ptr<int64_t>(),
                   inputs.data_ptr(), features_ends(inputs), rows, width / 2,
                   dtype_of(coef.scalar_type(), kOp), x.data_ptr(), stream_of(coef)),
               kOp, "lte_features");
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_features_backward_cuda(
    const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& freq,
    const at::Tensor& phase_w, const at::Tensor& index, const at::Tensor& inputs) {
  const cuda::DeviceGuard guard(coef.device());
  const int64_t rows = index.size(0), width = coef.size(1);
  const auto options = coef.options().dtype(inputs.scalar_type());
  at::Tensor grad_coef = empty_poisoned({rows, width}, options);
  at::Tensor grad_freq = empty_poisoned({rows, width}, options);
  at::Tensor grad_phi = empty_poisoned({rows / kMembers, width / 2}, options);
  check_launch(launch_lte_features_backward(
                   grad_x.data_ptr(), coef.data_ptr(), freq.data_ptr(), phase_w.data_ptr(),
                   index.data_ptr<int64_t>(), inputs.data_ptr(), features_ends(inputs), rows,
                   width / 2, dtype_of(coef.scalar_type(), kOp), grad_coef.data_ptr(),
                   grad_freq.data_ptr(), grad_phi.data_ptr(), stream_of(coef)),
               kOp, "lte_features_backward");
  return {grad_coef, grad_freq, grad_phi};
}

}  // namespace liif
}  // namespace ik
