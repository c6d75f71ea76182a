// CUDA kernels of the fused LIIF and LTE decodes' element-wise steps (ik/liif_decode.h,
// ik/lte_decode.h): the same inline functions the CPU loops run
// (csrc/cpu/liif_kernels_cpu.cpp), grid-stride loops with 64-bit indices.  T is the
// storage type, Acc the accumulation type (float for half types).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "liif_kernels_cuda.h"

namespace ik {
namespace liif {
namespace {

using cuda::blocks_for;
using cuda::global;
using cuda::GlobalPtr;
using cuda::grid_index;
using cuda::grid_stride;
using cuda::kThreads;

// One thread per query: its 4 members' geometry.
template <typename T, typename Acc>
__global__ void members_kernel(GlobalPtr<const T> __restrict__ coord,
                               GlobalPtr<const T> __restrict__ cell, int64_t n, Dims dims,
                               int64_t* __restrict__ index, Acc* __restrict__ inputs,
                               Acc* __restrict__ weights) {
  for (int64_t p = grid_index(); p < n; p += grid_stride()) {
    query_members<Acc>(p, static_cast<Acc>(coord[2 * p]), static_cast<Acc>(coord[2 * p + 1]),
                       static_cast<Acc>(cell[2 * p]), static_cast<Acc>(cell[2 * p + 1]), dims,
                       index + kMembers * p, inputs + kMembers * kCoordInputs * p,
                       weights + kMembers * p);
  }
}

// One thread per output element (member row r, channel j): consecutive threads read
// consecutive channels of the same projection row.
template <typename T, typename Acc>
__global__ void liif_first_layer_kernel(const T* __restrict__ proj,
                                        GlobalPtr<const int64_t> __restrict__ index,
                                        const Acc* __restrict__ inputs, const T* __restrict__ w_rc,
                                        const T* __restrict__ b0, int64_t rows, int64_t d,
                                        bool relu, GlobalPtr<T> __restrict__ x) {
  for (int64_t e = grid_index(); e < rows * d; e += grid_stride()) {
    const int64_t r = e / d, j = e - r * d;
    x[e] = static_cast<T>(
        first_layer<Acc>(j, proj + index[r] * d, w_rc, b0, inputs + r * kCoordInputs, relu));
  }
}

// One thread per (member row r, pair i): writes x[r, i] and x[r, m + i].
template <typename T, typename Acc>
__global__ void lte_features_kernel(const T* __restrict__ coef, const T* __restrict__ freq,
                                    const T* __restrict__ phase_w,
                                    GlobalPtr<const int64_t> __restrict__ index,
                                    const Acc* __restrict__ inputs, int ends, int64_t rows,
                                    int64_t m, T* __restrict__ x) {
  const int64_t stride = 2 * ends + 2;
  for (int64_t e = grid_index(); e < rows * m; e += grid_stride()) {
    const int64_t r = e / m, i = e - r * m, pixel = index[r] * 2 * m;
    lte::fourier_feature<Acc, T>(i, m, coef + pixel, freq + pixel, phase_w, inputs + r * stride,
                                 x + r * 2 * m, ends);
  }
}

// One thread per (query p, pair i): the 4 members' gradients of pair i, and their sum
// for d/dphi_i (no atomics: the thread owns grad_phi[p, i]).
template <typename T, typename Acc>
__global__ void lte_features_backward_kernel(
    const T* __restrict__ grad_x, const T* __restrict__ coef, const T* __restrict__ freq,
    const T* __restrict__ phase_w, GlobalPtr<const int64_t> __restrict__ index,
    const Acc* __restrict__ inputs, int ends, int64_t n, int64_t m, Acc* __restrict__ grad_coef,
    Acc* __restrict__ grad_freq, GlobalPtr<Acc> __restrict__ grad_phi) {
  const int64_t stride = 2 * ends + 2;
  for (int64_t e = grid_index(); e < n * m; e += grid_stride()) {
    const int64_t p = e / m, i = e - p * m;
    Acc sum = 0;
    for (int t = 0; t < kMembers; ++t) {
      const int64_t r = kMembers * p + t, row = r * 2 * m, pixel = index[r] * 2 * m;
      sum += lte::fourier_feature_backward<Acc, T>(i, m, coef + pixel, freq + pixel, phase_w,
                                                   inputs + r * stride, grad_x + row,
                                                   grad_coef + row, grad_freq + row, ends);
    }
    grad_phi[e] = sum;
  }
}

template <typename T, typename Acc>
cudaError_t members_as(const void* coord, const void* cell, int64_t n, Dims dims, int64_t* index,
                       void* inputs, void* weights, cudaStream_t stream) {
  IK_LAUNCH(blocks_for(n), kThreads, 0, stream, members_kernel<T, Acc>)(
      global(static_cast<const T*>(coord), 2 * n), global(static_cast<const T*>(cell), 2 * n), n,
      dims, index, static_cast<Acc*>(inputs), static_cast<Acc*>(weights));
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t first_layer_as(const void* proj, const int64_t* index, const void* inputs,
                           const void* w_rc, const void* b0, int64_t rows, int64_t d, bool relu,
                           void* x, cudaStream_t stream) {
  IK_LAUNCH(blocks_for(rows * d), kThreads, 0, stream, liif_first_layer_kernel<T, Acc>)(
      static_cast<const T*>(proj), global(index, rows), static_cast<const Acc*>(inputs),
      static_cast<const T*>(w_rc), static_cast<const T*>(b0), rows, d, relu,
      global(static_cast<T*>(x), rows * d));
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t features_as(const void* coef, const void* freq, const void* phase_w,
                        const int64_t* index, const void* inputs, int ends, int64_t rows, int64_t m,
                        void* x, cudaStream_t stream) {
  IK_LAUNCH(blocks_for(rows * m), kThreads, 0, stream, lte_features_kernel<T, Acc>)(
      static_cast<const T*>(coef), static_cast<const T*>(freq), static_cast<const T*>(phase_w),
      global(index, rows), static_cast<const Acc*>(inputs), ends, rows, m, static_cast<T*>(x));
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t features_backward_as(const void* grad_x, const void* coef, const void* freq,
                                 const void* phase_w, const int64_t* index, const void* inputs,
                                 int ends, int64_t n, int64_t m, void* grad_coef, void* grad_freq,
                                 void* grad_phi, cudaStream_t stream) {
  IK_LAUNCH(blocks_for(n * m), kThreads, 0, stream, lte_features_backward_kernel<T, Acc>)(
      static_cast<const T*>(grad_x), static_cast<const T*>(coef), static_cast<const T*>(freq),
      static_cast<const T*>(phase_w), global(index, kMembers * n), static_cast<const Acc*>(inputs),
      ends, n, m, static_cast<Acc*>(grad_coef), static_cast<Acc*>(grad_freq),
      global(static_cast<Acc*>(grad_phi), n * m));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_members(const void* coord, const void* cell, int64_t n, Dims dims, DType type,
                           int64_t* index, void* inputs, void* weights, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  IK_DISPATCH_DTYPE(type, members_as, coord, cell, n, dims, index, inputs, weights, stream);
}

cudaError_t launch_liif_first_layer(const void* proj, const int64_t* index, const void* inputs,
                                    const void* w_rc, const void* b0, int64_t rows, int64_t d,
                                    bool relu, DType type, void* x, cudaStream_t stream) {
  if (rows == 0 || d == 0) return cudaSuccess;
  IK_DISPATCH_DTYPE(type, first_layer_as, proj, index, inputs, w_rc, b0, rows, d, relu, x, stream);
}

cudaError_t launch_lte_features(const void* coef, const void* freq, const void* phase_w,
                                const int64_t* index, const void* inputs, int ends, int64_t rows,
                                int64_t m, DType type, void* x, cudaStream_t stream) {
  if (rows == 0 || m == 0) return cudaSuccess;
  if (ends < 1) return cudaErrorInvalidValue;
  IK_DISPATCH_DTYPE(type, features_as, coef, freq, phase_w, index, inputs, ends, rows, m, x,
                    stream);
}

cudaError_t launch_lte_features_backward(const void* grad_x, const void* coef, const void* freq,
                                         const void* phase_w, const int64_t* index,
                                         const void* inputs, int ends, int64_t rows, int64_t m,
                                         DType type, void* grad_coef, void* grad_freq,
                                         void* grad_phi, cudaStream_t stream) {
  if (rows == 0 || m == 0) return cudaSuccess;
  if (ends < 1) return cudaErrorInvalidValue;
  IK_DISPATCH_DTYPE(type, features_backward_as, grad_x, coef, freq, phase_w, index, inputs, ends,
                    rows / kMembers, m, grad_coef, grad_freq, grad_phi, stream);
}

}  // namespace liif
}  // namespace ik
