// The fused DIIF decode operators (SPEC.md §3): implicit_kernels::diif_decode and its
// backward, for CPU and (in CUDA builds) CUDA tensors.
//
// Inputs are the decoder after SPEC.md §3's splits: `corner_proj` (B, H+1, W+1, D) holds
// W_z·z_t at every LR-grid corner (a 4×4 convolution, computed by the caller, so the
// 16C-wide vertex codes never exist); `w_coord` (D, 6) and `b0` are the rest of the first
// coarse layer; the fine stage's first layer is split into `fine_wh` (hidden part) and
// `fine_wd` (offset part).  Per call:
//   slices  = distinct slices of the requested pixels           (slice_keys + unique)
//   pre_t   = corner_proj[v_t] + w_coord·[rel_first, rel_last, cell]_t + b0, per slice
//   H_t     = coarse MLP(relu(pre_t));  G_t = fine_wh·H_t           (per slice, vertex)
//   z       = b + fine_wd·d + Σ_t w_t(d) G_t                        (per pixel, blend)
//   out     = fine MLP(relu(z))
// No per-pixel wide input is formed; the slice stage runs once per slice, not per pixel.
// The backward recomputes the forward of the call's pixels (nothing is saved between
// the two but the inputs) and returns gradients for every tensor input but `pixels`.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "diif_kernels.h"
#include "mlp.h"

namespace ik {
namespace diif {
namespace {

constexpr const char* kOp = "implicit_kernels::diif_decode";

Slicing parse_slicing(c10::string_view slicing) {
  const std::string s(slicing.data(), slicing.size());
  if (s == "linear") return Slicing::kLinear;
  if (s == "constant") return Slicing::kConstant;
  if (s == "fixed4") return Slicing::kFixed4;
  TORCH_CHECK(false, kOp, ": slicing must be one of ('linear', 'constant', 'fixed4'), got '", s,
              "'");
}

// The decoder's tensors, contiguous (kept alive here: raw pointers are taken from them):
// the coarse and fine stages' layers after their split first layers.
struct Decoder {
  at::Tensor corner_proj, w_coord, b0, fine_wh, fine_wd, fine_b0;
  Mlp coarse, fine;
};

Decoder make_decoder(const at::Tensor& corner_proj, const at::Tensor& w_coord,
                     const at::Tensor& b0, at::TensorList coarse_w, at::TensorList coarse_b,
                     const at::Tensor& fine_wh, const at::Tensor& fine_wd,
                     const at::Tensor& fine_b0, at::TensorList fine_w, at::TensorList fine_b) {
  TORCH_CHECK(corner_proj.dim() == 4 && corner_proj.size(1) >= 2 && corner_proj.size(2) >= 2,
              kOp, ": corner_proj must be (B, H+1, W+1, D), got ", corner_proj.sizes());
  const auto type = corner_proj.scalar_type();
  TORCH_CHECK(at::isFloatingType(type), kOp, ": corner_proj must be floating, got ", type);
  std::vector<at::Tensor> all = {w_coord, b0, fine_wh, fine_wd, fine_b0};
  for (auto list : {coarse_w, coarse_b, fine_w, fine_b}) all.insert(all.end(), list.begin(), list.end());
  for (const auto& t : all) {
    TORCH_CHECK(t.scalar_type() == type, kOp, ": every parameter must have corner_proj's dtype ",
                type, ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == corner_proj.device(), kOp, ": every parameter must be on ",
                corner_proj.device(), ", got ", t.device());
  }
  TORCH_CHECK(!fine_w.empty(), kOp, ": the fine stage needs at least one layer after the first");
  const std::string op(kOp);
  Decoder d;
  d.corner_proj = corner_proj.contiguous();
  const int64_t width = corner_proj.size(3);
  TORCH_CHECK(w_coord.dim() == 2 && w_coord.size(0) == width && w_coord.size(1) == kCoordInputs &&
                  b0.dim() == 1 && b0.size(0) == width,
              kOp, ": coarse layer 0 (coordinate part) weight must be (", width, ", ",
              kCoordInputs, ") and its bias (", width, ",), got ", w_coord.sizes(), " and ",
              b0.sizes());
  d.w_coord = w_coord.contiguous();
  d.b0 = b0.contiguous();
  d.coarse = make_mlp(coarse_w, coarse_b, width, /*relu_last=*/true, op + ": coarse");
  const int64_t hidden = d.coarse.weights.empty() ? width : d.coarse.weights.back().size(0);
  TORCH_CHECK(fine_wh.dim() == 2 && fine_wh.size(1) == hidden && fine_b0.dim() == 1 &&
                  fine_b0.size(0) == fine_wh.size(0),
              kOp, ": fine layer 0 (hidden part) weight must be (out, ", hidden,
              ") with a matching bias, got ", fine_wh.sizes(), " and ", fine_b0.sizes());
  TORCH_CHECK(fine_wd.dim() == 2 && fine_wd.size(0) == fine_wh.size(0) && fine_wd.size(1) == 2,
              kOp, ": fine_wd must be (", fine_wh.size(0), ", 2), got ", fine_wd.sizes());
  d.fine_wh = fine_wh.contiguous();
  d.fine_wd = fine_wd.contiguous();
  d.fine_b0 = fine_b0.contiguous();
  d.fine = make_mlp(fine_w, fine_b, fine_wh.size(0), /*relu_last=*/false, op + ": fine");
  return d;
}

Dims make_dims(const Decoder& d, int64_t out_h, int64_t out_w) {
  const int64_t h = d.corner_proj.size(1) - 1, w = d.corner_proj.size(2) - 1;
  TORCH_CHECK(out_h >= h && out_w >= w, kOp, ": output size (", out_h, ", ", out_w,
              ") must be at least the feature map's (", h, ", ", w, ")");
  TORCH_CHECK(out_h < (int64_t(1) << 31) && out_w < (int64_t(1) << 31), kOp,
              ": output size too large");
  // A slice's key is its image and first pixel, (b * out_h + r) * out_w + c: every key
  // of the batch must fit in int64.
  const int64_t batch = d.corner_proj.size(0), per_image = out_h * out_w;
  TORCH_CHECK(batch <= std::numeric_limits<int64_t>::max() / per_image, kOp, ": batch ", batch,
              " x output (", out_h, ", ", out_w, ") is too large: batch * H_out * W_out must be "
              "below 2^63");
  return Dims{h, w, out_h, out_w};
}

at::Tensor check_pixels(const at::Tensor& pixels, const Decoder& d, const Dims& dims) {
  TORCH_CHECK(pixels.scalar_type() == at::kLong, kOp, ": pixels must be int64, got ",
              pixels.scalar_type());
  TORCH_CHECK(pixels.dim() == 3 && pixels.size(0) == d.corner_proj.size(0) && pixels.size(2) == 2,
              kOp, ": pixels must be (B, Q, 2) with B = ", d.corner_proj.size(0), ", got ",
              pixels.sizes());
  TORCH_CHECK(pixels.device() == d.corner_proj.device(), kOp, ": pixels must be on ",
              d.corner_proj.device());
  at::Tensor flat = pixels.reshape({-1, 2}).contiguous();
  if (flat.numel() > 0) {
    const auto lo = flat.amin(0).cpu(), hi = flat.amax(0).cpu();
    TORCH_CHECK(lo[0].item<int64_t>() >= 0 && lo[1].item<int64_t>() >= 0 &&
                    hi[0].item<int64_t>() < dims.h_out && hi[1].item<int64_t>() < dims.w_out,
                kOp, ": pixels must index inside the output (", dims.h_out, ", ", dims.w_out, ")");
  }
  return flat;
}

// The element-wise steps for the tensors' device.
struct Kernels {
  decltype(&slice_keys_cpu) slice_keys;
  decltype(&slice_inputs_cpu) slice_inputs;
  decltype(&blend_cpu) blend;
  decltype(&offset_weights_cpu) offset_weights;
};

Kernels kernels_for(const at::Tensor& t) {
  if (t.is_cpu()) {
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, kOp,
                ": CPU tensors must be float32 or float64, got ", t.scalar_type());
    return {slice_keys_cpu, slice_inputs_cpu, blend_cpu, offset_weights_cpu};
  }
#if defined(IK_WITH_CUDA)
  if (t.is_cuda()) return {slice_keys_cuda, slice_inputs_cuda, blend_cuda, offset_weights_cuda};
#endif
  TORCH_CHECK(false, kOp, ": no kernel for device ", t.device(), " in this build");
}

// Everything the forward computes that the backward needs.
struct Trace {
  at::Tensor pixels, slice_of, coords, corners;
  std::vector<at::Tensor> coarse;  // mlp_forward's record of the coarse stage: relu(pre) .. H
  std::vector<at::Tensor> fine;    // and of the fine stage: relu(z) .. out
  at::Tensor out;                  // (n, out)
};

Trace run_forward(const Decoder& d, const Dims& dims, const at::Tensor& pixels, int64_t q,
                  Slicing slicing) {
  const Kernels k = kernels_for(d.corner_proj);
  const auto acc = accumulate_type(d.corner_proj.scalar_type());
  Trace tr;
  tr.pixels = pixels;
  const at::Tensor keys = k.slice_keys(pixels, q, dims, slicing);
  at::Tensor slices;
  std::tie(slices, tr.slice_of, std::ignore) = at::_unique2(keys, true, true, false);
  std::tie(tr.coords, tr.corners) = k.slice_inputs(slices, dims, slicing, acc);

  const at::Tensor corners = d.corner_proj.view({-1, d.corner_proj.size(3)});
  // The coordinate part runs in the accumulation type: half precision would round the
  // offsets themselves.
  at::Tensor pre = at::addmm(d.b0.to(acc), tr.coords, d.w_coord.to(acc).t());
  pre = (pre + corners.index_select(0, tr.corners)).to(d.corner_proj.scalar_type());
  const at::Tensor hidden = mlp_forward(d.coarse, at::relu(pre), &tr.coarse);  // H_t
  const at::Tensor g = at::mm(hidden, d.fine_wh.t());
  const at::Tensor z = k.blend(pixels, tr.slice_of, dims, g, d.fine_wd, d.fine_b0);
  tr.out = mlp_forward(d.fine, at::relu(z), &tr.fine);
  return tr;
}

at::Tensor diif_decode(const at::Tensor& corner_proj, const at::Tensor& w_coord,
                       const at::Tensor& b0, at::TensorList coarse_w, at::TensorList coarse_b,
                       const at::Tensor& fine_wh, const at::Tensor& fine_wd,
                       const at::Tensor& fine_b0, at::TensorList fine_w, at::TensorList fine_b,
                       const at::Tensor& pixels, int64_t out_h, int64_t out_w,
                       c10::string_view slicing) {
  const Decoder d = make_decoder(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b);
  const Dims dims = make_dims(d, out_h, out_w);
  const at::Tensor flat = check_pixels(pixels, d, dims);
  const int64_t b = pixels.size(0), q = pixels.size(1), out_dim = d.fine.weights.back().size(0);
  if (flat.size(0) == 0) return at::empty({b, q, out_dim}, corner_proj.options());
  return run_forward(d, dims, flat, q, parse_slicing(slicing)).out.view({b, q, out_dim});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
diif_decode_backward(const at::Tensor& grad_out, const at::Tensor& corner_proj,
                     const at::Tensor& w_coord, const at::Tensor& b0, at::TensorList coarse_w,
                     at::TensorList coarse_b, const at::Tensor& fine_wh,
                     const at::Tensor& fine_wd, const at::Tensor& fine_b0,
                     at::TensorList fine_w, at::TensorList fine_b, const at::Tensor& pixels,
                     int64_t out_h, int64_t out_w, c10::string_view slicing) {
  const Decoder d = make_decoder(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                                 fine_b0, fine_w, fine_b);
  const Dims dims = make_dims(d, out_h, out_w);
  const at::Tensor flat = check_pixels(pixels, d, dims);
  const int64_t q = pixels.size(1), out_dim = d.fine.weights.back().size(0);
  check_grad_out(grad_out, corner_proj, {pixels.size(0), q, out_dim}, kOp);

  if (flat.size(0) == 0) {
    return {at::zeros_like(corner_proj), at::zeros_like(w_coord), at::zeros_like(b0),
            zeros_like_all(d.coarse.weights), zeros_like_all(d.coarse.biases),
            at::zeros_like(fine_wh), at::zeros_like(fine_wd), at::zeros_like(fine_b0),
            zeros_like_all(d.fine.weights), zeros_like_all(d.fine.biases)};
  }
  const Slicing mode = parse_slicing(slicing);
  const Trace tr = run_forward(d, dims, flat, q, mode);
  const auto type = corner_proj.scalar_type();

  // Fine stage, back to the blend's output z.
  std::vector<at::Tensor> g_coarse_w, g_coarse_b, g_fine_w, g_fine_b;
  at::Tensor grad = grad_out.reshape({-1, out_dim}).to(type).contiguous();
  grad = mlp_backward(d.fine, grad, tr.fine, g_fine_w, g_fine_b) * (tr.fine.front() > 0);
  // Blend: z = b + wd·d + Σ_t w_t G[slice, t].
  const auto acc = accumulate_type(type);
  at::Tensor offsets, weights;
  std::tie(offsets, weights) = kernels_for(corner_proj).offset_weights(flat, dims, acc);
  const at::Tensor grad_fine_b0 = grad.sum(0);
  const at::Tensor grad_fine_wd = at::mm(grad.t().to(acc), offsets).to(type);
  const int64_t n_slices = tr.coords.size(0) / kVertices, df = d.fine_wh.size(0);
  const at::Tensor per_vertex = (weights.unsqueeze(2) * grad.to(acc).unsqueeze(1)).to(type);
  const at::Tensor grad_g = at::zeros({n_slices, kVertices, df}, grad.options())
                                .index_add_(0, tr.slice_of, per_vertex)
                                .view({n_slices * kVertices, df});
  const at::Tensor grad_fine_wh = at::mm(grad_g.t(), tr.coarse.back());
  // Coarse stage, back to its first pre-activation.
  grad = mlp_backward(d.coarse, at::mm(grad_g, d.fine_wh), tr.coarse, g_coarse_w, g_coarse_b);
  grad = grad * (tr.coarse.front() > 0);
  const at::Tensor grad_b0 = grad.sum(0);
  const at::Tensor grad_w_coord = at::mm(grad.t().to(acc), tr.coords).to(type);
  const at::Tensor grad_corner =
      at::zeros({corner_proj.size(0) * corner_proj.size(1) * corner_proj.size(2),
                 corner_proj.size(3)}, grad.options())
          .index_add_(0, tr.corners, grad)
          .view(corner_proj.sizes());
  return {grad_corner, grad_w_coord, grad_b0, g_coarse_w, g_coarse_b, grad_fine_wh,
          grad_fine_wd, grad_fine_b0, g_fine_w, g_fine_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(implicit_kernels, CPU, m) {
  m.impl("diif_decode", &diif_decode);
  m.impl("diif_decode_backward", &diif_decode_backward);
}

#if defined(IK_WITH_CUDA)
TORCH_LIBRARY_IMPL(implicit_kernels, CUDA, m) {
  m.impl("diif_decode", &diif_decode);
  m.impl("diif_decode_backward", &diif_decode_backward);
}
#endif

}  // namespace diif
}  // namespace ik
