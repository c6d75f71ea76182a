// CPU loops of the fused LIIF and LTE decodes' element-wise steps (ik/liif_decode.h,
// ik/lte_decode.h), declared in csrc/liif_kernels.h.  Each loop runs the same inline
// functions the CUDA kernels run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../liif_kernels.h"
#include "../poison.h"
#include "sin_cos_cpu.h"

namespace ik {
namespace liif {
namespace {

// Queries per parallel task for the geometry (a few hundred flops each).
constexpr int64_t kGrain = 1024;

// Rows per parallel task for the row-wide steps: about 16k channel values each.
int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> members_cpu(const at::Tensor& coord,
                                                           const at::Tensor& cell, const Dims& dims,
                                                           at::ScalarType type) {
  const int64_t n = coord.size(0);
  at::Tensor index = empty_poisoned({n * kMembers}, coord.options().dtype(at::kLong));
  at::Tensor inputs = empty_poisoned({n * kMembers, kCoordInputs}, coord.options().dtype(type));
  at::Tensor weights = empty_poisoned({n, kMembers}, coord.options().dtype(type));
  int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(type, "liif_members_cpu", [&] {
    const scalar_t* q = coord.data_ptr<scalar_t>();
    const scalar_t* c = cell.data_ptr<scalar_t>();
    scalar_t* x = inputs.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        query_members<scalar_t>(p, q[2 * p], q[2 * p + 1], c[2 * p], c[2 * p + 1], dims,
                                idx + kMembers * p, x + kMembers * kCoordInputs * p,
                                w + kMembers * p);
      }
    });
  });
  return {index, inputs, weights};
}

at::Tensor liif_first_layer_cpu(const at::Tensor& proj, const at::Tensor& index,
                                const at::Tensor& inputs, const at::Tensor& w_rc,
                                const at::Tensor& b0, bool relu) {
  const int64_t rows = index.size(0), d = proj.size(1);
  at::Tensor x = empty_poisoned({rows, d}, proj.options());
  const int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(proj.scalar_type(), "liif_first_layer_cpu", [&] {
    const scalar_t* pp = proj.data_ptr<scalar_t>();
    const scalar_t* in = inputs.data_ptr<scalar_t>();
    const scalar_t* wp = w_rc.data_ptr<scalar_t>();
    const scalar_t* bp = b0.data_ptr<scalar_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(d), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const scalar_t* proj_row = pp + idx[r] * d;
        const scalar_t* coords = in + r * kCoordInputs;
        scalar_t* out = xp + r * d;
        for (int64_t j = 0; j < d; ++j) {
          out[j] = first_layer<scalar_t>(j, proj_row, wp, bp, coords, relu);
        }
      }
    });
  });
  return x;
}

at::Tensor lte_features_cpu(const at::Tensor& coef, const at::Tensor& freq,
                            const at::Tensor& phase_w, const at::Tensor& index,
                            const at::Tensor& inputs) {
  const int64_t rows = index.size(0), width = coef.size(1), m = width / 2;
  const int64_t stride = inputs.size(1);
  const int ends = features_ends(inputs);
  at::Tensor x = empty_poisoned({rows, width}, coef.options());
  const int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "lte_features_cpu", [&] {
    const scalar_t* cp = coef.data_ptr<scalar_t>();
    const scalar_t* fp = freq.data_ptr<scalar_t>();
    const scalar_t* pw = phase_w.data_ptr<scalar_t>();
    const scalar_t* in = inputs.data_ptr<scalar_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(width), [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> angle(m);
      for (int64_t r = lo; r < hi; ++r) {
        // ik::lte::fourier_feature, sin and cos a row at a time: x = coef ⊙ [cos, sin].
        const int64_t pixel = idx[r] * width;
        scalar_t* x = xp + r * width;
        cpu::lte_member_sin_cos(fp + pixel, pw, in + r * stride, ends, m, angle.data(), x + m, x);
        for (int64_t j = 0; j < width; ++j) x[j] *= cp[pixel + j];
      }
    });
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_features_backward_cpu(
    const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& freq,
    const at::Tensor& phase_w, const at::Tensor& index, const at::Tensor& inputs) {
  const int64_t rows = index.size(0), n = rows / kMembers, width = coef.size(1), m = width / 2;
  const int64_t stride = inputs.size(1);
  const int ends = features_ends(inputs);
  const auto options = coef.options().dtype(inputs.scalar_type());
  at::Tensor grad_coef = empty_poisoned({rows, width}, options);
  at::Tensor grad_freq = empty_poisoned({rows, width}, options);
  at::Tensor grad_phi = empty_poisoned({n, m}, options);
  const int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "lte_features_backward_cpu", [&] {
    const scalar_t* cp = coef.data_ptr<scalar_t>();
    const scalar_t* fp = freq.data_ptr<scalar_t>();
    const scalar_t* pw = phase_w.data_ptr<scalar_t>();
    const scalar_t* in = inputs.data_ptr<scalar_t>();
    const scalar_t* gx = grad_x.data_ptr<scalar_t>();
    scalar_t* gc = grad_coef.data_ptr<scalar_t>();
    scalar_t* gf = grad_freq.data_ptr<scalar_t>();
    scalar_t* gphi = grad_phi.data_ptr<scalar_t>();
    // One task per query: it owns its members' rows and its row of grad_phi.
    at::parallel_for(0, n, row_grain(kMembers * width), [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> scratch(3 * m);  // angle, sin, cos
      scalar_t *sin = scratch.data() + m, *cos = sin + m;
      for (int64_t p = lo; p < hi; ++p) {
        scalar_t* g = gphi + p * m;
        for (int64_t i = 0; i < m; ++i) g[i] = 0;
        for (int t = 0; t < kMembers; ++t) {
          const int64_t r = kMembers * p + t, pixel = idx[r] * width;
          cpu::lte_member_sin_cos(fp + pixel, pw, in + r * stride, ends, m, scratch.data(), sin,
                                  cos);
          for (int64_t i = 0; i < m; ++i) {
            g[i] += lte::fourier_pair_backward<scalar_t>(i, m, cp + pixel, sin[i], cos[i],
                                                         in + r * stride, gx + r * width,
                                                         gc + r * width, gf + r * width, ends);
          }
        }
      }
    });
  });
  return {grad_coef, grad_freq, grad_phi};
}

}  // namespace liif
}  // namespace ik
