// Emulated builds only: the part of CUDA's <mma.h> (nvcuda::wmma) the kernels use, 16×16×16
// tiles of __half or __nv_bfloat16 inputs with float accumulators.
//
// Every lane of a warp holds the whole tile (element (r, c) at x[16·r + c]), so kernels must
// not depend on which lane holds which element (CUDA leaves that unspecified): apply
// element-wise steps after a store.  mma_sync multiplies in float (the half types' products
// are exact in float) and adds the products to the accumulator in k order.  A store is
// spread over the warp (lane l writes elements l, l + 32, ...), so the race checker sees one
// writer per element; a load from shared memory reads every element in every lane, but only
// lane l's reads of elements l, l + 32, ... count for the race checker, so a warp may store
// a tile back where it loaded it (the collective ops order its lanes) while other warps'
// accesses without a barrier are still races.  Each call is a meeting point of the whole
// warp, as on the GPU.
//
// Pointers may be raw, SharedPtr or GlobalPtr (accesses checked as theirs), of exactly the
// fragment's element type; they must be 32-byte aligned and ldm a multiple of 16 bytes,
// as CUDA requires.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "ik_cuda_emulation.h"

namespace ik {
namespace emulation {

// Throws: a WMMA call's pointer or leading dimension breaks CUDA's requirements.
[[noreturn]] void wmma_misuse(const std::string& what);

constexpr int kTile = 16;
constexpr int kTileElements = kTile * kTile;

// Byte offset of a pointer from a 32-byte aligned base, for the alignment check, and
// where it points, for its message.
template <typename T>
uintptr_t aligned_offset(T* p) {
  return reinterpret_cast<uintptr_t>(p);
}
template <typename T>
uintptr_t aligned_offset(const SharedPtr<T>& p) {
  return p.memory_ ? shared_base_offset(*p.memory_) + p.offset_ * sizeof(T) : 0;
}
template <typename T>
uintptr_t aligned_offset(const GlobalPtr<T>& p) {
  return reinterpret_cast<uintptr_t>(p.address());
}
template <typename T>
std::string pointer_name(T*) {
  return "the pointer";
}
template <typename T>
std::string pointer_name(const SharedPtr<T>& p) {
  return p.memory_ ? "the pointer to element " + std::to_string(p.offset_) + " of shared '" +
                         shared_name(*p.memory_) + "'"
                   : "a null pointer";
}
template <typename T>
std::string pointer_name(const GlobalPtr<T>& p) {
  return "the pointer to element " + std::to_string(p.offset_) + " of a global array";
}

// CUDA's requirements on a WMMA pointer of `Element`s and its leading dimension.
template <typename Element, typename Ptr>
void check_wmma_pointer(const char* call, const Ptr& p, unsigned ldm) {
  using Pointee = typename pointee<Ptr>::type;
  static_assert(std::is_same<std::remove_const_t<Pointee>, Element>::value,
                "a WMMA pointer must point to the fragment's element type");
  if (aligned_offset(p) % 32 != 0) {
    wmma_misuse(std::string(call) + ": " + pointer_name(p) + " is not 32-byte aligned");
  }
  if (ldm * sizeof(Element) % 16 != 0 || ldm < kTile) {
    wmma_misuse(std::string(call) + ": ldm " + std::to_string(ldm) +
                " is not a multiple of 16 bytes of at least 16 elements");
  }
}

// Makes the calling lane wait for its warp's other lanes (a WMMA call is warp-wide).
inline void wmma_warp_meet() { warp_meet(0xffffffffu); }

// Element i of a WMMA load's tile at p: a checked read in the lane that owns the element
// (i % 32), a read checked against the bounds only in the others.
template <typename Ptr>
std::remove_const_t<typename pointee<Ptr>::type> tile_element(const Ptr& p, int64_t i, int e) {
  using T = std::remove_const_t<typename pointee<Ptr>::type>;
  if constexpr (is_shared_pointer<Ptr>::value) {
    if (e % kWarpSize != lane()) {
      T value;
      std::memcpy(&value, shared_peek(p.memory(), p.offset_ + i), sizeof(T));
      return value;
    }
  }
  return static_cast<T>(p[i]);
}

}  // namespace emulation
}  // namespace ik

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment {
  static_assert(m == 16 && n == 16 && k == 16, "the emulation has only 16x16x16 tiles");
  static_assert(std::is_same<Use, accumulator>::value
                    ? std::is_same<T, float>::value && std::is_void<Layout>::value
                    : (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) &&
                          (std::is_same<Layout, row_major>::value ||
                           std::is_same<Layout, col_major>::value),
                "emulated fragments: matrix_a/matrix_b of __half or __nv_bfloat16 with a "
                "layout; accumulator of float without one");

 public:
  using element_type = T;
  static constexpr int num_elements = ::ik::emulation::kTileElements;
  T x[num_elements];  // element (r, c) at x[16 r + c], in every lane
};

template <typename Use, typename T, typename Layout, typename Value>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const Value& value) {
  ::ik::emulation::wmma_warp_meet();
  for (T& e : f.x) e = static_cast<T>(value);
}

// A: element (i, k) at p[i·ldm + k] (row_major) or p[i + k·ldm]; B: element (k, j) at
// p[k·ldm + j] (row_major) or p[k + j·ldm].
template <typename Use, typename T, typename Layout, typename Ptr>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const Ptr& p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value,
                "an accumulator's load_matrix_sync takes a layout_t");
  ::ik::emulation::check_wmma_pointer<T>("load_matrix_sync", p, ldm);
  ::ik::emulation::wmma_warp_meet();
  const bool row = std::is_same<Layout, row_major>::value;
  for (int e = 0; e < ::ik::emulation::kTileElements; ++e) {
    const int r = e / 16, c = e % 16;
    f.x[e] = ::ik::emulation::tile_element(p, row ? r * ldm + c : r + c * ldm, e);
  }
}

template <typename Ptr>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const Ptr& p, unsigned ldm,
                      layout_t layout) {
  ::ik::emulation::check_wmma_pointer<float>("load_matrix_sync", p, ldm);
  ::ik::emulation::wmma_warp_meet();
  for (int e = 0; e < ::ik::emulation::kTileElements; ++e) {
    const int r = e / 16, c = e % 16;
    f.x[e] =
        ::ik::emulation::tile_element(p, layout == mem_row_major ? r * ldm + c : r + c * ldm, e);
  }
}

// Lane l writes elements l, l + 32, ... of the tile.
template <typename Ptr>
void store_matrix_sync(const Ptr& p, const fragment<accumulator, 16, 16, 16, float>& f,
                       unsigned ldm, layout_t layout) {
  ::ik::emulation::check_wmma_pointer<float>("store_matrix_sync", p, ldm);
  ::ik::emulation::wmma_warp_meet();
  for (int e = ::ik::emulation::lane(); e < ::ik::emulation::kTileElements;
       e += ::ik::emulation::kWarpSize) {
    const int r = e / 16, c = e % 16;
    p[layout == mem_row_major ? r * ldm + c : r + c * ldm] = f.x[e];
  }
}

// d = a·b + c (d may be c).
template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  ::ik::emulation::wmma_warp_meet();
  float fa[::ik::emulation::kTileElements], fb[::ik::emulation::kTileElements];
  for (int e = 0; e < ::ik::emulation::kTileElements; ++e) {
    fa[e] = static_cast<float>(a.x[e]);
    fb[e] = static_cast<float>(b.x[e]);
  }
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      float sum = c.x[16 * i + j];
      for (int k = 0; k < 16; ++k) sum += fa[16 * i + k] * fb[16 * k + j];
      d.x[16 * i + j] = sum;
    }
  }
}

}  // namespace wmma
}  // namespace nvcuda
