// The host side shared by the fused DIIF and DLTE decode operators (csrc/diif_decode.cpp,
// csrc/dlte_decode.cpp): both group and slice the requested pixels the same way and run
// the same stages after the coarse stage's first pre-activation; they differ only in how
// that pre-activation is formed per slice and vertex (DIIF: a projected corner code plus
// a linear map of the 6 coordinate inputs; DLTE: a Linear of LTE-style Fourier features).
//   slices  = distinct slices of the requested pixels           (slice_keys + unique)
//   coords, corners = per slice and vertex, the coordinate inputs and the vertex's flat
//             index in the corner map                           (slice_inputs)
//   pre_t   -> H_t = coarse MLP(relu(pre_t));  G_t = fine_wh·H_t  (per slice, vertex)
//   z       = b + fine_wd·d + Σ_t w_t(d) G_t                        (per pixel, blend)
//   out     = fine MLP(relu(z))
// Without the slice ensemble (Dims::slice_ensemble false) a slice has one vertex, the
// group's own LR pixel, with weight 1.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <functional>
#include <tuple>
#include <vector>

#include "diif_kernels.h"
#include "mlp.h"

namespace ik {
namespace diif {

Slicing parse_slicing(c10::string_view slicing, const char* op);

// Checks every tensor of `ts` has `like`'s dtype and device.
void check_like(const at::Tensor& like, const std::vector<at::Tensor>& ts, const char* op);

// The layers after the coarse stage's first pre-activation (width `width`), contiguous:
// the coarse stage's later layers, the fine stage's first layer split into its hidden
// part `fine_wh` and offset part `fine_wd`, and the fine stage's later layers.
struct Stages {
  Mlp coarse, fine;
  at::Tensor fine_wh, fine_wd, fine_b0;
};

Stages make_stages(const at::Tensor& like, int64_t width, at::TensorList coarse_w,
                   at::TensorList coarse_b, const at::Tensor& fine_wh, const at::Tensor& fine_wd,
                   const at::Tensor& fine_b0, at::TensorList fine_w, at::TensorList fine_b,
                   const char* op);

// Checked sizes of a decode of a (batch, h, w) feature map to (out_h, out_w).
Dims make_dims(int64_t batch, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
               bool slice_ensemble, const char* op);

// One operator call's requested pixels and what follows from them: `flat`, the pixels
// (B, Q, 2) as (B*Q, 2) contiguous; the batch `b` and pixels per image `q`; the parsed
// slicing; `out_dim`, the fine stage's output width.
struct PixelCall {
  at::Tensor flat;
  Slicing slicing;
  int64_t b, q, out_dim;
  // The call's output shape (b, q, out_dim).
  std::vector<int64_t> out_shape() const { return {b, q, out_dim}; }
};

// Checks `pixels` ((batch, Q, 2) int64 on `like`'s device, inside the output; batch =
// like.size(0)) and `slicing` for an operator of the stages `st`.
PixelCall pixel_call(const at::Tensor& pixels, const at::Tensor& like, const Dims& dims,
                     const Stages& st, c10::string_view slicing, const char* op);

// The slices of one call's pixels (n, 2) (q per image).
struct Slices {
  at::Tensor pixels;    // (n, 2) int64
  at::Tensor slice_of;  // (n,) the slice of each pixel
  at::Tensor coords;    // (S * V, 6) coordinate inputs per slice and vertex, accumulation type
  at::Tensor corners;   // (S * V,) flat index of each vertex in the corner map
};

Slices make_slices(const at::Tensor& like, const Dims& dims, const at::Tensor& pixels, int64_t q,
                   Slicing slicing);

// What stages_forward computes that stages_backward needs.
// z's slice-ensemble sum is formed either per slice and vertex after W_h (G_t = W_h·H_t,
// then Σ_t w_t G_t per pixel) or per pixel before it (W_h·Σ_t w_t H_t, `hidden_blend`):
// the same linear map, and the second costs one W_h product per pixel instead of one per
// slice and vertex, so it is taken when a call has fewer pixels than slices x vertices.
struct Trace {
  std::vector<at::Tensor> coarse;  // mlp_forward's record of the coarse stage: relu(pre) .. H
  std::vector<at::Tensor> fine;    // and of the fine stage: relu(z) .. out
  at::Tensor out;                  // (n, out)
  bool hidden_blend = false;
  at::Tensor hidden_mix;  // (n, hidden) Σ_t w_t H_t per pixel, with hidden_blend
};

// Writes the coarse stage's first pre-activation of the slice-vertex rows lo..hi into `out`
// (hi - lo, width), in the stages' dtype: the operators' own first layer (DIIF: a gathered
// corner projection plus the coordinate part; DLTE: a Linear of Fourier features).  Called
// per tile of rows on the CPU, so the whole pre-activation never exists there.
using FirstLayer = std::function<void(int64_t lo, int64_t hi, at::Tensor out)>;

// The stages from the first pre-activation of the S * V slice-vertex rows (`width` wide);
// `record` keeps the activations stages_backward needs (else only `out` is set).
Trace stages_forward(const Stages& st, const Slices& sl, const Dims& dims, int64_t width,
                     const FirstLayer& first, bool record);

// stages_forward on CPU tensors, in tiles of rows (csrc/cpu/diif_stages_cpu.cpp).
Trace stages_forward_cpu(const Stages& st, const Slices& sl, const Dims& dims, int64_t width,
                         const FirstLayer& first, bool record);

// Gradients of the stages' parameters.
struct StageGrads {
  std::vector<at::Tensor> coarse_w, coarse_b, fine_w, fine_b;
  at::Tensor fine_wh, fine_wd, fine_b0;
};

// The fine stage's backward on CPU tensors in tiles (csrc/cpu/diif_stages_cpu.cpp): fills
// the fine_w, fine_b, fine_b0 and fine_wd gradients (and fine_wh's with hidden_blend) and
// returns the per-pixel gradient the slice-vertex scatter takes: of z before its bias and
// offset terms (n, df), or with hidden_blend of the hidden mix (n, hidden).
at::Tensor fine_backward_cpu(const Stages& st, const Slices& sl, const Dims& dims, const Trace& tr,
                             const at::Tensor& grad_out, StageGrads* grads);

// The coarse stage's backward on CPU tensors in tiles from the gradient per slice vertex
// (R, ·) of G = W_h·H (of H itself with hidden_blend): fills the coarse_w, coarse_b and
// (without hidden_blend) fine_wh gradients and returns the gradient of the first
// pre-activation (R, width).
at::Tensor coarse_backward_cpu(const Stages& st, const Trace& tr, const at::Tensor& per_slice,
                               StageGrads* grads);

// out[slice_of[p] * v + t] += weights[p, t] * g[p] for pixels p and vertices t: g (n, w),
// weights (n, v); out (n_slices * v, w).  CPU: threads over column blocks, so no two
// threads add into one element and no (n, v, w) product is formed.
at::Tensor scatter_vertex_rows_cpu(const at::Tensor& g, const at::Tensor& weights,
                                   const at::Tensor& slice_of, int64_t n_slices, int64_t v);

// The forward's record as an operator output (the `_train` operators' second result):
//   [slice_of (n,), coords (R, 6), corners (R,), the coarse record (R, width_i)...,
//    the fine record but the output (n, width_i)..., hidden_mix (n or 0, hidden)]
// for the call's n pixels and R slice-vertex rows (R depends on the pixels' values: the
// fakes declare it a dynamic size); hidden_mix has rows with hidden_blend only.
std::vector<at::Tensor> pack_record(const Slices& sl, const Trace& tr, const Stages& st);
// A record of a call without pixels (every tensor with no rows).
std::vector<at::Tensor> empty_record(const Stages& st, int64_t width, const at::Tensor& like);
// The inverse of pack_record; `pixels` (n, 2) as the forward took them.
void unpack_record(at::TensorList saved, const at::Tensor& pixels, const Stages& st, Slices* sl,
                   Trace* tr);

// Backward of stages_forward from grad_out (n, out): fills `grads` and returns the gradient
// of `pre` (S * V, width).
at::Tensor stages_backward(const Stages& st, const Slices& sl, const Dims& dims, const Trace& tr,
                           const at::Tensor& grad_out, StageGrads* grads);

// Zero gradients of the stages' parameters (a call without pixels).
StageGrads zero_stage_grads(const Stages& st);

// The stages' gradients in the operators' output order (coarse_w, coarse_b, fine_wh,
// fine_wd, fine_b0, fine_w, fine_b): the tail of every DIIF-family backward's result.
using StageGradTuple =
    std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor,
               std::vector<at::Tensor>, std::vector<at::Tensor>>;
StageGradTuple as_tuple(const StageGrads& g);

}  // namespace diif
}  // namespace ik
