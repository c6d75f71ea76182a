// Tiled CPU paths of the fused HIIF operators (csrc/hiif_decode.cpp calls them for CPU
// tensors; CUDA tensors, and the emulated CUDA build, keep the whole-chunk path).
//
// Why tiles: on a CPU the whole-chunk path runs each dense layer and each element-wise
// step as its own sweep over (chunk x 256) activations, far larger than the caches.  Here
// a chunk's rows are cut into tiles of a few hundred rows; each worker thread takes a fixed
// block of tiles and pushes one tile through every layer of the operator while its
// activations stay in L2: single-threaded GEMMs (ATen inside a parallel region, so MKL
// runs on the calling thread) into the worker's own buffers, with bias, GELU and the
// normalisations applied on the tile in place.  Per-worker sums (attention statistics,
// parameter gradients) are added once at the end.
//
// Shapes: x2 (n, C) are the chunk's rows, n = batch * m (m rows per image, image-major);
// coord (n, 2); weights as the operators take them, contiguous.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../op_utils.h"
#include "tiles.h"

namespace ik {
namespace hiif {

// Whether an operator on `t` takes the tiled path: CPU tensors, except in the emulated
// build, whose CPU tensors run the CUDA kernels under test.
inline bool runs_cpu_tiles(const at::Tensor& t) {
#if defined(IK_EMULATE_CUDA)
  return false;
#else
  return t.is_cpu();
#endif
}

// Rows [begin, end) of one image's block of the chunk.
struct Tile {
  int64_t image, begin, end;
};

// Rows per tile: 256 x 256 fp32 activations are 256 KB, so a layer's input, output and
// weights (256 KB) fit a core's L2 (1 MB here) together; 128 rows ran ~3 % slower (on
// ATen's GEMM, which packed the weights once per call).
constexpr int64_t kTileRows = 256;

// The tiles of `batch` blocks of `per_image` rows (at most kTileRows each), none
// straddling two images.
std::vector<Tile> split_tiles(int64_t batch, int64_t per_image);
// The rows of the longest of `tiles`: what a worker's tile buffers hold (a small call's
// buffers sized by kTileRows would be fresh pages to fault in on every call).
int64_t longest(const std::vector<Tile>& tiles);

// Workers (accumulator slots) for `tiles` tiles: one per thread, at most one per tile.
inline int64_t worker_count(size_t tiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
}

// One worker's tiles, a fixed block of the call's, in order.  A fixed split (rather than a
// shared queue) keeps each worker's sums, and so the operator's result, the same from run
// to run for a given thread count.
class WorkerTiles {
 public:
  WorkerTiles(const std::vector<Tile>& tiles, size_t begin, size_t end)
      : tiles_(tiles), next_(begin), end_(end) {}
  // The next tile, or null when none is left.
  const Tile* next() { return next_ < end_ ? &tiles_[next_++] : nullptr; }

 private:
  const std::vector<Tile>& tiles_;
  size_t next_, end_;
};

// Runs work(worker, its tiles) for workers 0..workers-1, worker k taking the k-th of
// `workers` equal blocks of `tiles` (equal tiles: split_tiles), the workers on the
// threads.
template <typename F>
void run_workers(const std::vector<Tile>& tiles, int64_t workers, const F& work) {
  at::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
    // Worker threads do not inherit the operator's dispatch state: keep their ATen calls
    // below autograd (the parameters may require grad; the operator is differentiated by
    // its backward, not by tracing these calls).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t k = lo; k < hi; ++k) {
      WorkerTiles mine(tiles, tiles.size() * k / workers, tiles.size() * (k + 1) / workers);
      work(k, mine);
    }
  });
}

// A contiguous (rows, width) view at the start of a 1-D buffer.
inline at::Tensor rows_of(const at::Tensor& buffer, int64_t rows, int64_t width) {
  return buffer.narrow(0, 0, rows * width).view({rows, width});
}

// The k and v parts of a head-interleaved qkv parameter (weight (3C, C) or bias (3C,)) as
// [k of every head | v of every head] (2C, ...), so one GEMM gives a tile's keys and values.
inline at::Tensor key_value_rows(const at::Tensor& qkv, int64_t heads) {
  std::vector<int64_t> shape(qkv.sizes().begin(), qkv.sizes().end());
  shape[0] = shape[0] / 3 * 2;
  return qkv.reshape({heads, 3, -1}).narrow(1, 1, 2).transpose(0, 1).reshape(shape);
}

// One later level's parameters (level l >= 1: LayerNorm, fc1, fc2).
struct LevelParams {
  at::Tensor norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

// fc1 with the LayerNorm's affine folded in: fc1(γ ⊙ y + β) = (W diag γ) y + (W β + b).
struct FoldedFc1 {
  TileWeight weight;  // (hidden, in)
  at::Tensor bias;
};

inline FoldedFc1 folded_fc1(const LevelParams& l) {
  return {tile_weight(l.fc1_w * l.norm_w), at::addmv(l.fc1_b, l.fc1_w, l.norm_b)};
}

// hiif_level0's forward into `out` (n, out), contiguous, from the maps (B, H, W, 4,
// hidden + 2), q rows per image.
void level0_tiles(const at::Tensor& maps, const at::Tensor& row_sums, const at::Tensor& w_extra,
                  const at::Tensor& bias, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
                  const at::Tensor& coord, const at::Tensor& cell, int64_t q, int64_t channels,
                  bool public_centres, const at::Tensor& out);

// hiif_attention_stats: per image and head Σ k̂ᵀv̂ (B, heads, d, d).  With `record`
// (stats_record_buffers), also keeps what stats_backward_tiles would otherwise recompute.
at::Tensor stats_tiles(const at::Tensor& x2, int64_t batch, const at::Tensor& w_qkv,
                       const at::Tensor& b_qkv, const at::Tensor& kln_w, const at::Tensor& kln_b,
                       const at::Tensor& vln_w, const at::Tensor& vln_b, int64_t heads,
                       const std::vector<at::Tensor>* record = nullptr);

// The statistics' record, per query row: the keys and values normalised per head, before
// the affine (n, 2C: keys, then values), and their rstd (n, 2 heads): 2.1 KB a query at the
// paper's widths.
std::vector<at::Tensor> stats_record_buffers(const at::Tensor& x2, int64_t heads);

// hiif_attention_apply: x + proj2(GELU(proj1(x + q·M))) (n, C) into `out` (contiguous; may
// be x2 itself: each tile reads its rows of x before writing them); wq (C, C), bq (C,) the
// q rows of the head-interleaved projection, mat (B, heads, d, d).  With `record`
// (apply_record_buffers; out not x2), also keeps q and proj1's output.
void apply_tiles(const at::Tensor& x2, int64_t batch, const at::Tensor& mat, const at::Tensor& wq,
                 const at::Tensor& bq, const at::Tensor& w1, const at::Tensor& b1,
                 const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& out,
                 const std::vector<at::Tensor>* record = nullptr);

// The application's record, per query row: q (n, C) and proj1's output before GELU (n,
// hidden): 2 KB a query at the paper's widths.
std::vector<at::Tensor> apply_record_buffers(const at::Tensor& x2, const at::Tensor& w1);

// Row steps shared by the forwards and backwards, on contiguous rows: each head's keys and
// values of kv (rows, 2C) LayerNormed without affine in place, their rstd into rstd (rows,
// 2 heads); and r = x + q·M per head for rows of one image (x, q, r (rows, C), m (heads, d,
// d)).
void normalise_key_values(const at::Tensor& kv, const at::Tensor& rstd, int64_t heads);
void head_mix(const at::Tensor& x, const at::Tensor& q, const at::Tensor& m, const at::Tensor& r);

// hiif_levels: levels 1..L-1 on x2 (n, C) -> (n, out).  With `saved`
// (levels_saved_buffers), also keeps what levels_backward_tiles would otherwise recompute.
at::Tensor levels_tiles(const at::Tensor& x2, const at::Tensor& coord,
                        const std::vector<LevelParams>& levels, int64_t h, int64_t w,
                        bool public_centres, const std::vector<at::Tensor>* saved = nullptr);

// The forward's saved activations for the backward, per query row: the input of every level
// but the first (n, C_l), then every level's fc1 output before GELU (n, hidden_l): about
// 9 KB per query at the paper's widths.
std::vector<at::Tensor> levels_saved_buffers(const at::Tensor& x2,
                                             const std::vector<LevelParams>& levels);

// ---- Backwards (hiif_tiles_backward_cpu.cpp).  Each recomputes its operator's forward
// per tile, or reads it from the forward's record, and sums the parameter gradients per
// worker.

// hiif_attention_stats' backward: x's gradient (n, C), the k and v rows' weight and bias
// gradients in the [k of every head | v of every head] layout (2C, C) and (2C,), and the
// four head-norm parameters' (d,).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
stats_backward_tiles(const at::Tensor& grad_out, const at::Tensor& x2, int64_t batch,
                     const at::Tensor& w_qkv, const at::Tensor& b_qkv, const at::Tensor& kln_w,
                     const at::Tensor& kln_b, const at::Tensor& vln_w, const at::Tensor& vln_b,
                     int64_t heads, const std::vector<at::Tensor>* record = nullptr);

// hiif_attention_apply's backward: gradients of x (n, C), mat, wq, bq, w1, b1, w2, b2.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
apply_backward_tiles(const at::Tensor& grad_out, const at::Tensor& x2, int64_t batch,
                     const at::Tensor& mat, const at::Tensor& wq, const at::Tensor& bq,
                     const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                     const at::Tensor& b2, const std::vector<at::Tensor>* record = nullptr);

// hiif_levels' backward: x's gradient (n, C) and every level's parameter gradients; the
// forward recomputed per tile, or read from `saved` (levels_tiles).
std::pair<at::Tensor, std::vector<LevelParams>> levels_backward_tiles(
    const at::Tensor& grad_out, const at::Tensor& x2, const at::Tensor& coord,
    const std::vector<LevelParams>& levels, int64_t h, int64_t w, bool public_centres,
    const std::vector<at::Tensor>* saved = nullptr);

}  // namespace hiif
}  // namespace ik
