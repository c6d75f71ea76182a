// The DIIF family's stages on the CPU (diif_stages.h, stages_forward) in tiles of rows
// (tiles.h): each thread takes whole tiles, and on a tile runs one GEMM per layer with its
// bias and ReLU applied in the same pass while the tile is still in its core's cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../diif_stages.h"
#include "../poison.h"
#include "avx2_clone.h"
#include "tiles.h"

namespace ik {
namespace diif {
namespace {

// Σ_t weight[t] · rows[t] (v rows of `width`, `width` apart) into `dst`, added to it
// when `add`.
template <typename T>
inline void mix_rows(T* dst, const T* rows, int v, int64_t width, const T* weight, bool add) {
  for (int t = 0; t < v; ++t) {
    const T* src = rows + t * width;
    const T w = weight[t];
    if (t == 0 && !add) {
      for (int64_t j = 0; j < width; ++j) dst[j] = w * src[j];
    } else {
      for (int64_t j = 0; j < width; ++j) dst[j] += w * src[j];
    }
  }
}

// The fine stage's first layer, ReLU applied, for pixels lo..hi into z (rows of df):
// b + W_d·d + Σ_t w_t G_t with G's rows `g` per slice, or, without g, b + W_d·d added to
// the W_h·Σ_t w_t H_t already in z.  (AVX2 clone: passes over a tile in L2.)
template <typename T>
IK_AVX2_CLONE void fine_input_rows(T* z, const T* g, int64_t lo, int64_t hi, int64_t df,
                                   const int64_t* pix, const int64_t* slice, const Dims& dims,
                                   const T* b0, const T* wdy, const T* wdx) {
  const int v = vertex_count(dims);
  for (int64_t p = lo; p < hi; ++p) {
    T offset[2], weight[4];
    pixel_offset_weights<T>(pix[2 * p], pix[2 * p + 1], dims, offset, weight);
    T* row = z + (p - lo) * df;
    const T dy = offset[0], dx = offset[1];
    if (g != nullptr) {
      for (int64_t j = 0; j < df; ++j) row[j] = b0[j] + wdy[j] * dy + wdx[j] * dx;
      mix_rows(row, g + slice[p] * v * df, v, df, weight, true);
    } else {
      for (int64_t j = 0; j < df; ++j) row[j] += b0[j] + wdy[j] * dy + wdx[j] * dx;
    }
    for (int64_t j = 0; j < df; ++j) row[j] = std::max(row[j], T(0));
  }
}

template <typename T>
void forward_tiles(const Stages& st, const Slices& sl, const Dims& dims, int64_t width,
                   const FirstLayer& first, bool record, Trace& tr) {
  const auto options = st.fine_wh.options();
  const int64_t rows = sl.coords.size(0), n = sl.pixels.size(0);
  const int64_t hidden = st.fine_wh.size(1), df = st.fine_wh.size(0);
  const int v = vertex_count(dims);
  const int64_t out_dim = st.fine.weights.back().size(0);
  tr.hidden_blend = n < rows;

  // Coarse stage per slice and vertex: H, then G = W_h·H unless the blend is in H's space.
  if (record) tr.coarse = record_for(st.coarse, rows, width, options);
  at::Tensor h_all =
      tr.hidden_blend && !record ? empty_poisoned({rows, hidden}, options) : at::Tensor();
  at::Tensor g_all = tr.hidden_blend ? at::Tensor() : empty_poisoned({rows, df}, options);
  const std::vector<TileWeight> coarse = tile_layers(st.coarse), fine = tile_layers(st.fine);
  const TileWeight wh = tile_weight(st.fine_wh);
  for_each_tile(rows, widest(st.coarse, width), options, record ? &tr.coarse : nullptr,
                [&](int64_t lo, int64_t hi, TileOutputs& outs) {
                  at::Tensor x = outs.at(0, lo, hi, width);
                  first(lo, hi, x);
                  x.relu_();
                  at::Tensor h = mlp_tile(st.coarse, coarse, x, outs, 1, lo, hi, h_all);
                  if (st.coarse.weights.empty() && h_all.defined()) {
                    h_all.narrow(0, lo, hi - lo).copy_(h);
                  }
                  if (g_all.defined()) {
                    linear_tile(h, wh, at::Tensor(), false, g_all.narrow(0, lo, hi - lo));
                  }
                });
  if (record) h_all = tr.coarse.back();

  // Fine stage per pixel: z = b + W_d·d + Σ_t w_t G_t (or W_h·Σ_t w_t H_t), then the MLP.
  const int64_t* pix = sl.pixels.data_ptr<int64_t>();
  const int64_t* slice = sl.slice_of.data_ptr<int64_t>();
  const at::Tensor wd0 = st.fine_wd.select(1, 0).contiguous(),
                   wd1 = st.fine_wd.select(1, 1).contiguous();
  const T* wdy = wd0.data_ptr<T>();
  const T* wdx = wd1.data_ptr<T>();
  const T* b0 = st.fine_b0.data_ptr<T>();
  if (record) {
    tr.fine = record_for(st.fine, n, df, options);
    if (tr.hidden_blend) tr.hidden_mix = empty_poisoned({n, hidden}, options);
  }
  tr.out = empty_poisoned({n, out_dim}, options);
  for_each_tile(n, std::max(widest(st.fine, df), hidden), options, record ? &tr.fine : nullptr,
                [&](int64_t lo, int64_t hi, TileOutputs& outs) {
                  at::Tensor z = outs.at(0, lo, hi, df);
                  T* zp = z.data_ptr<T>();
                  if (tr.hidden_blend) {
                    at::Tensor mix =
                        record ? tr.hidden_mix.narrow(0, lo, hi - lo) : outs.at(1, lo, hi, hidden);
                    T* mp = mix.data_ptr<T>();
                    const T* hp = h_all.data_ptr<T>();
                    for (int64_t p = lo; p < hi; ++p) {
                      T offset[2], weight[4];
                      pixel_offset_weights<T>(pix[2 * p], pix[2 * p + 1], dims, offset, weight);
                      mix_rows(mp + (p - lo) * hidden, hp + slice[p] * v * hidden, v, hidden,
                               weight, false);
                    }
                    // W_h once per pixel
                    linear_tile(mix, wh, at::Tensor(), false, z);
                  }
                  fine_input_rows(zp, g_all.defined() ? g_all.data_ptr<T>() : nullptr, lo, hi, df,
                                  pix, slice, dims, b0, wdy, wdx);
                  // With hidden_blend, scratch 1 held the mix: the first layer may overwrite it
                  // now.
                  mlp_tile(st.fine, fine, z, outs, 1, lo, hi, tr.out);
                });
  if (record) tr.fine.back() = tr.out;
}

// The backward of the fine stage's first layer on pixels lo..hi from g, the gradient of
// relu(z) (rows of df): the ReLU's mask from its output `act` (as PyTorch), the masked
// gradient of z written to `dst` (may be g), Σ g into b0_sum and Σ g·dy, Σ g·dx into the
// two rows of wd_sum (2, df).
template <typename T>
IK_AVX2_CLONE void fine_input_backward_rows(T* dst, const T* g, const T* act, int64_t lo,
                                            int64_t hi, int64_t df, const int64_t* pix,
                                            const Dims& dims, T* b0_sum, T* wd_sum) {
  for (int64_t p = lo; p < hi; ++p) {
    T offset[2], weight[4];
    pixel_offset_weights<T>(pix[2 * p], pix[2 * p + 1], dims, offset, weight);
    const T dy = offset[0], dx = offset[1];
    const T* gr = g + (p - lo) * df;
    const T* a = act + (p - lo) * df;
    T* d = dst + (p - lo) * df;
    for (int64_t j = 0; j < df; ++j) {
      const T x = a[j] > T(0) ? gr[j] : T(0);
      d[j] = x;
      b0_sum[j] += x;
      wd_sum[j] += x * dy;
      wd_sum[df + j] += x * dx;
    }
  }
}

}  // namespace

at::Tensor fine_backward_cpu(const Stages& st, const Slices& sl, const Dims& dims, const Trace& tr,
                             const at::Tensor& grad_out, StageGrads* grads) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto options = st.fine_wh.options();
  const int64_t n = sl.pixels.size(0), df = st.fine_wh.size(0), hidden = st.fine_wh.size(1);
  const int64_t out_dim = st.fine.weights.back().size(0);
  const at::Tensor go = grad_out.reshape({n, out_dim}).to(st.fine_wh.scalar_type()).contiguous();
  at::Tensor per_pixel = empty_poisoned({n, tr.hidden_blend ? hidden : df}, options);
  std::vector<at::Tensor> like = {st.fine_b0, at::empty({2, df}, options)};  // b0, wdᵀ
  if (tr.hidden_blend) like.push_back(st.fine_wh);
  // grad · W_h as a layer: the per-pixel gradient of the hidden mix (hidden_blend only).
  const TileWeight wh_back = tr.hidden_blend ? tile_weight(st.fine_wh.t()) : TileWeight{};
  const int64_t* pix = sl.pixels.data_ptr<int64_t>();
  const auto output_grad = [&](int64_t lo, int64_t hi, TileOutputs& outs) {
    return outs.at(0, lo, hi, out_dim).copy_(go.narrow(0, lo, hi - lo));
  };
  AT_DISPATCH_FLOATING_TYPES(st.fine_wh.scalar_type(), "diif_fine_backward_cpu", [&] {
    const scalar_t* act = tr.fine.front().data_ptr<scalar_t>();
    const auto input_backward = [&](int64_t lo, int64_t hi, at::Tensor grad, at::Tensor* sums) {
      scalar_t* g = grad.data_ptr<scalar_t>();
      fine_input_backward_rows<scalar_t>(
          tr.hidden_blend ? g : per_pixel.data_ptr<scalar_t>() + lo * df, g, act + lo * df, lo, hi,
          df, pix, dims, sums[0].data_ptr<scalar_t>(), sums[1].data_ptr<scalar_t>());
      if (tr.hidden_blend) {
        sums[2].addmm_(grad.t(), tr.hidden_mix.narrow(0, lo, hi - lo));
        linear_tile(grad, wh_back, at::Tensor(), false, per_pixel.narrow(0, lo, hi - lo));
      }
    };
    const std::vector<at::Tensor> sums = mlp_backward_tiles(
        st.fine, n, df, tr.fine, output_grad, input_backward, like, grads->fine_w, grads->fine_b);
    grads->fine_b0 = sums[0];
    grads->fine_wd = sums[1].t().contiguous();
    if (tr.hidden_blend) grads->fine_wh = sums[2];
  });
  return per_pixel;
}

at::Tensor coarse_backward_cpu(const Stages& st, const Trace& tr, const at::Tensor& per_slice,
                               StageGrads* grads) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor& act = tr.coarse.front();  // relu(pre)
  const int64_t rows = act.size(0), width = act.size(1), hidden = st.fine_wh.size(1);
  // Masked in place by the tiles (with hidden_blend): a fresh result of the scatter.
  const at::Tensor g = per_slice.contiguous();
  at::Tensor grad = empty_poisoned({rows, width}, act.options());
  std::vector<at::Tensor> like;
  if (!tr.hidden_blend) like.push_back(st.fine_wh);
  // G's gradient · W_h as a layer (without hidden_blend: with it, H's gradient is given).
  const TileWeight wh_back = tr.hidden_blend ? TileWeight{} : tile_weight(st.fine_wh.t());
  // The gradient of H on rows lo..hi: G's through W_h (whose weight gradient input_backward
  // adds into the thread's sums[0]).
  const auto output_grad = [&](int64_t lo, int64_t hi, TileOutputs& outs) {
    if (tr.hidden_blend) return g.narrow(0, lo, hi - lo);
    at::Tensor gh = outs.at(0, lo, hi, hidden);
    linear_tile(g.narrow(0, lo, hi - lo), wh_back, at::Tensor(), false, gh);
    return gh;
  };
  const auto input_backward = [&](int64_t lo, int64_t hi, at::Tensor gx, at::Tensor* sums) {
    if (!tr.hidden_blend) {
      sums[0].addmm_(g.narrow(0, lo, hi - lo).t(), tr.coarse.back().narrow(0, lo, hi - lo));
    }
    at::Tensor out = grad.narrow(0, lo, hi - lo);
    at::threshold_backward_out(out, gx, act.narrow(0, lo, hi - lo), 0);
  };
  const std::vector<at::Tensor> sums =
      mlp_backward_tiles(st.coarse, rows, width, tr.coarse, output_grad, input_backward, like,
                         grads->coarse_w, grads->coarse_b);
  if (!tr.hidden_blend) grads->fine_wh = sums[0];
  return grad;
}

Trace stages_forward_cpu(const Stages& st, const Slices& sl, const Dims& dims, int64_t width,
                         const FirstLayer& first, bool record) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  Trace tr;
  AT_DISPATCH_FLOATING_TYPES(st.fine_wh.scalar_type(), "diif_stages_forward_cpu", [&] {
    forward_tiles<scalar_t>(st, sl, dims, width, first, record, tr);
  });
  return tr;
}

at::Tensor scatter_vertex_rows_cpu(const at::Tensor& g, const at::Tensor& weights,
                                   const at::Tensor& slice_of, int64_t n_slices, int64_t v) {
  const at::Tensor gc = g.contiguous(), wc = weights.to(g.scalar_type()).contiguous();
  const int64_t n = gc.size(0), width = gc.size(1);
  at::Tensor out = at::zeros({n_slices * v, width}, gc.options());
  const int64_t* slice = slice_of.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "diif_scatter_vertex_rows_cpu", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    constexpr int64_t kBlock = 64;  // columns per task: a cache line's worth of rows each
    at::parallel_for(0, (width + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
      const int64_t lo = b0 * kBlock, hi = std::min(width, b1 * kBlock);
      for (int64_t p = 0; p < n; ++p) {
        const scalar_t* src = gp + p * width;
        for (int64_t t = 0; t < v; ++t) {
          const scalar_t w = wp[p * v + t];
          scalar_t* dst = op + (slice[p] * v + t) * width;
          for (int64_t j = lo; j < hi; ++j) dst[j] += w * src[j];
        }
      }
    });
  });
  return out;
}

}  // namespace diif
}  // namespace ik
