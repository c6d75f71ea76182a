// Launchers of the fused DIIF backward's kernels (csrc/cuda/diif_fused_backward.cu): raw
// pointers, sizes and a stream, no ATen.  The tensor glue is
// csrc/cuda/diif_fused_backward_glue.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "diif_fused_cuda.h"
#include "ik/diif_decode.h"
#include "launch.h"

namespace ik {
namespace diif {

// Layers a chain may have: a fused stage's (the coarse chain adds fine_wh).
constexpr int kMaxChainLayers = cuda::kMaxLayers + 1;

// A chain of Linear layers, each taking a ReLU'd input: layer j maps width[j] to
// width[j + 1] features, widths padded to multiples of kWidthAlign (tile_sizes.h).  Its
// parameters are packed end to end, zero-padded: weights (width[j + 1], width[j]) row-major,
// biases (width[j + 1]).  The kernels' per-row buffers hold, end to end, every layer's
// input (rows, width[j]) ("acts") and every layer's output gradient (rows, width[j + 1])
// ("grads").
struct ChainShape {
  int layers;
  int width[kMaxChainLayers + 1];
};

struct ChainParams {
  const void* weights;
  const void* biases;
};

// Elements of the packed weights, packed biases, and acts and grads of `rows` rows
// (grads with or without the last layer's).
int64_t chain_weight_count(const ChainShape& shape);
int64_t chain_bias_count(const ChainShape& shape);
int64_t chain_act_count(const ChainShape& shape, int64_t rows);
int64_t chain_grad_count(const ChainShape& shape, int64_t rows, bool with_last);
// The widest layer.
int chain_widest(const ChainShape& shape);

// The fine stage's backward over n pixels.  The chain is the fine layers after the first;
// width[0] is the padded width of the first layer's output z.  Arrays of the decode's
// dtype unless said; "acc" is its accumulation type (float for half types).
struct FineBackwardCall {
  const int64_t* pixels;    // (n, 2)
  const int64_t* slice_of;  // (n,) each pixel's slice
  int64_t n, slice_rows;    // slice_rows = S·V, the rows of g and grad_g
  Dims dims;
  const void* g;         // (S·V, width[0]) G = fine_wh·H per slice and vertex
  const void* wd;        // (width[0], 2)
  const void* b0;        // (width[0],)
  const void* grad_out;  // (n, out_dim)
  int64_t out_dim;
  void* acts;    // the chain's layer inputs, the first relu(z)
  void* grads;   // the chain's output gradients
  void* grad_z;  // (n, width[0]) the gradient of z
  void* grad_g;  // (S·V, width[0]) acc, zero on entry: accumulates Σ_pixels w_t·grad_z
};

cudaError_t launch_fine_backward(const FineBackwardCall& call, const ChainShape& shape,
                                 const ChainParams& chain, DType type, cudaStream_t stream);

// The coarse stage's backward over the S·V slice-vertex rows.  The chain is the coarse
// layers then fine_wh (with zero biases: its output G is not recomputed); width[0] is the
// padded width of the first pre-activation.
struct CoarseBackwardCall {
  const void* corner_proj;  // (corner_rows, width) projected vertex codes, width unpadded
  int64_t corner_rows, width;
  const int64_t* corners;  // (rows,) each row's vertex in corner_proj
  const void* coords;      // (rows, kCoordInputs) acc
  int64_t rows;
  const void* w_coord;  // (width[0], kCoordInputs)
  const void* b0;       // (width[0],)
  const void* grad_g;   // (rows, width[layers]) acc
  void* acts;           // the chain's layer inputs: relu(pre), the coarse activations, H
  void* grads;          // the coarse layers' output gradients, without fine_wh's (grad_g)
  void* grad_pre;       // (rows, width) the gradient of the first pre-activation
};

cudaError_t launch_coarse_backward(const CoarseBackwardCall& call, const ChainShape& shape,
                                   const ChainParams& chain, DType type, cudaStream_t stream);

}  // namespace diif
}  // namespace ik
