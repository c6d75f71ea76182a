// Host side of LIIF's local ensemble for the fused LIIF and LTE operators (declared in
// csrc/liif_kernels.h): input checks, the member geometry through the device's kernels,
// and the area-weighted blend of the 4 predictions with its backward (ATen ops in the
// accumulation type; the blend is 4 multiply-adds per output value).
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "liif_kernels.h"

namespace ik {
namespace liif {

Kernels kernels_for(const at::Tensor& map, const char* op) {
#if defined(IK_CUDA_KERNELS)
  if (runs_cuda_kernels(map)) {
    return {members_cuda, liif_first_layer_cuda, lte_features_cuda, lte_features_backward_cuda};
  }
#endif
  if (map.is_cpu()) {
    TORCH_CHECK(map.scalar_type() == at::kFloat || map.scalar_type() == at::kDouble, op,
                ": CPU tensors must be float32 or float64, got ", map.scalar_type());
    return {members_cpu, liif_first_layer_cpu, lte_features_cpu, lte_features_backward_cpu};
  }
  TORCH_CHECK(false, op, ": no kernel for device ", map.device(), " in this build");
}

void check_queries(const at::Tensor& map, const at::Tensor& coord, const at::Tensor& cell,
                   const char* op) {
  TORCH_CHECK(coord.dim() == 3 && coord.size(0) == map.size(0) && coord.size(2) == 2, op,
              ": coord must be (B, Q, 2) with B = ", map.size(0), ", got ", coord.sizes());
  TORCH_CHECK(cell.sizes() == coord.sizes(), op, ": cell must have coord's shape ", coord.sizes(),
              ", got ", cell.sizes());
  for (const at::Tensor* t : {&coord, &cell}) {
    const char* name = t == &coord ? "coord" : "cell";
    TORCH_CHECK(t->scalar_type() == map.scalar_type(), op, ": ", name, " must have dtype ",
                map.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == map.device(), op, ": ", name, " must be on ", map.device(), ", got ",
                t->device());
  }
  TORCH_CHECK(map.size(1) < (int64_t(1) << 31) && map.size(2) < (int64_t(1) << 31), op,
              ": feature map too large");
  check_finite(coord, op, "coord");
}

Ensemble make_ensemble(const Kernels& k, const at::Tensor& map, const at::Tensor& coord,
                       const at::Tensor& cell) {
  const Dims dims{map.size(1), map.size(2), coord.size(1)};
  Ensemble e;
  std::tie(e.index, e.inputs, e.weights) =
      k.members(coord.reshape({-1, 2}).contiguous(), cell.reshape({-1, 2}).contiguous(), dims,
                accumulate_type(map.scalar_type()));
  return e;
}

at::Tensor blend(const Ensemble& e, const at::Tensor& preds, at::IntArrayRef out_shape) {
  const int64_t n = e.weights.size(0), out = preds.size(1);
  const at::Tensor members = preds.view({n, kMembers, out}).to(e.weights.scalar_type());
  return (members * e.weights.unsqueeze(2)).sum(1).to(preds.scalar_type()).view(out_shape);
}

at::Tensor blend_backward(const Ensemble& e, const at::Tensor& grad_out, at::ScalarType type) {
  const int64_t n = e.weights.size(0), out = grad_out.size(2);
  const at::Tensor grad = grad_out.reshape({n, 1, out}).to(e.weights.scalar_type());
  return (e.weights.unsqueeze(2) * grad).to(type).view({n * kMembers, out});
}

at::Tensor scatter_rows(const Ensemble& e, const at::Tensor& rows, const at::Tensor& map) {
  return scatter_rows_to_map(rows.to(e.inputs.scalar_type()), e.index, map);
}

namespace {

// Widths of the recorded activations of `mlp` on `in`-wide inputs: the input's, then each
// layer's output but the last.
std::vector<int64_t> record_widths(const Mlp& mlp, int64_t in) {
  std::vector<int64_t> widths = {in};
  for (size_t i = 0; i + 1 < mlp.weights.size(); ++i) widths.push_back(mlp.weights[i].size(0));
  return widths;
}

}  // namespace

std::vector<at::Tensor> pack_record(const Ensemble& e, const std::vector<at::Tensor>& acts) {
  std::vector<at::Tensor> out = {e.index, e.inputs, e.weights};
  out.insert(out.end(), acts.begin(), acts.end());
  return out;
}

std::vector<at::Tensor> empty_record(const at::Tensor& like, const Mlp& mlp, int64_t in) {
  const auto acc = like.options().dtype(accumulate_type(like.scalar_type()));
  std::vector<at::Tensor> out = {at::empty({0}, like.options().dtype(at::kLong)),
                                 at::empty({0, kCoordInputs}, acc), at::empty({0, kMembers}, acc)};
  for (const int64_t w : record_widths(mlp, in)) out.push_back(at::empty({0, w}, like.options()));
  return out;
}

void unpack_record(at::TensorList saved, int64_t n, const Mlp& mlp, Ensemble* e,
                   std::vector<at::Tensor>* acts) {
  const size_t kept = std::max<size_t>(mlp.weights.size(), 1);
  TORCH_CHECK(saved.size() == 3 + kept, "implicit_kernels: a LIIF-family record of ", 3 + kept,
              " tensors was expected, got ", saved.size());
  const int64_t rows = n * kMembers;
  bool fits = saved[0].size(0) == rows && saved[1].size(0) == rows && saved[2].size(0) == n;
  for (size_t i = 0; i < kept; ++i) fits = fits && saved[3 + i].size(0) == rows;
  TORCH_CHECK(fits, "implicit_kernels: the LIIF-family record does not belong to these queries");
  e->index = saved[0].contiguous();
  e->inputs = saved[1].contiguous();
  e->weights = saved[2].contiguous();
  acts->clear();
  for (size_t i = 0; i < kept; ++i) acts->push_back(saved[3 + i].contiguous());
}

}  // namespace liif
}  // namespace ik
