// The fused DIIF decode's backward (docs/diif.md, "The fused CUDA backward"): two kernels,
// each per tile of kTileRows rows, that recompute their tile's activations layer by layer
// in shared memory and carry the gradient back through the layers on chip.  Weight
// gradients are left to the caller as GEMMs over the per-row buffers the kernels write
// (each layer's input activation and output gradient); a layer's ReLU mask is read back
// from its input's buffer, so a block holds two tiles whatever the depth.
//   fine kernel   (pixels):            z = blend(G) -> fine layers -> back to grad_z;
//                                      grad_G[slice·V + t] += w_t grad_z (atomics)
//   coarse kernel (slice-vertex rows): pre = corner_proj[corner] + w_coord·coords + b0
//                                      -> coarse layers -> H; grad_H = grad_G·fine_wh;
//                                      back to grad_pre
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "diif_fused_backward_cuda.h"
#include "diif_tiles.h"

namespace ik {
namespace diif {
namespace {

using cuda::AccumulateOf;
using cuda::global;
using cuda::GlobalPtr;
using cuda::kMaxWidth;
using cuda::kTileRows;
using cuda::kTileThreads;
using cuda::kWidthAlign;
using cuda::SharedPtr;
using cuda::tile_bias_act;
using cuda::tile_linear;

// A chain's packed parameters (ChainShape), on the device.
template <typename T>
struct Chain {
  GlobalPtr<const T> weights, biases;
  int layers;
};

// FineBackwardCall with typed, sized arrays (Acc: the accumulation type); the first
// layer's inputs as the fused forward's fine kernel takes them (its layers unused).
template <typename T, typename Acc>
struct FineArgs {
  FineTiles<T> first;
  GlobalPtr<const T> grad_out;
  int64_t out_dim;
  int ld;  // the shared tiles' row stride: the chain's widest layer
  GlobalPtr<T> acts, grads, grad_z;
  GlobalPtr<Acc> grad_g;
};

// CoarseBackwardCall with typed, sized arrays; the first layer's inputs as the fused
// forward's coarse kernel takes them (its layers unused).
template <typename T, typename Acc>
struct CoarseArgs {
  CoarseTiles<T> first;
  GlobalPtr<const Acc> grad_g;
  int ld;
  GlobalPtr<T> acts, grads, grad_pre;
};

// Dynamic shared memory: the activation tile (T), then at this aligned offset the
// accumulator tile (Acc), both kTileRows x ld.
template <typename T>
IK_HD int64_t accumulator_offset(int ld) {
  return cuda::shared_align(static_cast<int64_t>(kTileRows) * ld * sizeof(T));
}

template <typename T, typename Acc>
int64_t shared_bytes(int ld) {
  return accumulator_offset<T>(ld) + static_cast<int64_t>(kTileRows) * ld * sizeof(Acc);
}

// The place of a chain's layer j in the packed parameters and the per-row buffers.
struct LayerAt {
  int64_t in, out;    // padded widths
  int64_t weight;     // offset of its (out, in) weight in the packed weights
  int64_t bias;       // offset of its bias in the packed biases
  int64_t act, grad;  // offsets of its (rows, in) input and (rows, out) output gradient
};

__device__ inline LayerAt layer_at(SharedPtr<const int> widths, int j, int64_t rows) {
  LayerAt at{0, 0, 0, 0, 0, 0};
  for (int i = 0; i < j; ++i) {
    const int64_t in = widths[i], out = widths[i + 1];
    at.weight += out * in;
    at.bias += out;
    at.act += rows * in;
    at.grad += rows * out;
  }
  at.in = widths[j];
  at.out = widths[j + 1];
  return at;
}

// The chain's widths in shared memory, for indexing by a run-time layer (constant indices
// into the parameter keep it out of local memory).
__device__ inline void load_widths(const ChainShape& shape, SharedPtr<int> widths) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int j = 0; j <= kMaxChainLayers; ++j) {
      if (j <= shape.layers) widths[j] = shape.width[j];
    }
  }
  __syncthreads();
}

// A tile's rows: row0 .. row0 + valid of `rows`.
struct Tile {
  int64_t row0, rows;
  int valid;
};

__device__ inline Tile tile_of_block(int64_t rows) {
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t left = rows - row0;
  return {row0, rows, static_cast<int>(left < kTileRows ? left : kTileRows)};
}

// Copies the tile's valid rows of `act` (width columns) to rows row0.. of the (rows, width)
// block of `out` at `offset`.
template <typename T>
__device__ inline void store_rows(SharedPtr<const T> act, int ld, int64_t width, const Tile& tile,
                                  GlobalPtr<T> out, int64_t offset) {
  for (int64_t e = threadIdx.x; e < tile.valid * width; e += kTileThreads) {
    const int64_t r = e / width, k = e - r * width;
    out[offset + (tile.row0 + r) * width + k] = act[r * ld + k];
  }
}

// Forward through layers 0 .. L-2 of the chain (the last layer's output is never needed):
// `act` holds the tile's relu'd input of layer 0 on entry; every layer's input is stored in
// `acts`.  Every layer but the last is Linear + ReLU.
template <typename T, typename Acc>
__device__ void chain_forward(const Chain<T>& chain, SharedPtr<const int> widths, const Tile& tile,
                              SharedPtr<T> act, SharedPtr<Acc> acc, int ld, GlobalPtr<T> acts) {
  for (int j = 0; j < chain.layers; ++j) {
    const LayerAt l = layer_at(widths, j, tile.rows);
    store_rows<T>(act, ld, l.in, tile, acts, l.act);
    if (j + 1 == chain.layers) break;
    tile_linear<T, Acc>(act, ld, chain.weights + l.weight, false, l.in, l.out, acc, ld);
    tile_bias_act<T, Acc>(acc, ld, chain.biases + l.bias, true, l.out, act, ld);
  }
  __syncthreads();  // the last store's reads of `act` before the caller overwrites it
}

// Backward through every layer of the chain: `g` holds the gradient of the last layer's
// output on entry; each layer's output gradient is stored in `grads` (the last layer's
// only with `store_last`); on return `acc` holds the gradient of layer 0's pre-ReLU input
// (zero on rows past the tile's end).  Layer j's ReLU mask is its stored input > 0.
template <typename T, typename Acc>
__device__ void chain_backward(const Chain<T>& chain, SharedPtr<const int> widths, const Tile& tile,
                               bool store_last, SharedPtr<T> g, SharedPtr<Acc> acc, int ld,
                               GlobalPtr<const T> acts, GlobalPtr<T> grads) {
  for (int j = chain.layers - 1; j >= 0; --j) {
    const LayerAt l = layer_at(widths, j, tile.rows);
    if (store_last || j + 1 < chain.layers) store_rows<T>(g, ld, l.out, tile, grads, l.grad);
    // grad_in = grad_out·W, then masked by the ReLU of the layer's input.
    tile_linear<T, Acc>(g, ld, chain.weights + l.weight, true, l.out, l.in, acc, ld);
    for (int64_t e = threadIdx.x; e < kTileRows * l.in; e += kTileThreads) {
      const int64_t r = e / l.in, k = e - r * l.in;
      bool on = false;
      if (r < tile.valid) on = static_cast<Acc>(acts[l.act + (tile.row0 + r) * l.in + k]) > Acc(0);
      const Acc v = on ? static_cast<Acc>(acc[r * ld + k]) : Acc(0);
      if (j > 0) {
        g[r * ld + k] = static_cast<T>(v);
      } else {
        acc[r * ld + k] = v;
      }
    }
    __syncthreads();
  }
}

template <typename T, typename Acc>
__global__ void IK_TILE_LAUNCH_BOUNDS(2)
    fine_backward_kernel(FineArgs<T, Acc> a, Chain<T> chain, ChainShape shape) {
  IK_SHARED(int, widths, kMaxChainLayers + 1);
  IK_SHARED(int64_t, first_row, kTileRows);  // the pixel's slice's first vertex row
  IK_SHARED(Acc, vertex_weight, kTileRows * kVertices);
  IK_DYNAMIC_SHARED(T, act, 0, kTileRows * a.ld);
  IK_DYNAMIC_SHARED(Acc, acc, accumulator_offset<T>(a.ld), kTileRows * a.ld);
  load_widths(shape, widths);
  const Tile tile = tile_of_block(a.first.n);
  const int v = vertex_count(a.first.dims);
  if (static_cast<int>(threadIdx.x) < tile.valid) {
    const int64_t p = tile.row0 + threadIdx.x;
    Acc offset[2], weight[kVertices] = {};
    pixel_offset_weights<Acc>(a.first.pixels[2 * p], a.first.pixels[2 * p + 1], a.first.dims,
                              offset, weight);
    first_row[threadIdx.x] = a.first.slice_of[p] * v;
#pragma unroll
    for (int t = 0; t < kVertices; ++t) vertex_weight[threadIdx.x * kVertices + t] = weight[t];
  }
  fine_tile_input<T>(a.first, tile.row0, act, acc, a.ld);  // relu(z)
  chain_forward<T, Acc>(chain, widths, tile, act, acc, a.ld, a.acts);
  // The incoming gradient, zero-padded.
  const int64_t out = widths[chain.layers];
  for (int64_t e = threadIdx.x; e < kTileRows * out; e += kTileThreads) {
    const int64_t r = e / out, k = e - r * out;
    act[r * a.ld + k] = r < tile.valid && k < a.out_dim
                            ? a.grad_out[(tile.row0 + r) * a.out_dim + k]
                            : static_cast<T>(0.0f);
  }
  __syncthreads();
  chain_backward<T, Acc>(chain, widths, tile, true, act, acc, a.ld, a.acts, a.grads);
  const int64_t df = widths[0];
  for (int64_t e = threadIdx.x; e < tile.valid * df; e += kTileThreads) {
    const int64_t r = e / df, j = e - r * df;
    a.grad_z[(tile.row0 + r) * df + j] = static_cast<T>(acc[r * a.ld + j]);
  }
  // Each pixel's share w_t·grad_z of every vertex row of its slice: one thread per channel
  // and vertex walks the tile's pixels in order and sums a run of pixels of one slice
  // (a slice's pixels are consecutive in a raster decode) before its one atomic add.
  for (int64_t e = threadIdx.x; e < v * df; e += kTileThreads) {
    const int64_t t = e / df, j = e - t * df;
    int64_t row = first_row[0];
    Acc sum = Acc(0);
    for (int r = 0; r < tile.valid; ++r) {
      if (first_row[r] != row) {
        atomicAdd(&a.grad_g[(row + t) * df + j], sum);
        row = first_row[r];
        sum = Acc(0);
      }
      sum += vertex_weight[r * kVertices + t] * static_cast<Acc>(acc[r * a.ld + j]);
    }
    atomicAdd(&a.grad_g[(row + t) * df + j], sum);
  }
}

template <typename T, typename Acc>
__global__ void IK_TILE_LAUNCH_BOUNDS(2)
    coarse_backward_kernel(CoarseArgs<T, Acc> a, Chain<T> chain, ChainShape shape) {
  IK_SHARED(int, widths, kMaxChainLayers + 1);
  IK_DYNAMIC_SHARED(T, act, 0, kTileRows * a.ld);
  IK_DYNAMIC_SHARED(Acc, acc, accumulator_offset<T>(a.ld), kTileRows * a.ld);
  load_widths(shape, widths);
  const Tile tile = tile_of_block(a.first.rows);
  coarse_tile_input<T>(a.first, tile.row0, act, a.ld);  // relu(pre)
  chain_forward<T, Acc>(chain, widths, tile, act, acc, a.ld, a.acts);
  // grad_G, the gradient of the chain's last layer (fine_wh), in T.
  const int64_t df = widths[chain.layers];
  for (int64_t e = threadIdx.x; e < kTileRows * df; e += kTileThreads) {
    const int64_t r = e / df, k = e - r * df;
    act[r * a.ld + k] =
        static_cast<T>(r < tile.valid ? a.grad_g[(tile.row0 + r) * df + k] : Acc(0));
  }
  __syncthreads();
  chain_backward<T, Acc>(chain, widths, tile, false, act, acc, a.ld, a.acts, a.grads);
  const int64_t width = a.first.corner_width;
  for (int64_t e = threadIdx.x; e < tile.valid * width; e += kTileThreads) {
    const int64_t r = e / width, c = e - r * width;
    a.grad_pre[(tile.row0 + r) * width + c] = static_cast<T>(acc[r * a.ld + c]);
  }
}

template <typename T>
Chain<T> chain_of(const ChainParams& p, const ChainShape& shape) {
  return {global(static_cast<const T*>(p.weights), chain_weight_count(shape)),
          global(static_cast<const T*>(p.biases), chain_bias_count(shape)), shape.layers};
}

// Whether the kernels take the chain: 1 .. kMaxChainLayers layers, widths padded and at
// most kMaxWidth.
bool chain_fits(const ChainShape& shape) {
  if (shape.layers < 1 || shape.layers > kMaxChainLayers) return false;
  for (int j = 0; j <= shape.layers; ++j) {
    const int w = shape.width[j];
    if (w < kWidthAlign || w > kMaxWidth || w % kWidthAlign != 0) return false;
  }
  return true;
}

unsigned int tiles_for(int64_t rows) {
  return static_cast<unsigned int>((rows + kTileRows - 1) / kTileRows);
}

// The first layers' inputs as the fused forward's kernels take them (diif_tiles.h).
template <typename T>
FineTiles<T> fine_first(const FineBackwardCall& c, int width) {
  FineTiles<T> p{};
  p.n = c.n;
  p.dims = c.dims;
  p.pixels = global(c.pixels, 2 * c.n);
  p.slice_of = global(c.slice_of, c.n);
  p.width = width;
  p.hidden_blend = false;
  p.vertex_rows = global(static_cast<const T*>(c.g), c.slice_rows * width);
  p.wd = global(static_cast<const T*>(c.wd), int64_t(width) * 2);
  p.b0 = global(static_cast<const T*>(c.b0), int64_t(width));
  return p;
}

template <typename T>
CoarseTiles<T> coarse_first(const CoarseBackwardCall& c, int width) {
  using Acc = AccumulateOf<T>;
  CoarseTiles<T> p{};
  p.rows = c.rows;
  p.coords = global(static_cast<const Acc*>(c.coords), c.rows * kCoordInputs);
  p.corners = global(c.corners, c.rows);
  p.corner_proj = global(static_cast<const T*>(c.corner_proj), c.corner_rows * c.width);
  p.corner_width = static_cast<int>(c.width);
  p.width = width;
  p.w_coord = global(static_cast<const T*>(c.w_coord), int64_t(width) * kCoordInputs);
  p.b0 = global(static_cast<const T*>(c.b0), int64_t(width));
  return p;
}

template <typename T, typename Acc>
cudaError_t fine_backward_as(const FineBackwardCall& c, const ChainShape& shape,
                             const ChainParams& params, cudaStream_t stream) {
  const int ld = cuda::tile_ld(chain_widest(shape));
  const int64_t z_width = shape.width[0];
  const FineArgs<T, Acc> a{fine_first<T>(c, shape.width[0]),
                           global(static_cast<const T*>(c.grad_out), c.n * c.out_dim),
                           c.out_dim,
                           ld,
                           global(static_cast<T*>(c.acts), chain_act_count(shape, c.n)),
                           global(static_cast<T*>(c.grads), chain_grad_count(shape, c.n, true)),
                           global(static_cast<T*>(c.grad_z), c.n * z_width),
                           global(static_cast<Acc*>(c.grad_g), c.slice_rows * z_width)};
  const int64_t bytes = shared_bytes<T, Acc>(ld);
  cudaError_t err =
      cudaFuncSetAttribute(fine_backward_kernel<T, Acc>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  IK_LAUNCH(tiles_for(c.n), kTileThreads, bytes, stream, fine_backward_kernel<T, Acc>)(
      a, chain_of<T>(params, shape), shape);
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t coarse_backward_as(const CoarseBackwardCall& c, const ChainShape& shape,
                               const ChainParams& params, cudaStream_t stream) {
  const int ld = cuda::tile_ld(chain_widest(shape));
  const int64_t g_width = shape.width[shape.layers];
  const CoarseArgs<T, Acc> a{
      coarse_first<T>(c, shape.width[0]),
      global(static_cast<const Acc*>(c.grad_g), c.rows * g_width),
      ld,
      global(static_cast<T*>(c.acts), chain_act_count(shape, c.rows)),
      global(static_cast<T*>(c.grads), chain_grad_count(shape, c.rows, false)),
      global(static_cast<T*>(c.grad_pre), c.rows * c.width)};
  const int64_t bytes = shared_bytes<T, Acc>(ld);
  cudaError_t err =
      cudaFuncSetAttribute(coarse_backward_kernel<T, Acc>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  IK_LAUNCH(tiles_for(c.rows), kTileThreads, bytes, stream, coarse_backward_kernel<T, Acc>)(
      a, chain_of<T>(params, shape), shape);
  return cudaGetLastError();
}

}  // namespace

int64_t chain_weight_count(const ChainShape& shape) {
  int64_t count = 0;
  for (int j = 0; j < shape.layers; ++j)
    count += static_cast<int64_t>(shape.width[j + 1]) * shape.width[j];
  return count;
}

int64_t chain_bias_count(const ChainShape& shape) {
  int64_t count = 0;
  for (int j = 0; j < shape.layers; ++j) count += shape.width[j + 1];
  return count;
}

int64_t chain_act_count(const ChainShape& shape, int64_t rows) {
  int64_t count = 0;
  for (int j = 0; j < shape.layers; ++j) count += shape.width[j];
  return rows * count;
}

int64_t chain_grad_count(const ChainShape& shape, int64_t rows, bool with_last) {
  return rows * chain_bias_count(shape) - (with_last ? 0 : rows * shape.width[shape.layers]);
}

int chain_widest(const ChainShape& shape) {
  int widest = 0;
  for (int j = 0; j <= shape.layers; ++j)
    widest = shape.width[j] > widest ? shape.width[j] : widest;
  return widest;
}

cudaError_t launch_fine_backward(const FineBackwardCall& call, const ChainShape& shape,
                                 const ChainParams& chain, DType type, cudaStream_t stream) {
  if (!chain_fits(shape)) return cudaErrorInvalidValue;
  if (call.n == 0) return cudaSuccess;
  IK_DISPATCH_DTYPE(type, fine_backward_as, call, shape, chain, stream);
}

cudaError_t launch_coarse_backward(const CoarseBackwardCall& call, const ChainShape& shape,
                                   const ChainParams& chain, DType type, cudaStream_t stream) {
  if (!chain_fits(shape)) return cudaErrorInvalidValue;
  if (call.rows == 0) return cudaSuccess;
  IK_DISPATCH_DTYPE(type, coarse_backward_as, call, shape, chain, stream);
}

}  // namespace diif
}  // namespace ik
