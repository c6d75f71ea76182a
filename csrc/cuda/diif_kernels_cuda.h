// Launchers of the fused DIIF decode's CUDA kernels (csrc/cuda/diif_kernels.cu): raw
// pointers, sizes and a stream, no ATen, so the .cu compiles with nvcc alone.  The
// tensor glue that calls them is csrc/cuda/diif_kernels_glue.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ik/diif_decode.h"
#include "launch.h"

namespace ik {
namespace diif {

// keys[p] = slice_key of pixel p (pixels: n x 2, image = p / q).
cudaError_t launch_slice_keys(const int64_t* pixels, int64_t n, int64_t q, Dims dims,
                              Slicing slicing, int64_t* keys, cudaStream_t stream);

// For s slice keys: coords (s * 4 x 6, of coord_type: kFloat32 or kFloat64) and corners
// (s * 4), see slice_inputs.
cudaError_t launch_slice_inputs(const int64_t* keys, int64_t s, Dims dims, Slicing slicing,
                                DType coord_type, void* coords, int64_t* corners,
                                cudaStream_t stream);

// z (n x df, of type) = blend of g (s * 4 x df) for pixels (n x 2) of slices slice_of (n),
// with wd (df x 2) and bias (df), all of `type`.
cudaError_t launch_blend(const int64_t* pixels, const int64_t* slice_of, int64_t n, Dims dims,
                         DType type, const void* g, int64_t df, const void* wd, const void* bias,
                         void* z, cudaStream_t stream);

// offsets (n x 2) and weights (n x 4), of type kFloat32 or kFloat64, of pixels (n x 2).
cudaError_t launch_offset_weights(const int64_t* pixels, int64_t n, Dims dims, DType type,
                                  void* offsets, void* weights, cudaStream_t stream);

}  // namespace diif
}  // namespace ik
