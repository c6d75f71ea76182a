// Generic pieces of the CPU operators that run their dense layers in tiles of rows
// (csrc/cpu/diif_stages_cpu.cpp, csrc/cpu/liif_tiles_cpu.cpp): each thread takes whole
// tiles, and on a tile runs one GEMM per layer with its bias and ReLU applied while the
// tile is still in its core's cache.  Threads over tiles rather than inside each GEMM: the
// 256-wide GEMMs of a few hundred rows are too small to split well, and whole-tensor ATen
// ops would sweep every activation through memory once per element-wise step.
// CPU only: the CUDA build runs the same operators with whole-tensor steps.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "../mlp.h"

namespace ik {

// Rows per tile: a tile's two 256 x 256 float activations and a 256 x 256 weight (256 KB
// each) stay in a 1 MB L2; measured best of 64-512 rows for DIIF (bench/NOTES.md).
// A multiple of 4, so a tile of LIIF's member rows holds whole queries.
constexpr int64_t kTileRows = 256;

// c = act(a · wᵀ + b) on one tile: c (rows, out) and a (rows, in) contiguous; no bias when
// `bias` is undefined.  On our kernel (tile_gemm.h) when `packed`, w in its layout, is
// defined; else ATen's GEMM, then bias and ReLU in one pass while the tile is in cache.
void linear_tile(const at::Tensor& a, const at::Tensor& w, const at::Tensor& packed,
                 const at::Tensor& bias, bool relu, at::Tensor c);

// A layer weight (out, in) (any strides) with its tile-kernel packing where the kernel
// applies.  Packed on every call, small or not (~10 us a 256 x 256 weight): a result must
// not depend on how a decode is split into calls.
struct TileWeight {
  at::Tensor w, packed;
};
TileWeight tile_weight(const at::Tensor& w);
// tile_weight of each layer of `mlp`.
std::vector<TileWeight> tile_layers(const Mlp& mlp);
inline void linear_tile(const at::Tensor& a, const TileWeight& w, const at::Tensor& bias, bool relu,
                        at::Tensor c) {
  linear_tile(a, w.w, w.packed, bias, relu, std::move(c));
}

// Where a tile's activations go: rows of the recorded trace when the backward needs them
// (entry i of `record`, for i below its size), else two per-thread scratch tensors of
// (rows, width) used in turn (allocated on first use).
struct TileOutputs {
  const std::vector<at::Tensor>* record;  // full-height tensors, or nullptr
  int64_t rows;                           // the scratch tensors' rows: the longest tile's
  int64_t width;                          // and columns
  at::TensorOptions options;
  at::Tensor scratch[2];

  at::Tensor at(size_t i, int64_t lo, int64_t hi, int64_t cols);
};

// Runs `mlp` on the tile x (rows lo..hi of the whole input), layer i's output into
// outs.at(first + i); the last layer writes into rows lo..hi of `last` when it is defined.
// Returns the last layer's output (x itself for an empty chain).  `layers`: tile_layers(mlp).
at::Tensor mlp_tile(const Mlp& mlp, const std::vector<TileWeight>& layers, at::Tensor x,
                    TileOutputs& outs, size_t first, int64_t lo, int64_t hi,
                    const at::Tensor& last);

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
    TileOutputs outs{record, std::min(rows, kTileRows), width, options, {}};
    for (int64_t t = t0; t < t1; ++t) {
      fn(t * kTileRows, std::min(rows, (t + 1) * kTileRows), outs);
    }
  });
}

// The widest of `in` and the layers' outputs.
int64_t widest(const Mlp& mlp, int64_t in);

// The recorded activations of `mlp` on `rows` rows: its input, then each layer's output
// (`but_last`: all but the last layer's, which a backward without ReLU after it never reads).
std::vector<at::Tensor> record_for(const Mlp& mlp, int64_t rows, int64_t in,
                                   const at::TensorOptions& options, bool but_last = false);

// Per-thread sums for a backward over tiles: each worker adds into its own zeros shaped
// like `like` (allocated on its first use), and sum() adds the workers' up.  at::parallel_for
// gives each thread a fixed range of tiles, so the result does not depend on timing.
class ThreadSums {
 public:
  explicit ThreadSums(std::vector<at::Tensor> like);
  // The calling thread's accumulators.
  std::vector<at::Tensor>& mine();
  // Σ over threads, one tensor per entry of `like` (adds into the first thread's).
  std::vector<at::Tensor> sum();

 private:
  std::vector<at::Tensor> like_;
  std::vector<std::vector<at::Tensor>> slots_;  // by at::get_thread_num()
};

// The backward of mlp_tile on rows lo..hi from the gradient `grad` (hi - lo, out) of the
// chain's output, held in scratch.at(slot) (`scratch` without a record; the call
// overwrites both scratch tensors): `record` is the forward's
// (the input, then each layer's output, the last one's not needed), and each layer's weight
// and bias gradients are added into sums[first + 2i] and sums[first + 2i + 1].  Returns
// the gradient of the chain's input (in one of `outs`' scratch tensors).  `back` holds each
// layer's weight w as the layer weight of grad · w (tile_weight(w.t())).
at::Tensor mlp_tile_backward(const Mlp& mlp, const std::vector<TileWeight>& back, at::Tensor grad,
                             size_t slot, const std::vector<at::Tensor>& record, int64_t lo,
                             int64_t hi, TileOutputs& scratch, std::vector<at::Tensor>& sums,
                             size_t first);

// The gradient of an MLP's output on rows lo..hi, writable (the backward masks it in place):
// outs.at(0, lo, hi, out) or rows of a tensor the caller owns.
using TileGrad = std::function<at::Tensor(int64_t lo, int64_t hi, TileOutputs& outs)>;
// The step before an MLP, backward, on rows lo..hi: `grad` is the gradient of the MLP's
// input (a scratch tile the call may overwrite) and `sums` the calling thread's
// accumulators, in the order of the `input_like` list given with it.
using TileInputBackward =
    std::function<void(int64_t lo, int64_t hi, at::Tensor grad, at::Tensor* sums)>;

// The backward of `mlp` (input width `in`) on `rows` rows in tiles, in parallel over tiles:
// each tile's output gradient from `grad_of`, then mlp_tile_backward over `record` (as
// there), then `input_backward`.  Fills grad_w and grad_b and returns input_backward's
// sums (over threads), shaped like `input_like`.
std::vector<at::Tensor> mlp_backward_tiles(const Mlp& mlp, int64_t rows, int64_t in,
                                           const std::vector<at::Tensor>& record,
                                           const TileGrad& grad_of,
                                           const TileInputBackward& input_backward,
                                           const std::vector<at::Tensor>& input_like,
                                           std::vector<at::Tensor>& grad_w,
                                           std::vector<at::Tensor>& grad_b);

// Zeros like each layer's weight and bias, interleaved (w0, b0, w1, b1, ...): the
// accumulators mlp_tile_backward adds into.
std::vector<at::Tensor> mlp_grad_like(const Mlp& mlp);

}  // namespace ik
