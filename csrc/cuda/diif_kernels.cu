// CUDA kernels of the fused DIIF decode's element-wise steps (ik/diif_decode.h): the same
// inline functions the CPU loops run (csrc/cpu/diif_kernels_cpu.cpp), one thread per
// element, grid-stride loops with 64-bit indices (outputs reach 2^31 elements at ×30).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "diif_kernels_cuda.h"

namespace ik {
namespace diif {
namespace {

using cuda::blocks_for;
using cuda::global;
using cuda::GlobalPtr;
using cuda::grid_index;
using cuda::grid_stride;
using cuda::kThreads;

__global__ void slice_keys_kernel(GlobalPtr<const int64_t> __restrict__ pixels, int64_t n,
                                  int64_t q, Dims dims, Slicing slicing,
                                  GlobalPtr<int64_t> __restrict__ keys) {
  for (int64_t p = grid_index(); p < n; p += grid_stride()) {
    keys[p] = slice_key(p / q, pixels[2 * p], pixels[2 * p + 1], dims, slicing);
  }
}

template <typename T>
__global__ void slice_inputs_kernel(GlobalPtr<const int64_t> __restrict__ keys, int64_t s,
                                    Dims dims, Slicing slicing, T* __restrict__ coords,
                                    int64_t* __restrict__ corners) {
  for (int64_t i = grid_index(); i < s; i += grid_stride()) {
    const int64_t v = vertex_count(dims);
    slice_inputs<T>(keys[i], dims, slicing, coords + i * v * kCoordInputs, corners + i * v);
  }
}

// One thread per output element (pixel p, channel j); the pixel's geometry is recomputed
// per channel, which costs a few dozen flops beside the 4 loads of g.
template <typename T, typename Acc>
__global__ void blend_kernel(GlobalPtr<const int64_t> __restrict__ pixels,
                             GlobalPtr<const int64_t> __restrict__ slice_of, int64_t n, Dims dims,
                             const T* __restrict__ g, int64_t df, const T* __restrict__ wd,
                             const T* __restrict__ bias, GlobalPtr<T> __restrict__ z) {
  for (int64_t e = grid_index(); e < n * df; e += grid_stride()) {
    const int64_t p = e / df, j = e - p * df;
    Acc offset[2], weight[4] = {};
    pixel_offset_weights<Acc>(pixels[2 * p], pixels[2 * p + 1], dims, offset, weight);
    const int v = vertex_count(dims);
    const T* block = g + slice_of[p] * v * df;
    z[e] = static_cast<T>(blend_channel<Acc>(j, df, v, block, wd, bias, offset, weight));
  }
}

template <typename T>
__global__ void offset_weights_kernel(GlobalPtr<const int64_t> __restrict__ pixels, int64_t n,
                                      Dims dims, T* __restrict__ offsets, T* __restrict__ weights) {
  for (int64_t p = grid_index(); p < n; p += grid_stride()) {
    pixel_offset_weights<T>(pixels[2 * p], pixels[2 * p + 1], dims, offsets + 2 * p,
                            weights + vertex_count(dims) * p);
  }
}

template <typename T, typename Acc>
cudaError_t blend_as(const int64_t* pixels, const int64_t* slice_of, int64_t n, Dims dims,
                     const void* g, int64_t df, const void* wd, const void* bias, void* z,
                     cudaStream_t stream) {
  IK_LAUNCH(blocks_for(n * df), kThreads, 0, stream, blend_kernel<T, Acc>)(
      global(pixels, 2 * n), global(slice_of, n), n, dims, static_cast<const T*>(g), df,
      static_cast<const T*>(wd), static_cast<const T*>(bias), global(static_cast<T*>(z), n * df));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_slice_keys(const int64_t* pixels, int64_t n, int64_t q, Dims dims,
                              Slicing slicing, int64_t* keys, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  IK_LAUNCH(blocks_for(n), kThreads, 0, stream, slice_keys_kernel)(global(pixels, 2 * n), n, q,
                                                                   dims, slicing, global(keys, n));
  return cudaGetLastError();
}

cudaError_t launch_slice_inputs(const int64_t* keys, int64_t s, Dims dims, Slicing slicing,
                                DType coord_type, void* coords, int64_t* corners,
                                cudaStream_t stream) {
  if (s == 0) return cudaSuccess;
  if (coord_type == DType::kFloat64) {
    IK_LAUNCH(blocks_for(s), kThreads, 0, stream, slice_inputs_kernel<double>)(
        global(keys, s), s, dims, slicing, static_cast<double*>(coords), corners);
  } else if (coord_type == DType::kFloat32) {
    IK_LAUNCH(blocks_for(s), kThreads, 0, stream, slice_inputs_kernel<float>)(
        global(keys, s), s, dims, slicing, static_cast<float*>(coords), corners);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_blend(const int64_t* pixels, const int64_t* slice_of, int64_t n, Dims dims,
                         DType type, const void* g, int64_t df, const void* wd, const void* bias,
                         void* z, cudaStream_t stream) {
  if (n == 0 || df == 0) return cudaSuccess;
  IK_DISPATCH_DTYPE(type, blend_as, pixels, slice_of, n, dims, g, df, wd, bias, z, stream);
}

cudaError_t launch_offset_weights(const int64_t* pixels, int64_t n, Dims dims, DType type,
                                  void* offsets, void* weights, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (type == DType::kFloat64) {
    IK_LAUNCH(blocks_for(n), kThreads, 0, stream, offset_weights_kernel<double>)(
        global(pixels, 2 * n), n, dims, static_cast<double*>(offsets),
        static_cast<double*>(weights));
  } else if (type == DType::kFloat32) {
    IK_LAUNCH(blocks_for(n), kThreads, 0, stream, offset_weights_kernel<float>)(
        global(pixels, 2 * n), n, dims, static_cast<float*>(offsets), static_cast<float*>(weights));
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace diif
}  // namespace ik
