// The fused DLTE decode operators (docs/dlte.md, reconstructed): implicit_kernels::dlte_decode
// and its backward, for CPU and (in CUDA builds) CUDA tensors.
//
// DLTE is DIIF's grouping, slicing, slice ensemble and fine stage (csrc/diif_stages.h)
// with LTE-style Fourier vertex features as the coarse stage's input.  Inputs: the vertex
// codes of the coefficient and frequency maps `coef`, `freq` (B, H+1, W+1, 4K): the 2×2
// LR values of the estimators' 3×3 convolutions around every LR-grid corner, channels last
// (computed once per call by the caller); the phase weight `phase` (2K, 2); the first
// coarse layer `w0` (D, 4K), `b0`; then DIIF's later layers.  Per slice and vertex t:
//   φ_i   = freq[v_t, 2i]·r_y + freq[v_t, 2i+1]·r_x + (phase·cell)_i, with r the offset
//           rel(first, v_t) for even pairs i and rel(last, v_t) for odd ones
//   pre_t = w0·(coef[v_t] ⊙ [cos πφ, sin πφ]) + b0
// (the gather and the Fourier feature are LTE's step, lte_features, with two offsets per
// row).  The bilinear skip of the LR image is not part of the operator: the Python
// backend adds it.  The backward recomputes the forward and returns gradients for every
// tensor input but `pixels`.
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "diif_stages.h"
#include "library.h"
#include "liif_kernels.h"

namespace ik {
namespace dlte {
namespace {

using diif::Dims;
using diif::PixelCall;
using diif::Slices;
using diif::StageGrads;
using diif::Stages;
using diif::Trace;

constexpr const char* kOp = "implicit_kernels::dlte_decode";

// The decoder's tensors, contiguous (kept alive here: raw pointers are taken from them).
struct Decoder {
  at::Tensor coef, freq, phase, w0, b0;
  Stages stages;
};

Decoder make_decoder(const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase,
                     const at::Tensor& w0, const at::Tensor& b0, at::TensorList coarse_w,
                     at::TensorList coarse_b, const at::Tensor& fine_wh, const at::Tensor& fine_wd,
                     const at::Tensor& fine_b0, at::TensorList fine_w, at::TensorList fine_b) {
  TORCH_CHECK(coef.dim() == 4 && coef.size(1) >= 2 && coef.size(2) >= 2 && coef.size(3) % 2 == 0,
              kOp, ": coef must be (B, H+1, W+1, 4K), channels last, got ", coef.sizes());
  TORCH_CHECK(freq.sizes() == coef.sizes(), kOp, ": freq must have coef's shape ", coef.sizes(),
              ", got ", freq.sizes());
  diif::check_like(coef, {freq, phase, w0, b0}, kOp);
  const int64_t width = coef.size(3), pairs = width / 2;
  TORCH_CHECK(phase.dim() == 2 && phase.size(0) == pairs && phase.size(1) == 2, kOp,
              ": phase must be (", pairs, ", 2), got ", phase.sizes());
  TORCH_CHECK(w0.dim() == 2 && w0.size(1) == width && b0.dim() == 1 && b0.size(0) == w0.size(0),
              kOp, ": coarse layer 0 weight must be (D, ", width, ") with a (D,) bias, got ",
              w0.sizes(), " and ", b0.sizes());
  Decoder d;
  d.coef = coef.contiguous();
  d.freq = freq.contiguous();
  d.phase = phase.contiguous();
  d.w0 = w0.contiguous();
  d.b0 = b0.contiguous();
  d.stages = diif::make_stages(coef, w0.size(0), coarse_w, coarse_b, fine_wh, fine_wd, fine_b0,
                               fine_w, fine_b, kOp);
  return d;
}

Dims dims_of(const Decoder& d, int64_t out_h, int64_t out_w) {
  return diif::make_dims(d.coef.size(0), d.coef.size(1) - 1, d.coef.size(2) - 1, out_h, out_w,
                         /*slice_ensemble=*/true, kOp);
}

at::Tensor rows(const at::Tensor& map) { return map.view({-1, map.size(3)}); }

// The coarse stage's input of every slice and vertex (S * 4, 4K): the Fourier features.
at::Tensor features(const Decoder& d, const Slices& sl) {
  return liif::kernels_for(d.coef, kOp)
      .lte_features(rows(d.coef), rows(d.freq), d.phase, sl.corners, sl.coords);
}

// The coarse stage's first pre-activation of slice-vertex rows lo..hi: w0·x + b0.
diif::FirstLayer first_layer(const Decoder& d, const at::Tensor& x) {
  return [&d, &x](int64_t lo, int64_t hi, at::Tensor out) {
    at::addmm_out(out, d.b0, x.narrow(0, lo, hi - lo), d.w0.t());
  };
}

at::Tensor dlte_decode(const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase,
                       const at::Tensor& w0, const at::Tensor& b0, at::TensorList coarse_w,
                       at::TensorList coarse_b, const at::Tensor& fine_wh,
                       const at::Tensor& fine_wd, const at::Tensor& fine_b0, at::TensorList fine_w,
                       at::TensorList fine_b, const at::Tensor& pixels, int64_t out_h,
                       int64_t out_w, c10::string_view slicing) {
  const Decoder d = make_decoder(coef, freq, phase, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b);
  const Dims dims = dims_of(d, out_h, out_w);
  const PixelCall c = diif::pixel_call(pixels, coef, dims, d.stages, slicing, kOp);
  if (c.flat.size(0) == 0) return at::empty(c.out_shape(), coef.options());
  const Slices sl = diif::make_slices(coef, dims, c.flat, c.q, c.slicing);
  const at::Tensor x = features(d, sl);
  return diif::stages_forward(d.stages, sl, dims, d.w0.size(0), first_layer(d, x), false)
      .out.view(c.out_shape());
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor,
                         at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The gradients of every input but `pixels` from the forward's slices, vertex features x
// and record.
Grads gradients(const Decoder& d, const Slices& sl, const Dims& dims, const at::Tensor& x,
                const Trace& tr, const at::Tensor& grad_out) {
  const at::Tensor &coef = d.coef, &freq = d.freq;
  StageGrads g;
  const at::Tensor grad_pre = diif::stages_backward(d.stages, sl, dims, tr, grad_out, &g);
  const at::Tensor grad_x = at::mm(grad_pre, d.w0).contiguous();
  at::Tensor grad_coef_rows, grad_freq_rows, grad_phi;
  std::tie(grad_coef_rows, grad_freq_rows, grad_phi) =
      liif::kernels_for(d.coef, kOp)
          .lte_features_backward(grad_x, rows(d.coef), rows(d.freq), d.phase, sl.corners,
                                 sl.coords);
  // The phase is Linear(cell·(H, W)), shared by a slice's vertices (and constant in a
  // call): its weight's gradient is Σ_slice (Σ_t dL/dφ_t) ⊗ scaled cell.
  const auto type = coef.scalar_type();
  const int64_t n_slices = grad_phi.size(0);
  const at::Tensor cells =
      sl.coords.view({n_slices, diif::kVertices, diif::kCoordInputs}).select(1, 0).narrow(1, 4, 2);
  const at::Tensor grad_phase = narrow_input_weight_grad(grad_phi, cells).to(type);
  return std::tuple_cat(std::make_tuple(scatter_rows_to_map(grad_coef_rows, sl.corners, coef),
                                        scatter_rows_to_map(grad_freq_rows, sl.corners, freq),
                                        grad_phase, at::mm(grad_pre.t(), x), grad_pre.sum(0)),
                        diif::as_tuple(g));
}

Grads zero_gradients(const Decoder& d) {
  return std::tuple_cat(
      std::make_tuple(at::zeros_like(d.coef), at::zeros_like(d.freq), at::zeros_like(d.phase),
                      at::zeros_like(d.w0), at::zeros_like(d.b0)),
      diif::as_tuple(diif::zero_stage_grads(d.stages)));
}

// The forward with its record for the backward (implicit_kernels::dlte_decode_train): DIIF's
// record (diif_stages.h, pack_record) and the vertex features x (R, 4K).
std::tuple<at::Tensor, std::vector<at::Tensor>> dlte_decode_train(
    const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase, const at::Tensor& w0,
    const at::Tensor& b0, at::TensorList coarse_w, at::TensorList coarse_b,
    const at::Tensor& fine_wh, const at::Tensor& fine_wd, const at::Tensor& fine_b0,
    at::TensorList fine_w, at::TensorList fine_b, const at::Tensor& pixels, int64_t out_h,
    int64_t out_w, c10::string_view slicing) {
  const Decoder d = make_decoder(coef, freq, phase, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b);
  const Dims dims = dims_of(d, out_h, out_w);
  const PixelCall c = diif::pixel_call(pixels, coef, dims, d.stages, slicing, kOp);
  if (c.flat.size(0) == 0) {
    std::vector<at::Tensor> record = diif::empty_record(d.stages, d.w0.size(0), coef);
    record.push_back(at::empty({0, d.w0.size(1)}, coef.options()));
    return {at::empty(c.out_shape(), coef.options()), record};
  }
  const Slices sl = diif::make_slices(coef, dims, c.flat, c.q, c.slicing);
  const at::Tensor x = features(d, sl);
  const Trace tr = diif::stages_forward(d.stages, sl, dims, d.w0.size(0), first_layer(d, x), true);
  std::vector<at::Tensor> record = diif::pack_record(sl, tr, d.stages);
  record.push_back(x);
  return {tr.out.view(c.out_shape()), record};
}

Grads dlte_decode_backward(const at::Tensor& grad_out, const at::Tensor& coef,
                           const at::Tensor& freq, const at::Tensor& phase, const at::Tensor& w0,
                           const at::Tensor& b0, at::TensorList coarse_w, at::TensorList coarse_b,
                           const at::Tensor& fine_wh, const at::Tensor& fine_wd,
                           const at::Tensor& fine_b0, at::TensorList fine_w, at::TensorList fine_b,
                           const at::Tensor& pixels, int64_t out_h, int64_t out_w,
                           c10::string_view slicing) {
  const Decoder d = make_decoder(coef, freq, phase, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b);
  const Dims dims = dims_of(d, out_h, out_w);
  const PixelCall c = diif::pixel_call(pixels, coef, dims, d.stages, slicing, kOp);
  check_grad_out(grad_out, coef, c.out_shape(), kOp);
  if (c.flat.size(0) == 0) return zero_gradients(d);
  const Slices sl = diif::make_slices(coef, dims, c.flat, c.q, c.slicing);
  const at::Tensor x = features(d, sl);
  const Trace tr = diif::stages_forward(d.stages, sl, dims, d.w0.size(0), first_layer(d, x), true);
  return gradients(d, sl, dims, x, tr, grad_out);
}

// The backward from dlte_decode_train's record (implicit_kernels::dlte_decode_backward_saved).
Grads dlte_decode_backward_saved(const at::Tensor& grad_out, at::TensorList saved,
                                 const at::Tensor& coef, const at::Tensor& freq,
                                 const at::Tensor& phase, const at::Tensor& w0,
                                 const at::Tensor& b0, at::TensorList coarse_w,
                                 at::TensorList coarse_b, const at::Tensor& fine_wh,
                                 const at::Tensor& fine_wd, const at::Tensor& fine_b0,
                                 at::TensorList fine_w, at::TensorList fine_b,
                                 const at::Tensor& pixels, int64_t out_h, int64_t out_w,
                                 c10::string_view slicing) {
  const Decoder d = make_decoder(coef, freq, phase, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b);
  const Dims dims = dims_of(d, out_h, out_w);
  const PixelCall c = diif::pixel_call(pixels, coef, dims, d.stages, slicing, kOp);
  check_grad_out(grad_out, coef, c.out_shape(), kOp);
  if (c.flat.size(0) == 0) return zero_gradients(d);
  TORCH_CHECK(!saved.empty(), kOp, ": the record is empty");
  Slices sl;
  Trace tr;
  diif::unpack_record(saved.slice(0, saved.size() - 1), c.flat, d.stages, &sl, &tr);
  const at::Tensor& x = saved.back();
  TORCH_CHECK(x.dim() == 2 && x.size(0) == sl.coords.size(0) && x.size(1) == d.w0.size(1), kOp,
              ": the record's vertex features do not match it");
  return gradients(d, sl, dims, x, tr, grad_out);
}

}  // namespace

IK_LIBRARY_IMPL(CPU, m) {
  m.impl("dlte_decode", &dlte_decode);
  m.impl("dlte_decode_train", &dlte_decode_train);
  m.impl("dlte_decode_backward", &dlte_decode_backward);
  m.impl("dlte_decode_backward_saved", &dlte_decode_backward_saved);
}

#if defined(IK_WITH_CUDA)
IK_LIBRARY_IMPL(CUDA, m) {
  m.impl("dlte_decode", &dlte_decode);
  m.impl("dlte_decode_train", &dlte_decode_train);
  m.impl("dlte_decode_backward", &dlte_decode_backward);
  m.impl("dlte_decode_backward_saved", &dlte_decode_backward_saved);
}
#endif

}  // namespace dlte
}  // namespace ik
