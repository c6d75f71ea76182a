// Launch helpers shared by every CUDA kernel file (torch-free, so .cu files compile with
// nvcc alone): the element types launchers take, the grid-stride loop geometry, and the
// two constructs the host-compiler emulation (csrc/emulation) replaces: launches and
// shared memory.  Kernel files use IK_LAUNCH and IK_SHARED, never <<<...>>> or __shared__.
#pragma once

#include <cuda_runtime.h>  // in emulated builds, csrc/emulation/include's

#include <cstdint>

#if !defined(IK_EMULATE_CUDA)
// kernel<<<grid, block, shared_bytes, stream>>>, the kernel last (a template-id's commas).
#define IK_LAUNCH(grid, block, shared_bytes, stream, ...) \
  __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
// A block's shared array.
#define IK_SHARED(type, name, count) __shared__ type name[count]
#endif

namespace ik {

// Element types the kernels take: the storage type of activations; geometry and
// accumulation run in float (in double for kFloat64).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// Blocks for n threads: enough to fill the GPU, capped; grid-stride loops do the rest.
inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

#if defined(__CUDACC__) || defined(IK_EMULATE_CUDA)
// Grid-stride loop over 64-bit indices (outputs reach 2^31 elements at x30).
__device__ inline int64_t grid_stride() { return static_cast<int64_t>(blockDim.x) * gridDim.x; }
__device__ inline int64_t grid_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
#endif

}  // namespace cuda
}  // namespace ik
