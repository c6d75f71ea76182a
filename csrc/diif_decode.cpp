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

#include <string>
#include <tuple>
#include <vector>

#include "diif_kernels.h"

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

// The decoder's tensors, contiguous (kept alive here: raw pointers are taken from them).
struct Decoder {
  at::Tensor corner_proj, w_coord, b0, fine_wh, fine_wd, fine_b0;
  std::vector<at::Tensor> coarse_w, coarse_b, fine_w, fine_b;
};

void check_linear(const at::Tensor& w, const at::Tensor& b, int64_t in, const char* name) {
  TORCH_CHECK(w.dim() == 2 && w.size(1) == in, kOp, ": ", name, " weight must be (out, ", in,
              "), got ", w.sizes());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), kOp, ": ", name, " bias must be (",
              w.size(0), ",), got ", b.sizes());
}

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
  TORCH_CHECK(coarse_w.size() == coarse_b.size() && fine_w.size() == fine_b.size(), kOp,
              ": weight and bias lists must have equal lengths");
  TORCH_CHECK(!fine_w.empty(), kOp, ": the fine stage needs at least one layer after the first");
  Decoder d;
  d.corner_proj = corner_proj.contiguous();
  int64_t width = corner_proj.size(3);
  check_linear(w_coord, b0, kCoordInputs, "coarse layer 0 (coordinate part)");
  TORCH_CHECK(w_coord.size(0) == width, kOp, ": w_coord must have ", width, " rows, got ",
              w_coord.size(0));
  d.w_coord = w_coord.contiguous();
  d.b0 = b0.contiguous();
  for (size_t i = 0; i < coarse_w.size(); ++i) {
    check_linear(coarse_w[i], coarse_b[i], width, "coarse layer");
    d.coarse_w.push_back(coarse_w[i].contiguous());
    d.coarse_b.push_back(coarse_b[i].contiguous());
    width = coarse_w[i].size(0);
  }
  check_linear(fine_wh, fine_b0, width, "fine layer 0 (hidden part)");
  TORCH_CHECK(fine_wd.dim() == 2 && fine_wd.size(0) == fine_wh.size(0) && fine_wd.size(1) == 2,
              kOp, ": fine_wd must be (", fine_wh.size(0), ", 2), got ", fine_wd.sizes());
  d.fine_wh = fine_wh.contiguous();
  d.fine_wd = fine_wd.contiguous();
  d.fine_b0 = fine_b0.contiguous();
  width = fine_wh.size(0);
  for (size_t i = 0; i < fine_w.size(); ++i) {
    check_linear(fine_w[i], fine_b[i], width, "fine layer");
    d.fine_w.push_back(fine_w[i].contiguous());
    d.fine_b.push_back(fine_b[i].contiguous());
    width = fine_w[i].size(0);
  }
  return d;
}

Dims make_dims(const Decoder& d, int64_t out_h, int64_t out_w) {
  const int64_t h = d.corner_proj.size(1) - 1, w = d.corner_proj.size(2) - 1;
  TORCH_CHECK(out_h >= h && out_w >= w, kOp, ": output size (", out_h, ", ", out_w,
              ") must be at least the feature map's (", h, ", ", w, ")");
  TORCH_CHECK(out_h < (int64_t(1) << 31) && out_w < (int64_t(1) << 31), kOp,
              ": output size too large");
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
  std::vector<at::Tensor> coarse;  // inputs of the coarse layers after the first, then H
  std::vector<at::Tensor> fine;    // inputs of the fine layers after the first
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
  at::Tensor a = at::relu(pre);
  for (size_t i = 0; i < d.coarse_w.size(); ++i) {
    tr.coarse.push_back(a);
    a = at::relu(at::addmm(d.coarse_b[i], a, d.coarse_w[i].t()));
  }
  tr.coarse.push_back(a);  // H_t, (S * 4, Dc)
  const at::Tensor g = at::mm(a, d.fine_wh.t());
  a = at::relu(k.blend(pixels, tr.slice_of, dims, g, d.fine_wd, d.fine_b0));
  for (size_t i = 0; i < d.fine_w.size(); ++i) {
    tr.fine.push_back(a);
    a = at::addmm(d.fine_b[i], a, d.fine_w[i].t());
    if (i + 1 < d.fine_w.size()) a = at::relu(a);
  }
  tr.out = a;
  return tr;
}

// Backward through Linear layers with ReLU between (inputs[i] is layer i's input, itself
// a ReLU output): fills grad_w/grad_b, returns the gradient of the pre-activation that
// produced inputs[0].
at::Tensor linear_relu_backward(at::Tensor grad, const std::vector<at::Tensor>& inputs,
                                const std::vector<at::Tensor>& weights,
                                std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b) {
  grad_w.resize(weights.size());
  grad_b.resize(weights.size());
  for (size_t i = weights.size(); i-- > 0;) {
    grad_w[i] = at::mm(grad.t(), inputs[i]);
    grad_b[i] = grad.sum(0);
    grad = at::mm(grad, weights[i]) * (inputs[i] > 0);
  }
  return grad;
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
  const int64_t b = pixels.size(0), q = pixels.size(1), out_dim = d.fine_w.back().size(0);
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
  const int64_t q = pixels.size(1), out_dim = d.fine_w.back().size(0);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == pixels.size(0) &&
                  grad_out.size(1) == q && grad_out.size(2) == out_dim,
              kOp, ": grad_out must be (B, Q, ", out_dim, "), got ", grad_out.sizes());

  std::vector<at::Tensor> g_coarse_w, g_coarse_b, g_fine_w, g_fine_b;
  if (flat.size(0) == 0) {
    auto zeros = [](const std::vector<at::Tensor>& ts, std::vector<at::Tensor>& out) {
      for (const auto& t : ts) out.push_back(at::zeros_like(t));
    };
    zeros(d.coarse_w, g_coarse_w);
    zeros(d.coarse_b, g_coarse_b);
    zeros(d.fine_w, g_fine_w);
    zeros(d.fine_b, g_fine_b);
    return {at::zeros_like(corner_proj), at::zeros_like(w_coord), at::zeros_like(b0), g_coarse_w,
            g_coarse_b, at::zeros_like(fine_wh), at::zeros_like(fine_wd),
            at::zeros_like(fine_b0), g_fine_w, g_fine_b};
  }
  const Slicing mode = parse_slicing(slicing);
  const Trace tr = run_forward(d, dims, flat, q, mode);
  const auto type = corner_proj.scalar_type();

  // Fine stage, back to the blend's output z.
  at::Tensor grad = grad_out.reshape({-1, out_dim}).to(type).contiguous();
  grad = linear_relu_backward(grad, tr.fine, d.fine_w, g_fine_w, g_fine_b);
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
  const at::Tensor& hidden = tr.coarse.back();
  const at::Tensor grad_fine_wh = at::mm(grad_g.t(), hidden);
  // Coarse stage, back to its first pre-activation.
  grad = at::mm(grad_g, d.fine_wh) * (hidden > 0);
  std::vector<at::Tensor> coarse_inputs(tr.coarse.begin(), tr.coarse.end() - 1);
  grad = linear_relu_backward(grad, coarse_inputs, d.coarse_w, g_coarse_w, g_coarse_b);
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
