// CPU loops of the fused DIIF decode's element-wise steps (ik/diif_decode.h), declared in
// ik/diif_kernels.h. Each loop runs the same inline functions the CUDA kernels run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../diif_kernels.h"
#include "../poison.h"

namespace ik {
namespace diif {
namespace {

// Elements per parallel task for the cheap per-pixel and per-slice loops.
constexpr int64_t kGrain = 1024;

}  // namespace

at::Tensor slice_keys_cpu(const at::Tensor& pixels, int64_t q, const Dims& dims, Slicing slicing) {
  const int64_t n = pixels.size(0);
  at::Tensor keys = empty_poisoned({n}, pixels.options());
  const int64_t* pix = pixels.data_ptr<int64_t>();
  int64_t* out = keys.data_ptr<int64_t>();
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      out[p] = slice_key(p / q, pix[2 * p], pix[2 * p + 1], dims, slicing);
    }
  });
  return keys;
}

std::tuple<at::Tensor, at::Tensor> slice_inputs_cpu(const at::Tensor& keys, const Dims& dims,
                                                    Slicing slicing, at::ScalarType type) {
  const int64_t s = keys.size(0), v = vertex_count(dims);
  at::Tensor coords = empty_poisoned({s * v, kCoordInputs}, keys.options().dtype(type));
  at::Tensor corners = empty_poisoned({s * v}, keys.options());
  const int64_t* k = keys.data_ptr<int64_t>();
  int64_t* c = corners.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(type, "diif_slice_inputs_cpu", [&] {
    scalar_t* x = coords.data_ptr<scalar_t>();
    at::parallel_for(0, s, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        slice_inputs<scalar_t>(k[i], dims, slicing, x + i * v * kCoordInputs, c + i * v);
      }
    });
  });
  return {coords, corners};
}

at::Tensor blend_cpu(const at::Tensor& pixels, const at::Tensor& slice_of, const Dims& dims,
                     const at::Tensor& g, const at::Tensor& wd, const at::Tensor& bias) {
  const int64_t n = pixels.size(0), df = g.size(1);
  const int v = vertex_count(dims);
  at::Tensor z = empty_poisoned({n, df}, g.options());
  const int64_t* pix = pixels.data_ptr<int64_t>();
  const int64_t* slice = slice_of.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "diif_blend_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* wdp = wd.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    scalar_t* zp = z.data_ptr<scalar_t>();
    // Each pixel reads its slice's 4 x df block once, so a task of a few dozen pixels
    // is already several hundred kilobytes of work.
    at::parallel_for(0, n, 64, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        scalar_t offset[2], weight[4] = {};  // without the ensemble only weight[0] is set
        pixel_offset_weights<scalar_t>(pix[2 * p], pix[2 * p + 1], dims, offset, weight);
        const scalar_t* block = gp + slice[p] * v * df;
        scalar_t* row = zp + p * df;
        for (int64_t j = 0; j < df; ++j) {
          row[j] = blend_channel<scalar_t>(j, df, v, block, wdp, bp, offset, weight);
        }
      }
    });
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor> offset_weights_cpu(const at::Tensor& pixels, const Dims& dims,
                                                      at::ScalarType type) {
  const int64_t n = pixels.size(0), v = vertex_count(dims);
  at::Tensor offsets = empty_poisoned({n, 2}, pixels.options().dtype(type));
  at::Tensor weights = empty_poisoned({n, v}, pixels.options().dtype(type));
  const int64_t* pix = pixels.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(type, "diif_offset_weights_cpu", [&] {
    scalar_t* o = offsets.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        pixel_offset_weights<scalar_t>(pix[2 * p], pix[2 * p + 1], dims, o + 2 * p, w + v * p);
      }
    });
  });
  return {offsets, weights};
}

}  // namespace diif
}  // namespace ik
