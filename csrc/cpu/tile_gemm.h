// Our own fp32 GEMM for the CPU tiles (tiles.h): c = act(a · wᵀ + bias) on a tile of a few
// hundred rows against a layer weight packed once per operator call.  On the AVX2 machines
// we measured, MKL's sgemm reaches ~85 % of the FMA peak on a 256 x 256 x 256 tile and the
// bias/ReLU pass after it costs more; this kernel reaches ~97 % with the bias and ReLU
// applied on its accumulators (bench/NOTES.md).  Where it does not apply (not fp32, a width
// above 16 not a multiple of 16, no AVX2/FMA) the packed weight is left undefined and the tile runs
// on ATen's GEMM.
#pragma once

#include <ATen/ATen.h>

namespace ik {

// Output columns per packed panel: two 8-lane vectors.
constexpr int64_t kPanelCols = 16;

// A weight w (out, in) in the kernel's layout: out / 16 panels, panel p holding columns
// 16p..16p+15 of wᵀ as (in, 16) row-major; for out < 16 (an RGB head, run as dot products
// per row) w itself; undefined where the kernel does not apply.
at::Tensor pack_tile_weight(const at::Tensor& w);

// c (rows, out) = act(a (rows, in) · wᵀ + bias) with w packed by pack_tile_weight (in
// columns of a): a's and c's rows are contiguous, `lda` and `ldc` apart;
// `bias` (out) may be null; `relu` as torch.relu (NaN stays NaN).
void tile_gemm(const float* a, int64_t lda, int64_t rows, int64_t in, const float* packed,
               int64_t out, const float* bias, bool relu, float* c, int64_t ldc);

}  // namespace ik
