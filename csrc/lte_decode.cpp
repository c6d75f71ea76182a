// The fused LTE decode operators (docs/liif-lte.md, "LTE"): implicit_kernels::lte_decode
// and its backward, for CPU and (in CUDA builds) CUDA tensors.
//
// Inputs: the coefficient and frequency maps `coef`, `freq` (B, H, W, 2m), channels last
// (the estimators' 3×3 convolutions, computed once per call by the caller), the phase
// weight `phase` (m, 2) and the MLP `w`/`b`.  Per call, for the n = B·Q queries:
//   members = the 4 local-ensemble pixels of each query, their offsets and area weights
//   x_t     = coef[pixel_t] ⊙ [cos πφ_t, sin πφ_t],
//             φ_t,i = freq[pixel_t, 2i]·rel_y + freq[pixel_t, 2i+1]·rel_x + (phase·cell)_i
//             (gather and Fourier feature in one pass: only the MLP's input is written)
//   out     = Σ_t weight_t · MLP(x_t)
// The bilinear skip of the LR image is not part of the operator: the Python backend adds
// it (one grid_sample of a 3-channel image, which also gives the image's gradient).
// On CPU tensors the forward runs in tiles of member rows; on the CUDA kernels the plain
// forward is one fused kernel (csrc/cuda/liif_fused.cu) when the MLP fits it.  The
// backward takes the forward's record (lte_decode_train, then lte_decode_backward_saved)
// or recomputes the forward (lte_decode_backward), and returns gradients for coef, freq,
// phase, w and b; coord and cell are not differentiated (sampled coordinates are data).
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "library.h"
#include "liif_kernels.h"
#include "mlp.h"

namespace ik {
namespace lte {
namespace {

using liif::Ensemble;
using liif::Kernels;

constexpr const char* kOp = "implicit_kernels::lte_decode";

// The decoder's tensors, contiguous (kept alive here: raw pointers are taken from them).
struct Decoder {
  at::Tensor coef, freq, phase;
  Mlp imnet;
};

Decoder make_decoder(const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase,
                     at::TensorList w, at::TensorList b) {
  TORCH_CHECK(coef.dim() == 4 && coef.size(1) >= 1 && coef.size(2) >= 1 && coef.size(3) % 2 == 0,
              kOp, ": coef must be (B, H, W, 2m), channels last, got ", coef.sizes());
  TORCH_CHECK(freq.sizes() == coef.sizes(), kOp, ": freq must have coef's shape ", coef.sizes(),
              ", got ", freq.sizes());
  const auto type = coef.scalar_type();
  TORCH_CHECK(at::isFloatingType(type), kOp, ": coef must be floating, got ", type);
  std::vector<at::Tensor> all = {freq, phase};
  for (auto list : {w, b}) all.insert(all.end(), list.begin(), list.end());
  for (const auto& t : all) {
    TORCH_CHECK(t.scalar_type() == type, kOp, ": every parameter must have coef's dtype ", type,
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == coef.device(), kOp, ": every parameter must be on ", coef.device(),
                ", got ", t.device());
  }
  const int64_t pairs = coef.size(3) / 2;
  TORCH_CHECK(phase.dim() == 2 && phase.size(0) == pairs && phase.size(1) == 2, kOp,
              ": phase must be (", pairs, ", 2), got ", phase.sizes());
  TORCH_CHECK(!w.empty(), kOp, ": imnet needs at least one layer");
  Decoder d;
  d.coef = coef.contiguous();
  d.freq = freq.contiguous();
  d.phase = phase.contiguous();
  d.imnet = make_mlp(w, b, coef.size(3), /*relu_last=*/false, std::string(kOp) + ": imnet");
  return d;
}

// Everything the forward computes that the backward needs.
struct Trace {
  Ensemble ensemble;
  // With a record: the Fourier features x, then each layer's output but the last.
  std::vector<at::Tensor> acts;
  at::Tensor out;  // (B, Q, out)
};

at::Tensor rows(const at::Tensor& map) { return map.view({-1, map.size(3)}); }

int64_t out_dim(const Decoder& d) { return d.imnet.weights.back().size(0); }

// The forward of the call; `record` keeps the activations for the backward.  CPU tensors
// run in tiles of member rows (csrc/cpu/liif_tiles_cpu.cpp).
Trace run_forward(const Decoder& d, const at::Tensor& coord, const at::Tensor& cell, bool record) {
  const Kernels k = liif::kernels_for(d.coef, kOp);
  Trace tr;
  tr.ensemble = liif::make_ensemble(k, d.coef, coord, cell);
  const std::vector<int64_t> shape = {coord.size(0), coord.size(1), out_dim(d)};
  if (runs_cpu_tiles(d.coef)) {
    tr.out = liif::lte_forward_tiles_cpu(d.coef, d.freq, d.phase, d.imnet, tr.ensemble,
                                         record ? &tr.acts : nullptr)
                 .view(shape);
    return tr;
  }
  const at::Tensor x =
      k.lte_features(rows(d.coef), rows(d.freq), d.phase, tr.ensemble.index, tr.ensemble.inputs);
  const at::Tensor preds = mlp_forward(d.imnet, x, record ? &tr.acts : nullptr);
  if (record) tr.acts.pop_back();  // the predictions: not read
  tr.out = liif::blend(tr.ensemble, preds, shape);
  return tr;
}

at::Tensor lte_decode(const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase,
                      at::TensorList w, at::TensorList b, const at::Tensor& coord,
                      const at::Tensor& cell) {
  const Decoder d = make_decoder(coef, freq, phase, w, b);
  liif::check_queries(d.coef, coord, cell, kOp);
  if (coord.size(1) == 0) return at::empty({coord.size(0), 0, out_dim(d)}, coef.options());
#if defined(IK_CUDA_KERNELS)
  if (runs_cuda_kernels(d.coef) && liif::fused_forward_fits(d.imnet, d.coef.size(3))) {
    return liif::lte_fused_forward_cuda(d.coef, d.freq, d.phase, d.imnet, coord, cell);
  }
#endif
  return run_forward(d, coord, cell, false).out;
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
                         std::vector<at::Tensor>>;

// The gradients of coef, freq, phase, w and b from the forward's trace.
Grads gradients(const Decoder& d, const Trace& tr, const at::Tensor& grad_out) {
  const Ensemble& e = tr.ensemble;
  std::vector<at::Tensor> grad_w, grad_b;
  if (runs_cpu_tiles(d.coef)) {
    at::Tensor grad_coef, grad_freq, grad_phase;
    std::tie(grad_coef, grad_freq, grad_phase) = liif::lte_backward_tiles_cpu(
        d.coef, d.freq, d.phase, d.imnet, e, tr.acts, grad_out, grad_w, grad_b);
    return {grad_coef, grad_freq, grad_phase, grad_w, grad_b};
  }
  const auto type = d.coef.scalar_type();
  const at::Tensor grad_x =
      mlp_backward(d.imnet, liif::blend_backward(e, grad_out, type), tr.acts, grad_w, grad_b);
  at::Tensor grad_coef_rows, grad_freq_rows, grad_phi;
  std::tie(grad_coef_rows, grad_freq_rows, grad_phi) =
      liif::kernels_for(d.coef, kOp)
          .lte_features_backward(grad_x.contiguous(), rows(d.coef), rows(d.freq), d.phase, e.index,
                                 e.inputs);
  // The phase is Linear(cell·(H, W)), shared by a query's members: its weight's gradient
  // is Σ_query (Σ_t dL/dφ_t) ⊗ scaled cell.
  const int64_t n = e.weights.size(0);
  const at::Tensor cells =
      e.inputs.view({n, liif::kMembers, liif::kCoordInputs}).select(1, 0).narrow(1, 2, 2);
  const at::Tensor grad_phase = narrow_input_weight_grad(grad_phi, cells).to(type);
  return {liif::scatter_rows(e, grad_coef_rows, d.coef),
          liif::scatter_rows(e, grad_freq_rows, d.freq), grad_phase, grad_w, grad_b};
}

Grads zero_gradients(const Decoder& d) {
  return {at::zeros_like(d.coef), at::zeros_like(d.freq), at::zeros_like(d.phase),
          zeros_like_all(d.imnet.weights), zeros_like_all(d.imnet.biases)};
}

// The forward with its record for the backward (implicit_kernels::lte_decode_train),
// laid out as LIIF's (liif::pack_record): the members, the Fourier features, then the
// outputs of the MLP's layers but the last.
std::tuple<at::Tensor, std::vector<at::Tensor>> lte_decode_train(
    const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase, at::TensorList w,
    at::TensorList b, const at::Tensor& coord, const at::Tensor& cell) {
  const Decoder d = make_decoder(coef, freq, phase, w, b);
  liif::check_queries(d.coef, coord, cell, kOp);
  if (coord.size(1) == 0) {
    return {at::empty({coord.size(0), 0, out_dim(d)}, coef.options()),
            liif::empty_record(d.coef, d.imnet, d.coef.size(3))};
  }
  const Trace tr = run_forward(d, coord, cell, true);
  return {tr.out, liif::pack_record(tr.ensemble, tr.acts)};
}

Grads lte_decode_backward(const at::Tensor& grad_out, const at::Tensor& coef,
                          const at::Tensor& freq, const at::Tensor& phase, at::TensorList w,
                          at::TensorList b, const at::Tensor& coord, const at::Tensor& cell) {
  const Decoder d = make_decoder(coef, freq, phase, w, b);
  liif::check_queries(d.coef, coord, cell, kOp);
  ik::check_grad_out(grad_out, coef, {coord.size(0), coord.size(1), out_dim(d)}, kOp);
  if (coord.size(1) == 0) return zero_gradients(d);
  return gradients(d, run_forward(d, coord, cell, true), grad_out);
}

// The backward from lte_decode_train's record (implicit_kernels::lte_decode_backward_saved).
Grads lte_decode_backward_saved(const at::Tensor& grad_out, at::TensorList saved,
                                const at::Tensor& coef, const at::Tensor& freq,
                                const at::Tensor& phase, at::TensorList w, at::TensorList b,
                                const at::Tensor& coord, const at::Tensor& cell) {
  const Decoder d = make_decoder(coef, freq, phase, w, b);
  liif::check_queries(d.coef, coord, cell, kOp);
  ik::check_grad_out(grad_out, coef, {coord.size(0), coord.size(1), out_dim(d)}, kOp);
  if (coord.size(1) == 0) return zero_gradients(d);
  Trace tr;
  liif::unpack_record(saved, coord.size(0) * coord.size(1), d.imnet, &tr.ensemble, &tr.acts);
  return gradients(d, tr, grad_out);
}

}  // namespace

IK_LIBRARY_IMPL(CPU, m) {
  m.impl("lte_decode", &lte_decode);
  m.impl("lte_decode_train", &lte_decode_train);
  m.impl("lte_decode_backward", &lte_decode_backward);
  m.impl("lte_decode_backward_saved", &lte_decode_backward_saved);
}

#if defined(IK_WITH_CUDA)
IK_LIBRARY_IMPL(CUDA, m) {
  m.impl("lte_decode", &lte_decode);
  m.impl("lte_decode_train", &lte_decode_train);
  m.impl("lte_decode_backward", &lte_decode_backward);
  m.impl("lte_decode_backward_saved", &lte_decode_backward_saved);
}
#endif

}  // namespace lte
}  // namespace ik
