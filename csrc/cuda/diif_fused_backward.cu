// The fused DIIF decode's backward (docs/diif.md, "The fused CUDA backward"): two kernels,
// each per tile of kTileRows rows, that recompute their tile's activations, keep them in
// shared memory and carry the gradient back through the layers on chip.  Weight gradients
// are left to the caller as GEMMs over the per-row buffers the kernels write (each layer's
// input activation and output gradient).
//   fine kernel   (pixels):            z = blend(G) -> fine layers -> back to grad_z;
//                                      grad_G[slice·V + t] += w_t grad_z (atomics)
//   coarse kernel (slice-vertex rows): pre = corner_proj[corner] + w_coord·coords + b0
//                                      -> coarse layers -> H; grad_H = grad_G·fine_wh;
//                                      back to grad_pre
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "diif_fused_backward_cuda.h"
#include "tile_mlp.h"

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

// FineBackwardCall with typed, sized arrays (Acc: the accumulation type).
template <typename T, typename Acc>
struct FineArgs {
  GlobalPtr<const int64_t> pixels, slice_of;
  int64_t n;
  Dims dims;
  GlobalPtr<const T> g;  // (S·V, width[0])
  GlobalPtr<const T> wd, b0, grad_out;
  int64_t out_dim;
  int ld;  // the shared tiles' row stride: the chain's widest layer
  GlobalPtr<T> acts, grads, grad_z;
  GlobalPtr<Acc> grad_g;
};

// CoarseBackwardCall with typed, sized arrays.
template <typename T, typename Acc>
struct CoarseArgs {
  GlobalPtr<const T> corner_proj;
  int64_t width;  // corner_proj's, unpadded
  GlobalPtr<const int64_t> corners;
  GlobalPtr<const Acc> coords;
  int64_t rows;
  GlobalPtr<const T> w_coord, b0;  // (width[0], kCoordInputs), (width[0],)
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
__global__ void IK_TILE_KERNEL_BOUNDS fine_backward_kernel(FineArgs<T, Acc> a, Chain<T> chain,
                                                           ChainShape shape) {
  IK_SHARED(int, widths, kMaxChainLayers + 1);
  IK_SHARED(int64_t, block, kTileRows);
  IK_SHARED(Acc, geometry, kTileRows * 6);
  IK_DYNAMIC_SHARED(T, act, 0, kTileRows * a.ld);
  IK_DYNAMIC_SHARED(Acc, acc, accumulator_offset<T>(a.ld), kTileRows * a.ld);
  load_widths(shape, widths);
  const Tile tile = tile_of_block(a.n);
  const int v = vertex_count(a.dims);
  if (static_cast<int>(threadIdx.x) < tile.valid) {
    const int64_t p = tile.row0 + threadIdx.x;
    Acc offset[2], weight[4];
    pixel_offset_weights<Acc>(a.pixels[2 * p], a.pixels[2 * p + 1], a.dims, offset, weight);
    block[threadIdx.x] = a.slice_of[p] * v;
    geometry[threadIdx.x * 6] = offset[0];
    geometry[threadIdx.x * 6 + 1] = offset[1];
#pragma unroll
    for (int t = 0; t < kVertices; ++t) {
      if (t < v) geometry[threadIdx.x * 6 + 2 + t] = weight[t];
    }
  }
  __syncthreads();
  // relu(z), z = b0 + wd·d + Σ_t w_t G[slice·V + t] (docs/diif.md, equal form 3).
  const int64_t df = widths[0];
  for (int64_t e = threadIdx.x; e < kTileRows * df; e += kTileThreads) {
    const int64_t r = e / df, j = e - r * df;
    Acc z = Acc(0);
    if (r < tile.valid) {
      z = static_cast<Acc>(a.b0[j]) + static_cast<Acc>(a.wd[2 * j]) * geometry[r * 6] +
          static_cast<Acc>(a.wd[2 * j + 1]) * geometry[r * 6 + 1];
      for (int t = 0; t < v; ++t)
        z += geometry[r * 6 + 2 + t] * static_cast<Acc>(a.g[(block[r] + t) * df + j]);
    }
    act[r * a.ld + j] = static_cast<T>(z > Acc(0) ? z : Acc(0));
  }
  __syncthreads();
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
  for (int64_t e = threadIdx.x; e < tile.valid * df; e += kTileThreads) {
    const int64_t r = e / df, j = e - r * df;
    a.grad_z[(tile.row0 + r) * df + j] = static_cast<T>(acc[r * a.ld + j]);
  }
  // Each pixel's share w_t·grad_z of every vertex row of its slice: one thread per channel
  // and vertex walks the tile's pixels in order and sums a run of pixels of one slice
  // (a slice's pixels are consecutive in a raster decode) before its one atomic add.
  for (int64_t e = threadIdx.x; e < v * df; e += kTileThreads) {
    const int64_t t = e / df, j = e - t * df;
    int64_t row = block[0];
    Acc sum = Acc(0);
    for (int r = 0; r < tile.valid; ++r) {
      if (block[r] != row) {
        atomicAdd(&a.grad_g[(row + t) * df + j], sum);
        row = block[r];
        sum = Acc(0);
      }
      sum += geometry[r * 6 + 2 + t] * static_cast<Acc>(acc[r * a.ld + j]);
    }
    atomicAdd(&a.grad_g[(row + t) * df + j], sum);
  }
}

template <typename T, typename Acc>
__global__ void IK_TILE_KERNEL_BOUNDS coarse_backward_kernel(CoarseArgs<T, Acc> a, Chain<T> chain,
                                                             ChainShape shape) {
  IK_SHARED(int, widths, kMaxChainLayers + 1);
  IK_SHARED(int64_t, corner, kTileRows);
  IK_SHARED(Acc, coords, kTileRows * kCoordInputs);
  IK_DYNAMIC_SHARED(T, act, 0, kTileRows * a.ld);
  IK_DYNAMIC_SHARED(Acc, acc, accumulator_offset<T>(a.ld), kTileRows * a.ld);
  load_widths(shape, widths);
  const Tile tile = tile_of_block(a.rows);
  if (static_cast<int>(threadIdx.x) < tile.valid) {
    const int64_t r = tile.row0 + threadIdx.x;
    corner[threadIdx.x] = a.corners[r];
    for (int k = 0; k < kCoordInputs; ++k)
      coords[threadIdx.x * kCoordInputs + k] = a.coords[r * kCoordInputs + k];
  }
  __syncthreads();
  // relu(pre), pre = (b0 + w_coord·coords) + corner_proj[corner] (as the CPU operator).
  const int64_t width = widths[0];
  for (int64_t e = threadIdx.x; e < kTileRows * width; e += kTileThreads) {
    const int64_t r = e / width, c = e - r * width;
    Acc pre = Acc(0);
    if (r < tile.valid) {
      pre = static_cast<Acc>(a.b0[c]);
      for (int k = 0; k < kCoordInputs; ++k)
        pre += static_cast<Acc>(a.w_coord[c * kCoordInputs + k]) * coords[r * kCoordInputs + k];
      if (c < a.width) pre += static_cast<Acc>(a.corner_proj[corner[r] * a.width + c]);
    }
    act[r * a.ld + c] = static_cast<T>(pre > Acc(0) ? pre : Acc(0));
  }
  __syncthreads();
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
  for (int64_t e = threadIdx.x; e < tile.valid * a.width; e += kTileThreads) {
    const int64_t r = e / a.width, c = e - r * a.width;
    a.grad_pre[(tile.row0 + r) * a.width + c] = static_cast<T>(acc[r * a.ld + c]);
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

template <typename T, typename Acc>
cudaError_t fine_backward_as(const FineBackwardCall& c, const ChainShape& shape,
                             const ChainParams& params, cudaStream_t stream) {
  const int ld = cuda::tile_ld(chain_widest(shape));
  const int64_t z_width = shape.width[0], slices = c.slice_rows;
  const FineArgs<T, Acc> a{global(c.pixels, 2 * c.n),
                           global(c.slice_of, c.n),
                           c.n,
                           c.dims,
                           global(static_cast<const T*>(c.g), slices * z_width),
                           global(static_cast<const T*>(c.wd), 2 * z_width),
                           global(static_cast<const T*>(c.b0), z_width),
                           global(static_cast<const T*>(c.grad_out), c.n * c.out_dim),
                           c.out_dim,
                           ld,
                           global(static_cast<T*>(c.acts), chain_act_count(shape, c.n)),
                           global(static_cast<T*>(c.grads), chain_grad_count(shape, c.n, true)),
                           global(static_cast<T*>(c.grad_z), c.n * z_width),
                           global(static_cast<Acc*>(c.grad_g), slices * z_width)};
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
      global(static_cast<const T*>(c.corner_proj), c.corner_rows * c.width),
      c.width,
      global(c.corners, c.rows),
      global(static_cast<const Acc*>(c.coords), c.rows * kCoordInputs),
      c.rows,
      global(static_cast<const T*>(c.w_coord), shape.width[0] * kCoordInputs),
      global(static_cast<const T*>(c.b0), shape.width[0]),
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

// One launcher per kernel, dispatched on the decode's dtype.
#define IK_DISPATCH_DTYPE(type, F, ...)            \
  switch (type) {                                  \
    case DType::kFloat32:                          \
      return F<float, float>(__VA_ARGS__);         \
    case DType::kFloat64:                          \
      return F<double, double>(__VA_ARGS__);       \
    case DType::kFloat16:                          \
      return F<__half, float>(__VA_ARGS__);        \
    case DType::kBFloat16:                         \
      return F<__nv_bfloat16, float>(__VA_ARGS__); \
  }                                                \
  return cudaErrorInvalidValue

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
#undef IK_DISPATCH_DTYPE

}  // namespace diif
}  // namespace ik
