// The fused LIIF decode operators (docs/liif-lte.md, "Split first layer"):
// implicit_kernels::liif_decode and its backward, for CPU and (in CUDA builds) CUDA tensors.
//
// Inputs are the decoder after the split: `proj` (B, H, W, D), channels last, holds the
// first layer's feature part W_f·unfold(feat) at every LR pixel (a 3×3 convolution,
// computed by the caller, so the 9C-wide unfolded codes never exist); `w_rel_cell` (D, 4:
// rel y, x, then cell y, x) and `b0` are the rest of the first layer; `w`/`b` the layers
// after it.  Per call, for the n = B·Q queries (coord, cell: (B, Q, 2), unscaled cell):
//   members = the 4 local-ensemble pixels of each query, their offsets and area weights
//   x_t     = relu(proj[pixel_t] + w_rel_cell·[rel_t, cell·(H, W)] + b0)
//   out     = Σ_t weight_t · MLP(x_t)
// On CPU tensors the forward runs in tiles of member rows and no (4n, D) activation
// exists unless a backward needs it; on the CUDA kernels the plain forward is one fused
// kernel (csrc/cuda/liif_fused.cu) when the MLP fits it.  The backward takes the forward's record
// (liif_decode_train, then liif_decode_backward_saved) or recomputes the forward of the
// call (liif_decode_backward), and returns gradients for proj, w_rel_cell, b0, w and b.
// coord and cell are not differentiated: LIIF trains on sampled coordinates, which are data.
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "library.h"
#include "liif_kernels.h"
#include "mlp.h"

namespace ik {
namespace liif {
namespace {

constexpr const char* kOp = "implicit_kernels::liif_decode";

// The decoder's tensors, contiguous (kept alive here: raw pointers are taken from them).
struct Decoder {
  at::Tensor proj, w_rel_cell, b0;
  Mlp rest;  // the layers after the first; empty when the first layer is the last
};

Decoder make_decoder(const at::Tensor& proj, const at::Tensor& w_rel_cell, const at::Tensor& b0,
                     at::TensorList w, at::TensorList b) {
  TORCH_CHECK(proj.dim() == 4 && proj.size(1) >= 1 && proj.size(2) >= 1, kOp,
              ": proj must be (B, H, W, D), channels last, got ", proj.sizes());
  const auto type = proj.scalar_type();
  TORCH_CHECK(at::isFloatingType(type), kOp, ": proj must be floating, got ", type);
  std::vector<at::Tensor> all = {w_rel_cell, b0};
  for (auto list : {w, b}) all.insert(all.end(), list.begin(), list.end());
  for (const auto& t : all) {
    TORCH_CHECK(t.scalar_type() == type, kOp, ": every parameter must have proj's dtype ", type,
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == proj.device(), kOp, ": every parameter must be on ", proj.device(),
                ", got ", t.device());
  }
  const int64_t width = proj.size(3);
  TORCH_CHECK(w_rel_cell.dim() == 2 && w_rel_cell.size(0) == width &&
                  w_rel_cell.size(1) == kCoordInputs && b0.dim() == 1 && b0.size(0) == width,
              kOp, ": layer 0 (rel and cell part) weight must be (", width, ", ", kCoordInputs,
              ") and its bias (", width, ",), got ", w_rel_cell.sizes(), " and ", b0.sizes());
  Decoder d;
  d.proj = proj.contiguous();
  d.w_rel_cell = w_rel_cell.contiguous();
  d.b0 = b0.contiguous();
  d.rest = make_mlp(w, b, width, /*relu_last=*/false, std::string(kOp) + ": imnet");
  return d;
}

int64_t out_dim(const Decoder& d) {
  return d.rest.weights.empty() ? d.proj.size(3) : d.rest.weights.back().size(0);
}

// Everything the forward computes that the backward needs.
struct Trace {
  Ensemble ensemble;
  // With a record: the first layer's output x, then each later layer's output but the
  // last (the MLP's record, mlp_forward's without the predictions).
  std::vector<at::Tensor> acts;
  at::Tensor out;  // (B, Q, out)
};

// The forward of the call; `record` keeps the activations for the backward.  CPU tensors
// run in tiles of member rows (csrc/cpu/liif_tiles_cpu.cpp).
Trace run_forward(const Decoder& d, const at::Tensor& coord, const at::Tensor& cell, bool record) {
  const Kernels k = kernels_for(d.proj, kOp);
  Trace tr;
  tr.ensemble = make_ensemble(k, d.proj, coord, cell);
  const std::vector<int64_t> shape = {coord.size(0), coord.size(1), out_dim(d)};
  if (runs_cpu_tiles(d.proj)) {
    tr.out = liif_forward_tiles_cpu(d.proj, d.w_rel_cell, d.b0, d.rest, tr.ensemble,
                                    record ? &tr.acts : nullptr)
                 .view(shape);
    return tr;
  }
  const bool relu = !d.rest.weights.empty();
  const at::Tensor x = k.liif_first_layer(d.proj.view({-1, d.proj.size(3)}), tr.ensemble.index,
                                          tr.ensemble.inputs, d.w_rel_cell, d.b0, relu);
  const at::Tensor preds = mlp_forward(d.rest, x, record ? &tr.acts : nullptr);
  if (record && !d.rest.weights.empty()) tr.acts.pop_back();  // the predictions: not read
  tr.out = blend(tr.ensemble, preds, shape);
  return tr;
}

at::Tensor liif_decode(const at::Tensor& proj, const at::Tensor& w_rel_cell, const at::Tensor& b0,
                       at::TensorList w, at::TensorList b, const at::Tensor& coord,
                       const at::Tensor& cell) {
  const Decoder d = make_decoder(proj, w_rel_cell, b0, w, b);
  check_queries(d.proj, coord, cell, kOp);
  if (coord.size(1) == 0) return at::empty({coord.size(0), 0, out_dim(d)}, proj.options());
#if defined(IK_CUDA_KERNELS)
  if (runs_cuda_kernels(d.proj) && fused_forward_fits(d.rest, d.proj.size(3))) {
    return liif_fused_forward_cuda(d.proj, d.w_rel_cell, d.b0, d.rest, coord, cell);
  }
#endif
  return run_forward(d, coord, cell, false).out;
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
                         std::vector<at::Tensor>>;

// The gradients of proj, w_rel_cell, b0, w and b from the forward's trace.
Grads gradients(const Decoder& d, const Trace& tr, const at::Tensor& grad_out) {
  const Ensemble& e = tr.ensemble;
  std::vector<at::Tensor> grad_w, grad_b;
  if (runs_cpu_tiles(d.proj)) {
    at::Tensor grad_proj, grad_w_rel_cell, grad_b0;
    std::tie(grad_proj, grad_w_rel_cell, grad_b0) = liif_backward_tiles_cpu(
        d.proj, d.w_rel_cell, d.b0, d.rest, e, tr.acts, grad_out, grad_w, grad_b);
    return {grad_proj, grad_w_rel_cell, grad_b0, grad_w, grad_b};
  }
  const auto type = d.proj.scalar_type();
  at::Tensor grad = blend_backward(e, grad_out, type);
  if (!d.rest.weights.empty()) {
    grad = mlp_backward(d.rest, grad, tr.acts, grad_w, grad_b);
    relu_backward_(grad, tr.acts.front());
  }
  // grad is now that of the first layer's pre-activation, per member row.
  const at::Tensor grad_b0 = grad.sum(0);
  const at::Tensor grad_w_rel_cell = narrow_input_weight_grad(grad, e.inputs);
  return {scatter_rows(e, grad, d.proj), grad_w_rel_cell, grad_b0, grad_w, grad_b};
}

Grads zero_gradients(const Decoder& d) {
  return {at::zeros_like(d.proj), at::zeros_like(d.w_rel_cell), at::zeros_like(d.b0),
          zeros_like_all(d.rest.weights), zeros_like_all(d.rest.biases)};
}

// The forward with its record for the backward (implicit_kernels::liif_decode_train): a
// decode with gradients keeps it instead of recomputing the forward in the backward.
// record = [index (4n,), inputs (4n, 4), weights (n, 4), x (4n, D), the outputs of the
// layers after the first but the last (4n, width_i)...] (implicit_kernels/ops/liif.py).
std::tuple<at::Tensor, std::vector<at::Tensor>> liif_decode_train(
    const at::Tensor& proj, const at::Tensor& w_rel_cell, const at::Tensor& b0, at::TensorList w,
    at::TensorList b, const at::Tensor& coord, const at::Tensor& cell) {
  const Decoder d = make_decoder(proj, w_rel_cell, b0, w, b);
  check_queries(d.proj, coord, cell, kOp);
  if (coord.size(1) == 0) {
    return {at::empty({coord.size(0), 0, out_dim(d)}, proj.options()),
            empty_record(d.proj, d.rest, d.proj.size(3))};
  }
  const Trace tr = run_forward(d, coord, cell, true);
  return {tr.out, pack_record(tr.ensemble, tr.acts)};
}

Grads liif_decode_backward(const at::Tensor& grad_out, const at::Tensor& proj,
                           const at::Tensor& w_rel_cell, const at::Tensor& b0, at::TensorList w,
                           at::TensorList b, const at::Tensor& coord, const at::Tensor& cell) {
  const Decoder d = make_decoder(proj, w_rel_cell, b0, w, b);
  check_queries(d.proj, coord, cell, kOp);
  ik::check_grad_out(grad_out, proj, {coord.size(0), coord.size(1), out_dim(d)}, kOp);
  if (coord.size(1) == 0) return zero_gradients(d);
  return gradients(d, run_forward(d, coord, cell, true), grad_out);
}

// The backward from liif_decode_train's record (implicit_kernels::liif_decode_backward_saved).
Grads liif_decode_backward_saved(const at::Tensor& grad_out, at::TensorList saved,
                                 const at::Tensor& proj, const at::Tensor& w_rel_cell,
                                 const at::Tensor& b0, at::TensorList w, at::TensorList b,
                                 const at::Tensor& coord, const at::Tensor& cell) {
  const Decoder d = make_decoder(proj, w_rel_cell, b0, w, b);
  check_queries(d.proj, coord, cell, kOp);
  ik::check_grad_out(grad_out, proj, {coord.size(0), coord.size(1), out_dim(d)}, kOp);
  if (coord.size(1) == 0) return zero_gradients(d);
  Trace tr;
  unpack_record(saved, coord.size(0) * coord.size(1), d.rest, &tr.ensemble, &tr.acts);
  return gradients(d, tr, grad_out);
}

}  // namespace

IK_LIBRARY_IMPL(CPU, m) {
  m.impl("liif_decode", &liif_decode);
  m.impl("liif_decode_train", &liif_decode_train);
  m.impl("liif_decode_backward", &liif_decode_backward);
  m.impl("liif_decode_backward_saved", &liif_decode_backward_saved);
}

#if defined(IK_WITH_CUDA)
IK_LIBRARY_IMPL(CUDA, m) {
  m.impl("liif_decode", &liif_decode);
  m.impl("liif_decode_train", &liif_decode_train);
  m.impl("liif_decode_backward", &liif_decode_backward);
  m.impl("liif_decode_backward_saved", &liif_decode_backward_saved);
}
#endif

}  // namespace liif
}  // namespace ik
