// The fused DIIF forward (docs/diif.md): two kernels per call, whose activations stay in
// shared memory (csrc/cuda/diif_tiles.h) and whose only global writes are G and the output.
//   coarse_kernel: a block per kTileRows slice-vertex rows: relu(pre), the coarse layers,
//                  then G = fine_wh·H (or H, where the blend is in H's space) to global
//                  memory;
//   fine_kernel:   a block per kTileRows pixels: relu(blend), the fine layers, the output
//                  rows.
// Shared memory per block: the activation tile (kTileRows × ld of T) and the accumulator
// tile (kTileRows × ld of the accumulation type), dynamic; the SIMT products' weight stage
// and the fine stage's per-pixel geometry, static.  Launch bounds of two blocks per
// multiprocessor (at most 128 registers a thread).
#include "diif_tiles.h"

namespace ik {
namespace diif {
namespace {

using cuda::AccumulateOf;
using cuda::global;
using cuda::GlobalPtr;
using cuda::kTileRows;
using cuda::kTileThreads;

// Dynamic shared memory of a kernel whose tiles have row stride ld: the activation tile,
// then the accumulator tile at acc_offset (aligned for WMMA's 256-bit pointers).
template <typename T>
IK_HD int64_t acc_offset(int ld) {
  return cuda::shared_align(int64_t(kTileRows) * ld * sizeof(T));
}
template <typename T>
int64_t shared_bytes(int ld) {
  return acc_offset<T>(ld) + int64_t(kTileRows) * ld * sizeof(AccumulateOf<T>);
}

// Writes the rows' G = fine_wh·H (R, fine_width) into `vertex_rows`, or their H (R, hidden)
// where fine_wh is null (the fine kernel blends in H's space).
template <typename T>
__global__ void IK_TILE_LAUNCH_BOUNDS(2)
    coarse_kernel(CoarseTiles<T> p, GlobalPtr<const T> fine_wh, int hidden, int fine_width,
                  GlobalPtr<T> vertex_rows, int ld) {
  using Acc = AccumulateOf<T>;
  IK_DYNAMIC_SHARED(T, act, 0, kTileRows * ld);
  IK_DYNAMIC_SHARED(Acc, acc, acc_offset<T>(ld), kTileRows * ld);
  const int64_t row0 = int64_t(blockIdx.x) * kTileRows;
  const int rows = tile_rows(row0, p.rows);
  coarse_tile_forward<T>(p, row0, act, 0, acc, ld);
  if (fine_wh) {
    cuda::tile_linear<T, Acc>(act, ld, fine_wh, false, hidden, fine_width, acc, ld);
    cuda::tile_store<T, Acc>(acc, ld, GlobalPtr<const T>(), rows, fine_width,
                             vertex_rows + row0 * fine_width, fine_width);
  } else {
    cuda::tile_store<T, T>(act, ld, GlobalPtr<const T>(), rows, hidden, vertex_rows + row0 * hidden,
                           hidden);
  }
}

template <typename T>
__global__ void IK_TILE_LAUNCH_BOUNDS(2)
    fine_kernel(FineTiles<T> p, GlobalPtr<T> out, int out_dim, int ld) {
  using Acc = AccumulateOf<T>;
  IK_DYNAMIC_SHARED(T, act, 0, kTileRows * ld);
  IK_DYNAMIC_SHARED(Acc, acc, acc_offset<T>(ld), kTileRows * ld);
  const int64_t row0 = int64_t(blockIdx.x) * kTileRows;
  fine_tile_forward<T>(p, row0, act, 0, acc, ld);
  cuda::tile_store<T, Acc>(acc, ld, p.layers[p.count - 1].b, tile_rows(row0, p.n), out_dim,
                           out + row0 * out_dim, out_dim);
}

template <typename T>
cuda::TileLayer<T> tile_layer(const FusedLayer& l) {
  return {global(static_cast<const T*>(l.w), int64_t(l.n_out) * l.n_in),
          global(static_cast<const T*>(l.b), int64_t(l.n_out)), l.n_in, l.n_out};
}

// Row stride of the shared tiles: the widest layer of the stage.
int stage_ld(int first, const FusedLayer* layers, int count, int last) {
  int width = first > last ? first : last;
  for (int l = 0; l < count; ++l) width = layers[l].n_out > width ? layers[l].n_out : width;
  return cuda::tile_ld(width);
}

unsigned int tiles_for(int64_t rows) {
  return static_cast<unsigned int>((rows + kTileRows - 1) / kTileRows);
}

template <typename T>
cudaError_t forward_as(const FusedForward& f, cudaStream_t stream) {
  using Acc = AccumulateOf<T>;
  if (f.coarse_count > cuda::kMaxLayers || f.fine_count < 1 || f.fine_count > cuda::kMaxLayers) {
    return cudaErrorInvalidValue;
  }
  CoarseTiles<T> c;
  c.rows = f.rows;
  c.coords = global(static_cast<const Acc*>(f.coords), f.rows * kCoordInputs);
  c.corners = global(f.corners, f.rows);
  c.corner_proj = global(static_cast<const T*>(f.corner_proj), f.corner_rows * f.corner_width);
  c.corner_width = f.corner_width;
  c.width = f.width;
  c.w_coord = global(static_cast<const T*>(f.w_coord), int64_t(f.width) * kCoordInputs);
  c.b0 = global(static_cast<const T*>(f.b0), int64_t(f.width));
  for (int l = 0; l < f.coarse_count; ++l) c.layers[l] = tile_layer<T>(f.coarse[l]);
  c.count = f.coarse_count;
  const int vertex_width = f.hidden_blend ? f.hidden : f.fine_width;
  const int64_t vertex_count = f.rows * vertex_width;
  const GlobalPtr<const T> fine_wh =
      global(static_cast<const T*>(f.fine_wh), int64_t(f.fine_width) * f.hidden);
  const int coarse_ld = stage_ld(f.width, f.coarse, f.coarse_count, f.fine_width);
  const int64_t coarse_bytes = shared_bytes<T>(coarse_ld);
  cudaError_t err =
      cudaFuncSetAttribute(coarse_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(coarse_bytes));
  if (err != cudaSuccess) return err;
  IK_LAUNCH(tiles_for(f.rows), kTileThreads, coarse_bytes, stream, coarse_kernel<T>)(
      c, f.hidden_blend ? GlobalPtr<const T>() : fine_wh, f.hidden, f.fine_width,
      global(static_cast<T*>(f.vertex_rows), vertex_count), coarse_ld);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (f.n == 0) return cudaSuccess;  // G alone (FusedForward::n)

  FineTiles<T> p;
  p.n = f.n;
  p.dims = f.dims;
  p.pixels = global(f.pixels, 2 * f.n);
  p.slice_of = global(f.slice_of, f.n);
  p.width = f.fine_width;
  p.hidden_blend = f.hidden_blend;
  p.vertex_rows = global(static_cast<const T*>(f.vertex_rows), vertex_count);
  p.hidden = f.hidden;
  p.wh = fine_wh;
  p.wd = global(static_cast<const T*>(f.fine_wd), int64_t(f.fine_width) * 2);
  p.b0 = global(static_cast<const T*>(f.fine_b0), int64_t(f.fine_width));
  for (int l = 0; l < f.fine_count; ++l) p.layers[l] = tile_layer<T>(f.fine[l]);
  p.count = f.fine_count;
  const int fine_ld = stage_ld(f.fine_width, f.fine, f.fine_count, f.hidden);
  const int64_t fine_bytes = shared_bytes<T>(fine_ld);
  err = cudaFuncSetAttribute(fine_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(fine_bytes));
  if (err != cudaSuccess) return err;
  IK_LAUNCH(tiles_for(f.n), kTileThreads, fine_bytes, stream, fine_kernel<T>)(
      p, global(static_cast<T*>(f.out), f.n * f.out_dim), f.out_dim, fine_ld);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_diif_fused_forward(const FusedForward& f, cudaStream_t stream) {
  if (f.rows == 0) return cudaSuccess;
  switch (f.type) {
    case DType::kFloat32:
      return forward_as<float>(f, stream);
    case DType::kFloat64:
      return forward_as<double>(f, stream);
    case DType::kFloat16:
      return forward_as<__half>(f, stream);
    case DType::kBFloat16:
      return forward_as<__nv_bfloat16>(f, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace diif
}  // namespace ik
