// Helpers shared by the CUDA kernels and launchers of every fused operator.  Torch-free:
// the launcher headers include it (for DType), and the .cu files compile with nvcc alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ik {

// Element types the kernels take: the storage type of activations; geometry and
// accumulation run in float (in double for kFloat64).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

#if defined(__CUDACC__)
namespace cuda {

constexpr int kThreads = 256;

// Blocks for n elements: enough to fill the GPU, capped; grid-stride loops do the rest.
inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

// First element and stride of a grid-stride loop, in 64-bit (outputs reach 2^31 elements
// at x30).
__device__ inline int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t stride() { return static_cast<int64_t>(blockDim.x) * gridDim.x; }

}  // namespace cuda
#endif

}  // namespace ik
