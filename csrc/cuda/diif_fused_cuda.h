// Launcher of the fused DIIF forward's CUDA kernels (csrc/cuda/diif_fused.cu): raw
// pointers, sizes and a stream, no ATen, so the .cu compiles with nvcc alone.  The tensor
// glue that calls it is csrc/cuda/diif_fused_glue.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ik/diif_decode.h"
#include "launch.h"
#include "tile_sizes.h"

namespace ik {
namespace diif {

// A Linear layer: weight (n_out, n_in), bias (n_out), of the decode's element type.
struct FusedLayer {
  const void* w;
  const void* b;
  int n_in, n_out;
};

// One call's inputs, every array contiguous, every width a multiple of 16 and at most 256
// (zero-padded weights and biases, see csrc/cuda/tile_mlp.h), of the element type `type`
// unless noted; R = slices × vertices slice-vertex rows, n pixels.
struct FusedForward {
  DType type;
  Dims dims;
  // Coarse stage, per slice-vertex row.
  int64_t rows;             // R
  const void* coords;       // (R, kCoordInputs), the accumulation type (float for halves)
  const int64_t* corners;   // (R,) rows of corner_proj
  const void* corner_proj;  // (corner_rows, corner_width), corner_width unpadded
  int64_t corner_rows;
  int corner_width;
  int width;            // first layer's padded width (≥ corner_width)
  const void* w_coord;  // (width, kCoordInputs)
  const void* b0;       // (width,)
  FusedLayer coarse[cuda::kMaxLayers];
  int coarse_count;
  const void* fine_wh;  // (fine_width, hidden), hidden the coarse stage's last width
  int hidden, fine_width;
  // Whether the pixels blend H (then multiply by fine_wh) instead of G = fine_wh·H: the
  // same map, cheaper when a call has fewer pixels than rows (docs/diif.md).
  bool hidden_blend;
  void* vertex_rows;  // workspace: (R, hidden) H with hidden_blend, else (R, fine_width) G
  // Fine stage, per pixel.
  int64_t n;
  const int64_t* pixels;    // (n, 2)
  const int64_t* slice_of;  // (n,) slice of each pixel
  const void* fine_wd;      // (fine_width, 2)
  const void* fine_b0;      // (fine_width,)
  FusedLayer fine[cuda::kMaxLayers];
  int fine_count;  // ≥ 1: the last layer has no ReLU
  void* out;       // (n, out_dim), out_dim ≤ the last layer's n_out
  int out_dim;
};

// The coarse kernel (slice-vertex rows -> g), then the fine kernel (pixels -> out); with
// n = 0 the coarse kernel alone (G for a backward's recompute, hidden_blend false).
cudaError_t launch_diif_fused_forward(const FusedForward& f, cudaStream_t stream);

}  // namespace diif
}  // namespace ik
