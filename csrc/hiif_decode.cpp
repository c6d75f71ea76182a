// The fused HIIF operators (docs/hiif.md) and their backwards, for CPU and (in CUDA
// builds) CUDA tensors.  implicit_kernels/compiled/hiif.py chains them
// per chunk of queries and runs the passes of the global attention:
//
//   hiif_level0           per query: the four codes' gather with their area weights, the
//                         level-0 bits, LayerNorm (from per-LR-pixel statistics, never
//                         forming the 4C + 4 input), fc1, GELU, fc2          -> x (B, m, C)
//   hiif_attention_stats  per image and head: Σ k̂ᵀv̂ over the chunk's queries (the
//                         reduction pass of the linear attention)        -> (B, heads, d, d)
//   hiif_attention_apply  given the complete, normalised sums M:
//                         x + proj2(GELU(proj1(x + q·M)))                      -> (B, m, C)
//   hiif_levels           levels 1..L-1: LayerNorm of [x, level-l bits] (bits generated
//                         in the kernel), fc1, GELU, fc2                       -> (B, m, 3)
//   hiif_codes            every level's bits (tests: bit-exact with the reference)
//
// CPU tensors take the tiled path, level 0's backward excepted (csrc/cpu/hiif_tiles_cpu.h: a tile
// of query rows through every layer of an operator while it is in cache).  CUDA tensors (and the
// emulated build) run the dense layers, GELU (exact erf) and the attention's products
// through ATen over the whole chunk, the element-wise steps (ik/hiif_decode.h) through a
// table of CUDA functions.  Each backward recomputes its operator's forward (nothing is
// saved but the inputs) and returns gradients for every floating input but coord and cell
// (positions are not differentiated: the reference's local coordinate and bits are
// piecewise constant); except the _train operators (CPU: hiif_attention_stats_train,
// hiif_attention_apply_train, hiif_levels_train), which keep the activations their
// _backward_saved operators read when gradients are wanted.
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "cpu/hiif_tiles_cpu.h"
#include "hiif_kernels.h"
#include "library.h"

namespace ik {
namespace hiif {
namespace {

using Tensors = std::vector<at::Tensor>;

void check_same(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ",
              t.device());
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// The element-wise steps for the tensors' device.
struct Kernels {
  decltype(&level0_sum_cpu) level0_sum;
  decltype(&level_input_cpu) level_input;
  decltype(&codes_cpu) codes;
};

Kernels kernels_for(const at::Tensor& t, const char* op) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": tensors must be floating, got ",
              t.scalar_type());
#if defined(IK_CUDA_KERNELS)
  if (runs_cuda_kernels(t)) return {level0_sum_cuda, level_input_cuda, codes_cuda};
#endif
  if (t.is_cpu()) {
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
                ": CPU tensors must be float32 or float64, got ", t.scalar_type());
    return {level0_sum_cpu, level_input_cpu, codes_cpu};
  }
  TORCH_CHECK(false, op, ": no kernel for device ", t.device(), " in this build");
}

// Queries (B, m, 2) of `like`'s batch, dtype and device, as a contiguous (B * m, 2).
at::Tensor check_queries(const at::Tensor& t, const at::Tensor& like, int64_t batch, const char* op,
                         const char* name) {
  check_same(t, like, op, name);
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(2) == 2, op, ": ", name,
              " must be (B, m, 2) with B = ", batch, ", got ", t.sizes());
  check_finite(t, op, name);
  return t.reshape({-1, 2}).contiguous();
}

void check_size(int64_t h, int64_t w, const char* op) {
  TORCH_CHECK(h >= 1 && w >= 1 && h < (int64_t(1) << 31) && w < (int64_t(1) << 31), op,
              ": feature map size (", h, ", ", w, ") must be in [1, 2^31)");
}

// A Linear layer's (out x in) weight and (out,) bias, contiguous.
std::pair<at::Tensor, at::Tensor> linear(const at::Tensor& weight, const at::Tensor& bias,
                                         int64_t in, const at::Tensor& like, const char* op,
                                         const std::string& name) {
  check_same(weight, like, op, (name + " weight").c_str());
  check_same(bias, like, op, (name + " bias").c_str());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == in && bias.dim() == 1 &&
                  bias.size(0) == weight.size(0),
              op, ": ", name, " weight must be (out, ", in, ") with an (out,) bias, got ",
              weight.sizes(), " and ", bias.sizes());
  return {weight.contiguous(), bias.contiguous()};
}

// Backward of row-wise normalisation y = (v - mean(v)) · rstd (no affine): the gradient
// of v from the gradient gy of y, both (rows, width), rstd (rows, 1).
at::Tensor normalize_backward(const at::Tensor& gy, const at::Tensor& y, const at::Tensor& rstd) {
  return rstd * (gy - gy.mean(-1, true) - y * (gy * y).mean(-1, true));
}

// Sum over every dimension but the last: the gradient of a per-channel parameter.
at::Tensor channel_sum(const at::Tensor& t) { return t.reshape({-1, t.size(-1)}).sum(0); }

// ---------------------------------------------------------------------------------------
// hiif_codes
// ---------------------------------------------------------------------------------------

at::Tensor hiif_codes(const at::Tensor& coord, int64_t h, int64_t w, int64_t levels,
                      bool public_centres) {
  constexpr const char* op = "implicit_kernels::hiif_codes";
  const Kernels k = kernels_for(coord, op);
  check_size(h, w, op);
  TORCH_CHECK(levels >= 1 && levels <= 30, op, ": levels must be in [1, 30], got ", levels);
  TORCH_CHECK(coord.dim() >= 1 && coord.size(-1) == 2, op,
              ": coord must be (..., 2) (row, col), got ", coord.sizes());
  check_finite(coord, op, "coord");
  std::vector<int64_t> shape(coord.sizes().begin(), coord.sizes().end() - 1);
  shape.push_back(levels);
  shape.push_back(2);
  return k.codes(coord.reshape({-1, 2}).contiguous(), h, w, levels, public_centres).view(shape);
}

// ---------------------------------------------------------------------------------------
// hiif_level0
// ---------------------------------------------------------------------------------------

constexpr const char* kLevel0 = "implicit_kernels::hiif_level0";

struct Level0 {
  at::Tensor maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell;
  int64_t batch, queries, channels;
  bool public_centres;
};

Level0 make_level0(const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,
                   const at::Tensor& bias, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
                   const at::Tensor& coord, const at::Tensor& cell, int64_t channels,
                   bool public_centres) {
  const char* op = kLevel0;
  kernels_for(maps, op);
  TORCH_CHECK(maps.dim() == 5 && maps.size(3) == 4 && maps.size(4) >= 3, op,
              ": maps must be (B, H, W, 4, hidden + 2), got ", maps.sizes());
  check_size(maps.size(1), maps.size(2), op);
  // The LayerNorm's width 4C + 4 is a count in the statistics: bounded like a tensor size.
  TORCH_CHECK(channels >= 1 && channels < (int64_t(1) << 28), op,
              ": channels must be in [1, 2^28), got ", channels);
  const int64_t hidden = maps.size(4) - 2;
  Level0 l;
  l.batch = maps.size(0);
  l.channels = channels;
  l.public_centres = public_centres;
  l.maps = maps.contiguous();
  check_same(row_sums, maps, op, "row_sums");
  check_shape(row_sums, {4, hidden}, op, "row_sums");
  check_same(w_extra, maps, op, "w_extra");
  check_shape(w_extra, {hidden, 4}, op, "w_extra");
  check_same(bias, maps, op, "bias");
  check_shape(bias, {hidden}, op, "bias");
  l.row_sums = row_sums.contiguous();
  l.w_extra = w_extra.contiguous();
  l.bias = bias.contiguous();
  std::tie(l.fc2_w, l.fc2_b) = linear(fc2_w, fc2_b, hidden, maps, op, "fc2");
  l.coord = check_queries(coord, maps, l.batch, op, "coord");
  l.cell = check_queries(cell, maps, l.batch, op, "cell");
  TORCH_CHECK(cell.sizes() == coord.sizes(), op, ": cell must have coord's shape ", coord.sizes(),
              ", got ", cell.sizes());
  l.queries = coord.size(1);
  return l;
}

// Level 0 up to its GELU: the pre-activation `pre`, the unnormalised `u` it came from,
// the members' map rows and the aux values (ik/hiif_decode.h).
struct Level0Trace {
  at::Tensor u, rows, aux, pre;
};

Level0Trace level0_forward(const Level0& l) {
  Level0Trace tr;
  std::tie(tr.u, tr.rows, tr.aux) = kernels_for(l.maps, kLevel0)
                                        .level0_sum(l.maps, l.row_sums, l.w_extra, l.coord, l.cell,
                                                    l.queries, l.channels, l.public_centres);
  const at::Tensor rstd = tr.aux.narrow(1, kAuxRstd, 1);
  tr.pre = at::addcmul(l.bias.to(rstd.scalar_type()), tr.u.to(rstd.scalar_type()), rstd)
               .to(l.maps.scalar_type());
  return tr;
}

at::Tensor hiif_level0(const at::Tensor& maps, const at::Tensor& row_sums,
                       const at::Tensor& w_extra, const at::Tensor& bias, const at::Tensor& fc2_w,
                       const at::Tensor& fc2_b, const at::Tensor& coord, const at::Tensor& cell,
                       int64_t channels, bool public_centres) {
  const Level0 l = make_level0(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell, channels,
                               public_centres);
  const int64_t out_dim = l.fc2_w.size(0);
  if (l.coord.size(0) == 0) return at::empty({l.batch, l.queries, out_dim}, maps.options());
  if (runs_cpu_tiles(maps)) {
    at::Tensor out = at::empty({l.coord.size(0), out_dim}, maps.options());
    level0_tiles(l.maps, l.row_sums, l.w_extra, l.bias, l.fc2_w, l.fc2_b, l.coord, l.cell,
                 l.queries, l.channels, l.public_centres, out);
    return out.view({l.batch, l.queries, out_dim});
  }
  const Level0Trace tr = level0_forward(l);
  return at::addmm(l.fc2_b, at::gelu(tr.pre), l.fc2_w.t()).view({l.batch, l.queries, out_dim});
}

// hiif_level0 into `out` (B, Q, out), contiguous: the cpu backend's decode without
// gradients reuses one buffer for every chunk instead of allocating a chunk's activations
// anew (at ×30, glibc returned and re-faulted those pages on every chunk).
void hiif_level0_out(const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,
                     const at::Tensor& bias, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
                     const at::Tensor& coord, const at::Tensor& cell, int64_t channels,
                     bool public_centres, const at::Tensor& out) {
  const Level0 l = make_level0(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell, channels,
                               public_centres);
  const std::vector<int64_t> shape = {l.batch, l.queries, l.fc2_w.size(0)};
  check_given_output(out, maps, shape, "implicit_kernels::hiif_level0_out");
  if (l.coord.size(0) == 0) return;
  if (runs_cpu_tiles(maps)) {
    level0_tiles(l.maps, l.row_sums, l.w_extra, l.bias, l.fc2_w, l.fc2_b, l.coord, l.cell,
                 l.queries, l.channels, l.public_centres, out.view({-1, shape[2]}));
  } else {
    out.copy_(hiif_level0(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell, channels,
                          public_centres));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
hiif_level0_backward(const at::Tensor& grad_out, const at::Tensor& maps, const at::Tensor& row_sums,
                     const at::Tensor& w_extra, const at::Tensor& bias, const at::Tensor& fc2_w,
                     const at::Tensor& fc2_b, const at::Tensor& coord, const at::Tensor& cell,
                     int64_t channels, bool public_centres) {
  const Level0 l = make_level0(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell, channels,
                               public_centres);
  const int64_t n = l.coord.size(0), hidden = l.row_sums.size(1), out_dim = l.fc2_w.size(0);
  check_grad_out(grad_out, maps, {l.batch, l.queries, out_dim}, kLevel0);
  if (n == 0) {
    return {at::zeros_like(maps), at::zeros_like(row_sums), at::zeros_like(w_extra),
            at::zeros_like(bias), at::zeros_like(fc2_w),    at::zeros_like(fc2_b)};
  }
  const auto type = maps.scalar_type();
  const Level0Trace tr = level0_forward(l);
  const at::Tensor go = grad_out.reshape({n, out_dim}).to(type);
  const at::Tensor act = at::gelu(tr.pre);
  const at::Tensor grad_fc2_w = at::mm(go.t(), act), grad_fc2_b = go.sum(0);
  const at::Tensor g = at::gelu_backward(at::mm(go, l.fc2_w), tr.pre);
  const at::Tensor grad_bias = g.sum(0);

  // The normalisation (ik/hiif_decode.h): pre = u · rstd + bias, with
  // u = Σ_t (w_t A_t + dev_t R_t) + Σ_e ed_e W_e, dev_t = w_t m_t - μ, ed_e = e_e - μ,
  // μ = (C Σ_t w_t m_t + Σ_e e_e) / D, D σ² = Σ_t (w_t² s_t + C dev_t²) + Σ_e ed_e².
  const auto acc = tr.aux.scalar_type();
  const double c = static_cast<double>(l.channels), width = static_cast<double>(4 * l.channels + 4);
  const at::Tensor weight = tr.aux.narrow(1, kAuxWeight, 4);
  const at::Tensor dev = tr.aux.narrow(1, kAuxDev, 4);
  const at::Tensor extra_dev = tr.aux.narrow(1, kAuxExtraDev, 4);
  const at::Tensor rstd = tr.aux.narrow(1, kAuxRstd, 1);
  const at::Tensor ga = g.to(acc);
  const at::Tensor du = ga * rstd;
  const at::Tensor grad_var = (ga * tr.u.to(acc)).sum(1, true) * rstd.pow(3) * -0.5;
  const at::Tensor row_sums_acc = l.row_sums.to(acc), w_extra_acc = l.w_extra.to(acc);
  const at::Tensor grad_row_sums = at::mm(dev.t(), du).to(type);
  const at::Tensor grad_w_extra = at::mm(du.t(), extra_dev).to(type);
  const at::Tensor grad_dev = at::mm(du, row_sums_acc.t()) + grad_var * (2 * c / width) * dev;
  const at::Tensor grad_extra_dev = at::mm(du, w_extra_acc) + grad_var * (2 / width) * extra_dev;
  const at::Tensor grad_s = grad_var * weight.square() / width;
  const at::Tensor grad_mu = -(grad_dev.sum(1, true) + grad_extra_dev.sum(1, true));
  const at::Tensor grad_m = weight * (grad_dev + grad_mu * (c / width));
  // Per query and member: the gradient of its map row [A_t, m_t, s_t], scattered back.
  const at::Tensor grad_rows =
      at::cat({weight.unsqueeze(2) * du.unsqueeze(1), grad_m.unsqueeze(2), grad_s.unsqueeze(2)}, 2)
          .to(type)
          .view({n * 4, hidden + 2});
  const at::Tensor grad_maps = scatter_rows_to_map(grad_rows, tr.rows.view({-1}), l.maps);
  return {grad_maps, grad_row_sums, grad_w_extra, grad_bias, grad_fc2_w, grad_fc2_b};
}

// ---------------------------------------------------------------------------------------
// hiif_attention_stats / hiif_attention_apply
// ---------------------------------------------------------------------------------------

constexpr const char* kStats = "implicit_kernels::hiif_attention_stats";
constexpr const char* kApply = "implicit_kernels::hiif_attention_apply";

// x (B, m, C) as a contiguous (B * m, C).
at::Tensor check_features(const at::Tensor& x, const char* op) {
  kernels_for(x, op);
  TORCH_CHECK(x.dim() == 3 && x.size(2) >= 1, op, ": x must be (B, m, C), got ", x.sizes());
  return x.reshape({-1, x.size(2)}).contiguous();
}

void check_heads(int64_t c, int64_t heads, const char* op) {
  TORCH_CHECK(heads >= 1 && c % heads == 0, op, ": heads (", heads, ") must divide C = ", c);
}

// One head's LayerNorm of rows (..., d): the normalised rows and their rstd (..., 1).
std::pair<at::Tensor, at::Tensor> normalize(const at::Tensor& t) {
  auto out = at::native_layer_norm(t, {t.size(-1)}, {}, {}, kLnEps);
  return {std::get<0>(out), std::get<2>(out)};
}

// The head-norm parameters (d,) of stats.
std::pair<at::Tensor, at::Tensor> head_norm(const at::Tensor& weight, const at::Tensor& bias,
                                            int64_t d, const at::Tensor& like, const char* name) {
  check_same(weight, like, kStats, name);
  check_same(bias, like, kStats, name);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({d}) && bias.sizes() == at::IntArrayRef({d}),
              kStats, ": ", name, " weight and bias must be (", d, ",), got ", weight.sizes(),
              " and ", bias.sizes());
  return {weight, bias};
}

// k̂ and v̂ (B, m, heads, d) of a chunk and what their backward needs.
struct KeyValues {
  at::Tensor k_norm, k_rstd, v_norm, v_rstd, k_hat, v_hat;
};

KeyValues key_values(const at::Tensor& x2, int64_t batch, const at::Tensor& qkv_w,
                     const at::Tensor& qkv_b, const at::Tensor& kln_w, const at::Tensor& kln_b,
                     const at::Tensor& vln_w, const at::Tensor& vln_b, int64_t heads) {
  const int64_t c = x2.size(1), d = c / heads;
  const at::Tensor p = at::addmm(qkv_b, x2, qkv_w.t()).view({batch, -1, heads, 3, d});
  KeyValues kv;
  std::tie(kv.k_norm, kv.k_rstd) = normalize(p.select(3, 1));
  std::tie(kv.v_norm, kv.v_rstd) = normalize(p.select(3, 2));
  kv.k_hat = at::addcmul(kln_b, kv.k_norm, kln_w);
  kv.v_hat = at::addcmul(vln_b, kv.v_norm, vln_w);
  return kv;
}

// The checked inputs of hiif_attention_stats and its backward.
struct Stats {
  at::Tensor x2, w_qkv, b_qkv;
  int64_t c, d;
};

Stats make_stats(const at::Tensor& x, const at::Tensor& qkv_w, const at::Tensor& qkv_b,
                 const at::Tensor& kln_w, const at::Tensor& kln_b, const at::Tensor& vln_w,
                 const at::Tensor& vln_b, int64_t heads) {
  Stats s;
  s.x2 = check_features(x, kStats);
  s.c = x.size(2);
  check_heads(s.c, heads, kStats);
  s.d = s.c / heads;
  std::tie(s.w_qkv, s.b_qkv) = linear(qkv_w, qkv_b, s.c, x, kStats, "qkv");
  TORCH_CHECK(s.w_qkv.size(0) == 3 * s.c, kStats, ": qkv weight must be (", 3 * s.c, ", ", s.c,
              ")");
  head_norm(kln_w, kln_b, s.d, x, "kln");
  head_norm(vln_w, vln_b, s.d, x, "vln");
  return s;
}

at::Tensor hiif_attention_stats(const at::Tensor& x, const at::Tensor& qkv_w,
                                const at::Tensor& qkv_b, const at::Tensor& kln_w,
                                const at::Tensor& kln_b, const at::Tensor& vln_w,
                                const at::Tensor& vln_b, int64_t heads) {
  const Stats s = make_stats(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads);
  if (s.x2.size(0) == 0) return at::zeros({x.size(0), heads, s.d, s.d}, x.options());
  if (runs_cpu_tiles(x)) {
    return stats_tiles(s.x2, x.size(0), s.w_qkv, s.b_qkv, kln_w.contiguous(), kln_b.contiguous(),
                       vln_w.contiguous(), vln_b.contiguous(), heads);
  }
  const KeyValues kv =
      key_values(s.x2, x.size(0), s.w_qkv, s.b_qkv, kln_w, kln_b, vln_w, vln_b, heads);
  return at::einsum("bmhd,bmhe->bhde", {kv.k_hat, kv.v_hat}).contiguous();
}

// A head-interleaved qkv parameter's gradient (heads, 3, ...) from the gradients of its q,
// k and v parts (heads, ...; undefined: zero), each element written once (zeroing the
// whole gradient, then copying the parts in, wrote it twice).
at::Tensor interleaved_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor& like = q.defined() ? q : k;
  auto part = [&](const at::Tensor& t) { return t.defined() ? t : at::zeros_like(like); };
  return at::stack({part(q), part(k), part(v)}, 1);
}

// hiif_attention_stats_train: hiif_attention_stats and the normalised keys and values its
// backward would recompute (stats_record_buffers), for the cpu backend with gradients.
// CPU tiles only.
std::tuple<at::Tensor, Tensors> hiif_attention_stats_train(
    const at::Tensor& x, const at::Tensor& qkv_w, const at::Tensor& qkv_b, const at::Tensor& kln_w,
    const at::Tensor& kln_b, const at::Tensor& vln_w, const at::Tensor& vln_b, int64_t heads) {
  const Stats s = make_stats(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads);
  TORCH_CHECK(runs_cpu_tiles(x), kStats, "_train: CPU tensors only");
  Tensors record = stats_record_buffers(s.x2, heads);
  if (s.x2.size(0) == 0) return {at::zeros({x.size(0), heads, s.d, s.d}, x.options()), record};
  return {stats_tiles(s.x2, x.size(0), s.w_qkv, s.b_qkv, kln_w.contiguous(), kln_b.contiguous(),
                      vln_w.contiguous(), vln_b.contiguous(), heads, &record),
          record};
}

// The record of a _backward_saved operator checked against `like` (its _train operator's
// record for no rows): as many tensors, each (rows, like's width), of x's dtype and device.
Tensors checked_record(at::TensorList record, const Tensors& like, int64_t rows,
                       const at::Tensor& x, const char* op) {
  TORCH_CHECK(record.size() == like.size(), op, "_backward_saved: saved must hold ", like.size(),
              " tensors (", op, "_train's), got ", record.size());
  Tensors checked;
  for (size_t i = 0; i < record.size(); ++i) {
    check_same(record[i], x, op, "saved");
    check_shape(record[i], {rows, like[i].size(1)}, op, "saved");
    checked.push_back(record[i].contiguous());
  }
  return checked;
}

using StatsGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// hiif_attention_stats' backward; `record`: hiif_attention_stats_train's (CPU tiles only),
// or null to recompute it.
StatsGrads stats_backward(const at::Tensor& grad_out, const at::Tensor& x, const Stats& s,
                          const at::Tensor& qkv_w, const at::Tensor& qkv_b, const at::Tensor& kln_w,
                          const at::Tensor& kln_b, const at::Tensor& vln_w, const at::Tensor& vln_b,
                          int64_t heads, const Tensors* record) {
  const at::Tensor& x2 = s.x2;
  const int64_t b = x.size(0), c = s.c, d = s.d;
  check_grad_out(grad_out, x, {b, heads, d, d}, kStats);
  if (x2.size(0) == 0) {
    return {at::zeros_like(x),     at::zeros_like(qkv_w), at::zeros_like(qkv_b),
            at::zeros_like(kln_w), at::zeros_like(kln_b), at::zeros_like(vln_w),
            at::zeros_like(vln_b)};
  }
  const at::Tensor gs = grad_out.to(x.scalar_type());
  if (runs_cpu_tiles(x)) {
    const auto g =
        stats_backward_tiles(gs, x2, b, s.w_qkv, s.b_qkv, kln_w.contiguous(), kln_b.contiguous(),
                             vln_w.contiguous(), vln_b.contiguous(), heads, record);
    // The k and v rows' gradients back into the head-interleaved layout; q's rows are 0.
    const at::Tensor kv_w = std::get<1>(g).view({2, heads, d * c});
    const at::Tensor kv_b = std::get<2>(g).view({2, heads, d});
    const at::Tensor grad_qkv_w = interleaved_qkv(at::Tensor(), kv_w[0], kv_w[1]);
    const at::Tensor grad_qkv_b = interleaved_qkv(at::Tensor(), kv_b[0], kv_b[1]);
    return {std::get<0>(g).view(x.sizes()),
            grad_qkv_w.view(qkv_w.sizes()),
            grad_qkv_b.view(qkv_b.sizes()),
            std::get<3>(g),
            std::get<4>(g),
            std::get<5>(g),
            std::get<6>(g)};
  }
  const KeyValues kv = key_values(x2, b, s.w_qkv, s.b_qkv, kln_w, kln_b, vln_w, vln_b, heads);
  // S_de = Σ_m k̂_md v̂_me.
  const at::Tensor grad_k_hat = at::einsum("bmhe,bhde->bmhd", {kv.v_hat, gs});
  const at::Tensor grad_v_hat = at::einsum("bmhd,bhde->bmhe", {kv.k_hat, gs});
  const at::Tensor grad_p = at::zeros({b, x.size(1), heads, 3, d}, x.options());
  grad_p.select(3, 1).copy_(normalize_backward(grad_k_hat * kln_w, kv.k_norm, kv.k_rstd));
  grad_p.select(3, 2).copy_(normalize_backward(grad_v_hat * vln_w, kv.v_norm, kv.v_rstd));
  const at::Tensor gp = grad_p.view({-1, 3 * c});
  return {at::mm(gp, s.w_qkv).view(x.sizes()),
          at::mm(gp.t(), x2),
          gp.sum(0),
          channel_sum(grad_k_hat * kv.k_norm),
          channel_sum(grad_k_hat),
          channel_sum(grad_v_hat * kv.v_norm),
          channel_sum(grad_v_hat)};
}

StatsGrads hiif_attention_stats_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                         const at::Tensor& qkv_w, const at::Tensor& qkv_b,
                                         const at::Tensor& kln_w, const at::Tensor& kln_b,
                                         const at::Tensor& vln_w, const at::Tensor& vln_b,
                                         int64_t heads) {
  const Stats s = make_stats(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads);
  return stats_backward(grad_out, x, s, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads, nullptr);
}

StatsGrads hiif_attention_stats_backward_saved(const at::Tensor& grad_out, at::TensorList saved,
                                               const at::Tensor& x, const at::Tensor& qkv_w,
                                               const at::Tensor& qkv_b, const at::Tensor& kln_w,
                                               const at::Tensor& kln_b, const at::Tensor& vln_w,
                                               const at::Tensor& vln_b, int64_t heads) {
  const Stats s = make_stats(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads);
  TORCH_CHECK(runs_cpu_tiles(x), kStats, "_backward_saved: CPU tensors only");
  const Tensors record = checked_record(saved, stats_record_buffers(s.x2.narrow(0, 0, 0), heads),
                                        s.x2.size(0), x, kStats);
  return stats_backward(grad_out, x, s, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads, &record);
}

struct Apply {
  at::Tensor x2, mat, wq, bq, w1, b1, w2, b2;
  int64_t heads, d;
};

Apply make_apply(const at::Tensor& x, const at::Tensor& mat, const at::Tensor& qkv_w,
                 const at::Tensor& qkv_b, const at::Tensor& proj1_w, const at::Tensor& proj1_b,
                 const at::Tensor& proj2_w, const at::Tensor& proj2_b) {
  Apply a;
  a.x2 = check_features(x, kApply);
  const int64_t c = x.size(2);
  check_same(mat, x, kApply, "mat");
  TORCH_CHECK(mat.dim() == 4 && mat.size(0) == x.size(0) && mat.size(2) == mat.size(3) &&
                  mat.size(1) * mat.size(2) == c,
              kApply, ": mat must be (B, heads, d, d) with B = ", x.size(0), " and heads * d = ", c,
              ", got ", mat.sizes());
  a.mat = mat;
  a.heads = mat.size(1);
  a.d = mat.size(2);
  const auto w = linear(qkv_w, qkv_b, c, x, kApply, "qkv");
  TORCH_CHECK(w.first.size(0) == 3 * c, kApply, ": qkv weight must be (", 3 * c, ", ", c, ")");
  // Head h's q is rows [3dh, 3dh + d) of the head-interleaved projection.
  a.wq = w.first.view({a.heads, 3, a.d, c}).select(1, 0).reshape({c, c});
  a.bq = w.second.view({a.heads, 3, a.d}).select(1, 0).reshape({c});
  std::tie(a.w1, a.b1) = linear(proj1_w, proj1_b, c, x, kApply, "proj1");
  std::tie(a.w2, a.b2) = linear(proj2_w, proj2_b, a.w1.size(0), x, kApply, "proj2");
  TORCH_CHECK(a.w2.size(0) == c, kApply, ": proj2 must map back to C = ", c);
  return a;
}

// q, r = x + q·M and proj1(r) of a chunk, (B * m, C) each.
struct ApplyTrace {
  at::Tensor q, r, h1;
};

ApplyTrace apply_forward(const Apply& a, int64_t batch) {
  ApplyTrace tr;
  tr.q = at::addmm(a.bq, a.x2, a.wq.t());
  const at::Tensor att =
      at::einsum("bmhd,bhde->bmhe", {tr.q.view({batch, -1, a.heads, a.d}), a.mat});
  tr.r = a.x2 + att.reshape(a.x2.sizes());
  tr.h1 = at::addmm(a.b1, tr.r, a.w1.t());
  return tr;
}

at::Tensor hiif_attention_apply(const at::Tensor& x, const at::Tensor& mat, const at::Tensor& qkv_w,
                                const at::Tensor& qkv_b, const at::Tensor& proj1_w,
                                const at::Tensor& proj1_b, const at::Tensor& proj2_w,
                                const at::Tensor& proj2_b) {
  const Apply a = make_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b);
  if (a.x2.size(0) == 0) return at::empty(x.sizes(), x.options());
  if (runs_cpu_tiles(x)) {
    at::Tensor out = at::empty(a.x2.sizes(), x.options());
    apply_tiles(a.x2, x.size(0), a.mat, a.wq, a.bq, a.w1, a.b1, a.w2, a.b2, out);
    return out.view(x.sizes());
  }
  const ApplyTrace tr = apply_forward(a, x.size(0));
  return at::addmm(a.b2, at::gelu(tr.h1), a.w2.t()).add_(a.x2).view(x.sizes());
}

// hiif_attention_apply_train: hiif_attention_apply and the activations its backward would
// recompute (apply_record_buffers: q, proj1's output), for the cpu backend with gradients.
// CPU tiles only.
std::tuple<at::Tensor, Tensors> hiif_attention_apply_train(
    const at::Tensor& x, const at::Tensor& mat, const at::Tensor& qkv_w, const at::Tensor& qkv_b,
    const at::Tensor& proj1_w, const at::Tensor& proj1_b, const at::Tensor& proj2_w,
    const at::Tensor& proj2_b) {
  const Apply a = make_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b);
  TORCH_CHECK(runs_cpu_tiles(x), kApply, "_train: CPU tensors only");
  Tensors record = apply_record_buffers(a.x2, a.w1);
  at::Tensor out = at::empty(a.x2.sizes(), x.options());
  if (a.x2.size(0) > 0) {
    apply_tiles(a.x2, x.size(0), a.mat, a.wq, a.bq, a.w1, a.b1, a.w2, a.b2, out, &record);
  }
  return {out.view(x.sizes()), record};
}

// hiif_attention_apply written over x (contiguous): as hiif_level0_out, for the decode
// without gradients.
void hiif_attention_apply_(const at::Tensor& x, const at::Tensor& mat, const at::Tensor& qkv_w,
                           const at::Tensor& qkv_b, const at::Tensor& proj1_w,
                           const at::Tensor& proj1_b, const at::Tensor& proj2_w,
                           const at::Tensor& proj2_b) {
  TORCH_CHECK(x.is_contiguous(), "implicit_kernels::hiif_attention_apply_: x must be contiguous");
  const Apply a = make_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b);
  if (a.x2.size(0) == 0) return;
  if (runs_cpu_tiles(x)) {
    apply_tiles(a.x2, x.size(0), a.mat, a.wq, a.bq, a.w1, a.b1, a.w2, a.b2, a.x2);
  } else {
    x.copy_(hiif_attention_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b));
  }
}

using ApplyGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor>;

// hiif_attention_apply's backward; `record`: hiif_attention_apply_train's (CPU tiles only),
// or null to recompute it.
ApplyGrads apply_backward(const at::Tensor& grad_out, const at::Tensor& x, const Apply& a,
                          const at::Tensor& mat, const at::Tensor& qkv_w, const at::Tensor& qkv_b,
                          const at::Tensor& proj1_w, const at::Tensor& proj1_b,
                          const at::Tensor& proj2_w, const at::Tensor& proj2_b,
                          const Tensors* record) {
  check_grad_out(grad_out, x, x.sizes(), kApply);
  if (a.x2.size(0) == 0) {
    return {at::zeros_like(x),       at::zeros_like(mat),     at::zeros_like(qkv_w),
            at::zeros_like(qkv_b),   at::zeros_like(proj1_w), at::zeros_like(proj1_b),
            at::zeros_like(proj2_w), at::zeros_like(proj2_b)};
  }
  const int64_t b = x.size(0), c = x.size(2);
  const at::Tensor go = grad_out.reshape(a.x2.sizes()).to(x.scalar_type());
  if (runs_cpu_tiles(x)) {
    const auto g =
        apply_backward_tiles(go, a.x2, b, a.mat, a.wq, a.bq, a.w1, a.b1, a.w2, a.b2, record);
    // Only the q rows of the head-interleaved projection are used.
    const at::Tensor grad_qkv_w =
        interleaved_qkv(std::get<2>(g).view({a.heads, a.d, c}), at::Tensor(), at::Tensor());
    const at::Tensor grad_qkv_b =
        interleaved_qkv(std::get<3>(g).view({a.heads, a.d}), at::Tensor(), at::Tensor());
    return {std::get<0>(g).view(x.sizes()),
            std::get<1>(g),
            grad_qkv_w.view(qkv_w.sizes()),
            grad_qkv_b.view(qkv_b.sizes()),
            std::get<4>(g),
            std::get<5>(g),
            std::get<6>(g),
            std::get<7>(g)};
  }
  const ApplyTrace tr = apply_forward(a, b);
  // out = x + proj2(GELU(proj1(r))), r = x + q·M.
  const at::Tensor act = at::gelu(tr.h1);
  const at::Tensor grad_w2 = at::mm(go.t(), act), grad_b2 = go.sum(0);
  const at::Tensor gh = at::gelu_backward(at::mm(go, a.w2), tr.h1);
  const at::Tensor grad_w1 = at::mm(gh.t(), tr.r), grad_b1 = gh.sum(0);
  const at::Tensor gr = at::mm(gh, a.w1);
  const at::Tensor ga = gr.view({b, -1, a.heads, a.d});
  const at::Tensor q = tr.q.view({b, -1, a.heads, a.d});
  const at::Tensor grad_mat = at::einsum("bmhd,bmhe->bhde", {q, ga}).contiguous();
  const at::Tensor gq = at::einsum("bmhe,bhde->bmhd", {ga, a.mat}).reshape(a.x2.sizes());
  const at::Tensor grad_x = go + gr + at::mm(gq, a.wq);
  // Only the q rows of the head-interleaved projection are used.
  const at::Tensor grad_qkv_w =
      interleaved_qkv(at::mm(gq.t(), a.x2).view({a.heads, a.d, c}), at::Tensor(), at::Tensor());
  const at::Tensor grad_qkv_b =
      interleaved_qkv(gq.sum(0).view({a.heads, a.d}), at::Tensor(), at::Tensor());
  return {grad_x.view(x.sizes()),
          grad_mat,
          grad_qkv_w.view(qkv_w.sizes()),
          grad_qkv_b.view(qkv_b.sizes()),
          grad_w1,
          grad_b1,
          grad_w2,
          grad_b2};
}

ApplyGrads hiif_attention_apply_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                         const at::Tensor& mat, const at::Tensor& qkv_w,
                                         const at::Tensor& qkv_b, const at::Tensor& proj1_w,
                                         const at::Tensor& proj1_b, const at::Tensor& proj2_w,
                                         const at::Tensor& proj2_b) {
  const Apply a = make_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b);
  return apply_backward(grad_out, x, a, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b,
                        nullptr);
}

ApplyGrads hiif_attention_apply_backward_saved(const at::Tensor& grad_out, at::TensorList saved,
                                               const at::Tensor& x, const at::Tensor& mat,
                                               const at::Tensor& qkv_w, const at::Tensor& qkv_b,
                                               const at::Tensor& proj1_w, const at::Tensor& proj1_b,
                                               const at::Tensor& proj2_w,
                                               const at::Tensor& proj2_b) {
  const Apply a = make_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b);
  TORCH_CHECK(runs_cpu_tiles(x), kApply, "_backward_saved: CPU tensors only");
  const Tensors record = checked_record(saved, apply_record_buffers(a.x2.narrow(0, 0, 0), a.w1),
                                        a.x2.size(0), x, kApply);
  return apply_backward(grad_out, x, a, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b,
                        &record);
}

// ---------------------------------------------------------------------------------------
// hiif_levels
// ---------------------------------------------------------------------------------------

constexpr const char* kLevels = "implicit_kernels::hiif_levels";

struct Levels {
  at::Tensor x2, coord;
  Tensors norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b;
  int64_t h, w;
  bool public_centres;
};

Levels make_levels(const at::Tensor& x, const at::Tensor& coord, at::TensorList norm_w,
                   at::TensorList norm_b, at::TensorList fc1_w, at::TensorList fc1_b,
                   at::TensorList fc2_w, at::TensorList fc2_b, int64_t h, int64_t w,
                   bool public_centres) {
  Levels l;
  l.x2 = check_features(x, kLevels);
  l.coord = check_queries(coord, x, x.size(0), kLevels, "coord");
  TORCH_CHECK(coord.size(1) == x.size(1), kLevels, ": coord must have x's ", x.size(1),
              " queries, got ", coord.size(1));
  check_size(h, w, kLevels);
  l.h = h;
  l.w = w;
  l.public_centres = public_centres;
  const size_t n = norm_w.size();
  TORCH_CHECK(n >= 1 && norm_b.size() == n && fc1_w.size() == n && fc1_b.size() == n &&
                  fc2_w.size() == n && fc2_b.size() == n,
              kLevels, ": every parameter list must hold one entry per level (at least one)");
  TORCH_CHECK(n <= 29, kLevels, ": at most 29 levels after level 0");
  int64_t c = x.size(2);
  for (size_t i = 0; i < n; ++i) {
    const std::string name = "level " + std::to_string(i + 1);
    check_same(norm_w[i], x, kLevels, (name + " norm weight").c_str());
    check_same(norm_b[i], x, kLevels, (name + " norm bias").c_str());
    TORCH_CHECK(norm_w[i].sizes() == at::IntArrayRef({c + 2}) &&
                    norm_b[i].sizes() == at::IntArrayRef({c + 2}),
                kLevels, ": ", name, " norm weight and bias must be (", c + 2, ",), got ",
                norm_w[i].sizes(), " and ", norm_b[i].sizes());
    l.norm_w.push_back(norm_w[i].contiguous());
    l.norm_b.push_back(norm_b[i].contiguous());
    auto fc1 = linear(fc1_w[i], fc1_b[i], c + 2, x, kLevels, name + " fc1");
    auto fc2 = linear(fc2_w[i], fc2_b[i], fc1.first.size(0), x, kLevels, name + " fc2");
    l.fc1_w.push_back(fc1.first);
    l.fc1_b.push_back(fc1.second);
    l.fc2_w.push_back(fc2.first);
    l.fc2_b.push_back(fc2.second);
    c = fc2.first.size(0);
  }
  return l;
}

// The levels' parameters per level, for the tiled CPU path.
std::vector<LevelParams> level_params(const Levels& l) {
  std::vector<LevelParams> out;
  for (size_t i = 0; i < l.norm_w.size(); ++i) {
    out.push_back({l.norm_w[i], l.norm_b[i], l.fc1_w[i], l.fc1_b[i], l.fc2_w[i], l.fc2_b[i]});
  }
  return out;
}

// Per level: its input x, normalised input y, rstd and fc1's output.
struct LevelTrace {
  at::Tensor x, y, rstd, h1;
};

at::Tensor levels_forward(const Levels& l, std::vector<LevelTrace>* trace) {
  const Kernels k = kernels_for(l.x2, kLevels);
  at::Tensor x = l.x2;
  for (size_t i = 0; i < l.norm_w.size(); ++i) {
    LevelTrace tr;
    tr.x = x;
    std::tie(tr.y, tr.rstd) =
        k.level_input(x, l.coord, l.h, l.w, static_cast<int64_t>(i + 1), l.public_centres);
    tr.h1 = at::addmm(l.fc1_b[i], at::addcmul(l.norm_b[i], tr.y, l.norm_w[i]), l.fc1_w[i].t());
    x = at::addmm(l.fc2_b[i], at::gelu(tr.h1), l.fc2_w[i].t());
    if (trace != nullptr) trace->push_back(tr);
  }
  return x;
}

at::Tensor hiif_levels(const at::Tensor& x, const at::Tensor& coord, at::TensorList norm_w,
                       at::TensorList norm_b, at::TensorList fc1_w, at::TensorList fc1_b,
                       at::TensorList fc2_w, at::TensorList fc2_b, int64_t h, int64_t w,
                       bool public_centres) {
  const Levels l =
      make_levels(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w, public_centres);
  const int64_t out_dim = l.fc2_w.back().size(0);
  if (l.x2.size(0) == 0) return at::empty({x.size(0), x.size(1), out_dim}, x.options());
  if (runs_cpu_tiles(x)) {
    return levels_tiles(l.x2, l.coord, level_params(l), l.h, l.w, l.public_centres)
        .view({x.size(0), x.size(1), out_dim});
  }
  return levels_forward(l, nullptr).view({x.size(0), x.size(1), out_dim});
}

using LevelGrads = std::tuple<at::Tensor, Tensors, Tensors, Tensors, Tensors, Tensors, Tensors>;

// hiif_levels' backward; `saved`: hiif_levels_train's activations (CPU tiles only), or
// null to recompute them.
LevelGrads levels_backward(const at::Tensor& grad_out, const at::Tensor& x, const Levels& l,
                           const Tensors* saved) {
  const size_t n = l.norm_w.size();
  const int64_t out_dim = l.fc2_w.back().size(0);
  check_grad_out(grad_out, x, {x.size(0), x.size(1), out_dim}, kLevels);
  Tensors g_norm_w(n), g_norm_b(n), g_fc1_w(n), g_fc1_b(n), g_fc2_w(n), g_fc2_b(n);
  if (l.x2.size(0) == 0) {
    for (size_t i = 0; i < n; ++i) {
      g_norm_w[i] = at::zeros_like(l.norm_w[i]);
      g_norm_b[i] = at::zeros_like(l.norm_b[i]);
      g_fc1_w[i] = at::zeros_like(l.fc1_w[i]);
      g_fc1_b[i] = at::zeros_like(l.fc1_b[i]);
      g_fc2_w[i] = at::zeros_like(l.fc2_w[i]);
      g_fc2_b[i] = at::zeros_like(l.fc2_b[i]);
    }
    return {at::zeros_like(x), g_norm_w, g_norm_b, g_fc1_w, g_fc1_b, g_fc2_w, g_fc2_b};
  }
  at::Tensor go = grad_out.reshape({-1, out_dim}).to(x.scalar_type());
  if (runs_cpu_tiles(x)) {
    const auto g = levels_backward_tiles(go, l.x2, l.coord, level_params(l), l.h, l.w,
                                         l.public_centres, saved);
    for (size_t i = 0; i < n; ++i) {
      const LevelParams& p = g.second[i];
      g_norm_w[i] = p.norm_w;
      g_norm_b[i] = p.norm_b;
      g_fc1_w[i] = p.fc1_w;
      g_fc1_b[i] = p.fc1_b;
      g_fc2_w[i] = p.fc2_w;
      g_fc2_b[i] = p.fc2_b;
    }
    return {g.first.view(x.sizes()), g_norm_w, g_norm_b, g_fc1_w, g_fc1_b, g_fc2_w, g_fc2_b};
  }
  std::vector<LevelTrace> trace;
  levels_forward(l, &trace);
  for (size_t i = n; i-- > 0;) {
    const LevelTrace& tr = trace[i];
    g_fc2_w[i] = at::mm(go.t(), at::gelu(tr.h1));
    g_fc2_b[i] = go.sum(0);
    const at::Tensor gh = at::gelu_backward(at::mm(go, l.fc2_w[i]), tr.h1);
    g_fc1_w[i] = at::mm(gh.t(), at::addcmul(l.norm_b[i], tr.y, l.norm_w[i]));
    g_fc1_b[i] = gh.sum(0);
    const at::Tensor gz = at::mm(gh, l.fc1_w[i]);
    g_norm_w[i] = (gz * tr.y).sum(0);
    g_norm_b[i] = gz.sum(0);
    const at::Tensor rstd = tr.rstd.unsqueeze(1).to(x.scalar_type());
    // The bits are constants: only x's columns of the normalised input carry on.
    go = normalize_backward(gz * l.norm_w[i], tr.y, rstd).narrow(1, 0, tr.x.size(1));
  }
  // Contiguous, as the fake declares (go is a view of the normalised input's columns).
  return {go.contiguous().view(x.sizes()), g_norm_w, g_norm_b, g_fc1_w, g_fc1_b, g_fc2_w, g_fc2_b};
}

LevelGrads hiif_levels_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                const at::Tensor& coord, at::TensorList norm_w,
                                at::TensorList norm_b, at::TensorList fc1_w, at::TensorList fc1_b,
                                at::TensorList fc2_w, at::TensorList fc2_b, int64_t h, int64_t w,
                                bool public_centres) {
  const Levels l =
      make_levels(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w, public_centres);
  return levels_backward(grad_out, x, l, nullptr);
}

// hiif_levels_train: hiif_levels and the activations its backward would recompute
// (levels_saved_buffers: every level's input but the first, every level's fc1 output), for
// the cpu backend with gradients.  CPU tiles only.
std::tuple<at::Tensor, Tensors> hiif_levels_train(const at::Tensor& x, const at::Tensor& coord,
                                                  at::TensorList norm_w, at::TensorList norm_b,
                                                  at::TensorList fc1_w, at::TensorList fc1_b,
                                                  at::TensorList fc2_w, at::TensorList fc2_b,
                                                  int64_t h, int64_t w, bool public_centres) {
  const Levels l =
      make_levels(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w, public_centres);
  TORCH_CHECK(runs_cpu_tiles(x), kLevels, "_train: CPU tensors only");
  const std::vector<LevelParams> params = level_params(l);
  Tensors saved = levels_saved_buffers(l.x2, params);
  const int64_t out_dim = l.fc2_w.back().size(0);
  if (l.x2.size(0) == 0) return {at::empty({x.size(0), x.size(1), out_dim}, x.options()), saved};
  at::Tensor out = levels_tiles(l.x2, l.coord, params, l.h, l.w, l.public_centres, &saved);
  return {out.view({x.size(0), x.size(1), out_dim}), saved};
}

LevelGrads hiif_levels_backward_saved(const at::Tensor& grad_out, at::TensorList saved,
                                      const at::Tensor& x, const at::Tensor& coord,
                                      at::TensorList norm_w, at::TensorList norm_b,
                                      at::TensorList fc1_w, at::TensorList fc1_b,
                                      at::TensorList fc2_w, at::TensorList fc2_b, int64_t h,
                                      int64_t w, bool public_centres) {
  const Levels l =
      make_levels(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w, public_centres);
  TORCH_CHECK(runs_cpu_tiles(x), kLevels, "_backward_saved: CPU tensors only");
  const Tensors checked = checked_record(
      saved, levels_saved_buffers(l.x2.narrow(0, 0, 0), level_params(l)), l.x2.size(0), x, kLevels);
  return levels_backward(grad_out, x, l, &checked);
}

// The same kernels serve both dispatch keys (device-specific steps are chosen inside).
void register_hiif_kernels(torch::Library& m) {
  m.impl("hiif_codes", &hiif_codes);
  m.impl("hiif_level0", &hiif_level0);
  m.impl("hiif_level0_backward", &hiif_level0_backward);
  m.impl("hiif_attention_stats", &hiif_attention_stats);
  m.impl("hiif_attention_stats_backward", &hiif_attention_stats_backward);
  m.impl("hiif_attention_apply", &hiif_attention_apply);
  m.impl("hiif_level0_out", &hiif_level0_out);
  m.impl("hiif_attention_apply_", &hiif_attention_apply_);
  m.impl("hiif_attention_apply_backward", &hiif_attention_apply_backward);
  m.impl("hiif_levels", &hiif_levels);
  m.impl("hiif_levels_backward", &hiif_levels_backward);
}

}  // namespace

IK_LIBRARY_IMPL(CPU, m) {
  register_hiif_kernels(m);
  m.impl("hiif_attention_stats_train", &hiif_attention_stats_train);
  m.impl("hiif_attention_stats_backward_saved", &hiif_attention_stats_backward_saved);
  m.impl("hiif_attention_apply_train", &hiif_attention_apply_train);
  m.impl("hiif_attention_apply_backward_saved", &hiif_attention_apply_backward_saved);
  m.impl("hiif_levels_train", &hiif_levels_train);
  m.impl("hiif_levels_backward_saved", &hiif_levels_backward_saved);
}

#if defined(IK_WITH_CUDA)
IK_LIBRARY_IMPL(CUDA, m) { register_hiif_kernels(m); }
#endif

}  // namespace hiif
}  // namespace ik
