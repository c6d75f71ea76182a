// CUDA emulation for the host compiler: the part of the CUDA language and runtime the
// kernels of csrc/cuda use, so the same .cu sources compile as C++ (-x c++
// -DIK_EMULATE_CUDA, this folder first on the include path) and run on CPU tensors in
// tests.  A launch runs every block in turn; a block's threads run as cooperative fibers
// (csrc/emulation/runtime.cpp) that switch only at __syncthreads() and warp shuffles, so
// barriers really wait for the whole block and a shuffle for the whole warp.  Shared
// memory (IK_SHARED, IK_DYNAMIC_SHARED, through SharedPtr) is bounds-checked, and every
// access is checked against the barriers: a thread reading what another wrote, or writing
// what another read or wrote, since the last __syncthreads() is a race and fails the
// launch, whatever order the fibers run in.  Global arrays passed as GlobalPtr are
// bounds-checked (ik_checked_pointers.h); WMMA is emulated by mma.h.  A failed launch
// returns its error from cudaGetLastError(), with the reason in cudaGetErrorString().
#pragma once

#if defined(__CUDACC__)
#error "ik_cuda_emulation.h is for host-compiler builds of the CUDA sources only"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "ik_checked_pointers.h"

// Execution-space qualifiers: every function is a host function here.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// A no-aliasing hint only, and kernels' GlobalPtr parameters are classes here.
#define __restrict__
// Hints to nvcc's register allocation.
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

// ---------------------------------------------------------------------------------------
// Runtime types
// ---------------------------------------------------------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};

typedef struct CUstream_st* cudaStream_t;

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

// The running thread's coordinates, set by the fiber scheduler before it resumes a thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Returns the error of the last launch on this thread and clears it.
cudaError_t cudaGetLastError();
// The error's name; for a failed emulated launch, what failed and where.
const char* cudaGetErrorString(cudaError_t error);

namespace ik {
namespace emulation {

constexpr int kWarpSize = 32;

// ---------------------------------------------------------------------------------------
// Synchronisation (runtime.cpp)
// ---------------------------------------------------------------------------------------

// Suspends the calling thread until every thread of its block has reached a barrier.
void barrier();

// Publishes `bits` for the lanes of the calling thread's warp in `mask` and returns the
// bits lane `source` published: a barrier among those lanes.
uint64_t warp_exchange(unsigned int mask, uint64_t bits, int source);

// The calling thread's lane within its warp.
int lane();

// Suspends the calling thread until the lanes of its warp in `mask` have arrived.
void warp_meet(unsigned int mask);

// Runs `thread` as every thread of every block of a launch; a failure (an exception from
// a thread, a deadlock at a barrier) becomes the launch's error.
// `kernel` identifies the kernel for its cudaFuncSetAttribute() opt-in to more than 48 KiB
// of dynamic shared memory.
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
              const std::function<void()>& thread);

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
cudaError_t set_max_dynamic_shared_bytes(const void* kernel, int bytes);

template <typename T>
T shuffle(unsigned int mask, T value, int source) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(uint64_t),
                "warp shuffles exchange values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(mask, bits, source);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// ---------------------------------------------------------------------------------------
// Shared memory (runtime.cpp): one allocation per IK_SHARED declaration and block, one per
// distinct IK_DYNAMIC_SHARED region and block.
// ---------------------------------------------------------------------------------------

// Identifies an IK_SHARED or IK_DYNAMIC_SHARED declaration (a static object per site).
struct SharedSite {
  const char* name;
};

// The block's allocation of `site` (count elements of `element_size` bytes), made by the
// first of its threads to reach the declaration.
SharedMemory& shared_memory(const SharedSite& site, size_t count, size_t element_size);

// The block's region of the launch's dynamic shared memory at `offset_bytes` (count
// elements of `element_size` bytes): fails unless offset_bytes is a multiple of 16 and the
// region lies within the launch's dynamic bytes.  Declarations of the same region (offset,
// count, element size) share its allocation; partly overlapping regions fail, since each
// region is checked as an array of its own type.
SharedMemory& dynamic_shared_memory(const SharedSite& site, size_t offset_bytes, size_t count,
                                    size_t element_size);

// The byte offset of element 0 of `memory` from a 32-byte aligned base (WMMA's alignment
// check): a dynamic region's offset; 0 for IK_SHARED arrays (32-byte aligned under nvcc).
size_t shared_base_offset(const SharedMemory& memory);
// The name of `memory`'s declaration.
const char* shared_name(const SharedMemory& memory);

// ---------------------------------------------------------------------------------------
// Launches
// ---------------------------------------------------------------------------------------

// A configured launch of `kernel`: called with the kernel's arguments, it copies them
// (a launch passes arguments by value) and runs the grid.
template <typename... Params>
class Launch {
 public:
  Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes)
      : kernel_(kernel), grid_(grid), block_(block), shared_bytes_(shared_bytes) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::tuple<std::decay_t<Params>...> values(std::forward<Args>(args)...);
    run_grid(reinterpret_cast<const void*>(kernel_), grid_, block_, shared_bytes_,
             [&] { std::apply(kernel_, values); });
  }

 private:
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  size_t shared_bytes_;
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                         cudaStream_t) {
  return {kernel, grid, block, shared_bytes};
}

}  // namespace emulation
}  // namespace ik

// `kernel<<<grid, block, shared_bytes, stream>>>` (csrc/cuda/launch.h has nvcc's form).
#define IK_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::ik::emulation::launch(__VA_ARGS__, grid, block, shared_bytes, stream)

// `__shared__ type name[count]`: a per-block, checked array.
#define IK_SHARED(type, name, count)                               \
  static constexpr ::ik::emulation::SharedSite name##_site{#name}; \
  const ::ik::emulation::SharedPtr<type> name(                     \
      ::ik::emulation::shared_memory(name##_site, count, sizeof(type)), 0)

// A typed region of the launch's dynamic shared memory, checked as IK_SHARED's arrays.
#define IK_DYNAMIC_SHARED(type, name, offset_bytes, count)         \
  static constexpr ::ik::emulation::SharedSite name##_site{#name}; \
  ::ik::emulation::SharedPtr<type> name(                           \
      ::ik::emulation::dynamic_shared_memory(name##_site, offset_bytes, count, sizeof(type)), 0)

enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

// Only the dynamic shared memory opt-in is emulated: fails above 227 KiB (sm_90's limit
// per block; sm_80's is 163 KiB), and a launch asking for more than 48 KiB fails unless
// its kernel opted in to at least that much.
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute,
                                 int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::ik::emulation::set_max_dynamic_shared_bytes(reinterpret_cast<const void*>(kernel),
                                                       value);
}

inline void __syncthreads() { ::ik::emulation::barrier(); }

// A meeting point of the warp's lanes in `mask`.  The race checker knows only
// __syncthreads(): accesses of different threads of a warp on either side of a __syncwarp()
// still race, except for WMMA tiles a warp reloads or overwrites (mma.h).
inline void __syncwarp(unsigned int mask = 0xffffffffu) { ::ik::emulation::warp_meet(mask); }

template <typename T>
T __shfl_xor_sync(unsigned int mask, T value, int lane_mask) {
  return ::ik::emulation::shuffle(mask, value, ::ik::emulation::lane() ^ lane_mask);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta) {
  const int source = ::ik::emulation::lane() + static_cast<int>(delta);
  return ::ik::emulation::shuffle(
      mask, value, source < ::ik::emulation::kWarpSize ? source : ::ik::emulation::lane());
}

// Threads of a block run one at a time, so an atomic is a plain read-modify-write.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
T atomicAdd(const ::ik::emulation::GlobalPtr<T>& address, T value) {
  return atomicAdd(&address[0], value);
}
