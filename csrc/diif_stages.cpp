// The host side shared by the fused DIIF and DLTE decode operators (see diif_stages.h).
#include "diif_stages.h"

#include <limits>
#include <string>
#include <tuple>

namespace ik {
namespace diif {
namespace {

// The element-wise steps for the tensors' device.
struct Kernels {
  decltype(&slice_keys_cpu) slice_keys;
  decltype(&slice_inputs_cpu) slice_inputs;
  decltype(&blend_cpu) blend;
  decltype(&offset_weights_cpu) offset_weights;
};

Kernels kernels_for(const at::Tensor& t) {
#if defined(IK_CUDA_KERNELS)
  if (runs_cuda_kernels(t)) {
    return {slice_keys_cuda, slice_inputs_cuda, blend_cuda, offset_weights_cuda};
  }
#endif
  if (t.is_cpu()) {
    return {slice_keys_cpu, slice_inputs_cpu, blend_cpu, offset_weights_cpu};
  }
  TORCH_CHECK(false, "implicit_kernels: no DIIF kernel for device ", t.device(), " in this build");
}

}  // namespace

Slicing parse_slicing(c10::string_view slicing, const char* op) {
  const std::string s(slicing.data(), slicing.size());
  if (s == "linear") return Slicing::kLinear;
  if (s == "constant") return Slicing::kConstant;
  if (s == "fixed4") return Slicing::kFixed4;
  TORCH_CHECK(false, op, ": slicing must be one of ('linear', 'constant', 'fixed4'), got '", s,
              "'");
}

void check_like(const at::Tensor& like, const std::vector<at::Tensor>& ts, const char* op) {
  const auto type = like.scalar_type();
  TORCH_CHECK(at::isFloatingType(type), op, ": the decoder's tensors must be floating, got ", type);
  // CPU tensors on the CUDA kernels (the emulated build) take every dtype CUDA does.
  if (runs_cpu_tiles(like)) {
    TORCH_CHECK(type == at::kFloat || type == at::kDouble, op,
                ": CPU tensors must be float32 or float64, got ", type);
  }
  for (const auto& t : ts) {
    TORCH_CHECK(t.scalar_type() == type, op, ": every parameter must have dtype ", type, ", got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == like.device(), op, ": every parameter must be on ", like.device(),
                ", got ", t.device());
  }
}

Stages make_stages(const at::Tensor& like, int64_t width, at::TensorList coarse_w,
                   at::TensorList coarse_b, const at::Tensor& fine_wh, const at::Tensor& fine_wd,
                   const at::Tensor& fine_b0, at::TensorList fine_w, at::TensorList fine_b,
                   const char* op) {
  std::vector<at::Tensor> all = {fine_wh, fine_wd, fine_b0};
  for (auto list : {coarse_w, coarse_b, fine_w, fine_b})
    all.insert(all.end(), list.begin(), list.end());
  check_like(like, all, op);
  TORCH_CHECK(!fine_w.empty(), op, ": the fine stage needs at least one layer after the first");
  const std::string name(op);
  Stages st;
  st.coarse = make_mlp(coarse_w, coarse_b, width, /*relu_last=*/true, name + ": coarse");
  const int64_t hidden = st.coarse.weights.empty() ? width : st.coarse.weights.back().size(0);
  TORCH_CHECK(fine_wh.dim() == 2 && fine_wh.size(1) == hidden && fine_b0.dim() == 1 &&
                  fine_b0.size(0) == fine_wh.size(0),
              op, ": fine layer 0 (hidden part) weight must be (out, ", hidden,
              ") with a matching bias, got ", fine_wh.sizes(), " and ", fine_b0.sizes());
  TORCH_CHECK(fine_wd.dim() == 2 && fine_wd.size(0) == fine_wh.size(0) && fine_wd.size(1) == 2, op,
              ": fine_wd must be (", fine_wh.size(0), ", 2), got ", fine_wd.sizes());
  st.fine_wh = fine_wh.contiguous();
  st.fine_wd = fine_wd.contiguous();
  st.fine_b0 = fine_b0.contiguous();
  st.fine = make_mlp(fine_w, fine_b, fine_wh.size(0), /*relu_last=*/false, name + ": fine");
  return st;
}

Dims make_dims(int64_t batch, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
               bool slice_ensemble, const char* op) {
  TORCH_CHECK(out_h >= h && out_w >= w, op, ": output size (", out_h, ", ", out_w,
              ") must be at least the feature map's (", h, ", ", w, ")");
  TORCH_CHECK(out_h < (int64_t(1) << 31) && out_w < (int64_t(1) << 31), op,
              ": output size too large");
  // A slice's key is its image and first pixel, (b * out_h + r) * out_w + c: every key
  // of the batch must fit in int64.
  const int64_t per_image = out_h * out_w;
  TORCH_CHECK(batch <= std::numeric_limits<int64_t>::max() / per_image, op, ": batch ", batch,
              " x output (", out_h, ", ", out_w,
              ") is too large: batch * H_out * W_out must be "
              "below 2^63");
  return Dims{h, w, out_h, out_w, slice_ensemble};
}

PixelCall pixel_call(const at::Tensor& pixels, const at::Tensor& like, const Dims& dims,
                     const Stages& st, c10::string_view slicing, const char* op) {
  const int64_t batch = like.size(0);
  TORCH_CHECK(pixels.scalar_type() == at::kLong, op, ": pixels must be int64, got ",
              pixels.scalar_type());
  TORCH_CHECK(pixels.dim() == 3 && pixels.size(0) == batch && pixels.size(2) == 2, op,
              ": pixels must be (B, Q, 2) with B = ", batch, ", got ", pixels.sizes());
  TORCH_CHECK(pixels.device() == like.device(), op, ": pixels must be on ", like.device());
  at::Tensor flat = pixels.reshape({-1, 2}).contiguous();
  if (flat.numel() > 0) {
    const auto lo = flat.amin(0).cpu(), hi = flat.amax(0).cpu();
    TORCH_CHECK(lo[0].item<int64_t>() >= 0 && lo[1].item<int64_t>() >= 0 &&
                    hi[0].item<int64_t>() < dims.h_out && hi[1].item<int64_t>() < dims.w_out,
                op, ": pixels must index inside the output (", dims.h_out, ", ", dims.w_out, ")");
  }
  return {flat, parse_slicing(slicing, op), batch, pixels.size(1), st.fine.weights.back().size(0)};
}

Slices make_slices(const at::Tensor& like, const Dims& dims, const at::Tensor& pixels, int64_t q,
                   Slicing slicing) {
  const Kernels k = kernels_for(like);
  Slices sl;
  sl.pixels = pixels;
  const at::Tensor keys = k.slice_keys(pixels, q, dims, slicing);
  at::Tensor slices;
  std::tie(slices, sl.slice_of, std::ignore) = at::_unique2(keys, true, true, false);
  std::tie(sl.coords, sl.corners) =
      k.slice_inputs(slices, dims, slicing, accumulate_type(like.scalar_type()));
  return sl;
}

Trace stages_forward(const Stages& st, const Slices& sl, const Dims& dims, int64_t width,
                     const FirstLayer& first, bool record) {
  const int64_t rows = sl.coords.size(0);
  const at::Tensor& like = st.fine_wh;
  if (runs_cpu_tiles(like)) return stages_forward_cpu(st, sl, dims, width, first, record);
  Trace tr;
  at::Tensor pre = at::empty({rows, width}, like.options());
  first(0, rows, pre);
  const at::Tensor hidden = mlp_forward(st.coarse, pre.relu_(), &tr.coarse);  // H_t
  const at::Tensor g = at::mm(hidden, st.fine_wh.t());
  const at::Tensor z =
      kernels_for(like).blend(sl.pixels, sl.slice_of, dims, g, st.fine_wd, st.fine_b0);
  tr.out = mlp_forward(st.fine, at::relu(z), &tr.fine);
  return tr;
}

// The fine stage's backward on whole tensors (CPU: fine_backward_cpu, in tiles).
at::Tensor fine_backward(const Stages& st, const Trace& tr, const at::Tensor& grad_out,
                         const at::Tensor& offsets, StageGrads* grads) {
  const int64_t out_dim = st.fine.weights.back().size(0);
  at::Tensor grad = grad_out.reshape({-1, out_dim}).to(st.fine_wh.scalar_type()).contiguous();
  grad = mlp_backward(st.fine, grad, tr.fine, grads->fine_w, grads->fine_b);
  relu_backward_(grad, tr.fine.front());
  grads->fine_b0 = grad.sum(0);
  grads->fine_wd = narrow_input_weight_grad(grad, offsets);
  if (!tr.hidden_blend) return grad;
  grads->fine_wh = at::mm(grad.t(), tr.hidden_mix);
  return at::mm(grad, st.fine_wh);
}

at::Tensor stages_backward(const Stages& st, const Slices& sl, const Dims& dims, const Trace& tr,
                           const at::Tensor& grad_out, StageGrads* grads) {
  const bool tiles = runs_cpu_tiles(st.fine_wh);
  at::Tensor offsets, weights;
  std::tie(offsets, weights) =
      kernels_for(st.fine_wh)
          .offset_weights(sl.pixels, dims, accumulate_type(st.fine_wh.scalar_type()));
  // Fine stage, back to the gradient of z (or of the hidden mix, with hidden_blend).
  const at::Tensor per_pixel = tiles ? fine_backward_cpu(st, sl, dims, tr, grad_out, grads)
                                     : fine_backward(st, tr, grad_out, offsets, grads);
  // Gradient of the per-pixel sum over vertices -> one per slice and vertex.
  const int64_t v = vertex_count(dims), n_slices = sl.coords.size(0) / v;
  at::Tensor per_slice;
  if (per_pixel.is_cpu()) {
    per_slice = scatter_vertex_rows_cpu(per_pixel, weights, sl.slice_of, n_slices, v);
  } else {
    const at::Tensor per_vertex =
        (weights.unsqueeze(2) * per_pixel.to(weights.scalar_type()).unsqueeze(1))
            .to(per_pixel.scalar_type());
    per_slice = at::zeros({n_slices, v, per_pixel.size(1)}, per_pixel.options())
                    .index_add_(0, sl.slice_of, per_vertex)
                    .view({n_slices * v, per_pixel.size(1)});
  }
  // Coarse stage, back to its first pre-activation.
  if (tiles) return coarse_backward_cpu(st, tr, per_slice, grads);
  at::Tensor grad_hidden = per_slice;
  if (!tr.hidden_blend) {
    grads->fine_wh = at::mm(per_slice.t(), tr.coarse.back());
    grad_hidden = at::mm(per_slice, st.fine_wh);
  }
  at::Tensor grad =
      mlp_backward(st.coarse, grad_hidden, tr.coarse, grads->coarse_w, grads->coarse_b);
  relu_backward_(grad, tr.coarse.front());
  return grad;
}

std::vector<at::Tensor> pack_record(const Slices& sl, const Trace& tr, const Stages& st) {
  std::vector<at::Tensor> out = {sl.slice_of, sl.coords, sl.corners};
  for (const auto& t : tr.coarse) out.push_back(t);
  // The fine record without its last entry, the operator's output itself (a backward
  // does not read it).
  for (size_t i = 0; i + 1 < tr.fine.size(); ++i) out.push_back(tr.fine[i]);
  out.push_back(tr.hidden_blend ? tr.hidden_mix
                                : at::empty({0, st.fine_wh.size(1)}, st.fine_wh.options()));
  return out;
}

std::vector<at::Tensor> empty_record(const Stages& st, int64_t width, const at::Tensor& like) {
  const auto index = like.options().dtype(at::kLong);
  const auto acc = like.options().dtype(accumulate_type(like.scalar_type()));
  std::vector<at::Tensor> out = {at::empty({0}, index), at::empty({0, kCoordInputs}, acc),
                                 at::empty({0}, index), at::empty({0, width}, like.options())};
  for (const auto& w : st.coarse.weights) out.push_back(at::empty({0, w.size(0)}, like.options()));
  out.push_back(at::empty({0, st.fine_wh.size(0)}, like.options()));
  for (size_t i = 0; i + 1 < st.fine.weights.size(); ++i) {
    out.push_back(at::empty({0, st.fine.weights[i].size(0)}, like.options()));
  }
  out.push_back(at::empty({0, st.fine_wh.size(1)}, like.options()));
  return out;
}

void unpack_record(at::TensorList saved, const at::Tensor& pixels, const Stages& st, Slices* sl,
                   Trace* tr) {
  const size_t coarse = st.coarse.weights.size() + 1, fine = st.fine.weights.size();
  TORCH_CHECK(saved.size() == 4 + coarse + fine, "implicit_kernels: a DIIF-family record of ",
              4 + coarse + fine, " tensors was expected, got ", saved.size());
  const int64_t rows = saved[1].size(0), n = pixels.size(0);
  bool fits = saved[0].size(0) == n && saved[2].size(0) == rows;
  for (size_t i = 0; i < coarse; ++i) fits = fits && saved[3 + i].size(0) == rows;
  for (size_t i = 0; i < fine; ++i) fits = fits && saved[3 + coarse + i].size(0) == n;
  const at::Tensor& mix = saved[3 + coarse + fine];
  TORCH_CHECK(fits && (mix.size(0) == 0 || mix.size(0) == n),
              "implicit_kernels: the DIIF-family record does not belong to these pixels");
  sl->pixels = pixels;
  sl->slice_of = saved[0];
  sl->coords = saved[1];
  sl->corners = saved[2];
  for (size_t i = 0; i < coarse; ++i) tr->coarse.push_back(saved[3 + i]);
  for (size_t i = 0; i < fine; ++i) tr->fine.push_back(saved[3 + coarse + i]);
  tr->fine.emplace_back();  // the output: not recorded
  tr->hidden_blend = mix.size(0) > 0;
  tr->hidden_mix = mix;
}

StageGrads zero_stage_grads(const Stages& st) {
  StageGrads g;
  g.coarse_w = zeros_like_all(st.coarse.weights);
  g.coarse_b = zeros_like_all(st.coarse.biases);
  g.fine_w = zeros_like_all(st.fine.weights);
  g.fine_b = zeros_like_all(st.fine.biases);
  g.fine_wh = at::zeros_like(st.fine_wh);
  g.fine_wd = at::zeros_like(st.fine_wd);
  g.fine_b0 = at::zeros_like(st.fine_b0);
  return g;
}

StageGradTuple as_tuple(const StageGrads& g) {
  return {g.coarse_w, g.coarse_b, g.fine_wh, g.fine_wd, g.fine_b0, g.fine_w, g.fine_b};
}

}  // namespace diif
}  // namespace ik
