// Tensor glue of the fused LIIF and LTE forward (declared in csrc/liif_kernels.h): pads the
// MLP's weights to the kernels' width alignment and calls the launchers of liif_fused.cu on
// the tensors' current stream.  Compiled in CUDA builds and in the emulated build.
#include <ATen/ATen.h>

#include <vector>

#include "../cuda_glue.h"
#include "../liif_kernels.h"
#include "../poison.h"
#include "liif_fused_cuda.h"

namespace ik {
namespace liif {
namespace {

constexpr const char* kOp = "implicit_kernels::liif_decode/lte_decode";

using cuda::check_launch;
using cuda::dtype_of;
using cuda::stream_of;

// `mlp` zero-padded to the kernels' widths (FusedMlp's layout), holding its tensors.
struct PaddedMlp {
  std::vector<at::Tensor> tensors;
  FusedMlp shape;
};

PaddedMlp pad(const Mlp& mlp, int64_t in) {
  PaddedMlp p;
  p.shape.layers = static_cast<int>(mlp.weights.size());
  p.shape.out = static_cast<int>(mlp.weights.back().size(0));
  p.shape.width[0] = static_cast<int>(cuda::padded_width(in));
  for (int l = 0; l < p.shape.layers; ++l) {
    const int64_t out = cuda::padded_width(mlp.weights[l].size(0));
    p.shape.width[l + 1] = static_cast<int>(out);
    p.tensors.push_back(cuda::zero_padded(mlp.weights[l], {out, p.shape.width[l]}));
    p.tensors.push_back(cuda::zero_padded(mlp.biases[l], {out}));
    p.shape.weight[l] = p.tensors[2 * l].data_ptr();
    p.shape.bias[l] = p.tensors[2 * l + 1].data_ptr();
  }
  return p;
}

FusedQueries queries_of(const at::Tensor& map, const at::Tensor& coord, const at::Tensor& cell) {
  return {coord.data_ptr(), cell.data_ptr(), coord.size(0) * coord.size(1),
          Dims{map.size(1), map.size(2), coord.size(1)}};
}

}  // namespace

bool fused_forward_fits(const Mlp& mlp, int64_t in) {
  if (mlp.weights.empty() || mlp.weights.size() > cuda::kMaxLayers || mlp.relu_last) return false;
  if (cuda::padded_width(in) > cuda::kMaxWidth) return false;
  for (const at::Tensor& w : mlp.weights) {
    if (cuda::padded_width(w.size(0)) > cuda::kMaxWidth) return false;
  }
  return true;
}

at::Tensor liif_fused_forward_cuda(const at::Tensor& proj, const at::Tensor& w_rc,
                                   const at::Tensor& b0, const Mlp& rest, const at::Tensor& coord,
                                   const at::Tensor& cell) {
  const cuda::DeviceGuard guard(proj.device());
  const int64_t d = proj.size(3);
  const PaddedMlp mlp = pad(rest, d);
  const at::Tensor c = coord.contiguous(), s = cell.contiguous();
  at::Tensor out = empty_poisoned({coord.size(0), coord.size(1), mlp.shape.out}, proj.options());
  check_launch(launch_liif_fused(
                   proj.data_ptr(), d, w_rc.data_ptr(), b0.data_ptr(), queries_of(proj, c, s),
                   mlp.shape, dtype_of(proj.scalar_type(), kOp), out.data_ptr(), stream_of(proj)),
               kOp, "liif_fused");
  return out;
}

at::Tensor lte_fused_forward_cuda(const at::Tensor& coef, const at::Tensor& freq,
                                  const at::Tensor& phase, const Mlp& imnet,
                                  const at::Tensor& coord, const at::Tensor& cell) {
  const cuda::DeviceGuard guard(coef.device());
  const int64_t width = coef.size(3);
  const PaddedMlp mlp = pad(imnet, width);
  const at::Tensor c = coord.contiguous(), s = cell.contiguous();
  at::Tensor out = empty_poisoned({coord.size(0), coord.size(1), mlp.shape.out}, coef.options());
  check_launch(launch_lte_fused(coef.data_ptr(), freq.data_ptr(), width / 2, phase.data_ptr(),
                                queries_of(coef, c, s), mlp.shape,
                                dtype_of(coef.scalar_type(), kOp), out.data_ptr(), stream_of(coef)),
               kOp, "lte_fused");
  return out;
}

}  // namespace liif
}  // namespace ik
