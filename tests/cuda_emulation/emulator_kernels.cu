// Kernels that test the CUDA emulation layer (csrc/emulation): a shared-memory reduction,
// its broken variants, a warp-shuffle reduction, the half types' conversions, a WMMA GEMM,
// typed regions of dynamic shared memory, and the misuses the emulation must catch.  Valid
// CUDA too (tests/test_cuda_compile.py compiles them with nvcc), so launch.h's constructs
// are checked in both forms.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "emulator_kernels.h"

namespace ik {
namespace emulator_test {
namespace {

using cuda::global;
using cuda::GlobalPtr;
namespace wmma = nvcuda::wmma;

constexpr int kBlock = 256;

// Tree sum of each block's elements into shared memory, block sums added to *out.
// kSyncAfterStore = false omits the barrier between the stores and the first reads.
// kOverrun: one thread stores one element past the array's end.
template <bool kSyncAfterStore, bool kOverrun>
__global__ void block_sum_kernel(const float* __restrict__ x, int n, float* __restrict__ out) {
  IK_SHARED(float, partial, kBlock);
  const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  partial[kOverrun && t == kBlock - 1 ? kBlock : t] = i < n ? x[i] : 0.0f;
  if (kSyncAfterStore) __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) atomicAdd(out, static_cast<float>(partial[0]));
}

// Each warp's sum, by butterfly (xor) then by halving (down) shuffles; lane 0 stores both.
__global__ void warp_sum_kernel(const float* __restrict__ x, float* __restrict__ sums) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  float butterfly = x[i], halving = x[i];
  for (int offset = 16; offset > 0; offset /= 2) {
    butterfly += __shfl_xor_sync(0xffffffffu, butterfly, offset);
    halving += __shfl_down_sync(0xffffffffu, halving, offset);
  }
  if (lane == 0) {
    sums[2 * (i / 32)] = butterfly;
    sums[2 * (i / 32) + 1] = halving;
  }
}

// Thread 0 returns while the others wait at a barrier (undefined behaviour in CUDA).
__global__ void early_exit_kernel(int* __restrict__ out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void convert_kernel(const float* __restrict__ x, int n, float* __restrict__ half,
                               float* __restrict__ bfloat) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    half[i] = static_cast<float>(__half(x[i]));
    bfloat[i] = static_cast<float>(__nv_bfloat16(x[i]));
  }
}

// out[i] = x[i] + x[i + 1] for i < n: the last thread reads x[n], one past the end (the
// bound should be n - 1).
__global__ void neighbour_sum_overrun_kernel(GlobalPtr<const float> x, int n,
                                             GlobalPtr<float> out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = x[i] + x[i + 1];
}

// values[n - 1 - t] · factors[(t + 1) % n]: a device function taking shared arrays, T
// deduced from a SharedPtr<float> as from a float*.
template <typename T>
__device__ T reversed_times_next(cuda::SharedPtr<const T> values,
                                 cuda::SharedPtr<const int> factors, int n, int t) {
  return values[n - 1 - t] * static_cast<T>(factors[(t + 1) % n]);
}

// Two typed regions of the dynamic shared memory: floats, then ints.
// out[t] = x[kBlock - 1 - t] · ((t + 1) % kBlock % 3 + 1), read back from the regions.
__global__ void dynamic_regions_kernel(GlobalPtr<const float> x, GlobalPtr<float> out) {
  IK_DYNAMIC_SHARED(float, values, 0, kBlock);
  IK_DYNAMIC_SHARED(int, factors, kDynamicRegionsBytes / 2, kBlock);
  const int t = threadIdx.x;
  values[t] = x[t];
  factors[t] = t % 3 + 1;
  __syncthreads();
  out[t] = reversed_times_next(values, factors, kBlock, t);
}

// d = c + a·b (kGemmM × kGemmK by kGemmK × kGemmN) by one block of 4 warps, warp w on
// output tile (w / 2, w % 2): a staged in static shared memory, b and c read from global
// memory; each warp's accumulator goes through a dynamic shared region (c's layout), stored
// and reloaded at every k step, then the block copies the region to d (row-major), after a
// barrier unless `sync_after_store` is false.
template <typename T, typename LayoutA, typename LayoutB>
__global__ void __launch_bounds__(4 * 32)
    wmma_gemm_kernel(GlobalPtr<const T> a, GlobalPtr<const T> b, GlobalPtr<const float> c,
                     bool c_col_major, bool sync_after_store, GlobalPtr<float> d) {
  IK_SHARED(T, a_tile, kGemmM * kGemmK);
  IK_DYNAMIC_SHARED(float, d_tile, 0, kGemmM* kGemmN);
  constexpr bool a_rows = std::is_same<LayoutA, wmma::row_major>::value;
  constexpr bool b_rows = std::is_same<LayoutB, wmma::row_major>::value;
  // Element (i, j) of an M × N matrix in c's layout.
  const auto at = [c_col_major](int i, int j) {
    return c_col_major ? i + j * kGemmM : i * kGemmN + j;
  };
  const unsigned ldc = c_col_major ? kGemmM : kGemmN;
  const wmma::layout_t layout = c_col_major ? wmma::mem_col_major : wmma::mem_row_major;

  for (int e = threadIdx.x; e < kGemmM * kGemmK; e += blockDim.x) a_tile[e] = a[e];
  __syncthreads();
  const int warp = threadIdx.x / 32, i0 = 16 * (warp / 2), j0 = 16 * (warp % 2);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(acc, c + at(i0, j0), ldc, layout);
  wmma::store_matrix_sync(d_tile + at(i0, j0), acc, ldc, layout);
  for (int k0 = 0; k0 < kGemmK; k0 += 16) {
    __syncwarp();
    wmma::load_matrix_sync(acc, d_tile + at(i0, j0), ldc, layout);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> a_frag;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> b_frag;
    wmma::load_matrix_sync(a_frag, a_tile + (a_rows ? i0 * kGemmK + k0 : i0 + k0 * kGemmM),
                           a_rows ? kGemmK : kGemmM);
    wmma::load_matrix_sync(b_frag, b + (b_rows ? k0 * kGemmN + j0 : k0 + j0 * kGemmK),
                           b_rows ? kGemmN : kGemmK);
    wmma::mma_sync(acc, a_frag, b_frag, acc);
    __syncwarp();
    wmma::store_matrix_sync(d_tile + at(i0, j0), acc, ldc, layout);
  }
  if (sync_after_store) __syncthreads();
  for (int e = threadIdx.x; e < kGemmM * kGemmN; e += blockDim.x) {
    d[e] = d_tile[at(e / kGemmN, e % kGemmN)];
  }
}

// A WMMA load from 16 bytes into a shared array: CUDA requires 32-byte alignment.
__global__ void wmma_misaligned_kernel() {
  IK_SHARED(__half, tile, 2 * 256);
  for (int e = threadIdx.x; e < 2 * 256; e += blockDim.x) tile[e] = __float2half(0.0f);
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a_frag;
  wmma::load_matrix_sync(a_frag, tile + 8, 16);
}

template <typename T, typename LayoutA, typename LayoutB>
void launch_wmma_gemm_as(const void* a, const void* b, const float* c, bool c_col_major,
                         bool sync_after_store, float* d) {
  IK_LAUNCH(1, 4 * 32, kGemmM * kGemmN * sizeof(float), nullptr,
            wmma_gemm_kernel<T, LayoutA, LayoutB>)(
      global(static_cast<const T*>(a), kGemmM * kGemmK),
      global(static_cast<const T*>(b), kGemmK * kGemmN), global(c, kGemmM * kGemmN), c_col_major,
      sync_after_store, global(d, kGemmM * kGemmN));
}

template <typename T>
void launch_wmma_gemm_as(const void* a, bool a_col_major, const void* b, bool b_col_major,
                         const float* c, bool c_col_major, bool sync_after_store, float* d) {
  using wmma::col_major;
  using wmma::row_major;
  if (!a_col_major && !b_col_major) {
    launch_wmma_gemm_as<T, row_major, row_major>(a, b, c, c_col_major, sync_after_store, d);
  } else if (!a_col_major) {
    launch_wmma_gemm_as<T, row_major, col_major>(a, b, c, c_col_major, sync_after_store, d);
  } else if (!b_col_major) {
    launch_wmma_gemm_as<T, col_major, row_major>(a, b, c, c_col_major, sync_after_store, d);
  } else {
    launch_wmma_gemm_as<T, col_major, col_major>(a, b, c, c_col_major, sync_after_store, d);
  }
}

unsigned int blocks(int n) { return static_cast<unsigned int>((n + kBlock - 1) / kBlock); }

}  // namespace

cudaError_t launch_block_sum(const float* x, int n, float* out, BlockSumBug bug) {
  switch (bug) {
    case BlockSumBug::kNone:
      IK_LAUNCH(blocks(n), kBlock, 0, nullptr, block_sum_kernel<true, false>)(x, n, out);
      break;
    case BlockSumBug::kMissingBarrier:
      IK_LAUNCH(blocks(n), kBlock, 0, nullptr, block_sum_kernel<false, false>)(x, n, out);
      break;
    case BlockSumBug::kOutOfRange:
      IK_LAUNCH(blocks(n), kBlock, 0, nullptr, block_sum_kernel<true, true>)(x, n, out);
      break;
  }
  return cudaGetLastError();
}

cudaError_t launch_warp_sum(const float* x, int warps, float* sums) {
  IK_LAUNCH(dim3(warps / 2, 1, 1), 64, 0, nullptr, warp_sum_kernel)(x, sums);
  return cudaGetLastError();
}

cudaError_t launch_early_exit(int* out) {
  IK_LAUNCH(1, 64, 0, nullptr, early_exit_kernel)(out);
  return cudaGetLastError();
}

cudaError_t launch_convert(const float* x, int n, float* half, float* bfloat) {
  IK_LAUNCH(blocks(n), kBlock, 0, nullptr, convert_kernel)(x, n, half, bfloat);
  return cudaGetLastError();
}

cudaError_t launch_neighbour_sum_overrun(const float* x, int n, float* out) {
  IK_LAUNCH(blocks(n), kBlock, 0, nullptr, neighbour_sum_overrun_kernel)(global(x, n), n,
                                                                         global(out, n));
  return cudaGetLastError();
}

cudaError_t launch_dynamic_regions(const float* x, float* out, int dynamic_bytes,
                                   int opt_in_bytes) {
  if (opt_in_bytes > 0) {
    const cudaError_t error = cudaFuncSetAttribute(
        dynamic_regions_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, opt_in_bytes);
    if (error != cudaSuccess) return error;
  }
  IK_LAUNCH(1, kBlock, dynamic_bytes, nullptr, dynamic_regions_kernel)(global(x, kBlock),
                                                                       global(out, kBlock));
  return cudaGetLastError();
}

cudaError_t launch_wmma_gemm(HalfType type, const void* a, bool a_col_major, const void* b,
                             bool b_col_major, const float* c, bool c_col_major,
                             bool sync_after_store, float* d) {
  if (type == HalfType::kFloat16) {
    launch_wmma_gemm_as<__half>(a, a_col_major, b, b_col_major, c, c_col_major, sync_after_store,
                                d);
  } else {
    launch_wmma_gemm_as<__nv_bfloat16>(a, a_col_major, b, b_col_major, c, c_col_major,
                                       sync_after_store, d);
  }
  return cudaGetLastError();
}

cudaError_t launch_wmma_misaligned() {
  IK_LAUNCH(1, 32, 0, nullptr, wmma_misaligned_kernel)();
  return cudaGetLastError();
}

}  // namespace emulator_test
}  // namespace ik
