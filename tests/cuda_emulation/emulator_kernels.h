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

}  // namespace emulator_test
}  // namespace ik
