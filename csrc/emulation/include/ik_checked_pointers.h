// Emulated builds only: the checked pointers behind ik::cuda::SharedPtr and
// ik::cuda::GlobalPtr (csrc/cuda/launch.h; plain `T*` under nvcc).  Included by
// ik_cuda_emulation.h.
//
// Both are fat pointers: where they point is a base and an element offset, so moving one
// out of range is harmless and only an access is checked.  SharedPtr<T> derives from
// SharedPtr<const T> (GlobalPtr likewise), which gives the T → const T conversion and lets
// a template taking `SharedPtr<const T>` deduce T from a `SharedPtr<float>` argument, as
// `const T*` does from `float*`.  The pointer arithmetic CUDA code uses is supported:
// `p[i]`, `*p`, `p + n`, `n + p`, `p - n`, `p - q`, `p += n`, `p -= n`, `++p`, `--p`,
// `p == q`, `p != q`, comparison with nullptr and `if (p)`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ik {
namespace emulation {

// ---------------------------------------------------------------------------------------
// Checks (runtime.cpp)
// ---------------------------------------------------------------------------------------

class SharedMemory;

// Element i of a shared allocation, checked: throws if i is out of range, if the element
// was never written, or on a race with another thread since the last barrier.
void* shared_read(SharedMemory& memory, int64_t i);
void* shared_write(SharedMemory& memory, int64_t i);
// Element i, checked against the bounds only (for WMMA loads, see mma.h).
const void* shared_peek(SharedMemory& memory, int64_t i);

// Throws: an access through a null SharedPtr.
[[noreturn]] void null_shared_access();

// Throws: index `index` of a global array of `count` elements is out of range.
[[noreturn]] void global_out_of_range(int64_t index, int64_t count);

// Pointer arithmetic for a fat pointer P with an element offset `offset_` (hidden friends,
// found through P's base classes).
template <typename P>
struct PointerArithmetic {
  friend P operator+(P p, int64_t n) {
    p.offset_ += n;
    return p;
  }
  friend P operator+(int64_t n, P p) { return p + n; }
  friend P operator-(P p, int64_t n) { return p + -n; }
  friend int64_t operator-(const P& a, const P& b) { return a.offset_ - b.offset_; }
  friend P& operator+=(P& p, int64_t n) {
    p.offset_ += n;
    return p;
  }
  friend P& operator-=(P& p, int64_t n) { return p += -n; }
  friend P& operator++(P& p) { return p += 1; }
  friend P& operator--(P& p) { return p -= 1; }
};

// ---------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------

// One element of a shared array: reads and writes go through the checks.  Converts to
// T, and a half type's element also straight to float, as a `__half&` would.
template <typename T>
class SharedElement {
 public:
  SharedElement(SharedMemory& memory, int64_t i) : memory_(memory), i_(i) {}
  operator T() const {
    T value;
    std::memcpy(&value, shared_read(memory_, i_), sizeof(T));
    return value;
  }
  template <typename U = T, typename = std::enable_if_t<std::is_class<U>::value>>
  operator float() const {
    return static_cast<float>(static_cast<T>(*this));
  }
  SharedElement& operator=(const T& value) {
    std::memcpy(shared_write(memory_, i_), &value, sizeof(T));
    return *this;
  }
  SharedElement& operator=(const SharedElement& other) { return *this = static_cast<T>(other); }
  template <typename U>
  SharedElement& operator+=(const U& value) {
    return *this = static_cast<T>(static_cast<T>(*this) + value);
  }
  template <typename U>
  SharedElement& operator-=(const U& value) {
    return *this = static_cast<T>(static_cast<T>(*this) - value);
  }
  template <typename U>
  SharedElement& operator*=(const U& value) {
    return *this = static_cast<T>(static_cast<T>(*this) * value);
  }

 private:
  SharedMemory& memory_;
  int64_t i_;
};

template <typename T>
class SharedPtr;

// A read-only pointer into a block's shared array: `p[i]` is a checked read.
template <typename T>
class SharedPtr<const T> : public PointerArithmetic<SharedPtr<const T>> {
  static_assert(std::is_trivially_copyable<T>::value, "shared memory holds plain values");

 public:
  using element_type = const T;

  SharedPtr() = default;
  SharedPtr(std::nullptr_t) {}  // NOLINT: implicit, as a pointer's
  SharedPtr(SharedMemory& memory, int64_t offset) : memory_(&memory), offset_(offset) {}

  T operator[](int64_t i) const {
    T value;
    std::memcpy(&value, shared_read(memory(), offset_ + i), sizeof(T));
    return value;
  }
  T operator*() const { return (*this)[0]; }
  explicit operator bool() const { return memory_ != nullptr; }
  friend bool operator==(const SharedPtr& a, const SharedPtr& b) {
    return a.memory_ == b.memory_ && a.offset_ == b.offset_;
  }
  friend bool operator!=(const SharedPtr& a, const SharedPtr& b) { return !(a == b); }

  // The allocation, checked, and element offset (for the emulation's own checks).
  SharedMemory& memory() const {
    if (memory_ == nullptr) null_shared_access();
    return *memory_;
  }
  SharedMemory* memory_ = nullptr;
  int64_t offset_ = 0;
};

// A pointer into a block's shared array: `p[i]` reads and writes through the checks.
template <typename T>
class SharedPtr : public SharedPtr<const T>, public PointerArithmetic<SharedPtr<T>> {
 public:
  using element_type = T;

  using SharedPtr<const T>::SharedPtr;

  SharedElement<T> operator[](int64_t i) const { return {this->memory(), this->offset_ + i}; }
  SharedElement<T> operator*() const { return (*this)[0]; }
};

// ---------------------------------------------------------------------------------------
// Global memory
// ---------------------------------------------------------------------------------------

template <typename T>
class GlobalPtr;

// A read-only pointer into an array of `count_` elements at `begin_`: `p[i]` throws
// unless `offset_ + i` is in [0, count_).
template <typename T>
class GlobalPtr<const T> : public PointerArithmetic<GlobalPtr<const T>> {
 public:
  using element_type = const T;

  GlobalPtr() = default;
  GlobalPtr(std::nullptr_t) {}  // NOLINT: implicit, as a pointer's
  GlobalPtr(const T* begin, int64_t count) : begin_(begin), count_(begin ? count : 0) {}

  const T& operator[](int64_t i) const { return *checked(i); }
  const T& operator*() const { return *checked(0); }
  explicit operator bool() const { return begin_ != nullptr; }
  friend bool operator==(const GlobalPtr& a, const GlobalPtr& b) {
    return a.begin_ + a.offset_ == b.begin_ + b.offset_;
  }
  friend bool operator!=(const GlobalPtr& a, const GlobalPtr& b) { return !(a == b); }

  // The address of element offset_ + i, checked.
  const T* checked(int64_t i) const {
    const int64_t index = offset_ + i;
    if (index < 0 || index >= count_) global_out_of_range(index, count_);
    return begin_ + index;
  }
  // The address the pointer holds, unchecked (for the emulation's alignment checks).
  const T* address() const { return begin_ + offset_; }

  const T* begin_ = nullptr;
  int64_t count_ = 0, offset_ = 0;
};

// A pointer into a writable global array, checked as GlobalPtr<const T>.
template <typename T>
class GlobalPtr : public GlobalPtr<const T>, public PointerArithmetic<GlobalPtr<T>> {
 public:
  using element_type = T;

  GlobalPtr() = default;
  GlobalPtr(std::nullptr_t) {}  // NOLINT: implicit, as a pointer's
  GlobalPtr(T* begin, int64_t count) : GlobalPtr<const T>(begin, count) {}

  // The array was writable when wrapped, so casting the constness away is well-defined.
  T& operator[](int64_t i) const { return const_cast<T&>(GlobalPtr<const T>::operator[](i)); }
  T& operator*() const { return (*this)[0]; }
};

// The element type a pointer-like argument (raw, SharedPtr, GlobalPtr) points to.
template <typename P>
struct pointee;
template <typename T>
struct pointee<T*> {
  using type = T;
};
template <typename T>
struct pointee<SharedPtr<T>> {
  using type = T;
};
template <typename T>
struct pointee<GlobalPtr<T>> {
  using type = T;
};

template <typename P>
struct is_shared_pointer : std::false_type {};
template <typename T>
struct is_shared_pointer<SharedPtr<T>> : std::true_type {};

}  // namespace emulation
}  // namespace ik
