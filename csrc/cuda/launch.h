// Launch helpers shared by every CUDA kernel file (torch-free, so .cu files compile with
// nvcc alone): the element types launchers take, the grid-stride loop geometry, and the
// constructs the host-compiler emulation (csrc/emulation) replaces with checked ones:
//
// * IK_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...): a launch;
// * IK_SHARED(type, name, count): a block's static shared array;
// * IK_DYNAMIC_SHARED(type, name, offset_bytes, count): `type* name`, a typed region of
//   the launch's dynamic shared memory, `count` elements from `offset_bytes` (a multiple
//   of 16; of 32 where WMMA loads or stores it);
// * SharedPtr<T>: a pointer into shared memory (device functions take shared arrays as
//   SharedPtr<T> or SharedPtr<const T>; IK_SHARED and IK_DYNAMIC_SHARED names convert);
// * GlobalPtr<T>: a pointer into a global array; kernels take their arrays as GlobalPtr,
//   made on the host by global(ptr, count).
//
// Launches asking for over 48 KiB of dynamic shared memory need the kernel's
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first
// (at most 227 KiB on sm_90, 163 KiB on sm_80).  Tensor-core tiles: `#include <mma.h>`,
// nvcuda::wmma (csrc/emulation/include/mma.h says what the emulation supports).
//
// Under nvcc these are plain CUDA: `<<<...>>>`, `__shared__`, `extern __shared__` and
// `T*`.  In the emulation every shared access is checked (bounds, reads of what no thread
// wrote, races between barriers), every GlobalPtr access against its array's [0, count),
// a dynamic region against the launch's dynamic bytes; a failed check fails the launch,
// with its message in cudaGetErrorString(cudaGetLastError()).  Kernel files use these,
// never <<<...>>> or __shared__.
//
// Portable use: index and offset the pointers (`p[i]`, `p + n`, `atomicAdd(p + i, v)` for a
// GlobalPtr); never take a shared element's address (`&p[i]` is a raw pointer under nvcc,
// a proxy's address in the emulation); call templates taking `SharedPtr<const T>` or
// `GlobalPtr<const T>` as with `const T*` (a SharedPtr<T> argument deduces T).
#pragma once

#include <cuda_runtime.h>  // in emulated builds, csrc/emulation/include's

#include <cstdint>

#if !defined(IK_EMULATE_CUDA)
// kernel<<<grid, block, shared_bytes, stream>>>, the kernel last (a template-id's commas).
#define IK_LAUNCH(grid, block, shared_bytes, stream, ...) \
  __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
// A block's shared array, aligned for WMMA's loads and stores.
#define IK_SHARED(type, name, count) __shared__ __align__(32) type name[count]

#if defined(__CUDACC__)
// The launch's dynamic shared memory (one declaration for every kernel: declarations of
// it with different alignments may not meet in one translation unit).
extern __shared__ __align__(128) unsigned char ik_dynamic_shared[];
#endif
// A typed region of the launch's dynamic shared memory.
#define IK_DYNAMIC_SHARED(type, name, offset_bytes, count) \
  type* name = reinterpret_cast<type*>(ik_dynamic_shared + (offset_bytes))
#endif

// `return fn<T, Acc>(args...)` for the storage type `type`: Acc is float for the half
// types, else T; an unknown type returns cudaErrorInvalidValue.  (Files using it include
// <cuda_fp16.h> and <cuda_bf16.h>.)
#define IK_DISPATCH_DTYPE(type, fn, ...)            \
  switch (type) {                                   \
    case ::ik::DType::kFloat32:                     \
      return fn<float, float>(__VA_ARGS__);         \
    case ::ik::DType::kFloat64:                     \
      return fn<double, double>(__VA_ARGS__);       \
    case ::ik::DType::kFloat16:                     \
      return fn<__half, float>(__VA_ARGS__);        \
    case ::ik::DType::kBFloat16:                    \
      return fn<__nv_bfloat16, float>(__VA_ARGS__); \
  }                                                 \
  return cudaErrorInvalidValue

namespace ik {

// Element types the kernels take: the storage type of activations; geometry and
// accumulation run in float (in double for kFloat64).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

namespace cuda {

#if defined(IK_EMULATE_CUDA)
using ::ik::emulation::GlobalPtr;  // csrc/emulation/include/ik_checked_pointers.h
using ::ik::emulation::SharedPtr;

// A checked pointer to the `count` elements at `ptr` (null: an empty array).
template <typename T>
GlobalPtr<T> global(T* ptr, int64_t count) {
  return {ptr, count};
}
#else
template <typename T>
using GlobalPtr = T*;
template <typename T>
using SharedPtr = T*;

// `ptr`; in the emulation, a pointer checked against [ptr, ptr + count).
template <typename T>
inline T* global(T* ptr, int64_t) {
  return ptr;
}
#endif

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
