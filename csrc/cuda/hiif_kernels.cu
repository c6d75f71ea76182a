// CUDA kernels of the fused HIIF operators' element-wise steps (ik/hiif_decode.h): the same
// inline functions the CPU loops run (csrc/cpu/hiif_kernels_cpu.cpp).  The per-query steps
// run one warp per query: every lane recomputes the query's geometry and statistics
// (a few dozen flops and 8 broadcast loads), then the lanes stride over the channels, so
// the wide rows are read and written coalesced.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "hiif_kernels_cuda.h"

namespace ik {
namespace hiif {
namespace {

using cuda::blocks_for;
using cuda::global;
using cuda::GlobalPtr;
using cuda::grid_index;
using cuda::grid_stride;
using cuda::kThreads;
using cuda::kWarp;

// Warp-wide sum, every lane gets the total.
template <typename Acc>
__device__ inline Acc warp_sum(Acc v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T, typename Acc>
__global__ void level0_sum_kernel(const T* __restrict__ maps, const T* __restrict__ row_sums,
                                  const T* __restrict__ w_extra,
                                  GlobalPtr<const T> __restrict__ coord,
                                  GlobalPtr<const T> __restrict__ cell, int64_t n, int64_t q,
                                  int64_t h, int64_t w, bool public_centres, int64_t hidden,
                                  int64_t channels, GlobalPtr<T> __restrict__ u,
                                  GlobalPtr<int64_t> __restrict__ rows,
                                  GlobalPtr<Acc> __restrict__ aux) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = grid_stride() / kWarp;
  // Whole warps share a query, so the loop bound is uniform across a warp.
  for (int64_t p = grid_index() / kWarp; p < n; p += warps) {
    index_t row[4];
    Acc a[kAuxWidth];
    level0_stats<Acc>(static_cast<Acc>(coord[2 * p]), static_cast<Acc>(coord[2 * p + 1]),
                      static_cast<Acc>(cell[2 * p]), static_cast<Acc>(cell[2 * p + 1]), p / q, h, w,
                      public_centres, maps, hidden, channels, row, a);
    if (lane == 0) {
      // Constant indices keep row and a in registers.
      for (int t = 0; t < 4; ++t) rows[4 * p + t] = row[t];
      for (int k = 0; k < kAuxWidth; ++k) aux[p * kAuxWidth + k] = a[k];
    }
    for (int64_t j = lane; j < hidden; j += kWarp) {
      u[p * hidden + j] =
          static_cast<T>(level0_channel<Acc>(j, hidden, maps, row, a, row_sums, w_extra));
    }
  }
}

template <typename T, typename Acc>
__global__ void level_input_kernel(GlobalPtr<const T> __restrict__ x,
                                   GlobalPtr<const T> __restrict__ coord, int64_t n, int64_t c,
                                   int64_t h, int64_t w, bool public_centres, int level,
                                   GlobalPtr<T> __restrict__ y, GlobalPtr<Acc> __restrict__ rstd) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = grid_stride() / kWarp;
  const int64_t width = c + 2;
  for (int64_t p = grid_index() / kWarp; p < n; p += warps) {
    Acc ly, lx;
    local_of<Acc>(static_cast<Acc>(coord[2 * p]), static_cast<Acc>(coord[2 * p + 1]), h, w,
                  public_centres, &ly, &lx);
    const Acc by = level_bit(ly, level), bx = level_bit(lx, level);
    const GlobalPtr<const T> in = x + p * c;
    Acc sum = 0;
    for (int64_t j = lane; j < c; j += kWarp) sum += static_cast<Acc>(in[j]);
    const Acc mean = (warp_sum(sum) + by + bx) / static_cast<Acc>(width);
    Acc sq = 0;
    for (int64_t j = lane; j < c; j += kWarp) {
      const Acc d = static_cast<Acc>(in[j]) - mean;
      sq += d * d;
    }
    const Acc var = (warp_sum(sq) + (by - mean) * (by - mean) + (bx - mean) * (bx - mean)) /
                    static_cast<Acc>(width);
    const Acc r = Acc(1) / sqrt_val(var + static_cast<Acc>(kLnEps));
    const GlobalPtr<T> out = y + p * width;
    for (int64_t j = lane; j < c; j += kWarp)
      out[j] = static_cast<T>((static_cast<Acc>(in[j]) - mean) * r);
    if (lane == 0) {
      out[c] = static_cast<T>((by - mean) * r);
      out[c + 1] = static_cast<T>((bx - mean) * r);
      rstd[p] = r;
    }
  }
}

template <typename T>
__global__ void codes_kernel(GlobalPtr<const T> __restrict__ coord, int64_t n, int64_t h, int64_t w,
                             bool public_centres, int levels, GlobalPtr<T> __restrict__ bits) {
  for (int64_t p = grid_index(); p < n; p += grid_stride()) {
    T ly, lx;
    local_of<T>(coord[2 * p], coord[2 * p + 1], h, w, public_centres, &ly, &lx);
    for (int l = 0; l < levels; ++l) {
      bits[(p * levels + l) * 2] = level_bit(ly, l);
      bits[(p * levels + l) * 2 + 1] = level_bit(lx, l);
    }
  }
}

// Threads for n warps' worth of work (one warp per query).
int64_t warp_threads(int64_t n) { return n * kWarp; }

template <typename T, typename Acc>
cudaError_t level0_sum_as(const void* maps, const void* row_sums, const void* w_extra,
                          const void* coord, const void* cell, int64_t n, int64_t q, int64_t h,
                          int64_t w, bool public_centres, int64_t hidden, int64_t channels, void* u,
                          int64_t* rows, void* aux, cudaStream_t stream) {
  IK_LAUNCH(blocks_for(warp_threads(n)), kThreads, 0, stream, level0_sum_kernel<T, Acc>)(
      static_cast<const T*>(maps), static_cast<const T*>(row_sums), static_cast<const T*>(w_extra),
      global(static_cast<const T*>(coord), 2 * n), global(static_cast<const T*>(cell), 2 * n), n, q,
      h, w, public_centres, hidden, channels, global(static_cast<T*>(u), n * hidden),
      global(rows, 4 * n), global(static_cast<Acc*>(aux), n * kAuxWidth));
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t level_input_as(const void* x, const void* coord, int64_t n, int64_t c, int64_t h,
                           int64_t w, bool public_centres, int level, void* y, void* rstd,
                           cudaStream_t stream) {
  IK_LAUNCH(blocks_for(warp_threads(n)), kThreads, 0, stream, level_input_kernel<T, Acc>)(
      global(static_cast<const T*>(x), n * c), global(static_cast<const T*>(coord), 2 * n), n, c, h,
      w, public_centres, level, global(static_cast<T*>(y), n * (c + 2)),
      global(static_cast<Acc*>(rstd), n));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_level0_sum(const void* maps, const void* row_sums, const void* w_extra,
                              const void* coord, const void* cell, int64_t n, int64_t q, int64_t h,
                              int64_t w, bool public_centres, int64_t hidden, int64_t channels,
                              DType type, void* u, int64_t* rows, void* aux, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  IK_DISPATCH_DTYPE(type, level0_sum_as, maps, row_sums, w_extra, coord, cell, n, q, h, w,
                    public_centres, hidden, channels, u, rows, aux, stream);
}

cudaError_t launch_level_input(const void* x, const void* coord, int64_t n, int64_t c, int64_t h,
                               int64_t w, bool public_centres, int level, DType type, void* y,
                               void* rstd, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  IK_DISPATCH_DTYPE(type, level_input_as, x, coord, n, c, h, w, public_centres, level, y, rstd,
                    stream);
}

cudaError_t launch_codes(const void* coord, int64_t n, int64_t h, int64_t w, bool public_centres,
                         int levels, DType type, void* bits, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (type == DType::kFloat64) {
    IK_LAUNCH(blocks_for(n), kThreads, 0, stream, codes_kernel<double>)(
        global(static_cast<const double*>(coord), 2 * n), n, h, w, public_centres, levels,
        global(static_cast<double*>(bits), 2 * n * levels));
  } else if (type == DType::kFloat32) {
    IK_LAUNCH(blocks_for(n), kThreads, 0, stream, codes_kernel<float>)(
        global(static_cast<const float*>(coord), 2 * n), n, h, w, public_centres, levels,
        global(static_cast<float*>(bits), 2 * n * levels));
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace hiif
}  // namespace ik
