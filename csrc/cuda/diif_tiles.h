// The fused DIIF decode's work per tile of rows (docs/diif.md, "Equal, cheaper forms"), as
// device functions the fused kernels share (the forward, csrc/cuda/diif_fused.cu, and the
// backward's recompute of the activations, csrc/cuda/diif_fused_backward.cu, which runs
// the first activations, coarse_tile_input and fine_tile_input, then its own layers):
//   coarse_tile_forward: kTileRows slice-vertex rows -> relu(pre), the coarse layers -> H
//     pre = corner_proj[corner] + w_coord·coords + b0   (in the accumulation type)
//   fine_tile_forward:   kTileRows pixels -> relu(z), the fine layers -> the output's product
//     z = fine_b0 + fine_wd·d + Σ_t w_t(d)·G[slice·V + t]   (G = fine_wh·H per row)
//     or, with hidden_blend, fine_b0 + fine_wd·d + fine_wh·Σ_t w_t(d)·H[slice·V + t]
//     (the same linear map: one fine_wh product per pixel instead of one per row, taken
//     when a call has fewer pixels than rows)
// Activations live in shared memory (csrc/cuda/tile_mlp.h); widths are padded to
// kWidthAlign with zero weights and biases.
#pragma once

#include "diif_fused_cuda.h"
#include "ik/diif_decode.h"
#include "tile_mlp.h"

namespace ik {
namespace diif {

// The coarse stage of the slice-vertex rows.
template <typename T>
struct CoarseTiles {
  using Acc = cuda::AccumulateOf<T>;
  int64_t rows;                            // R = slices × vertices
  cuda::GlobalPtr<const Acc> coords;       // (R, kCoordInputs)
  cuda::GlobalPtr<const int64_t> corners;  // (R,) rows of corner_proj
  cuda::GlobalPtr<const T> corner_proj;    // (corner rows, corner_width)
  int corner_width;                        // the unpadded width of corner_proj
  int width;                               // the padded width of the first layer
  cuda::GlobalPtr<const T> w_coord, b0;    // (width, kCoordInputs), (width,)
  cuda::TileLayer<T> layers[cuda::kMaxLayers];
  int count;
};

// The fine stage of the pixels.
template <typename T>
struct FineTiles {
  int64_t n;  // pixels
  Dims dims;
  cuda::GlobalPtr<const int64_t> pixels;    // (n, 2)
  cuda::GlobalPtr<const int64_t> slice_of;  // (n,)
  int width;                                // the padded width of the fine first layer
  // Per slice-vertex row, what the pixels blend: G (R, width), or with hidden_blend H
  // (R, hidden), then multiplied by wh (width, hidden).
  bool hidden_blend;
  cuda::GlobalPtr<const T> vertex_rows;
  int hidden;
  cuda::GlobalPtr<const T> wh;
  cuda::GlobalPtr<const T> wd, b0;  // (width, 2), (width,)
  cuda::TileLayer<T> layers[cuda::kMaxLayers];
  int count;
};

// Rows of the tile starting at row0 that exist (the last tile may be partial).
IK_HD int tile_rows(int64_t row0, int64_t total) {
  return total - row0 < cuda::kTileRows ? static_cast<int>(total - row0) : cuda::kTileRows;
}

// The coarse stage's first activation relu(pre) of rows row0.. (kTileRows; rows past
// p.rows are zero) in act (kTileRows × ld).
template <typename T>
__device__ void coarse_tile_input(const CoarseTiles<T>& p, int64_t row0, cuda::SharedPtr<T> act,
                                  int ld) {
  using Acc = cuda::AccumulateOf<T>;
  const int rows = tile_rows(row0, p.rows);
  for (int e = threadIdx.x; e < cuda::kTileRows * p.width; e += cuda::kTileThreads) {
    const int r = e / p.width, o = e - r * p.width;
    Acc pre = Acc(0);
    if (r < rows) {
      const int64_t row = row0 + r;
      pre = static_cast<Acc>(p.b0[o]);
      for (int k = 0; k < kCoordInputs; ++k) {
        pre += static_cast<Acc>(p.w_coord[o * kCoordInputs + k]) * p.coords[row * kCoordInputs + k];
      }
      if (o < p.corner_width) {
        pre += static_cast<Acc>(p.corner_proj[p.corners[row] * p.corner_width + o]);
      }
    }
    act[r * ld + o] = static_cast<T>(pre < Acc(0) ? Acc(0) : pre);
  }
  __syncthreads();
}

// The coarse stage of rows row0.. (kTileRows; rows past p.rows are zero): relu(pre) in
// act, layer l's output in act + (l + 1)·act_stride, so H is at act + p.count·act_stride.
// acc: the accumulator tile; every tile is kTileRows × ld.
template <typename T>
__device__ void coarse_tile_forward(const CoarseTiles<T>& p, int64_t row0, cuda::SharedPtr<T> act,
                                    int64_t act_stride, cuda::SharedPtr<cuda::AccumulateOf<T>> acc,
                                    int ld) {
  coarse_tile_input<T>(p, row0, act, ld);
  cuda::tile_mlp_forward<T, cuda::AccumulateOf<T>>(p.layers, p.count, /*relu_last=*/true, act,
                                                   act_stride, acc, ld, /*store_last=*/true);
}

// The fine stage's first activation relu(z) of pixels row0.. (kTileRows; rows past p.n
// are zero) in act; acc (the accumulator tile) is overwritten.  Tiles are kTileRows × ld.
template <typename T>
__device__ void fine_tile_input(const FineTiles<T>& p, int64_t row0, cuda::SharedPtr<T> act,
                                cuda::SharedPtr<cuda::AccumulateOf<T>> acc, int ld) {
  using Acc = cuda::AccumulateOf<T>;
  constexpr int kGeometry = 2 + kVertices;  // d, then the vertex weights
  IK_SHARED(Acc, geometry, cuda::kTileRows * kGeometry);
  IK_SHARED(int64_t, first_row, cuda::kTileRows);  // the pixel's slice's first vertex row
  const int rows = tile_rows(row0, p.n), vertices = vertex_count(p.dims);
  const int r0 = threadIdx.x;
  if (r0 < rows) {
    const int64_t q = row0 + r0;
    Acc offset[2], weight[kVertices] = {};
    pixel_offset_weights<Acc>(p.pixels[2 * q], p.pixels[2 * q + 1], p.dims, offset, weight);
#pragma unroll
    for (int k = 0; k < 2; ++k) geometry[r0 * kGeometry + k] = offset[k];
#pragma unroll
    for (int t = 0; t < kVertices; ++t) {
      if (t < vertices) geometry[r0 * kGeometry + 2 + t] = weight[t];
    }
    first_row[r0] = p.slice_of[q] * vertices;
  }
  __syncthreads();
  // Each element of the tile reads its row's geometry (registers, fixed indices).
  const auto row_geometry = [&](int r, Acc offset[2], Acc weight[kVertices]) {
#pragma unroll
    for (int k = 0; k < 2; ++k) offset[k] = geometry[r * kGeometry + k];
#pragma unroll
    for (int t = 0; t < kVertices; ++t) {
      weight[t] = t < vertices ? Acc(geometry[r * kGeometry + 2 + t]) : Acc(0);
    }
  };
  if (p.hidden_blend) {
    // act = Σ_t w_t H_t, then acc = wh·act.
    for (int e = threadIdx.x; e < cuda::kTileRows * p.hidden; e += cuda::kTileThreads) {
      const int r = e / p.hidden, c = e - r * p.hidden;
      Acc mix = Acc(0);
      if (r < rows) {
        Acc offset[2], weight[kVertices];
        row_geometry(r, offset, weight);
        mix = add_vertex_sum<Acc>(mix, c, p.hidden, vertices,
                                  p.vertex_rows + first_row[r] * p.hidden, weight);
      }
      act[r * ld + c] = static_cast<T>(mix);
    }
    __syncthreads();
    cuda::tile_linear<T, Acc>(act, ld, p.wh, false, p.hidden, p.width, acc, ld);
  }
  for (int e = threadIdx.x; e < cuda::kTileRows * p.width; e += cuda::kTileThreads) {
    const int r = e / p.width, o = e - r * p.width;
    Acc z = Acc(0);
    if (r < rows) {
      Acc offset[2], weight[kVertices];
      row_geometry(r, offset, weight);
      z = offset_channel<Acc>(o, p.wd, p.b0, offset);
      if (p.hidden_blend) {
        z += acc[r * ld + o];
      } else {
        z = add_vertex_sum<Acc>(z, o, p.width, vertices, p.vertex_rows + first_row[r] * p.width,
                                weight);
      }
    }
    act[r * ld + o] = static_cast<T>(z < Acc(0) ? Acc(0) : z);
  }
  __syncthreads();
}

// The fine stage of pixels row0.. (kTileRows; rows past p.n are zero): relu(z) in act,
// the hidden layers' outputs in act + l·act_stride (l = 1 .. count - 1), and the last
// layer's product (before its bias) in acc.
template <typename T>
__device__ void fine_tile_forward(const FineTiles<T>& p, int64_t row0, cuda::SharedPtr<T> act,
                                  int64_t act_stride, cuda::SharedPtr<cuda::AccumulateOf<T>> acc,
                                  int ld) {
  fine_tile_input<T>(p, row0, act, acc, ld);
  cuda::tile_mlp_forward<T, cuda::AccumulateOf<T>>(p.layers, p.count, /*relu_last=*/false, act,
                                                   act_stride, acc, ld, /*store_last=*/false);
}

}  // namespace diif
}  // namespace ik
