// Launchers of the fused HIIF operators' CUDA kernels (csrc/cuda/hiif_kernels.cu): raw
// pointers, sizes and a stream, no ATen.  The tensor glue is csrc/cuda/hiif_kernels_glue.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ik/hiif_decode.h"
#include "launch.h"

namespace ik {
namespace hiif {

// Level 0's unnormalised sum u (n x hidden, of `type`) of n queries coord, cell (n x 2, of
// `type`; image = row / q) from maps (B x h x w x 4 x (hidden + 2)), row_sums (4 x hidden),
// w_extra (hidden x 4), all of `type`; rows (n x 4) and aux (n x kAuxWidth, in double for
// kFloat64, float otherwise).  public_centres: LR centres rounded as the public HIIF code
// does (level_codes="public"), in this and the launchers below.
cudaError_t launch_level0_sum(const void* maps, const void* row_sums, const void* w_extra,
                              const void* coord, const void* cell, int64_t n, int64_t q, int64_t h,
                              int64_t w, bool public_centres, int64_t hidden, int64_t channels,
                              DType type, void* u, int64_t* rows, void* aux, cudaStream_t stream);

// Normalised input y (n x (c + 2), of `type`) of a later level from x (n x c) and coord
// (n x 2), both of `type`; rstd (n, double for kFloat64, float otherwise).
cudaError_t launch_level_input(const void* x, const void* coord, int64_t n, int64_t c, int64_t h,
                               int64_t w, bool public_centres, int level, DType type, void* y,
                               void* rstd, cudaStream_t stream);

// bits (n x levels x 2) of coord (n x 2), both kFloat32 or kFloat64.
cudaError_t launch_codes(const void* coord, int64_t n, int64_t h, int64_t w, bool public_centres,
                         int levels, DType type, void* bits, cudaStream_t stream);

}  // namespace hiif
}  // namespace ik
