// The emulation layer's scheduler (see include/ik_cuda_emulation.h): blocks run one after
// another on the calling thread; a block's threads are ucontext fibers on stacks of their
// own, resumed in thread order until each finishes or waits at a barrier or a shuffle.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <array>
#include <exception>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "ik_cuda_emulation.h"
#include "mma.h"

namespace ik {
namespace emulation {

// Per-thread stack: kernels keep small arrays; the C library's maths needs a few KiB.
constexpr size_t kStackBytes = 256 << 10;
// Static shared memory a block may declare, and dynamic shared memory a launch may ask
// for without cudaFuncSetAttribute() (CUDA's limit without opt-in).
constexpr size_t kSharedBytes = 48 << 10;
// Shared memory a block may use in all with the opt-in (sm_90).
constexpr size_t kMaxSharedBytes = 227 << 10;
constexpr unsigned int kMaxThreads = 1024;

// A fiber stack, with an inaccessible page below it so an overflow faults.
class Stack {
 public:
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    bytes_ = kStackBytes + page;
    void* base = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) throw std::runtime_error("cannot allocate a fiber stack");
    mprotect(base, page, PROT_NONE);
    base_ = static_cast<char*>(base);
    top_ = base_ + page;
  }
  ~Stack() { munmap(base_, bytes_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;

  char* top() const { return top_; }

 private:
  char* base_;
  char* top_;
  size_t bytes_;
};

enum class State { kRunnable, kAtBarrier, kAtShuffle, kFinished };

struct Fiber {
  ucontext_t context;
  State state = State::kRunnable;
  uint3 index{0, 0, 0};
  int linear = 0;
  std::exception_ptr error;
};

// Lanes of one warp meeting at a shuffle.
struct Warp {
  int arrived = 0;
  unsigned int mask = 0;
  std::array<uint64_t, kWarpSize> bits{};
  std::array<int, kWarpSize> source{};
  std::array<uint64_t, kWarpSize> result{};
};

// Who last touched a shared element, and in which barrier interval (epoch; 0: never).
struct Access {
  uint64_t write_epoch = 0, read_epoch = 0;
  int writer = -1, reader = -1;  // reader kManyReaders: more than one thread
};
constexpr int kManyReaders = -2;

}  // namespace emulation
}  // namespace ik

class ik::emulation::SharedMemory {
 public:
  SharedMemory(const char* name, size_t count, size_t element_size, size_t base_offset)
      : name(name),
        count(count),
        element_size(element_size),
        base_offset(base_offset),
        bytes(count * element_size),
        access(count) {}

  const char* name;
  size_t count, element_size;
  size_t base_offset;  // in the dynamic shared memory; 0 for IK_SHARED arrays
  std::vector<unsigned char> bytes;
  std::vector<Access> access;
};

namespace ik {
namespace emulation {
namespace {

// The block being run on this thread.
struct Block {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  ucontext_t scheduler;
  uint64_t epoch = 1;
  size_t shared_bytes = 0;   // IK_SHARED arrays' total
  size_t dynamic_bytes = 0;  // the launch's dynamic shared memory
  std::unordered_map<const SharedSite*, std::unique_ptr<SharedMemory>> shared;
  std::map<size_t, std::unique_ptr<SharedMemory>> dynamic;  // by offset
};

thread_local Block* current_block = nullptr;
thread_local Fiber* current_fiber = nullptr;
thread_local std::vector<std::unique_ptr<Stack>> stacks;
thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string last_error_detail;
// Kernels' cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) values.
thread_local std::unordered_map<const void*, size_t> max_dynamic_shared_bytes;

std::string coordinates(const uint3& i) {
  std::ostringstream s;
  s << "(" << i.x << ", " << i.y << ", " << i.z << ")";
  return s.str();
}

std::string thread_name(const Fiber& f) {
  return "thread " + coordinates(f.index) + " of block " + coordinates(blockIdx);
}

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

Fiber& running(const char* what) {
  if (current_fiber == nullptr) fail(std::string(what) + " called outside a kernel");
  return *current_fiber;
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void suspend(Fiber& f, State state) {
  f.state = state;
  swapcontext(&f.context, &current_block->scheduler);
}

void fiber_main() {
  Fiber& f = *current_fiber;
  try {
    (*current_block->body)();
  } catch (...) {
    f.error = std::current_exception();
  }
  f.state = State::kFinished;
  // Returning resumes uc_link: the scheduler.
}

void resume(Fiber& f) {
  current_fiber = &f;
  threadIdx = f.index;
  swapcontext(&current_block->scheduler, &f.context);
  current_fiber = nullptr;
  if (f.error) std::rethrow_exception(f.error);
}

// Nothing can run: release a barrier every live thread waits at, or report why not.
void release_barrier(Block& b) {
  int waiting = 0;
  const Fiber* finished = nullptr;
  for (Fiber& f : b.fibers) {
    if (f.state == State::kAtShuffle) {
      fail(thread_name(f) +
           " waits at a warp shuffle or WMMA call that lanes of its warp never reach");
    }
    if (f.state == State::kAtBarrier) ++waiting;
    if (f.state == State::kFinished && finished == nullptr) finished = &f;
  }
  if (finished != nullptr) {
    fail(thread_name(*finished) + " exited while " + std::to_string(waiting) +
         " threads of its block wait at __syncthreads()");
  }
  ++b.epoch;
  for (Fiber& f : b.fibers) f.state = State::kRunnable;
}

void run_block(Block& b) {
  b.epoch = 1;
  b.shared.clear();
  b.dynamic.clear();
  b.shared_bytes = 0;
  for (Warp& w : b.warps) w.arrived = 0;
  for (Fiber& f : b.fibers) {
    f.state = State::kRunnable;
    f.error = nullptr;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[f.linear]->top();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  for (;;) {
    bool ran = false, live = false;
    for (Fiber& f : b.fibers) {
      if (f.state == State::kRunnable) {
        resume(f);
        ran = true;
      }
      live = live || f.state != State::kFinished;
    }
    if (!live) return;
    if (!ran) release_barrier(b);
  }
}

void set_error(cudaError_t error, const std::string& detail) {
  last_error = error;
  last_error_detail = detail;
}

}  // namespace

void barrier() { suspend(running("__syncthreads()"), State::kAtBarrier); }

int lane() { return running("a warp shuffle").linear % kWarpSize; }

uint64_t warp_exchange(unsigned int mask, uint64_t bits, int source) {
  Fiber& f = running("a warp shuffle");
  Block& b = *current_block;
  const int me = f.linear % kWarpSize, first = f.linear - me;
  Warp& w = b.warps[f.linear / kWarpSize];
  if (!(mask & (1u << me))) fail(thread_name(f) + " shuffles with a mask that excludes it");
  if (w.arrived > 0 && mask != w.mask) {
    fail(thread_name(f) + " shuffles with another mask than the rest of its warp");
  }
  w.mask = mask;
  w.bits[me] = bits;
  w.source[me] = source;
  int expected = 0;
  for (int l = 0; l < kWarpSize; ++l) {
    expected += (mask >> l & 1u) && first + l < static_cast<int>(b.fibers.size());
  }
  if (++w.arrived < expected) {
    suspend(f, State::kAtShuffle);
  } else {
    // The last lane to arrive hands every waiting lane its result and wakes it.
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(mask >> l & 1u) || first + l >= static_cast<int>(b.fibers.size())) continue;
      const int s = w.source[l];
      if (s < 0 || s >= kWarpSize || !(mask >> s & 1u)) {
        fail(thread_name(b.fibers[first + l]) + " reads lane " + std::to_string(s) +
             " outside the shuffle's mask");
      }
      w.result[l] = w.bits[s];
      if (first + l != f.linear) b.fibers[first + l].state = State::kRunnable;
    }
    w.arrived = 0;
  }
  return w.result[me];
}

SharedMemory& shared_memory(const SharedSite& site, size_t count, size_t element_size) {
  Fiber& f = running("IK_SHARED");
  Block& b = *current_block;
  std::unique_ptr<SharedMemory>& memory = b.shared[&site];
  if (!memory) {
    b.shared_bytes += count * element_size;
    if (b.shared_bytes > kSharedBytes) {
      fail(thread_name(f) + ": shared memory '" + site.name + "' takes the block's total to " +
           std::to_string(b.shared_bytes) + " bytes, over " + std::to_string(kSharedBytes));
    }
    if (b.shared_bytes + b.dynamic_bytes > kMaxSharedBytes) {
      fail(thread_name(f) + ": shared memory '" + site.name + "' takes the block's total with " +
           "the launch's " + std::to_string(b.dynamic_bytes) + " dynamic bytes over " +
           std::to_string(kMaxSharedBytes));
    }
    memory = std::make_unique<SharedMemory>(site.name, count, element_size, 0);
  } else if (memory->count != count || memory->element_size != element_size) {
    fail(thread_name(f) + " declares shared memory '" + site.name +
         "' with another size than its block's other threads");
  }
  return *memory;
}

SharedMemory& dynamic_shared_memory(const SharedSite& site, size_t offset_bytes, size_t count,
                                    size_t element_size) {
  Fiber& f = running("IK_DYNAMIC_SHARED");
  Block& b = *current_block;
  const size_t end = offset_bytes + count * element_size;
  const std::string region = std::string("dynamic shared region '") + site.name + "' [" +
                             std::to_string(offset_bytes) + ", " + std::to_string(end) + ")";
  std::unique_ptr<SharedMemory>& memory = b.dynamic[offset_bytes];
  if (memory && memory->count == count && memory->element_size == element_size) return *memory;
  if (memory) {
    fail(thread_name(f) + ": " + region + " redeclares region '" + memory->name +
         "' at the same offset with another element size or count");
  }
  if (offset_bytes % 16 != 0) fail(thread_name(f) + ": " + region + " is not 16-byte aligned");
  if (end > b.dynamic_bytes) {
    fail(thread_name(f) + ": " + region + " ends past the launch's " +
         std::to_string(b.dynamic_bytes) + " bytes of dynamic shared memory");
  }
  for (const auto& [start, other] : b.dynamic) {
    if (other && start < end && offset_bytes < start + other->count * other->element_size) {
      fail(thread_name(f) + ": " + region + " overlaps region '" + other->name + "' [" +
           std::to_string(start) + ", " +
           std::to_string(start + other->count * other->element_size) +
           ") (each region is checked as an array of its own, so they must be disjoint)");
    }
  }
  memory = std::make_unique<SharedMemory>(site.name, count, element_size, offset_bytes);
  return *memory;
}

void warp_meet(unsigned int mask) { warp_exchange(mask, 0, lane()); }

void wmma_misuse(const std::string& what) { fail(thread_name(running("WMMA")) + ": " + what); }

size_t shared_base_offset(const SharedMemory& memory) { return memory.base_offset; }

const char* shared_name(const SharedMemory& memory) { return memory.name; }

void null_shared_access() {
  fail(thread_name(running("a shared-memory access")) +
       " accesses shared memory through a null "
       "pointer");
}

void global_out_of_range(int64_t index, int64_t count) {
  const std::string where = current_fiber ? thread_name(*current_fiber) : std::string("the host");
  fail(where + " accesses global memory at index " + std::to_string(index) +
       ", outside the array's range [0, " + std::to_string(count) + ")");
}

namespace {

// Index i of `memory` for the running thread, or an error naming it.
size_t checked_index(SharedMemory& memory, int64_t i, const Fiber& f) {
  if (i < 0 || static_cast<uint64_t>(i) >= memory.count) {
    fail(thread_name(f) + " indexes shared memory " + memory.name + "[" + std::to_string(i) +
         "] out of range [0, " + std::to_string(memory.count) + ")");
  }
  return static_cast<size_t>(i);
}

std::string element(const SharedMemory& memory, size_t i) {
  return std::string(memory.name) + "[" + std::to_string(i) + "]";
}

std::string thread_named(const Block& b, int linear) {
  return "thread " + coordinates(b.fibers[linear].index);
}

}  // namespace

void* shared_read(SharedMemory& memory, int64_t index) {
  const Fiber& f = running("a shared-memory read");
  const Block& b = *current_block;
  const size_t i = checked_index(memory, index, f);
  Access& a = memory.access[i];
  if (a.write_epoch == 0) {
    fail(thread_name(f) + " reads " + element(memory, i) + " before any thread wrote it");
  }
  if (a.write_epoch == b.epoch && a.writer != f.linear) {
    fail(thread_name(f) + " reads " + element(memory, i) + ", which " + thread_named(b, a.writer) +
         " wrote with no __syncthreads() between");
  }
  if (a.read_epoch != b.epoch) {
    a.read_epoch = b.epoch;
    a.reader = f.linear;
  } else if (a.reader != f.linear) {
    a.reader = kManyReaders;
  }
  return memory.bytes.data() + i * memory.element_size;
}

const void* shared_peek(SharedMemory& memory, int64_t index) {
  const size_t i = checked_index(memory, index, running("a shared-memory read"));
  return memory.bytes.data() + i * memory.element_size;
}

void* shared_write(SharedMemory& memory, int64_t index) {
  const Fiber& f = running("a shared-memory write");
  const Block& b = *current_block;
  const size_t i = checked_index(memory, index, f);
  Access& a = memory.access[i];
  if (a.write_epoch == b.epoch && a.writer != f.linear) {
    fail(thread_name(f) + " writes " + element(memory, i) + ", which " + thread_named(b, a.writer) +
         " wrote with no __syncthreads() between");
  }
  if (a.read_epoch == b.epoch && a.reader != f.linear) {
    fail(thread_name(f) + " writes " + element(memory, i) + ", which " +
         (a.reader == kManyReaders ? std::string("other threads") : thread_named(b, a.reader)) +
         " read with no __syncthreads() between");
  }
  a.write_epoch = b.epoch;
  a.writer = f.linear;
  return memory.bytes.data() + i * memory.element_size;
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
              const std::function<void()>& thread) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    set_error(cudaErrorInvalidConfiguration,
              "invalid configuration argument: grid " + coordinates({grid.x, grid.y, grid.z}) +
                  ", block " + coordinates({block.x, block.y, block.z}));
    return;
  }
  if (dynamic_shared_bytes > kSharedBytes) {
    const auto opt_in = max_dynamic_shared_bytes.find(kernel);
    if (opt_in == max_dynamic_shared_bytes.end() || opt_in->second < dynamic_shared_bytes) {
      set_error(cudaErrorInvalidConfiguration,
                "a launch asks for " + std::to_string(dynamic_shared_bytes) +
                    " bytes of dynamic shared memory, over " + std::to_string(kSharedBytes) +
                    " and over what its kernel's cudaFuncSetAttribute("
                    "cudaFuncAttributeMaxDynamicSharedMemorySize) allows");
      return;
    }
  }
  if (current_block != nullptr) {
    set_error(cudaErrorLaunchFailure, "a kernel launched from inside a kernel");
    return;
  }
  while (stacks.size() < threads) stacks.push_back(std::make_unique<Stack>());
  Block b;
  b.body = &thread;
  b.dynamic_bytes = dynamic_shared_bytes;
  b.fibers.resize(threads);
  b.warps.resize((threads + kWarpSize - 1) / kWarpSize);
  int linear = 0;
  for (unsigned int z = 0; z < block.z; ++z) {
    for (unsigned int y = 0; y < block.y; ++y) {
      for (unsigned int x = 0; x < block.x; ++x, ++linear) {
        b.fibers[linear].index = {x, y, z};
        b.fibers[linear].linear = linear;
      }
    }
  }
  current_block = &b;
  gridDim = grid;
  blockDim = block;
  try {
    for (unsigned int z = 0; z < grid.z; ++z) {
      for (unsigned int y = 0; y < grid.y; ++y) {
        for (unsigned int x = 0; x < grid.x; ++x) {
          blockIdx = {x, y, z};
          run_block(b);
        }
      }
    }
  } catch (const std::exception& e) {
    set_error(cudaErrorLaunchFailure, e.what());
  } catch (...) {
    set_error(cudaErrorLaunchFailure, "a kernel thread threw a non-standard exception");
  }
  current_block = nullptr;
}

cudaError_t set_max_dynamic_shared_bytes(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSharedBytes) {
    set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(bytes) +
                                         " bytes of dynamic shared memory, over the " +
                                         std::to_string(kMaxSharedBytes) + " a block may use");
    return cudaErrorInvalidValue;
  }
  max_dynamic_shared_bytes[kernel] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

}  // namespace emulation
}  // namespace ik

cudaError_t cudaGetLastError() {
  const cudaError_t error = ik::emulation::last_error;
  ik::emulation::last_error = cudaSuccess;
  return error;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    default:
      // The last failure's detail: a launch's error is read right after it.
      return ik::emulation::last_error_detail.c_str();
  }
}
