// CPU kernels of the geometry operators (schemas in csrc/ops.cpp).
//
// Thin loops over the ik/geometry.h functions so tests can compare the C++ (and, through
// the same header, the CUDA) index arithmetic exactly with implicit_kernels/geometry.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <atomic>
#include <string>
#include <tuple>
#include <vector>

#include "../diif_stages.h"
#include "../library.h"
#include "../op_utils.h"
#include "ik/geometry.h"

namespace ik {
namespace {

// Elements per at::parallel_for task: each element is a few dozen flops, so small
// grains would be dominated by scheduling.
constexpr int64_t kGrain = 4096;

// Sizes must stay far below 2^62 / 4 so (2 idx + 1) * n_in cannot overflow int64.
constexpr int64_t kMaxSize = int64_t(1) << 31;

void check_size(c10::IntArrayRef size, const char* op, const char* name) {
  TORCH_CHECK(size.size() == 2, op, ": ", name, " must have 2 entries (H, W), got ", size.size());
  for (const int64_t n : size) {
    TORCH_CHECK(n >= 1 && n < kMaxSize, op, ": ", name, " entries must be in [1, 2^31), got ",
                size);
  }
}

void check_pairs(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) == 2, op, ": ", name,
              " must have shape (..., 2) (row, col), got ", t.sizes());
}

// Output shape: the input's leading dims followed by `tail`.
std::vector<int64_t> leading_shape(const at::Tensor& t, int64_t drop,
                                   std::initializer_list<int64_t> tail) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end() - drop);
  shape.insert(shape.end(), tail.begin(), tail.end());
  return shape;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> diif_slices_cpu(const at::Tensor& pixels,
                                                               c10::IntArrayRef in_size,
                                                               c10::IntArrayRef out_size,
                                                               c10::string_view slicing) {
  check_pairs(pixels, "diif_slices", "pixels");
  TORCH_CHECK(pixels.scalar_type() == at::kLong,
              "diif_slices: pixels must be int64 output indices, got ", pixels.scalar_type());
  check_size(in_size, "diif_slices", "in_size");
  check_size(out_size, "diif_slices", "out_size");
  const Slicing mode = diif::parse_slicing(slicing, "diif_slices");

  // Bound to a named local: the data pointer must outlive the loop (a temporary
  // .contiguous() would not).
  const at::Tensor px = pixels.contiguous();
  at::Tensor group = at::empty(px.sizes(), px.options());
  at::Tensor first = at::empty(px.sizes(), px.options());
  at::Tensor last = at::empty(px.sizes(), px.options());
  const int64_t n = px.numel() / 2;
  const int64_t h = in_size[0], w = in_size[1], ho = out_size[0], wo = out_size[1];
  const int64_t* src = px.data_ptr<int64_t>();
  int64_t* g = group.data_ptr<int64_t>();
  int64_t* f = first.data_ptr<int64_t>();
  int64_t* l = last.data_ptr<int64_t>();

  // Out-of-range pixels are flagged and reported after the loop: throwing from worker
  // threads would work (parallel_for rethrows) but would abandon the other tasks midway.
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (const auto i : c10::irange(begin, end)) {
      const int64_t r = src[2 * i], c = src[2 * i + 1];
      if (r < 0 || r >= ho || c < 0 || c >= wo) {
        out_of_range.store(true, std::memory_order_relaxed);
        continue;
      }
      const DiifSlice s = diif_slice(r, c, h, w, ho, wo, mode);
      g[2 * i] = s.group_r;
      g[2 * i + 1] = s.group_c;
      f[2 * i] = s.first_r;
      f[2 * i + 1] = s.first_c;
      l[2 * i] = s.last_r;
      l[2 * i + 1] = s.last_c;
    }
  });
  TORCH_CHECK(!out_of_range.load(), "diif_slices: pixels must lie in [0, ", ho, ") x [0, ", wo,
              ") (out_size), got min ", px.min().item<int64_t>(), " max ",
              px.max().item<int64_t>());
  return {group, first, last};
}

std::tuple<at::Tensor, at::Tensor> ensemble_neighbours_cpu(const at::Tensor& coord,
                                                           c10::IntArrayRef size) {
  check_pairs(coord, "ensemble_neighbours", "coord");
  TORCH_CHECK(coord.scalar_type() == at::kFloat || coord.scalar_type() == at::kDouble,
              "ensemble_neighbours: coord must be float32 or float64, got ", coord.scalar_type());
  check_size(size, "ensemble_neighbours", "size");
  check_finite(coord, "ensemble_neighbours", "coord");

  const at::Tensor q = coord.contiguous();
  at::Tensor index = at::empty(leading_shape(q, 1, {4, 2}), q.options().dtype(at::kLong));
  at::Tensor rel = at::empty(leading_shape(q, 1, {4, 2}), q.options());
  const int64_t n = q.numel() / 2;
  const int64_t h = size[0], w = size[1];
  int64_t* idx = index.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "ensemble_neighbours", [&] {
    const scalar_t* src = q.data_ptr<scalar_t>();
    scalar_t* out = rel.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (const auto i : c10::irange(begin, end)) {
        for (int t = 0; t < 4; ++t) {
          const EnsembleMember<scalar_t> m = ensemble_member(src[2 * i], src[2 * i + 1], h, w, t);
          idx[8 * i + 2 * t] = m.iy;
          idx[8 * i + 2 * t + 1] = m.ix;
          out[8 * i + 2 * t] = m.ry;
          out[8 * i + 2 * t + 1] = m.rx;
        }
      }
    });
  });
  return {index, rel};
}

at::Tensor ensemble_weights_cpu(const at::Tensor& rel) {
  TORCH_CHECK(rel.device().is_cpu(), "ensemble_weights: rel must be a CPU tensor, got ",
              rel.device());
  TORCH_CHECK(rel.dim() >= 2 && rel.size(-2) == 4 && rel.size(-1) == 2,
              "ensemble_weights: rel must have shape (..., 4, 2), got ", rel.sizes());
  TORCH_CHECK(rel.scalar_type() == at::kFloat || rel.scalar_type() == at::kDouble,
              "ensemble_weights: rel must be float32 or float64, got ", rel.scalar_type());
  const at::Tensor r = rel.contiguous();
  at::Tensor weight = at::empty(leading_shape(r, 2, {4}), r.options());
  const int64_t n = r.numel() / 8;
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "ensemble_weights", [&] {
    const scalar_t* src = r.data_ptr<scalar_t>();
    scalar_t* out = weight.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (const auto i : c10::irange(begin, end)) {
        scalar_t ry[4], rx[4];
        for (int t = 0; t < 4; ++t) {
          ry[t] = src[8 * i + 2 * t];
          rx[t] = src[8 * i + 2 * t + 1];
        }
        ensemble_weights(ry, rx, out + 4 * i);
      }
    });
  });
  return weight;
}

at::Tensor slice_ensemble_weights_cpu(const at::Tensor& d) {
  check_pairs(d, "slice_ensemble_weights", "d");
  TORCH_CHECK(d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble,
              "slice_ensemble_weights: d must be float32 or float64, got ", d.scalar_type());
  const at::Tensor dc = d.contiguous();
  at::Tensor weight = at::empty(leading_shape(dc, 1, {4}), dc.options());
  const int64_t n = dc.numel() / 2;
  AT_DISPATCH_FLOATING_TYPES(dc.scalar_type(), "slice_ensemble_weights", [&] {
    const scalar_t* src = dc.data_ptr<scalar_t>();
    scalar_t* out = weight.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (const auto i : c10::irange(begin, end)) {
        slice_ensemble_weights(src[2 * i], src[2 * i + 1], out + 4 * i);
      }
    });
  });
  return weight;
}

}  // namespace
}  // namespace ik

IK_LIBRARY_IMPL(CPU, m) {
  m.impl("diif_slices", &ik::diif_slices_cpu);
  m.impl("ensemble_neighbours", &ik::ensemble_neighbours_cpu);
  m.impl("ensemble_weights", &ik::ensemble_weights_cpu);
  m.impl("slice_ensemble_weights", &ik::slice_ensemble_weights_cpu);
}
