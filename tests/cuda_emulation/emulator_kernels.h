// Launchers of the emulation layer's test kernels (emulator_kernels.cu); pointers are
// device memory under CUDA, host memory in the emulation.
#pragma once

#include "cuda/launch.h"

namespace ik {
namespace emulator_test {

enum class BlockSumBug { kNone, kMissingBarrier, kOutOfRange };

// *out += sum of x[0..n) (a shared-memory tree reduction per block of 256 threads).
cudaError_t launch_block_sum(const float* x, int n, float* out, BlockSumBug bug);

// sums[2w] and sums[2w + 1]: warp w's sum of x[32w..32w + 32) by xor and by down shuffles
// (warps even: blocks of 2 warps).
cudaError_t launch_warp_sum(const float* x, int warps, float* sums);

// A block of 64 threads whose thread 0 exits before a barrier the others wait at.
cudaError_t launch_early_exit(int* out);

// half[i], bfloat[i]: x[i] rounded to __half and to __nv_bfloat16, as float.
cudaError_t launch_convert(const float* x, int n, float* half, float* bfloat);

// out[i] = x[i] + x[i + 1] for i < n through GlobalPtr: reads x[n], one past the end.
cudaError_t launch_neighbour_sum_overrun(const float* x, int n, float* out);

// Bytes of dynamic shared memory dynamic_regions_kernel's two regions take (256 floats, then
// 256 ints).
constexpr int kDynamicRegionsBytes = 2 * 256 * 4;

// out[t] = x[255 - t] · ((t + 1) % 256 % 3 + 1) for t < 256, through a float and an int
// region of the launch's `dynamic_bytes` of dynamic shared memory; opt_in_bytes > 0 first
// raises the kernel's limit with cudaFuncSetAttribute.
cudaError_t launch_dynamic_regions(const float* x, float* out, int dynamic_bytes, int opt_in_bytes);

// The WMMA GEMM's sizes.
constexpr int kGemmM = 32, kGemmN = 32, kGemmK = 48;

enum class HalfType { kFloat16, kBFloat16 };

// d = c + a·b by WMMA (one block of 4 warps): a kGemmM × kGemmK, b kGemmK × kGemmN, of
// `type`, each row- or column-major; c kGemmM × kGemmN float, row- or column-major; d
// row-major.  sync_after_store = false leaves out the barrier between the warps' stores of
// their tiles to shared memory and the block's reads of them.
cudaError_t launch_wmma_gemm(HalfType type, const void* a, bool a_col_major, const void* b,
                             bool b_col_major, const float* c, bool c_col_major,
                             bool sync_after_store, float* d);

// A WMMA load from a shared pointer 16 bytes past a 32-byte boundary.
cudaError_t launch_wmma_misaligned();

}  // namespace emulator_test
}  // namespace ik
