// The tiled CPU forwards of the fused HIIF operators (hiif_tiles_cpu.h explains the tiles).
#include "hiif_tiles_cpu.h"

#include <ATen/Dispatch.h>

#include "avx2_clone.h"
#include "hiif_rows_cpu.h"

namespace ik {
namespace hiif {

std::vector<Tile> split_tiles(int64_t batch, int64_t per_image) {
  // Equal tiles of at most kTileRows rows; a small call gets a multiple of the thread
  // count, so the workers' runs of tiles hold the same number of rows.
  int64_t count = (per_image + kTileRows - 1) / kTileRows;
  const int64_t threads = at::get_num_threads();
  if (batch * count < 16 * threads) {
    const int64_t total = (batch * count + threads - 1) / threads * threads;
    count = std::min(per_image, (total + batch - 1) / batch);
  }
  const int64_t rows = (per_image + count - 1) / std::max<int64_t>(count, 1);
  std::vector<Tile> tiles;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < per_image; s += rows) {
      tiles.push_back({b, b * per_image + s, b * per_image + std::min(per_image, s + rows)});
    }
  }
  return tiles;
}

int64_t longest(const std::vector<Tile>& tiles) {
  int64_t rows = 0;
  for (const Tile& t : tiles) rows = std::max(rows, t.end - t.begin);
  return rows;
}

namespace {

// Level 0 of rows [begin, end) up to fc2: pre = u · rstd + bias (rows, hidden), the
// unnormalised sum u and its statistics from ik/hiif_decode.h.
template <typename T>
IK_AVX2_CLONE void level0_pre_rows(const at::Tensor& maps, const at::Tensor& row_sums,
                                   const at::Tensor& w_extra, const at::Tensor& bias,
                                   const at::Tensor& coord, const at::Tensor& cell, int64_t q,
                                   int64_t channels, bool public_centres, int64_t begin,
                                   int64_t end, T* pre) {
  const int64_t h = maps.size(1), w = maps.size(2), hidden = row_sums.size(1);
  const T* mp = maps.data_ptr<T>();
  const T* cp = coord.data_ptr<T>();
  const T* ep = cell.data_ptr<T>();
  const T* rs = row_sums.data_ptr<T>();
  const T* we = w_extra.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  for (int64_t p = begin; p < end; ++p) {
    index_t rows[4];
    T aux[kAuxWidth];
    level0_stats<T>(cp[2 * p], cp[2 * p + 1], ep[2 * p], ep[2 * p + 1], p / q, h, w, public_centres,
                    mp, hidden, channels, rows, aux);
    T* out = pre + (p - begin) * hidden;
    for (int64_t j = 0; j < hidden; ++j) {
      out[j] = level0_channel<T>(j, hidden, mp, rows, aux, rs, we) * aux[kAuxRstd] + bp[j];
    }
  }
}

// Each of `rows` rows of kv holds a query's keys then values (2c), normalised per head (d
// channels; normalise_key_values); their affine images k̂, v̂ give k̂ᵀv̂ (d, d), added into s
// (heads, d, d).  These loops took a tenth of the forward: AVX2 clone.
template <typename T, typename D>
IK_AVX2_CLONE void add_key_value_products(const T* kv, int64_t rows, int64_t c, int64_t heads, D d,
                                          const T* kw, const T* kb, const T* vw, const T* vb,
                                          T* s) {
  std::vector<T> key(d), value(d);
  const T* row = kv;
  for (int64_t p = 0; p < rows; ++p, row += 2 * c) {
    for (int64_t hd = 0; hd < heads; ++hd) {
      scale_shift(row + hd * d, kw, kb, key.data(), d);
      scale_shift(row + c + hd * d, vw, vb, value.data(), d);
      add_outer_product(key.data(), value.data(), s + hd * d * d, d);
    }
  }
}

// LayerNorm without affine of each head's d keys and d values in rows of kv (2c: keys,
// then values), in place; their rstd into rstd's rows (2 heads: keys', then values').
template <typename T, typename D>
IK_AVX2_CLONE void normalise_key_value_rows(T* kv, T* rstd, int64_t rows, int64_t c, int64_t heads,
                                            D d) {
  for (int64_t p = 0; p < rows; ++p, kv += 2 * c, rstd += 2 * heads) {
    for (int64_t hd = 0; hd < 2 * heads; ++hd) rstd[hd] = normalise_row(kv + hd * d, d);
  }
}

// r = x + q·M per head (M: heads × d × d of one image) for a tile of rows × c.
template <typename T, typename D>
IK_AVX2_CLONE void add_head_products(const T* x, const T* q, const T* m, T* r, int64_t rows,
                                     int64_t c, int64_t heads, D d) {
  for (int64_t p = 0; p < rows * c; p += c) {
    for (int64_t hd = 0; hd < heads; ++hd) {
      const int64_t o = p + hd * d;
      row_times_matrix(q + o, m + hd * d * d, r + o, d);
      for (int64_t e = 0; e < d; ++e) r[o + e] += x[o + e];
    }
  }
}

}  // namespace

void normalise_key_values(const at::Tensor& kv, const at::Tensor& rstd, int64_t heads) {
  const int64_t c = kv.size(1) / 2;
  AT_DISPATCH_FLOATING_TYPES(kv.scalar_type(), "hiif_normalise_key_values", [&] {
    with_head_dim(c / heads, [&](auto d) {
      normalise_key_value_rows(kv.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), kv.size(0), c,
                               heads, d);
    });
  });
}

void head_mix(const at::Tensor& x, const at::Tensor& q, const at::Tensor& m, const at::Tensor& r) {
  const int64_t heads = m.size(0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hiif_head_mix", [&] {
    with_head_dim(m.size(1), [&](auto d) {
      add_head_products(x.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                        r.data_ptr<scalar_t>(), x.size(0), x.size(1), heads, d);
    });
  });
}

void level0_tiles(const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,
                  const at::Tensor& bias, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
                  const at::Tensor& coord, const at::Tensor& cell, int64_t q, int64_t channels,
                  bool public_centres, const at::Tensor& out) {
  const int64_t n = coord.size(0), hidden = row_sums.size(1);
  const std::vector<Tile> tiles = split_tiles(1, n);
  const int64_t tile_rows = longest(tiles);  // each worker's buffers
  const TileWeight fc2 = tile_weight(fc2_w);
  AT_DISPATCH_FLOATING_TYPES(maps.scalar_type(), "hiif_level0_tiles", [&] {
    run_workers(tiles, worker_count(tiles.size()), [&](int64_t, WorkerTiles& mine) {
      const at::Tensor buffer = at::empty({tile_rows * hidden}, maps.options());
      while (const Tile* t = mine.next()) {
        const int64_t rows = t->end - t->begin;
        at::Tensor pre = rows_of(buffer, rows, hidden);
        level0_pre_rows<scalar_t>(maps, row_sums, w_extra, bias, coord, cell, q, channels,
                                  public_centres, t->begin, t->end, pre.data_ptr<scalar_t>());
        at::gelu_(pre);
        at::Tensor dst = out.narrow(0, t->begin, rows);
        linear_tile(pre, fc2, fc2_b, false, dst);
      }
    });
  });
}

at::Tensor stats_tiles(const at::Tensor& x2, int64_t batch, const at::Tensor& w_qkv,
                       const at::Tensor& b_qkv, const at::Tensor& kln_w, const at::Tensor& kln_b,
                       const at::Tensor& vln_w, const at::Tensor& vln_b, int64_t heads,
                       const std::vector<at::Tensor>* record) {
  const int64_t n = x2.size(0), c = x2.size(1), d = c / heads;
  const TileWeight w_kv = tile_weight(key_value_rows(w_qkv, heads));
  const at::Tensor b_kv = key_value_rows(b_qkv, heads);
  const std::vector<Tile> tiles = split_tiles(batch, n / batch);
  const int64_t tile_rows = longest(tiles);  // each worker's buffers
  const int64_t workers = worker_count(tiles.size());
  // Per worker and image: Σ k̂ᵀv̂ (heads, d, d).
  at::Tensor sums = at::zeros({workers, batch, heads, d, d}, x2.options());
  AT_DISPATCH_FLOATING_TYPES(x2.scalar_type(), "hiif_stats_tiles", [&] {
    const scalar_t* kw = kln_w.data_ptr<scalar_t>();
    const scalar_t* kb = kln_b.data_ptr<scalar_t>();
    const scalar_t* vw = vln_w.data_ptr<scalar_t>();
    const scalar_t* vb = vln_b.data_ptr<scalar_t>();
    run_workers(tiles, workers, [&](int64_t k, WorkerTiles& mine) {
      // The normalised keys and values and their rstd: in the record's rows, or the tile's.
      at::Tensor kv_buffer, rstd_buffer;
      if (record == nullptr) {
        kv_buffer = at::empty({tile_rows * 2 * c}, x2.options());
        rstd_buffer = at::empty({tile_rows * 2 * heads}, x2.options());
      }
      while (const Tile* t = mine.next()) {
        const int64_t rows = t->end - t->begin;
        const at::Tensor kv = record == nullptr ? rows_of(kv_buffer, rows, 2 * c)
                                                : (*record)[0].narrow(0, t->begin, rows);
        const at::Tensor rstd = record == nullptr ? rows_of(rstd_buffer, rows, 2 * heads)
                                                  : (*record)[1].narrow(0, t->begin, rows);
        linear_tile(x2.narrow(0, t->begin, rows), w_kv, b_kv, false, kv);
        normalise_key_values(kv, rstd, heads);
        with_head_dim(d, [&](auto d) {
          add_key_value_products(kv.data_ptr<scalar_t>(), rows, c, heads, d, kw, kb, vw, vb,
                                 sums[k][t->image].data_ptr<scalar_t>());
        });
      }
    });
  });
  return sums.sum(0);
}

std::vector<at::Tensor> stats_record_buffers(const at::Tensor& x2, int64_t heads) {
  return {at::empty({x2.size(0), 2 * x2.size(1)}, x2.options()),
          at::empty({x2.size(0), 2 * heads}, x2.options())};
}

void apply_tiles(const at::Tensor& x2, int64_t batch, const at::Tensor& mat, const at::Tensor& wq,
                 const at::Tensor& bq, const at::Tensor& w1, const at::Tensor& b1,
                 const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& out,
                 const std::vector<at::Tensor>* record) {
  const int64_t n = x2.size(0), c = x2.size(1), heads = mat.size(1), d = mat.size(2);
  const int64_t hidden = w1.size(0);
  const at::Tensor m = mat.to(x2.scalar_type()).contiguous();
  std::vector<TileWeight> mix_t;  // per image, mixᵀ as a layer weight (without a record)
  at::Tensor mix_bias;
  TileWeight q_layer;  // with a record
  if (record == nullptr) {
    // r = x + (x Wqᵀ + bq)·M = x·(I + Wqᵀ M) + bq·M with M block-diagonal per head: one
    // (C, C) matrix and one bias per image instead of the q projection and 16 head
    // products.
    const at::Tensor mix =
        at::einsum("hac,bhae->bche", {wq.view({heads, d, c}), m}).reshape({batch, c, c}) +
        at::eye(c, x2.options());
    mix_bias = at::einsum("ha,bhae->bhe", {bq.view({heads, d}), m}).reshape({batch, c});
    for (int64_t b = 0; b < batch; ++b) mix_t.push_back(tile_weight(mix[b].t()));
  } else {
    // The backward needs q itself (for M's gradient): the q projection, then the products.
    q_layer = tile_weight(wq);
  }
  const TileWeight fc1 = tile_weight(w1), fc2 = tile_weight(w2);
  const std::vector<Tile> tiles = split_tiles(batch, n / batch);
  const int64_t tile_rows = longest(tiles);  // each worker's buffers
  run_workers(tiles, worker_count(tiles.size()), [&](int64_t, WorkerTiles& mine) {
    const at::Tensor r_buffer = at::empty({tile_rows * c}, x2.options());
    const at::Tensor h_buffer = at::empty({tile_rows * hidden}, x2.options());
    while (const Tile* t = mine.next()) {
      const int64_t rows = t->end - t->begin;
      const at::Tensor x = x2.narrow(0, t->begin, rows);
      at::Tensor r = rows_of(r_buffer, rows, c), hid = rows_of(h_buffer, rows, hidden);
      if (record == nullptr) {
        linear_tile(x, mix_t[t->image], mix_bias[t->image], false, r);
        linear_tile(r, fc1, b1, false, hid);
        at::gelu_(hid);
      } else {
        const at::Tensor q = (*record)[0].narrow(0, t->begin, rows);
        const at::Tensor h1 = (*record)[1].narrow(0, t->begin, rows);
        linear_tile(x, q_layer, bq, false, q);
        head_mix(x, q, m[t->image], r);
        linear_tile(r, fc1, b1, false, h1);
        at::gelu_out(hid, h1);
      }
      linear_tile(hid, fc2, b2, false, r);  // r is free again
      at::Tensor dst = out.narrow(0, t->begin, rows);
      at::add_out(dst, x, r);
    }
  });
}

std::vector<at::Tensor> apply_record_buffers(const at::Tensor& x2, const at::Tensor& w1) {
  return {at::empty({x2.size(0), x2.size(1)}, x2.options()),
          at::empty({x2.size(0), w1.size(0)}, x2.options())};
}

at::Tensor levels_tiles(const at::Tensor& x2, const at::Tensor& coord,
                        const std::vector<LevelParams>& levels, int64_t h, int64_t w,
                        bool public_centres, const std::vector<at::Tensor>* saved) {
  const int64_t n = x2.size(0);
  const size_t count = levels.size();
  std::vector<FoldedFc1> fc1;
  std::vector<TileWeight> fc2;
  int64_t widest = 0;
  for (const LevelParams& l : levels) {
    fc1.push_back(folded_fc1(l));
    fc2.push_back(tile_weight(l.fc2_w));
    widest = std::max({widest, l.fc1_w.size(0), l.fc1_w.size(1), l.fc2_w.size(0)});
  }
  const int64_t out_dim = levels.back().fc2_w.size(0);
  at::Tensor out = at::empty({n, out_dim}, x2.options());
  const std::vector<Tile> tiles = split_tiles(1, n);
  const int64_t tile_rows = longest(tiles);  // each worker's buffers
  AT_DISPATCH_FLOATING_TYPES(x2.scalar_type(), "hiif_levels_tiles", [&] {
    const scalar_t* cp = coord.data_ptr<scalar_t>();
    run_workers(tiles, worker_count(tiles.size()), [&](int64_t, WorkerTiles& mine) {
      const at::Tensor y_buffer = at::empty({tile_rows * widest}, x2.options());
      const at::Tensor h_buffer = at::empty({tile_rows * widest}, x2.options());
      at::Tensor x_buffers[2] = {at::empty({tile_rows * widest}, x2.options()),
                                 at::empty({tile_rows * widest}, x2.options())};
      while (const Tile* t = mine.next()) {
        const int64_t rows = t->end - t->begin;
        at::Tensor x = x2.narrow(0, t->begin, rows);
        for (size_t i = 0; i < count; ++i) {
          const int64_t c = x.size(1), hidden = fc1[i].weight.w.size(0);
          at::Tensor y = rows_of(y_buffer, rows, c + 2), act = rows_of(h_buffer, rows, hidden);
          // fc1's output: in the tile buffer, GELU in place; or saved, GELU beside it.
          at::Tensor hid =
              saved == nullptr ? act : (*saved)[count - 1 + i].narrow(0, t->begin, rows);
          const scalar_t* xp = x.data_ptr<scalar_t>();
          scalar_t* yp = y.data_ptr<scalar_t>();
          for (int64_t p = 0; p < rows; ++p) {
            const int64_t g = t->begin + p;
            normalise_level_row<scalar_t>(xp + p * c, c, cp[2 * g], cp[2 * g + 1], h, w,
                                          static_cast<int64_t>(i + 1), public_centres,
                                          yp + p * (c + 2));
          }
          linear_tile(y, fc1[i].weight, fc1[i].bias, false, hid);
          at::gelu_out(act, hid);
          at::Tensor next = i + 1 == count     ? out.narrow(0, t->begin, rows)
                            : saved == nullptr ? rows_of(x_buffers[i % 2], rows, fc2[i].w.size(0))
                                               : (*saved)[i].narrow(0, t->begin, rows);
          linear_tile(act, fc2[i], levels[i].fc2_b, false, next);
          x = next;
        }
      }
    });
  });
  return out;
}

std::vector<at::Tensor> levels_saved_buffers(const at::Tensor& x2,
                                             const std::vector<LevelParams>& levels) {
  std::vector<at::Tensor> saved;
  for (size_t i = 0; i + 1 < levels.size(); ++i) {
    saved.push_back(at::empty({x2.size(0), levels[i].fc2_w.size(0)}, x2.options()));
  }
  for (const LevelParams& l : levels) {
    saved.push_back(at::empty({x2.size(0), l.fc1_w.size(0)}, x2.options()));
  }
  return saved;
}

}  // namespace hiif
}  // namespace ik
