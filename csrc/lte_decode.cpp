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
// The backward recomputes the forward and returns gradients for coef, freq, phase, w and
// b; coord and cell are not differentiated (sampled coordinates are data).
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
  std::vector<at::Tensor> acts;  // mlp_forward's record: the Fourier features x .. preds
  at::Tensor out;                // (B, Q, out)
};

at::Tensor rows(const at::Tensor& map) { return map.view({-1, map.size(3)}); }

Trace run_forward(const Decoder& d, const at::Tensor& coord, const at::Tensor& cell) {
  const Kernels k = liif::kernels_for(d.coef, kOp);
  Trace tr;
  tr.ensemble = liif::make_ensemble(k, d.coef, coord, cell);
  const at::Tensor x =
      k.lte_features(rows(d.coef), rows(d.freq), d.phase, tr.ensemble.index, tr.ensemble.inputs);
  const at::Tensor preds = mlp_forward(d.imnet, x, &tr.acts);
  tr.out = liif::blend(tr.ensemble, preds, {coord.size(0), coord.size(1), preds.size(1)});
  return tr;
}

at::Tensor lte_decode(const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase,
                      at::TensorList w, at::TensorList b, const at::Tensor& coord,
                      const at::Tensor& cell) {
  const Decoder d = make_decoder(coef, freq, phase, w, b);
  liif::check_queries(d.coef, coord, cell, kOp);
  if (coord.size(1) == 0) {
    return at::empty({coord.size(0), 0, d.imnet.weights.back().size(0)}, coef.options());
  }
  return run_forward(d, coord, cell).out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
lte_decode_backward(const at::Tensor& grad_out, const at::Tensor& coef, const at::Tensor& freq,
                    const at::Tensor& phase, at::TensorList w, at::TensorList b,
                    const at::Tensor& coord, const at::Tensor& cell) {
  const Decoder d = make_decoder(coef, freq, phase, w, b);
  liif::check_queries(d.coef, coord, cell, kOp);
  ik::check_grad_out(grad_out, coef, {coord.size(0), coord.size(1), d.imnet.weights.back().size(0)},
                     kOp);
  if (coord.size(1) == 0) {
    return {at::zeros_like(coef), at::zeros_like(freq), at::zeros_like(phase),
            zeros_like_all(d.imnet.weights), zeros_like_all(d.imnet.biases)};
  }
  const Trace tr = run_forward(d, coord, cell);
  const Ensemble& e = tr.ensemble;
  const auto type = coef.scalar_type();

  std::vector<at::Tensor> grad_w, grad_b;
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
  const at::Tensor grad_phase = at::mm(grad_phi.t(), cells).to(type);
  return {liif::scatter_rows(e, grad_coef_rows, d.coef),
          liif::scatter_rows(e, grad_freq_rows, d.freq), grad_phase, grad_w, grad_b};
}

}  // namespace

IK_LIBRARY_IMPL(CPU, m) {
  m.impl("lte_decode", &lte_decode);
  m.impl("lte_decode_backward", &lte_decode_backward);
}

#if defined(IK_WITH_CUDA)
IK_LIBRARY_IMPL(CUDA, m) {
  m.impl("lte_decode", &lte_decode);
  m.impl("lte_decode_backward", &lte_decode_backward);
}
#endif

}  // namespace lte
}  // namespace ik
