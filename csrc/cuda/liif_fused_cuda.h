// Launchers of the fused LIIF and LTE forward (csrc/cuda/liif_fused.cu): one kernel per
// call, a block per tile of queries (kTileRows member rows: every member of
// kTileRows / 4 queries) that finds the queries' local-ensemble members, forms the MLP's
// input (LIIF: the split first layer from the projection `proj`; LTE: the Fourier
// features of `coef` and `freq`), runs the MLP with its activations in shared memory, and
// writes the area-weighted sum of the 4 predictions once.  Raw pointers, sizes and a
// stream, no ATen; the tensor glue is csrc/cuda/liif_fused_glue.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ik/liif_decode.h"
#include "launch.h"
#include "tile_sizes.h"

namespace ik {
namespace liif {

// The fused forward takes MLPs of at most cuda::kMaxLayers Linear layers after the input
// step, every width padded to cuda::kWidthAlign and at most cuda::kMaxWidth (tile_sizes.h);
// others take the unfused path.

// The MLP after the input step, zero-padded: layer l's weight is (width[l + 1], width[l])
// row-major and its bias (width[l + 1]), every width a multiple of cuda::kWidthAlign, so
// padded channels stay exactly 0 through the ReLUs.  ReLU between layers, none after the
// last; `out` is the last layer's unpadded width (the output's).
struct FusedMlp {
  const void* weight[cuda::kMaxLayers];
  const void* bias[cuda::kMaxLayers];
  int width[cuda::kMaxLayers + 1];
  int layers;
  int out;
};

// The queries of one call: coord, cell (n x 2, the maps' type; cell unscaled), n = B·Q
// over the maps' `dims`.
struct FusedQueries {
  const void* coord;
  const void* cell;
  int64_t n;
  Dims dims;
};

// LIIF: out (n x mlp.out) from proj (B·h·w x d), w_rc (d x 4) and b0 (d), the first
// layer's parts (docs/liif-lte.md, "Split first layer"), ReLU, then `mlp` (width[0] =
// d padded).
cudaError_t launch_liif_fused(const void* proj, int64_t d, const void* w_rc, const void* b0,
                              const FusedQueries& queries, const FusedMlp& mlp, DType type,
                              void* out, cudaStream_t stream);

// LTE: out (n x mlp.out) from coef, freq (B·h·w x 2m) and phase_w (m x 2), the Fourier
// features (ik/lte_decode.h), then `mlp` (width[0] = 2m padded).
cudaError_t launch_lte_fused(const void* coef, const void* freq, int64_t m, const void* phase_w,
                             const FusedQueries& queries, const FusedMlp& mlp, DType type,
                             void* out, cudaStream_t stream);

}  // namespace liif
}  // namespace ik
