// Launchers of the fused LIIF and LTE decodes' CUDA kernels (csrc/cuda/liif_kernels.cu):
// raw pointers, sizes and a stream, no ATen, so the .cu compiles with nvcc alone.  The
// tensor glue that calls them is csrc/cuda/liif_kernels_glue.cpp.  Row layouts are those
// of csrc/liif_kernels.h; `type` is the storage type of the maps, parameters, coordinates
// and MLP rows, and the member inputs, weights and gradients the kernels write are in its
// accumulation type (float, or double for kFloat64).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ik/lte_decode.h"
#include "launch.h"

namespace ik {
namespace liif {

// index (4n), inputs (4n x 4) and weights (n x 4) of the n queries coord, cell (n x 2).
cudaError_t launch_members(const void* coord, const void* cell, int64_t n, Dims dims, DType type,
                           int64_t* index, void* inputs, void* weights, cudaStream_t stream);

// x (rows x d) = first layer of the member rows, from proj (pixels x d), w_rc (d x 4), b0 (d).
cudaError_t launch_liif_first_layer(const void* proj, const int64_t* index, const void* inputs,
                                    const void* w_rc, const void* b0, int64_t rows, int64_t d,
                                    bool relu, DType type, void* x, cudaStream_t stream);

// x (rows x 2m) = Fourier features from coef, freq (pixels x 2m) and phase_w (m x 2), with
// inputs (rows x (2 ends + 2)): `ends` offsets then the scaled cell (LTE 1, DLTE 2).
cudaError_t launch_lte_features(const void* coef, const void* freq, const void* phase_w,
                                const int64_t* index, const void* inputs, int ends, int64_t rows,
                                int64_t m, DType type, void* x, cudaStream_t stream);

// Backward of launch_lte_features from grad_x (rows x 2m): grad_coef, grad_freq (rows x 2m)
// and grad_phi (rows / 4 x m), summed over each query's members (DLTE: a slice's vertices).
cudaError_t launch_lte_features_backward(const void* grad_x, const void* coef, const void* freq,
                                         const void* phase_w, const int64_t* index,
                                         const void* inputs, int ends, int64_t rows, int64_t m,
                                         DType type, void* grad_coef, void* grad_freq,
                                         void* grad_phi, cudaStream_t stream);

}  // namespace liif
}  // namespace ik
