// The fused DIIF decode operators (docs/diif.md): implicit_kernels::diif_decode and its
// backward, for CPU and (in CUDA builds) CUDA tensors.
//
// Inputs are the decoder after the splits of docs/diif.md ("Equal, cheaper forms"): `corner_proj`
// holds W_z·z_t at every vertex position (a convolution computed by the caller, so the wide codes
// never exist): with the slice ensemble (B, H+1, W+1, D), the 4×4 code at every LR-grid corner;
// without it (the "w/o se" ablation, `slice_ensemble` false) (B, H, W, D), the 3×3 code at every LR
// pixel.  `w_coord` (D, 6) and `b0` are the rest of the first coarse layer; the fine stage's first
// layer is split into `fine_wh` (hidden part) and `fine_wd` (offset part). Per call, for each
// distinct slice and vertex t (csrc/diif_stages.h does the rest):
//   pre_t   = corner_proj[v_t] + w_coord·[rel_first, rel_last, cell]_t + b0
// No per-pixel wide input is formed; the slice stage runs once per slice, not per pixel.
// Where the CUDA kernels run (runs_cuda_kernels), the plain decode of a decoder at most 256
// wide is two fused kernels (csrc/diif_fused.h); the _train operators and the backward
// run the stages of csrc/diif_stages.h.
// The backward recomputes the forward of the call's pixels (nothing is saved between
// the two but the inputs) and returns gradients for every tensor input but `pixels`.
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "diif_fused.h"
#include "diif_fused_backward.h"
#include "diif_stages.h"
#include "library.h"

namespace ik {
namespace diif {
namespace {

constexpr const char* kOp = "implicit_kernels::diif_decode";

// The decoder's tensors, contiguous (kept alive here: raw pointers are taken from them).
struct Decoder {
  at::Tensor corner_proj, w_coord, b0;
  Stages stages;
};

Decoder make_decoder(const at::Tensor& corner_proj, const at::Tensor& w_coord, const at::Tensor& b0,
                     at::TensorList coarse_w, at::TensorList coarse_b, const at::Tensor& fine_wh,
                     const at::Tensor& fine_wd, const at::Tensor& fine_b0, at::TensorList fine_w,
                     at::TensorList fine_b, bool slice_ensemble) {
  const int64_t border = slice_ensemble ? 1 : 0;
  TORCH_CHECK(
      corner_proj.dim() == 4 && corner_proj.size(1) > border && corner_proj.size(2) > border, kOp,
      ": corner_proj must be ",
      slice_ensemble ? "(B, H+1, W+1, D) with the slice ensemble"
                     : "(B, H, W, D) without the slice ensemble",
      ", got ", corner_proj.sizes());
  check_like(corner_proj, {w_coord, b0}, kOp);
  Decoder d;
  d.corner_proj = corner_proj.contiguous();
  const int64_t width = corner_proj.size(3);
  TORCH_CHECK(w_coord.dim() == 2 && w_coord.size(0) == width && w_coord.size(1) == kCoordInputs &&
                  b0.dim() == 1 && b0.size(0) == width,
              kOp, ": coarse layer 0 (coordinate part) weight must be (", width, ", ", kCoordInputs,
              ") and its bias (", width, ",), got ", w_coord.sizes(), " and ", b0.sizes());
  d.w_coord = w_coord.contiguous();
  d.b0 = b0.contiguous();
  d.stages = make_stages(corner_proj, width, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
                         fine_b, kOp);
  return d;
}

Dims dims_of(const Decoder& d, int64_t out_h, int64_t out_w, bool slice_ensemble) {
  const int64_t border = slice_ensemble ? 1 : 0;
  return make_dims(d.corner_proj.size(0), d.corner_proj.size(1) - border,
                   d.corner_proj.size(2) - border, out_h, out_w, slice_ensemble, kOp);
}

// The coarse stage's first pre-activation of slice-vertex rows lo..hi into `out` (the
// coordinate part runs in the accumulation type: half precision would round the offsets
// themselves).
FirstLayer first_layer(const Decoder& d, const Slices& sl) {
  return [&d, &sl](int64_t lo, int64_t hi, at::Tensor out) {
    const auto acc = accumulate_type(d.corner_proj.scalar_type());
    const at::Tensor corners = d.corner_proj.view({-1, d.corner_proj.size(3)});
    at::Tensor pre =
        at::addmm(d.b0.to(acc), sl.coords.narrow(0, lo, hi - lo), d.w_coord.to(acc).t());
    pre.add_(corners.index_select(0, sl.corners.narrow(0, lo, hi - lo)));
    out.copy_(pre);
  };
}

at::Tensor diif_decode(const at::Tensor& corner_proj, const at::Tensor& w_coord,
                       const at::Tensor& b0, at::TensorList coarse_w, at::TensorList coarse_b,
                       const at::Tensor& fine_wh, const at::Tensor& fine_wd,
                       const at::Tensor& fine_b0, at::TensorList fine_w, at::TensorList fine_b,
                       const at::Tensor& pixels, int64_t out_h, int64_t out_w,
                       c10::string_view slicing, bool slice_ensemble) {
  const Decoder d = make_decoder(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b, slice_ensemble);
  const Dims dims = dims_of(d, out_h, out_w, slice_ensemble);
  const PixelCall c = pixel_call(pixels, corner_proj, dims, d.stages, slicing, kOp);
  if (c.flat.size(0) == 0) return at::empty(c.out_shape(), corner_proj.options());
  const Slices sl = make_slices(corner_proj, dims, c.flat, c.q, c.slicing);
#if defined(IK_CUDA_KERNELS)
  if (runs_cuda_kernels(corner_proj) && fused_forward_fits(d.stages, d.corner_proj.size(3))) {
    return fused_forward_cuda(d.corner_proj, d.w_coord, d.b0, d.stages, sl, dims)
        .view(c.out_shape());
  }
#endif
  return stages_forward(d.stages, sl, dims, d.corner_proj.size(3), first_layer(d, sl), false)
      .out.view(c.out_shape());
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
                         std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor,
                         std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The gradients of every input but `pixels` from the stages' (`g`) and the gradient of the
// first pre-activation (`grad`).
Grads gradients_from(const Decoder& d, const Slices& sl, const at::Tensor& grad,
                     const StageGrads& g) {
  const at::Tensor grad_w_coord = narrow_input_weight_grad(grad, sl.coords);
  const at::Tensor grad_corner = scatter_rows_to_map(grad, sl.corners, d.corner_proj);
  return std::tuple_cat(std::make_tuple(grad_corner, grad_w_coord, grad.sum(0)), as_tuple(g));
}

// The gradients of every input but `pixels` from the forward's slices and record.
Grads gradients(const Decoder& d, const Slices& sl, const Dims& dims, const Trace& tr,
                const at::Tensor& grad_out) {
  StageGrads g;
  const at::Tensor grad = stages_backward(d.stages, sl, dims, tr, grad_out, &g);
  return gradients_from(d, sl, grad, g);
}

#if defined(IK_CUDA_KERNELS)
CornerLayer corner_layer(const Decoder& d) { return {d.corner_proj, d.w_coord, d.b0}; }

// The gradients on the fused backward kernels (csrc/diif_fused_backward.h).
Grads fused_gradients(const Decoder& d, const Slices& sl, const Dims& dims,
                      const at::Tensor& grad_out) {
  StageGrads g;
  const at::Tensor g_rows =
      fused_slice_vertex_g(d.corner_proj, d.w_coord, d.b0, d.stages, sl, dims);
  const at::Tensor grad =
      stages_backward_fused(d.stages, corner_layer(d), sl, dims, g_rows, grad_out, &g);
  return gradients_from(d, sl, grad, g);
}
#endif

Grads zero_gradients(const Decoder& d) {
  return std::tuple_cat(std::make_tuple(at::zeros_like(d.corner_proj), at::zeros_like(d.w_coord),
                                        at::zeros_like(d.b0)),
                        as_tuple(zero_stage_grads(d.stages)));
}

// The forward with its record for the backward (implicit_kernels::diif_decode_train): a
// decode with gradients keeps it instead of recomputing the forward in the backward.
std::tuple<at::Tensor, std::vector<at::Tensor>> diif_decode_train(
    const at::Tensor& corner_proj, const at::Tensor& w_coord, const at::Tensor& b0,
    at::TensorList coarse_w, at::TensorList coarse_b, const at::Tensor& fine_wh,
    const at::Tensor& fine_wd, const at::Tensor& fine_b0, at::TensorList fine_w,
    at::TensorList fine_b, const at::Tensor& pixels, int64_t out_h, int64_t out_w,
    c10::string_view slicing, bool slice_ensemble) {
  const Decoder d = make_decoder(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b, slice_ensemble);
  const Dims dims = dims_of(d, out_h, out_w, slice_ensemble);
  const PixelCall c = pixel_call(pixels, corner_proj, dims, d.stages, slicing, kOp);
  const int64_t width = corner_proj.size(3);
  if (c.flat.size(0) == 0) {
    return {at::empty(c.out_shape(), corner_proj.options()),
            empty_record(d.stages, width, corner_proj)};
  }
  const Slices sl = make_slices(corner_proj, dims, c.flat, c.q, c.slicing);
  const Trace tr = stages_forward(d.stages, sl, dims, width, first_layer(d, sl), true);
  return {tr.out.view(c.out_shape()), pack_record(sl, tr, d.stages)};
}

Grads diif_decode_backward(const at::Tensor& grad_out, const at::Tensor& corner_proj,
                           const at::Tensor& w_coord, const at::Tensor& b0, at::TensorList coarse_w,
                           at::TensorList coarse_b, const at::Tensor& fine_wh,
                           const at::Tensor& fine_wd, const at::Tensor& fine_b0,
                           at::TensorList fine_w, at::TensorList fine_b, const at::Tensor& pixels,
                           int64_t out_h, int64_t out_w, c10::string_view slicing,
                           bool slice_ensemble) {
  const Decoder d = make_decoder(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b, slice_ensemble);
  const Dims dims = dims_of(d, out_h, out_w, slice_ensemble);
  const PixelCall c = pixel_call(pixels, corner_proj, dims, d.stages, slicing, kOp);
  check_grad_out(grad_out, corner_proj, c.out_shape(), kOp);
  if (c.flat.size(0) == 0) return zero_gradients(d);
  const Slices sl = make_slices(corner_proj, dims, c.flat, c.q, c.slicing);
#if defined(IK_CUDA_KERNELS)
  if (fused_backward_applies(d.stages, corner_layer(d))) {
    return fused_gradients(d, sl, dims, grad_out);
  }
#endif
  const Trace tr =
      stages_forward(d.stages, sl, dims, corner_proj.size(3), first_layer(d, sl), true);
  return gradients(d, sl, dims, tr, grad_out);
}

// The backward from diif_decode_train's record (implicit_kernels::diif_decode_backward_saved).
Grads diif_decode_backward_saved(const at::Tensor& grad_out, at::TensorList saved,
                                 const at::Tensor& corner_proj, const at::Tensor& w_coord,
                                 const at::Tensor& b0, at::TensorList coarse_w,
                                 at::TensorList coarse_b, const at::Tensor& fine_wh,
                                 const at::Tensor& fine_wd, const at::Tensor& fine_b0,
                                 at::TensorList fine_w, at::TensorList fine_b,
                                 const at::Tensor& pixels, int64_t out_h, int64_t out_w,
                                 c10::string_view slicing, bool slice_ensemble) {
  const Decoder d = make_decoder(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b, slice_ensemble);
  const Dims dims = dims_of(d, out_h, out_w, slice_ensemble);
  const PixelCall c = pixel_call(pixels, corner_proj, dims, d.stages, slicing, kOp);
  check_grad_out(grad_out, corner_proj, c.out_shape(), kOp);
  if (c.flat.size(0) == 0) return zero_gradients(d);
  Slices sl;
  Trace tr;
  unpack_record(saved, c.flat, d.stages, &sl, &tr);
  return gradients(d, sl, dims, tr, grad_out);
}

// implicit_kernels::diif_decode_backward_is_fused: diif_decode_backward's choice above.
bool diif_decode_backward_is_fused(const at::Tensor& corner_proj, const at::Tensor& w_coord,
                                   const at::Tensor& b0, at::TensorList coarse_w,
                                   at::TensorList coarse_b, const at::Tensor& fine_wh,
                                   const at::Tensor& fine_wd, const at::Tensor& fine_b0,
                                   at::TensorList fine_w, at::TensorList fine_b,
                                   const at::Tensor& /*pixels*/, int64_t /*out_h*/,
                                   int64_t /*out_w*/, c10::string_view /*slicing*/,
                                   bool slice_ensemble) {
#if defined(IK_CUDA_KERNELS)
  const Decoder d = make_decoder(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b, slice_ensemble);
  return fused_backward_applies(d.stages, corner_layer(d));
#else
  return false;
#endif
}

}  // namespace

// A question about the arguments, not a computation on them: one kernel for every device.
IK_LIBRARY_IMPL(CompositeExplicitAutograd, m) {
  m.impl("diif_decode_backward_is_fused", &diif_decode_backward_is_fused);
}

IK_LIBRARY_IMPL(CPU, m) {
  m.impl("diif_decode", &diif_decode);
  m.impl("diif_decode_train", &diif_decode_train);
  m.impl("diif_decode_backward", &diif_decode_backward);
  m.impl("diif_decode_backward_saved", &diif_decode_backward_saved);
}

#if defined(IK_WITH_CUDA)
IK_LIBRARY_IMPL(CUDA, m) {
  m.impl("diif_decode", &diif_decode);
  m.impl("diif_decode_train", &diif_decode_train);
  m.impl("diif_decode_backward", &diif_decode_backward);
  m.impl("diif_decode_backward_saved", &diif_decode_backward_saved);
}
#endif

}  // namespace diif
}  // namespace ik
