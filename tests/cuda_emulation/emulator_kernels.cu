// Kernels that test the CUDA emulation layer (csrc/emulation): a shared-memory reduction,
// its broken variants, a warp-shuffle reduction and the half types' conversions.  Valid
// CUDA too (tests/test_cuda_compile.py compiles them with nvcc), so IK_LAUNCH and
// IK_SHARED are checked in both forms.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emulator_kernels.h"

namespace ik {
namespace emulator_test {
namespace {

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

}  // namespace emulator_test
}  // namespace ik
