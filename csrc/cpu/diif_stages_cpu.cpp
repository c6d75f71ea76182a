// The DIIF family's stages on the CPU (diif_stages.h, stages_forward) in tiles of rows:
// each thread takes whole tiles, and on a tile runs one GEMM per layer with its bias and
// ReLU applied in the same pass while the tile is still in its core's cache.  Threads over
// tiles rather than inside each GEMM: the 256-wide GEMMs of a few hundred rows are too
// small to split well, and whole-tensor ATen ops would sweep every activation through
// memory once per element-wise step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../diif_stages.h"
#include "../poison.h"

namespace ik {
namespace diif {
namespace {

// Rows per tile: a tile's two 256 x 256 float activations and a 256 x 256 weight (256 KB
// each) stay in a 1 MB L2; measured best of 64-512 rows (bench/NOTES.md).
constexpr int64_t kTileRows = 256;

// c = act(a · wᵀ + b) on one tile: c (rows, out) and a (rows, in) contiguous.  ATen's
// element-wise kernels are vectorised for the machine (this file is built for a generic
// x86-64); on a tile in cache their per-call cost is small next to the GEMM's.
void linear_tile(const at::Tensor& a, const at::Tensor& w, const at::Tensor& bias, bool relu,
                 at::Tensor c) {
  if (bias.defined()) {
    at::addmm_out(c, bias, a, w.t());
  } else {
    at::mm_out(c, a, w.t());
  }
  if (relu) at::relu_(c);
}

// Where a tile's activations go: rows of the recorded trace when the backward needs them,
// else two per-thread scratch buffers used in turn.
struct TileOutputs {
  const std::vector<at::Tensor>* record;  // full-height tensors, or nullptr
  at::Tensor scratch[2];

  at::Tensor at(size_t i, int64_t lo, int64_t hi, int64_t width) {
    if (record != nullptr) return (*record)[i].narrow(0, lo, hi - lo);
    return scratch[i % 2].view(-1).narrow(0, 0, (hi - lo) * width).view({hi - lo, width});
  }
};

// Runs `mlp` on the tile x (rows lo..hi of the whole input), layer i's output into
// outs.at(first + i); the last layer writes into `last` when it is defined.  Returns the
// last layer's output.
template <typename T>
at::Tensor mlp_tile(const Mlp& mlp, at::Tensor x, TileOutputs& outs, size_t first, int64_t lo,
                    int64_t hi, const at::Tensor& last) {
  const size_t n = mlp.weights.size();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = mlp.weights[i];
    at::Tensor y = (i + 1 == n && last.defined()) ? last.narrow(0, lo, hi - lo)
                                                  : outs.at(first + i, lo, hi, w.size(0));
    linear_tile(x, w, mlp.biases[i], i + 1 < n || mlp.relu_last, y);
    x = y;
  }
  return x;
}

// Calls fn(lo, hi, outs) for every tile of `rows` rows, in parallel over tiles, with
// per-thread scratch of `width` columns.
template <typename F>
void for_each_tile(int64_t rows, int64_t width, const at::TensorOptions& options,
                   const std::vector<at::Tensor>* record, const F& fn) {
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    // The ops are called below autograd (the _out GEMMs refuse inputs that require grad
    // otherwise); the guard is per thread, so each worker sets it.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    TileOutputs outs{record, {}};
    if (record == nullptr) {
      for (auto& s : outs.scratch) s = at::empty({kTileRows, width}, options);
    }
    for (int64_t t = t0; t < t1; ++t) {
      fn(t * kTileRows, std::min(rows, (t + 1) * kTileRows), outs);
    }
  });
}

int64_t widest(const Mlp& mlp, int64_t in) {
  int64_t w = in;
  for (const auto& x : mlp.weights) w = std::max(w, x.size(0));
  return w;
}

// The recorded activations of `mlp` on `rows` rows: its input, then each layer's output.
std::vector<at::Tensor> record_for(const Mlp& mlp, int64_t rows, int64_t in,
                                   const at::TensorOptions& options) {
  std::vector<at::Tensor> rec = {empty_poisoned({rows, in}, options)};
  for (const auto& w : mlp.weights) rec.push_back(empty_poisoned({rows, w.size(0)}, options));
  return rec;
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
  for_each_tile(rows, widest(st.coarse, width), options, record ? &tr.coarse : nullptr,
                [&](int64_t lo, int64_t hi, TileOutputs& outs) {
                  at::Tensor x = outs.at(0, lo, hi, width);
                  first(lo, hi, x);
                  x.relu_();
                  at::Tensor h = mlp_tile<T>(st.coarse, x, outs, 1, lo, hi, h_all);
                  if (st.coarse.weights.empty() && h_all.defined()) {
                    h_all.narrow(0, lo, hi - lo).copy_(h);
                  }
                  if (g_all.defined()) {
                    linear_tile(h, st.fine_wh, at::Tensor(), false, g_all.narrow(0, lo, hi - lo));
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
  // Σ_t weight[t] · rows[t] (v rows of `width`, `stride` apart) into `dst`, added to it
  // when `add`.
  const auto mix_rows = [v](T* dst, const T* rows, int64_t width, int64_t stride, const T* weight,
                            bool add) {
    for (int t = 0; t < v; ++t) {
      const T* src = rows + t * stride;
      const T w = weight[t];
      if (t == 0 && !add) {
        for (int64_t j = 0; j < width; ++j) dst[j] = w * src[j];
      } else {
        for (int64_t j = 0; j < width; ++j) dst[j] += w * src[j];
      }
    }
  };
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
                      mix_rows(mp + (p - lo) * hidden, hp + slice[p] * v * hidden, hidden, hidden,
                               weight, false);
                    }
                    at::mm_out(z, mix, st.fine_wh.t());  // W_h once per pixel
                  }
                  const T* gp = g_all.defined() ? g_all.data_ptr<T>() : nullptr;
                  for (int64_t p = lo; p < hi; ++p) {
                    T offset[2], weight[4];
                    pixel_offset_weights<T>(pix[2 * p], pix[2 * p + 1], dims, offset, weight);
                    T* row = zp + (p - lo) * df;
                    const T dy = offset[0], dx = offset[1];
                    if (gp != nullptr) {
                      for (int64_t j = 0; j < df; ++j) row[j] = b0[j] + wdy[j] * dy + wdx[j] * dx;
                      mix_rows(row, gp + slice[p] * v * df, df, df, weight, true);
                    } else {
                      for (int64_t j = 0; j < df; ++j) row[j] += b0[j] + wdy[j] * dy + wdx[j] * dx;
                    }
                    for (int64_t j = 0; j < df; ++j) row[j] = std::max(row[j], T(0));
                  }
                  // With hidden_blend, scratch 1 held the mix: the first layer may overwrite it
                  // now.
                  mlp_tile<T>(st.fine, z, outs, 1, lo, hi, tr.out);
                });
  if (record) tr.fine.back() = tr.out;
}

}  // namespace

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
