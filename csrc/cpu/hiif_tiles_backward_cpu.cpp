// The tiled CPU backwards of the fused HIIF operators (hiif_tiles_cpu.h): per tile, the
// operator's forward again (GEMMs in cache), then the backward of each step; parameter
// gradients summed per worker, then over the workers.
#include <ATen/Dispatch.h>

#include <vector>

#include "avx2_clone.h"
#include "hiif_rows_cpu.h"
#include "hiif_tiles_cpu.h"

namespace ik {
namespace hiif {
namespace {

// Contiguous zero tensors shaped like `like`, one set per worker: worker k's are
// [k * like.size(), (k + 1) * like.size()).
std::vector<at::Tensor> zero_slots(int64_t workers, const std::vector<at::Tensor>& like) {
  std::vector<at::Tensor> out;
  for (int64_t k = 0; k < workers; ++k) {
    for (const at::Tensor& t : like) out.push_back(at::zeros(t.sizes(), t.options()));
  }
  return out;
}

// Slot i of every worker summed, in worker order.
at::Tensor sum_slot(const std::vector<at::Tensor>& slots, size_t per_worker, size_t i) {
  at::Tensor total = slots[i].clone();
  for (size_t k = per_worker + i; k < slots.size(); k += per_worker) total.add_(slots[k]);
  return total;
}

// The backwards' row loops over a tile (AVX2 clones: with the SSE2 baseline they were a
// tenth of a small decode's backward).

// The attention statistics S = Σ k̂ᵀv̂ per head: from dL/dS (g, and gt = its transpose, per
// head d × d) to the gradients of a tile's raw keys and values.  kv's rows hold a query's
// keys then values (2c) and are normalised in place; their gradients go to gkv (same
// layout); the LayerNorm affine's gradients are added into g_kw, g_kb, g_vw, g_vb.
template <typename T>
IK_AVX2_CLONE void key_value_backward(T* kv, T* gkv, int64_t rows, int64_t c, int64_t heads,
                                      int64_t d, const T* kw, const T* kb, const T* vw, const T* vb,
                                      const T* g_image, const T* gt_image, T* g_kw, T* g_kb,
                                      T* g_vw, T* g_vb) {
  std::vector<T> key(d), value(d);
  T* row = kv;
  T* grow = gkv;
  // d as a constant where it is 16 (with_head_dim).
  with_head_dim(d, [&](auto d) {
    for (int64_t p = 0; p < rows; ++p, row += 2 * c, grow += 2 * c) {
      for (int64_t hd = 0; hd < heads; ++hd) {
        // The normalised key and value stay in kv; k̂, v̂ are their affine images.
        T* kn = row + hd * d;
        T* vn = row + c + hd * d;
        const T k_rstd = normalise_row(kn, d), v_rstd = normalise_row(vn, d);
        for (int64_t e = 0; e < d; ++e) {
          key[e] = kn[e] * kw[e] + kb[e];
          value[e] = vn[e] * vw[e] + vb[e];
        }
        // S = Σ k̂ᵀv̂: dk̂_a = Σ_e G_ae v̂_e, dv̂_e = Σ_a G_ae k̂_a, both as sums of rows of
        // G (Gᵀ for dk̂): contiguous inner loops without a running sum.
        const T* g = g_image + hd * d * d;
        const T* gt = gt_image + hd * d * d;
        T* gk = grow + hd * d;
        T* gv = grow + c + hd * d;
        for (int64_t e = 0; e < d; ++e) gk[e] = gv[e] = 0;
        for (int64_t a = 0; a < d; ++a) {
          for (int64_t e = 0; e < d; ++e) {
            gk[e] += gt[a * d + e] * value[a];
            gv[e] += g[a * d + e] * key[a];
          }
        }
        for (int64_t e = 0; e < d; ++e) {
          g_kw[e] += gk[e] * kn[e];
          g_kb[e] += gk[e];
          g_vw[e] += gv[e] * vn[e];
          g_vb[e] += gv[e];
          gk[e] *= kw[e];
          gv[e] *= vw[e];
        }
        normalise_row_backward(gk, kn, k_rstd, d);
        normalise_row_backward(gv, vn, v_rstd, d);
      }
    }
  });
}

// r = x + q·M per head (M: heads × d × d of one image) for a tile of rows × c.
template <typename T>
IK_AVX2_CLONE void add_head_products(const T* x, const T* q, const T* m, T* r, int64_t rows,
                                     int64_t c, int64_t heads, int64_t d) {
  // d as a constant where it is 16 (with_head_dim).
  with_head_dim(d, [&](auto d) {
    for (int64_t p = 0; p < rows * c; p += c) {
      for (int64_t hd = 0; hd < heads; ++hd) {
        const T* mh = m + hd * d * d;
        const int64_t o = p + hd * d;
        for (int64_t e = 0; e < d; ++e) r[o + e] = x[o + e];
        for (int64_t a = 0; a < d; ++a) {
          for (int64_t e = 0; e < d; ++e) r[o + e] += q[o + a] * mh[a * d + e];
        }
      }
    }
  });
}

// Backward of add_head_products from dr: dM_h += q_hᵀ dr_h (into gm), dq_h = dr_h M_hᵀ
// (into gq), with mt = M transposed per head.
template <typename T>
IK_AVX2_CLONE void head_products_backward(const T* q, const T* gr, const T* mt, T* gq, T* gm,
                                          int64_t rows, int64_t c, int64_t heads, int64_t d) {
  // d as a constant where it is 16 (with_head_dim).
  with_head_dim(d, [&](auto d) {
    for (int64_t p = 0; p < rows * c; p += c) {
      for (int64_t hd = 0; hd < heads; ++hd) {
        T* gmh = gm + hd * d * d;
        const int64_t o = p + hd * d;
        // dq_a = Σ_e M_ae dr_e as a sum of rows of Mᵀ (no running sum).
        const T* mth = mt + hd * d * d;
        for (int64_t a = 0; a < d; ++a) gq[o + a] = 0;
        for (int64_t e = 0; e < d; ++e) {
          for (int64_t a = 0; a < d; ++a) {
            gmh[e * d + a] += q[o + e] * gr[o + a];
            gq[o + a] += mth[e * d + a] * gr[o + e];
          }
        }
      }
    }
  });
}

// A later level's z = γ ⊙ y + β, y = normalised [x, bits] (c + 2 columns, rstd per row),
// backward for a tile: from dz (gz, overwritten) to dx (gx, c columns: the bits are
// constants), adding the norm's weight and bias gradients into gnw and gnb.
template <typename T>
IK_AVX2_CLONE void level_norm_backward(T* gz, const T* y, const T* rstd, const T* gamma, T* gnw,
                                       T* gnb, T* gx, int64_t rows, int64_t c) {
  for (int64_t p = 0; p < rows; ++p) {
    T* gy = gz + p * (c + 2);
    const T* yp = y + p * (c + 2);
    for (int64_t j = 0; j < c + 2; ++j) {
      gnw[j] += gy[j] * yp[j];
      gnb[j] += gy[j];
      gy[j] *= gamma[j];
    }
    normalise_row_backward(gy, yp, rstd[p], c + 2);
    for (int64_t j = 0; j < c; ++j) gx[p * c + j] = gy[j];
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
stats_backward_tiles(const at::Tensor& grad_out, const at::Tensor& x2, int64_t batch,
                     const at::Tensor& w_qkv, const at::Tensor& b_qkv, const at::Tensor& kln_w,
                     const at::Tensor& kln_b, const at::Tensor& vln_w, const at::Tensor& vln_b,
                     int64_t heads) {
  const int64_t n = x2.size(0), c = x2.size(1), d = c / heads;
  const at::Tensor w_kv = key_value_rows(w_qkv, heads), b_kv = key_value_rows(b_qkv, heads);
  // The forward's layer, and w_kv as the layer weight of the input gradient gkv·w_kv.
  const TileWeight kv_layer = hiif_weight(w_kv, n), kv_back = hiif_weight(w_kv.t(), n);
  const at::Tensor gs = grad_out.contiguous();  // (B, heads, d, d): dL/dS
  const at::Tensor gs_t = gs.transpose(2, 3).contiguous();
  at::Tensor grad_x = at::empty({n, c}, x2.options());
  const std::vector<Tile> tiles = split_tiles(batch, n / batch);
  const int64_t tile_rows = longest(tiles);  // each worker's buffers
  const int64_t workers = worker_count(tiles.size());
  // Per worker: w_kv, b_kv, kln_w, kln_b, vln_w, vln_b.
  const std::vector<at::Tensor> like = {w_kv, b_kv, kln_w, kln_b, vln_w, vln_b};
  std::vector<at::Tensor> slots = zero_slots(workers, like);
  AT_DISPATCH_FLOATING_TYPES(x2.scalar_type(), "hiif_stats_backward_tiles", [&] {
    using T = scalar_t;
    const T* kw = kln_w.data_ptr<T>();
    const T* kb = kln_b.data_ptr<T>();
    const T* vw = vln_w.data_ptr<T>();
    const T* vb = vln_b.data_ptr<T>();
    run_workers(tiles, workers, [&](int64_t k, WorkerTiles& mine) {
      at::Tensor* acc = slots.data() + k * like.size();
      T* g_kw = acc[2].data_ptr<T>();
      T* g_kb = acc[3].data_ptr<T>();
      T* g_vw = acc[4].data_ptr<T>();
      T* g_vb = acc[5].data_ptr<T>();
      const at::Tensor kv_buffer = at::empty({tile_rows * 2 * c}, x2.options());
      const at::Tensor grad_buffer = at::empty({tile_rows * 2 * c}, x2.options());
      while (const Tile* t = mine.next()) {
        const int64_t rows = t->end - t->begin;
        const at::Tensor x = x2.narrow(0, t->begin, rows);
        at::Tensor kv = rows_of(kv_buffer, rows, 2 * c), gkv = rows_of(grad_buffer, rows, 2 * c);
        linear_tile(x, kv_layer, b_kv, false, kv);
        const int64_t image = t->image * heads * d * d;
        key_value_backward(kv.data_ptr<T>(), gkv.data_ptr<T>(), rows, c, heads, d, kw, kb, vw, vb,
                           gs.data_ptr<T>() + image, gs_t.data_ptr<T>() + image, g_kw, g_kb, g_vw,
                           g_vb);
        at::Tensor gx = grad_x.narrow(0, t->begin, rows);
        linear_tile(gkv, kv_back, at::Tensor(), false, gx);
        acc[0].addmm_(gkv.t(), x);
        acc[1].add_(gkv.sum(0));
      }
    });
  });
  const size_t m = like.size();
  return {grad_x,
          sum_slot(slots, m, 0),
          sum_slot(slots, m, 1),
          sum_slot(slots, m, 2),
          sum_slot(slots, m, 3),
          sum_slot(slots, m, 4),
          sum_slot(slots, m, 5)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
apply_backward_tiles(const at::Tensor& grad_out, const at::Tensor& x2, int64_t batch,
                     const at::Tensor& mat, const at::Tensor& wq, const at::Tensor& bq,
                     const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                     const at::Tensor& b2) {
  const int64_t n = x2.size(0), c = x2.size(1), heads = mat.size(1), d = mat.size(2);
  const int64_t hidden = w1.size(0);
  const at::Tensor m = mat.contiguous(), go2 = grad_out.contiguous();
  const at::Tensor m_t = m.transpose(2, 3).contiguous();
  const TileWeight q_layer = hiif_weight(wq, n), layer1 = hiif_weight(w1, n);
  // w2 and w1 as the layer weights of the input gradients go·w2 and dL/dh1·w1.
  const TileWeight back2 = hiif_weight(w2.t(), n), back1 = hiif_weight(w1.t(), n);
  at::Tensor grad_x = at::empty({n, c}, x2.options());
  const std::vector<Tile> tiles = split_tiles(batch, n / batch);
  const int64_t tile_rows = longest(tiles);  // each worker's buffers
  const int64_t workers = worker_count(tiles.size());
  // Per worker: mat, wq, bq, w1, b1, w2, b2.
  const std::vector<at::Tensor> like = {mat, wq, bq, w1, b1, w2, b2};
  std::vector<at::Tensor> slots = zero_slots(workers, like);
  AT_DISPATCH_FLOATING_TYPES(x2.scalar_type(), "hiif_apply_backward_tiles", [&] {
    using T = scalar_t;
    run_workers(tiles, workers, [&](int64_t k, WorkerTiles& mine) {
      at::Tensor* acc = slots.data() + k * like.size();
      auto buffer = [&](int64_t width) { return at::empty({tile_rows * width}, x2.options()); };
      const at::Tensor q_buf = buffer(c), r_buf = buffer(c), gr_buf = buffer(c), gq_buf = buffer(c);
      const at::Tensor h_buf = buffer(hidden), a_buf = buffer(hidden), g_buf = buffer(hidden);
      while (const Tile* t = mine.next()) {
        const int64_t rows = t->end - t->begin;
        const at::Tensor x = x2.narrow(0, t->begin, rows), go = go2.narrow(0, t->begin, rows);
        at::Tensor q = rows_of(q_buf, rows, c), r = rows_of(r_buf, rows, c);
        at::Tensor gr = rows_of(gr_buf, rows, c), gq = rows_of(gq_buf, rows, c);
        at::Tensor h1 = rows_of(h_buf, rows, hidden), act = rows_of(a_buf, rows, hidden);
        at::Tensor gact = rows_of(g_buf, rows, hidden);
        const T* mp = m.data_ptr<T>() + t->image * heads * d * d;
        const T* mtp = m_t.data_ptr<T>() + t->image * heads * d * d;
        // Forward: r = x + q·M (per head), h1 = proj1(r), act = GELU(h1).
        linear_tile(x, q_layer, bq, false, q);
        add_head_products(x.data_ptr<T>(), q.data_ptr<T>(), mp, r.data_ptr<T>(), rows, c, heads, d);
        linear_tile(r, layer1, b1, false, h1);
        at::gelu_out(act, h1);
        // out = x + proj2(act): proj2's gradients, then back through GELU and proj1.
        acc[5].addmm_(go.t(), act);
        acc[6].add_(go.sum(0));
        linear_tile(go, back2, at::Tensor(), false, gact);
        at::gelu_backward_out(act, gact, h1);  // act now holds dL/dh1
        acc[3].addmm_(act.t(), r);
        acc[4].add_(act.sum(0));
        linear_tile(act, back1, at::Tensor(), false, gr);
        head_products_backward(q.data_ptr<T>(), gr.data_ptr<T>(), mtp, gq.data_ptr<T>(),
                               acc[0].data_ptr<T>() + t->image * heads * d * d, rows, c, heads, d);
        acc[1].addmm_(gq.t(), x);
        acc[2].add_(gq.sum(0));
        at::Tensor gx = grad_x.narrow(0, t->begin, rows);
        at::add_out(gx, go, gr);
        gx.addmm_(gq, wq);
      }
    });
  });
  const size_t k = like.size();
  return {grad_x,
          sum_slot(slots, k, 0),
          sum_slot(slots, k, 1),
          sum_slot(slots, k, 2),
          sum_slot(slots, k, 3),
          sum_slot(slots, k, 4),
          sum_slot(slots, k, 5),
          sum_slot(slots, k, 6)};
}

std::pair<at::Tensor, std::vector<LevelParams>> levels_backward_tiles(
    const at::Tensor& grad_out, const at::Tensor& x2, const at::Tensor& coord,
    const std::vector<LevelParams>& levels, int64_t h, int64_t w, bool public_centres,
    const std::vector<at::Tensor>* saved) {
  const int64_t n = x2.size(0);
  const size_t count = levels.size();
  std::vector<FoldedFc1> fc1;
  // fc2's layer, and fc2_w and fc1_w as the layer weights of the input gradients.
  std::vector<TileWeight> fc2, fc2_back, fc1_back;
  int64_t widest = 0;
  // Per worker and level: fc2 weight and bias, Σ dh1ᵀ y (the folded fc1 weight's
  // gradient), fc1 bias, Σ dz ⊙ y and Σ dz (the norm's weight and bias) with z = γ ⊙ y + β.
  std::vector<at::Tensor> like;
  for (const LevelParams& l : levels) {
    fc1.push_back(folded_fc1(l, n));
    fc2.push_back(hiif_weight(l.fc2_w, n));
    fc2_back.push_back(hiif_weight(l.fc2_w.t(), n));
    fc1_back.push_back(hiif_weight(l.fc1_w.t(), n));
    widest = std::max({widest, l.fc1_w.size(0), l.fc1_w.size(1), l.fc2_w.size(0)});
    like.insert(like.end(), {l.fc2_w, l.fc2_b, l.fc1_w, l.fc1_b, l.norm_w, l.norm_b});
  }
  const at::Tensor go2 = grad_out.contiguous();
  at::Tensor grad_x = at::empty_like(x2);
  const std::vector<Tile> tiles = split_tiles(1, n);
  const int64_t tile_rows = longest(tiles);  // each worker's buffers
  const int64_t workers = worker_count(tiles.size());
  std::vector<at::Tensor> slots = zero_slots(workers, like);
  AT_DISPATCH_FLOATING_TYPES(x2.scalar_type(), "hiif_levels_backward_tiles", [&] {
    using T = scalar_t;
    const T* cp = coord.data_ptr<T>();
    run_workers(tiles, workers, [&](int64_t k, WorkerTiles& mine) {
      at::Tensor* acc = slots.data() + k * like.size();
      auto buffer = [&]() { return at::empty({tile_rows * widest}, x2.options()); };
      // Per level: the normalised input y, rstd, fc1's output h1 and fc2's output (the
      // next level's input; the last level's is not needed).  h1 and fc2's outputs are
      // read from `saved` when given; y is recomputed from the level's input either way.
      std::vector<at::Tensor> y_buf, h_buf, out_buf;
      for (size_t i = 0; i < count; ++i) {
        y_buf.push_back(buffer());
        h_buf.push_back(buffer());
        out_buf.push_back(buffer());
      }
      const at::Tensor rstd_buf = at::empty({static_cast<int64_t>(count), tile_rows}, x2.options());
      const at::Tensor act_buf = buffer(), gact_buf = buffer(), gz_buf = buffer();
      at::Tensor grad_buf[2] = {buffer(), buffer()};
      while (const Tile* t = mine.next()) {
        const int64_t rows = t->end - t->begin;
        std::vector<at::Tensor> xs = {x2.narrow(0, t->begin, rows)}, ys, hs;
        for (size_t i = 0; i < count; ++i) {
          const int64_t c = xs[i].size(1), hidden = levels[i].fc1_w.size(0);
          ys.push_back(rows_of(y_buf[i], rows, c + 2));
          hs.push_back(saved == nullptr ? rows_of(h_buf[i], rows, hidden)
                                        : (*saved)[count - 1 + i].narrow(0, t->begin, rows));
          const T* xp = xs[i].data_ptr<T>();
          T* yp = ys[i].data_ptr<T>();
          T* rp = rstd_buf[i].data_ptr<T>();
          for (int64_t p = 0; p < rows; ++p) {
            const int64_t g = t->begin + p;
            rp[p] = normalise_level_row<T>(xp + p * c, c, cp[2 * g], cp[2 * g + 1], h, w,
                                           static_cast<int64_t>(i + 1), public_centres,
                                           yp + p * (c + 2));
          }
          if (saved == nullptr) linear_tile(ys[i], fc1[i].weight, fc1[i].bias, false, hs[i]);
          if (i + 1 == count) break;
          if (saved != nullptr) {
            xs.push_back((*saved)[i].narrow(0, t->begin, rows));
            continue;
          }
          at::Tensor act = rows_of(act_buf, rows, hidden);
          at::gelu_out(act, hs[i]);
          xs.push_back(rows_of(out_buf[i], rows, levels[i].fc2_w.size(0)));
          linear_tile(act, fc2[i], levels[i].fc2_b, false, xs.back());
        }
        at::Tensor go = go2.narrow(0, t->begin, rows);
        for (size_t i = count; i-- > 0;) {
          const LevelParams& l = levels[i];
          at::Tensor* a = acc + 6 * i;
          const int64_t c = xs[i].size(1), hidden = l.fc1_w.size(0);
          at::Tensor act = rows_of(act_buf, rows, hidden);
          at::Tensor gact = rows_of(gact_buf, rows, hidden);
          at::Tensor gz = rows_of(gz_buf, rows, c + 2);
          at::gelu_out(act, hs[i]);
          a[0].addmm_(go.t(), act);
          a[1].add_(go.sum(0));
          linear_tile(go, fc2_back[i], at::Tensor(), false, gact);
          at::gelu_backward_out(act, gact, hs[i]);  // act now holds dL/dh1
          a[2].addmm_(act.t(), ys[i]);
          a[3].add_(act.sum(0));
          linear_tile(act, fc1_back[i], at::Tensor(), false, gz);
          // z = γ ⊙ y + β, y = normalised [x, bits]: the bits are constants, so only x's
          // columns carry the gradient on.
          at::Tensor gx =
              i == 0 ? grad_x.narrow(0, t->begin, rows) : rows_of(grad_buf[i % 2], rows, c);
          level_norm_backward(gz.data_ptr<T>(), ys[i].data_ptr<T>(), rstd_buf[i].data_ptr<T>(),
                              l.norm_w.data_ptr<T>(), a[4].data_ptr<T>(), a[5].data_ptr<T>(),
                              gx.data_ptr<T>(), rows, c);
          go = gx;
        }
      }
    });
  });
  std::vector<LevelParams> grads(count);
  const size_t m = like.size();
  for (size_t i = 0; i < count; ++i) {
    LevelParams& g = grads[i];
    g.fc2_w = sum_slot(slots, m, 6 * i);
    g.fc2_b = sum_slot(slots, m, 6 * i + 1);
    g.fc1_b = sum_slot(slots, m, 6 * i + 3);
    // dW = dh1ᵀ z = (dh1ᵀ y) diag γ + (dh1ᵀ 1) βᵀ.
    g.fc1_w = sum_slot(slots, m, 6 * i + 2)
                  .mul_(levels[i].norm_w)
                  .add_(at::outer(g.fc1_b, levels[i].norm_b));
    g.norm_w = sum_slot(slots, m, 6 * i + 4);
    g.norm_b = sum_slot(slots, m, 6 * i + 5);
  }
  return {grad_x, grads};
}

}  // namespace hiif
}  // namespace ik
