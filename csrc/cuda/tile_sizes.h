// Sizes of the fused kernels' row tiles (csrc/cuda/tile_mlp.h), plain constants so that the
// host glue, which pads every width to them, needs no device header.
#pragma once

#include <cstdint>

namespace ik {
namespace cuda {

// Rows per block tile, and threads per block (8 warps).
constexpr int kTileRows = 32;
constexpr int kTileThreads = 256;
// Layer widths are multiples of kWidthAlign (zero-padded by the glue), at most kMaxWidth.
constexpr int kMaxWidth = 256;
constexpr int kWidthAlign = 16;
// Most Linear layers one fused chain runs (a decoder stage after its first layer).
constexpr int kMaxLayers = 8;

// `width` zero-padded to a multiple of kWidthAlign.
inline int64_t padded_width(int64_t width) {
  return (width + kWidthAlign - 1) / kWidthAlign * kWidthAlign;
}

}  // namespace cuda
}  // namespace ik
