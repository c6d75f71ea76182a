// The fused LIIF and LTE forward (liif_fused_cuda.h): a block per tile of kTileQueries
// queries, whose kTileRows member rows (row 4q + t: member t of the tile's query q) go
// through the whole decode in shared memory:
//   1. members: one thread per query finds its 4 LR pixels, coordinate inputs and area
//      weights (liif::query_members, as the unfused members kernel);
//   2. input:   the MLP's input row of every member (LIIF: relu(proj[pixel] + w_rc·inputs
//               + b0), liif::first_layer; LTE: the Fourier features,
//               lte::fourier_feature), zero in the padded channels;
//   3. MLP:     tile_linear + tile_bias_act per layer (tile_mlp.h: WMMA for half types,
//               SIMT for float and double), in place: one activation tile (T) and one
//               accumulator tile (Acc);
//   4. blend:   out[query] = Σ_t weight_t · (last layer + bias), written once.
// The tail tile repeats the last query in its unused rows (every read stays valid) and
// writes only the real queries.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ik/lte_decode.h"
#include "liif_fused_cuda.h"
#include "tile_mlp.h"

namespace ik {
namespace liif {
namespace {

using cuda::global;
using cuda::GlobalPtr;
using cuda::kTileRows;
using cuda::kTileThreads;
using cuda::SharedPtr;

constexpr int kTileQueries = kTileRows / kMembers;
static_assert(kTileRows % kMembers == 0, "a tile holds whole queries");

// The MLP after the input step on the device (FusedMlp with checked pointers).
template <typename T>
struct DeviceMlp {
  cuda::TileLayer<T> layer[cuda::kMaxLayers];
  int layers;
  int out;
};

template <typename T>
struct DeviceQueries {
  GlobalPtr<const T> coord, cell;
  int64_t n;
  Dims dims;
};

// The tile's members in shared memory: LR pixel index, coordinate inputs and area weight
// of each member row.
template <typename Acc>
struct TileMembers {
  SharedPtr<int64_t> index;
  SharedPtr<Acc> inputs;  // kTileRows x kCoordInputs
  SharedPtr<Acc> weight;
};

// Step 1 for the tile of queries first.. (rows past the last query repeat it).
template <typename T, typename Acc>
__device__ void find_members(const DeviceQueries<T>& q, int64_t first, const TileMembers<Acc>& s) {
  if (threadIdx.x < kTileQueries) {
    const int64_t p = min_val(first + static_cast<int64_t>(threadIdx.x), q.n - 1);
    index_t index[kMembers];
    Acc inputs[kMembers * kCoordInputs], weight[kMembers];
    query_members<Acc>(p, static_cast<Acc>(q.coord[2 * p]), static_cast<Acc>(q.coord[2 * p + 1]),
                       static_cast<Acc>(q.cell[2 * p]), static_cast<Acc>(q.cell[2 * p + 1]), q.dims,
                       index, inputs, weight);
    const int row = kMembers * threadIdx.x;
    for (int t = 0; t < kMembers; ++t) {
      s.index[row + t] = index[t];
      s.weight[row + t] = weight[t];
      for (int k = 0; k < kCoordInputs; ++k) {
        s.inputs[(row + t) * kCoordInputs + k] = inputs[t * kCoordInputs + k];
      }
    }
  }
  __syncthreads();
}

// Member row r's coordinate inputs, copied to registers.
template <typename Acc>
__device__ void row_inputs(const TileMembers<Acc>& s, int r, Acc x[kCoordInputs]) {
  for (int k = 0; k < kCoordInputs; ++k) x[k] = s.inputs[r * kCoordInputs + k];
}

// Steps 3 and 4: the MLP on the input tile `act` (ld columns), then the blend of the
// tile's queries first.. into out (n x mlp.out).
template <typename T, typename Acc>
__device__ void mlp_and_blend(const DeviceMlp<T>& mlp, SharedPtr<T> act, SharedPtr<Acc> acc, int ld,
                              const TileMembers<Acc>& s, int64_t first, int64_t n,
                              GlobalPtr<T> out) {
  cuda::tile_mlp_forward<T, Acc>(mlp.layer, mlp.layers, /*relu_last=*/false, act,
                                 /*act_stride=*/0, acc, ld, /*store_last=*/false);
  const GlobalPtr<const T> last_bias = mlp.layer[mlp.layers - 1].b;
  for (int e = threadIdx.x; e < kTileQueries * mlp.out; e += kTileThreads) {
    const int q = e / mlp.out, c = e - q * mlp.out;
    if (first + q >= n) continue;
    const Acc bias = static_cast<Acc>(last_bias[c]);
    Acc sum = 0;
    for (int t = 0; t < kMembers; ++t) {
      const int r = kMembers * q + t;
      sum += static_cast<Acc>(s.weight[r]) * (static_cast<Acc>(acc[r * ld + c]) + bias);
    }
    out[(first + q) * mlp.out + c] = static_cast<T>(sum);
  }
  __syncthreads();  // the next tile overwrites the members and the accumulator
}

// Bytes of the dynamic shared memory: the activation tile, then the accumulator tile.
template <typename T>
__host__ __device__ int act_bytes(int ld) {
  return static_cast<int>(cuda::shared_align(kTileRows * ld * static_cast<int64_t>(sizeof(T))));
}

template <typename T, typename Acc>
int shared_bytes(int ld) {
  return act_bytes<T>(ld) + kTileRows * ld * static_cast<int>(sizeof(Acc));
}

// A block's shared memory: the tile's members, its activation tile `act` (T) and
// accumulator tile `acc` (Acc), kTileRows x ld each (the launch's dynamic shared memory).
template <typename T, typename Acc>
struct TileShared {
  TileMembers<Acc> members;
  SharedPtr<T> act;
  SharedPtr<Acc> acc;
};

template <typename T, typename Acc>
__device__ TileShared<T, Acc> tile_shared(int ld) {
  IK_SHARED(int64_t, member_index, kTileRows);
  IK_SHARED(Acc, member_inputs, kTileRows * kCoordInputs);
  IK_SHARED(Acc, member_weight, kTileRows);
  IK_DYNAMIC_SHARED(T, act, 0, kTileRows * ld);
  IK_DYNAMIC_SHARED(Acc, acc, act_bytes<T>(ld), kTileRows * ld);
  return {{member_index, member_inputs, member_weight}, act, acc};
}

// Every tile of the block: members, the input tile, then the MLP and the blend.  The input
// step writes a row's `columns` columns: input(members, r, c, row) writes column c (or, for
// LTE, a pair of columns) of member row r into `row` (act's row r).
template <typename T, typename Acc, typename Input>
__device__ void decode_tiles(const DeviceQueries<T>& q, const DeviceMlp<T>& mlp, int ld,
                             int columns, GlobalPtr<T> out, const Input& input) {
  const TileShared<T, Acc> tile = tile_shared<T, Acc>(ld);
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kTileQueries; first < q.n;
       first += static_cast<int64_t>(gridDim.x) * kTileQueries) {
    find_members<T, Acc>(q, first, tile.members);
    for (int e = threadIdx.x; e < kTileRows * columns; e += kTileThreads) {
      const int r = e / columns;
      input(tile.members, r, e - r * columns, tile.act + r * ld);
    }
    __syncthreads();
    mlp_and_blend<T, Acc>(mlp, tile.act, tile.acc, ld, tile.members, first, q.n, out);
  }
}

// LIIF's input column j: the first layer's channel j after its ReLU (0 past d).
template <typename T, typename Acc>
__global__ void liif_fused_kernel(GlobalPtr<const T> proj, int d, GlobalPtr<const T> w_rc,
                                  GlobalPtr<const T> b0, DeviceQueries<T> q, DeviceMlp<T> mlp,
                                  int ld, GlobalPtr<T> out) {
  decode_tiles<T, Acc>(q, mlp, ld, mlp.layer[0].n_in, out,
                       [&](const TileMembers<Acc>& members, int r, int j, SharedPtr<T> row) {
                         Acc x[kCoordInputs];
                         row_inputs<Acc>(members, r, x);
                         row[j] =
                             j < d ? static_cast<T>(first_layer<Acc>(j, proj + members.index[r] * d,
                                                                     w_rc, b0, x, /*relu=*/true))
                                   : static_cast<T>(0.0f);
                       });
}

// LTE's input in pairs: column c < m writes Fourier pair c (columns c and m + c), c ≥ m the
// padded column m + c.
template <typename T, typename Acc>
__global__ void lte_fused_kernel(GlobalPtr<const T> coef, GlobalPtr<const T> freq, int m,
                                 GlobalPtr<const T> phase_w, DeviceQueries<T> q, DeviceMlp<T> mlp,
                                 int ld, GlobalPtr<T> out) {
  decode_tiles<T, Acc>(q, mlp, ld, mlp.layer[0].n_in - m, out,
                       [&](const TileMembers<Acc>& members, int r, int c, SharedPtr<T> row) {
                         if (c < m) {
                           Acc x[kCoordInputs];
                           row_inputs<Acc>(members, r, x);
                           const int64_t pixel = members.index[r] * 2 * m;
                           lte::fourier_feature<Acc, T>(c, m, coef + pixel, freq + pixel, phase_w,
                                                        x, row);
                         } else {
                           row[m + c] = static_cast<T>(0.0f);
                         }
                       });
}

// The device view of `mlp` and the tiles' leading dimension (for the widest width).
template <typename T>
DeviceMlp<T> device_mlp(const FusedMlp& mlp, int* ld) {
  DeviceMlp<T> dm;
  dm.layers = mlp.layers;
  dm.out = mlp.out;
  int widest = mlp.width[0];
  for (int l = 0; l < mlp.layers; ++l) {
    const int in = mlp.width[l], out = mlp.width[l + 1];
    dm.layer[l] = {global(static_cast<const T*>(mlp.weight[l]), static_cast<int64_t>(in) * out),
                   global(static_cast<const T*>(mlp.bias[l]), out), in, out};
    widest = max_val(widest, out);
  }
  *ld = cuda::tile_ld(widest);
  return dm;
}

bool valid(const FusedMlp& mlp, const FusedQueries& q) {
  if (mlp.layers < 1 || mlp.layers > cuda::kMaxLayers || mlp.out < 1 ||
      mlp.out > mlp.width[mlp.layers] || q.dims.q < 1 || q.n % q.dims.q != 0) {
    return false;
  }
  for (int l = 0; l <= mlp.layers; ++l) {
    const int w = mlp.width[l];
    if (w < cuda::kWidthAlign || w > cuda::kMaxWidth || w % cuda::kWidthAlign != 0) return false;
  }
  return true;
}

template <typename T>
DeviceQueries<T> device_queries(const FusedQueries& q) {
  return {global(static_cast<const T*>(q.coord), 2 * q.n),
          global(static_cast<const T*>(q.cell), 2 * q.n), q.n, q.dims};
}

// LR pixels of the maps (B·h·w).
int64_t pixels_of(const FusedQueries& q) { return q.n / q.dims.q * q.dims.h * q.dims.w; }

// Blocks of a launch: one per tile up to a cap, the blocks striding over the rest.  The
// emulation (which runs blocks one after another) caps at a few, so its tests run blocks
// over several tiles each.
#if defined(IK_EMULATE_CUDA)
constexpr int64_t kMaxBlocks = 3;
#else
constexpr int64_t kMaxBlocks = 65535;
#endif

unsigned int tile_blocks(int64_t n) {
  const int64_t tiles = (n + kTileQueries - 1) / kTileQueries;
  return static_cast<unsigned int>(min_val(tiles, kMaxBlocks));
}

// Raises the kernel's dynamic shared memory limit to `bytes`: the default is 48 KiB less
// the static shared memory (the SIMT product's weight stage takes 16 KiB).
template <typename Kernel>
cudaError_t allow_shared(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <typename T, typename Acc>
cudaError_t liif_as(const void* proj, int64_t d, const void* w_rc, const void* b0,
                    const FusedQueries& queries, const FusedMlp& mlp, void* out,
                    cudaStream_t stream) {
  int ld = 0;
  const DeviceMlp<T> dm = device_mlp<T>(mlp, &ld);
  const int bytes = shared_bytes<T, Acc>(ld);
  const cudaError_t err = allow_shared(liif_fused_kernel<T, Acc>, bytes);
  if (err != cudaSuccess) return err;
  IK_LAUNCH(tile_blocks(queries.n), kTileThreads, bytes, stream, liif_fused_kernel<T, Acc>)(
      global(static_cast<const T*>(proj), pixels_of(queries) * d), static_cast<int>(d),
      global(static_cast<const T*>(w_rc), d * kCoordInputs), global(static_cast<const T*>(b0), d),
      device_queries<T>(queries), dm, ld,
      global(static_cast<T*>(out), queries.n * static_cast<int64_t>(mlp.out)));
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t lte_as(const void* coef, const void* freq, int64_t m, const void* phase_w,
                   const FusedQueries& queries, const FusedMlp& mlp, void* out,
                   cudaStream_t stream) {
  int ld = 0;
  const DeviceMlp<T> dm = device_mlp<T>(mlp, &ld);
  const int bytes = shared_bytes<T, Acc>(ld);
  const cudaError_t err = allow_shared(lte_fused_kernel<T, Acc>, bytes);
  if (err != cudaSuccess) return err;
  const int64_t map = pixels_of(queries) * 2 * m;
  IK_LAUNCH(tile_blocks(queries.n), kTileThreads, bytes, stream, lte_fused_kernel<T, Acc>)(
      global(static_cast<const T*>(coef), map), global(static_cast<const T*>(freq), map),
      static_cast<int>(m), global(static_cast<const T*>(phase_w), 2 * m),
      device_queries<T>(queries), dm, ld,
      global(static_cast<T*>(out), queries.n * static_cast<int64_t>(mlp.out)));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_liif_fused(const void* proj, int64_t d, const void* w_rc, const void* b0,
                              const FusedQueries& queries, const FusedMlp& mlp, DType type,
                              void* out, cudaStream_t stream) {
  if (queries.n == 0) return cudaSuccess;
  if (!valid(mlp, queries) || d < 1 || cuda::padded_width(d) != mlp.width[0]) {
    return cudaErrorInvalidValue;
  }
  IK_DISPATCH_DTYPE(type, liif_as, proj, d, w_rc, b0, queries, mlp, out, stream);
}

cudaError_t launch_lte_fused(const void* coef, const void* freq, int64_t m, const void* phase_w,
                             const FusedQueries& queries, const FusedMlp& mlp, DType type,
                             void* out, cudaStream_t stream) {
  if (queries.n == 0) return cudaSuccess;
  if (!valid(mlp, queries) || m < 1 || cuda::padded_width(2 * m) != mlp.width[0]) {
    return cudaErrorInvalidValue;
  }
  IK_DISPATCH_DTYPE(type, lte_as, coef, freq, m, phase_w, queries, mlp, out, stream);
}

}  // namespace liif
}  // namespace ik
