// Dense layers of a tile of rows in shared memory: the building block of the fused decode
// kernels (csrc/cuda/*_fused.cu).  A block of kTileThreads threads holds kTileRows rows of
// activations in shared memory and runs a Linear over them:
//   tile_linear:   out[r][o] = Σ_k in[r][k]·W(o, k)      (Acc, shared)
//   tile_bias_act: act[r][o] = T(relu?(acc[r][o] + b[o])) (T, shared)
//   tile_store:    dst[r][o] = T(src[r][o] + b[o])         (T, global; rows < a count)
// Widths are multiples of kWidthAlign (the glue zero-pads weights and biases, so padded
// channels stay exactly 0 through every ReLU) and at most kMaxWidth.
//
// Element types: T = float or double runs SIMT FMAs with Acc = T, the weights staged
// through shared memory kStageK input channels at a time (coalesced loads whatever the
// layout); T = __half or __nv_bfloat16 runs WMMA 16×16×16 tensor-core products with
// Acc = float, the weights read as B fragments straight from global memory.
// Every function is called by the whole block and ends with a __syncthreads(), so its
// outputs are visible to every thread on return; `out` must not overlap `in`.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "ik/common.h"
#include "launch.h"
#include "tile_sizes.h"

namespace ik {
namespace cuda {

template <typename T>
constexpr bool kUsesTensorCores =
    std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;

// Input channels of the weights staged per step of the SIMT product (16 KiB of float or
// double), and the stage's row stride: one element more than a row, so that the stage's
// fill (consecutive threads on consecutive channels k of one output o) hits distinct banks.
template <typename T>
constexpr int kStageK = 16 * 4 / static_cast<int>(sizeof(T));
constexpr int kStageLd = kMaxWidth + 1;

// The type products accumulate in: float for the half types.
template <typename T>
using AccumulateOf = typename std::conditional<kUsesTensorCores<T>, float, T>::type;

// The launch bounds of a kernel of tiles: kTileThreads threads, and the registers that
// `min_blocks` blocks per multiprocessor allow.  IK_TILE_KERNEL_BOUNDS: one block.
#define IK_TILE_LAUNCH_BOUNDS(min_blocks) __launch_bounds__(::ik::cuda::kTileThreads, min_blocks)
#define IK_TILE_KERNEL_BOUNDS IK_TILE_LAUNCH_BOUNDS(1)

// Row stride of shared activation tiles whose widths are at most `width`: 8 elements more,
// so that the 16 rows of a WMMA fragment load fall in different shared-memory banks.
IK_HD int tile_ld(int width) { return width + 8; }

// `bytes` rounded up to an offset into the dynamic shared memory where any tile may start
// (WMMA needs 256-bit aligned pointers; IK_DYNAMIC_SHARED 16-byte offsets).
IK_HD int64_t shared_align(int64_t bytes) { return (bytes + 127) / 128 * 128; }

// One Linear layer of a tile MLP: weight (n_out, n_in) row-major, bias (n_out).
template <typename T>
struct TileLayer {
  GlobalPtr<const T> w, b;
  int n_in, n_out;
};

namespace detail {

// SIMT product: warp y of the block takes rows 4y..4y+3, lane x the output channels
// x, x + 32, ... (at most kMaxWidth / 32 of them), all kept in registers.
template <typename T>
__device__ void tile_linear_simt(SharedPtr<const T> in, int ld_in, GlobalPtr<const T> w,
                                 bool w_transposed, int n_in, int n_out, SharedPtr<T> out,
                                 int ld_out) {
  constexpr int kRowsPerWarp = kTileRows / (kTileThreads / kWarp);
  constexpr int kColsPerLane = kMaxWidth / kWarp;
  constexpr int kStep = kStageK<T>;
  IK_SHARED(T, stage, kStep * kStageLd);  // stage[kk][o] = W(o, k0 + kk)
  const int lane = threadIdx.x % kWarp, row0 = (threadIdx.x / kWarp) * kRowsPerWarp;
  T acc[kRowsPerWarp][kColsPerLane];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
#pragma unroll
    for (int j = 0; j < kColsPerLane; ++j) acc[i][j] = T(0);
  }
  for (int k0 = 0; k0 < n_in; k0 += kStep) {
    const int steps = n_in - k0 < kStep ? n_in - k0 : kStep;
    for (int e = threadIdx.x; e < steps * n_out; e += kTileThreads) {
      // Consecutive threads read consecutive addresses of either layout.
      int kk, o;
      if (w_transposed) {
        kk = e / n_out;
        o = e - kk * n_out;
        stage[kk * kStageLd + o] = w[static_cast<int64_t>(k0 + kk) * n_out + o];
      } else {
        o = e / steps;
        kk = e - o * steps;
        stage[kk * kStageLd + o] = w[static_cast<int64_t>(o) * n_in + k0 + kk];
      }
    }
    __syncthreads();
    for (int kk = 0; kk < steps; ++kk) {
      T x[kRowsPerWarp];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) x[i] = in[(row0 + i) * ld_in + k0 + kk];
#pragma unroll
      for (int j = 0; j < kColsPerLane; ++j) {
        const int o = lane + j * kWarp;
        if (o < n_out) {
          const T wo = stage[kk * kStageLd + o];
#pragma unroll
          for (int i = 0; i < kRowsPerWarp; ++i) acc[i][j] += x[i] * wo;
        }
      }
    }
    __syncthreads();  // the stage is refilled next step
  }
#pragma unroll
  for (int j = 0; j < kColsPerLane; ++j) {
    const int o = lane + j * kWarp;
    if (o < n_out) {
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) out[(row0 + i) * ld_out + o] = acc[i][j];
    }
  }
  __syncthreads();
}

// Tensor-core product: warp y takes row tile y % 2 (16 rows) and the 16-column tiles
// y / 2, y / 2 + 4, ... (at most kMaxWidth / 64 of them), accumulating in fragments.
// B = Wᵀ (n_in × n_out): column-major with ldm = n_in for a Linear's (out, in) weight,
// row-major with ldm = n_out for the transposed layout.
template <typename T, typename BLayout>
__device__ void tile_linear_wmma(SharedPtr<const T> in, int ld_in, GlobalPtr<const T> w, int n_in,
                                 int n_out, SharedPtr<float> out, int ld_out) {
  namespace wmma = nvcuda::wmma;
  constexpr int kRowTiles = kTileRows / 16;
  constexpr int kColStride = kTileThreads / kWarp / kRowTiles;
  constexpr int kTilesPerWarp = kMaxWidth / 16 / kColStride;
  constexpr bool kTransposed = std::is_same<BLayout, wmma::row_major>::value;
  const int warp = threadIdx.x / kWarp, row_tile = warp % kRowTiles;
  const int col0 = warp / kRowTiles, col_tiles = n_out / 16;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kTilesPerWarp];
#pragma unroll
  for (int m = 0; m < kTilesPerWarp; ++m) wmma::fill_fragment(acc[m], 0.0f);
  if (col0 < col_tiles) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> b;
    for (int k = 0; k < n_in; k += 16) {
      wmma::load_matrix_sync(a, in + row_tile * 16 * ld_in + k, ld_in);
#pragma unroll
      for (int m = 0; m < kTilesPerWarp; ++m) {
        const int col = (col0 + m * kColStride) * 16;
        if (col < n_out) {
          if (kTransposed) {
            wmma::load_matrix_sync(b, w + static_cast<int64_t>(k) * n_out + col, n_out);
          } else {
            wmma::load_matrix_sync(b, w + static_cast<int64_t>(col) * n_in + k, n_in);
          }
          wmma::mma_sync(acc[m], a, b, acc[m]);
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kTilesPerWarp; ++m) {
    const int col = (col0 + m * kColStride) * 16;
    if (col < n_out) {
      wmma::store_matrix_sync(out + row_tile * 16 * ld_out + col, acc[m], ld_out,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
}

}  // namespace detail

// out[r][o] = Σ_k in[r][k]·W(o, k) for r < kTileRows, o < n_out, k < n_in: W(o, k) =
// w[o·n_in + k] (a Linear's (out, in) weight) or, with w_transposed, w[k·n_out + o].
// in: kTileRows × ld_in, out: kTileRows × ld_out; n_in, n_out multiples of kWidthAlign,
// n_out ≤ kMaxWidth.
template <typename T, typename Acc>
__device__ void tile_linear(SharedPtr<const T> in, int ld_in, GlobalPtr<const T> w,
                            bool w_transposed, int n_in, int n_out, SharedPtr<Acc> out,
                            int ld_out) {
  static_assert(std::is_same<Acc, AccumulateOf<T>>::value, "Acc must be AccumulateOf<T>");
  if constexpr (kUsesTensorCores<T>) {
    if (w_transposed) {
      detail::tile_linear_wmma<T, nvcuda::wmma::row_major>(in, ld_in, w, n_in, n_out, out, ld_out);
    } else {
      detail::tile_linear_wmma<T, nvcuda::wmma::col_major>(in, ld_in, w, n_in, n_out, out, ld_out);
    }
  } else {
    detail::tile_linear_simt<T>(in, ld_in, w, w_transposed, n_in, n_out, out, ld_out);
  }
}

// act[r][o] = T(relu?(acc[r][o] + bias[o])) for r < kTileRows, o < n; bias may be null.
template <typename T, typename Acc>
__device__ void tile_bias_act(SharedPtr<const Acc> acc, int ld_acc, GlobalPtr<const T> bias,
                              bool relu, int n, SharedPtr<T> act, int ld_act) {
  for (int e = threadIdx.x; e < kTileRows * n; e += kTileThreads) {
    const int r = e / n, o = e - r * n;
    Acc x = acc[r * ld_acc + o];
    if (static_cast<bool>(bias)) x += static_cast<Acc>(bias[o]);
    if (relu && x < Acc(0)) x = Acc(0);
    act[r * ld_act + o] = static_cast<T>(x);
  }
  __syncthreads();
}

// dst[r·ld_dst + o] = T(src[r][o] + bias[o]) for r < rows, o < n (rows ≤ kTileRows; bias
// may be null), summed in AccumulateOf<T>: a tile's result rows to global memory.  Src: the
// accumulation type (an accumulator tile) or T (an activation tile).
template <typename T, typename Src>
__device__ void tile_store(SharedPtr<const Src> src, int ld_src, GlobalPtr<const T> bias, int rows,
                           int n, GlobalPtr<T> dst, int64_t ld_dst) {
  using Acc = AccumulateOf<T>;
  for (int e = threadIdx.x; e < rows * n; e += kTileThreads) {
    const int r = e / n, o = e - r * n;
    Acc x = static_cast<Acc>(static_cast<Src>(src[r * ld_src + o]));
    if (static_cast<bool>(bias)) x += static_cast<Acc>(bias[o]);
    dst[r * ld_dst + o] = static_cast<T>(x);
  }
  __syncthreads();
}

// The layers of `layers` (count of them) on the activations `act` (kTileRows × ld, T): a
// Linear + bias (+ ReLU for every layer if relu_last, else all but the last) each, through
// the accumulator tile `acc` (kTileRows × ld, Acc).  Layer l's output goes to
// act + (l + 1)·act_stride: with act_stride 0 each layer overwrites its input (a forward);
// with kTileRows·ld every activation stays in shared memory (a recompute for a backward).
// The last layer's output is left in `acc` (before its bias) when store_last is false.
template <typename T, typename Acc>
__device__ void tile_mlp_forward(const TileLayer<T>* layers, int count, bool relu_last,
                                 SharedPtr<T> act, int64_t act_stride, SharedPtr<Acc> acc, int ld,
                                 bool store_last) {
  for (int l = 0; l < count; ++l) {
    const TileLayer<T>& layer = layers[l];
    tile_linear<T, Acc>(act + l * act_stride, ld, layer.w, false, layer.n_in, layer.n_out, acc, ld);
    if (l + 1 < count || store_last) {
      tile_bias_act<T, Acc>(acc, ld, layer.b, l + 1 < count || relu_last, layer.n_out,
                            act + (l + 1) * act_stride, ld);
    }
  }
}

}  // namespace cuda
}  // namespace ik
