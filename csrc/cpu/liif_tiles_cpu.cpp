// The fused LIIF and LTE decodes on CPU tensors in tiles of member rows (declared in
// csrc/liif_kernels.h; the tile machinery is tiles.h's).  Member rows are query-major (row
// 4p + t is member t of query p) and a tile has a multiple of 4 rows, so a tile holds whole
// queries: the forward forms a tile's MLP input, runs the MLP and blends the tile's
// queries, and the backward runs a tile from the blend's gradient back to the MLP's input
// and its map gradients.  Only the operators' own input step differs (LIIF: the first
// layer from the gathered projection; LTE: the Fourier features of the gathered maps).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <functional>
#include <vector>

#include "../liif_kernels.h"
#include "../poison.h"
#include "sin_cos_cpu.h"
#include "tiles.h"

namespace ik {
namespace liif {
namespace {

// Writes the MLP's input of member rows lo..hi into x (hi - lo, in).
using InputTile = std::function<void(int64_t lo, int64_t hi, at::Tensor x)>;

int64_t out_width(const Mlp& mlp, int64_t in) {
  return mlp.weights.empty() ? in : mlp.weights.back().size(0);
}

// out (n, o) = Σ_t w_t · MLP(x_t) over each query's members, x from `input`.
template <typename T>
at::Tensor members_forward(const Mlp& mlp, const Ensemble& e, int64_t in,
                           const at::TensorOptions& options, const InputTile& input,
                           std::vector<at::Tensor>* record) {
  const int64_t n = e.weights.size(0), rows = n * kMembers, out_dim = out_width(mlp, in);
  if (record != nullptr) *record = record_for(mlp, rows, in, options, /*but_last=*/true);
  at::Tensor out = empty_poisoned({n, out_dim}, options);
  const T* weight = e.weights.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const std::vector<TileWeight> layers = tile_layers(mlp);
  for_each_tile(rows, widest(mlp, in), options, record,
                [&](int64_t lo, int64_t hi, TileOutputs& outs) {
                  at::Tensor x = outs.at(0, lo, hi, in);
                  input(lo, hi, x);
                  const at::Tensor preds = mlp_tile(mlp, layers, x, outs, 1, lo, hi, at::Tensor());
                  const T* pp = preds.data_ptr<T>();
                  for (int64_t p = lo / kMembers; p < hi / kMembers; ++p) {
                    const T* member = pp + (p * kMembers - lo) * out_dim;
                    const T* w = weight + p * kMembers;
                    for (int64_t c = 0; c < out_dim; ++c) {
                      T sum = 0;
                      for (int t = 0; t < kMembers; ++t) sum += w[t] * member[t * out_dim + c];
                      op[p * out_dim + c] = sum;
                    }
                  }
                });
  return out;
}

// Backward of members_forward from grad_out (n, o): fills grad_w/grad_b and returns the
// sums of `input_backward`, shaped like `input_like`.
template <typename T>
std::vector<at::Tensor> members_backward(const Mlp& mlp, const Ensemble& e, int64_t in,
                                         const std::vector<at::Tensor>& record,
                                         const at::Tensor& grad_out,
                                         const TileInputBackward& input_backward,
                                         const std::vector<at::Tensor>& input_like,
                                         std::vector<at::Tensor>& grad_w,
                                         std::vector<at::Tensor>& grad_b) {
  const int64_t n = e.weights.size(0), rows = n * kMembers, out_dim = out_width(mlp, in);
  const at::Tensor go = grad_out.reshape({n, out_dim}).contiguous();
  const T* weight = e.weights.data_ptr<T>();
  const T* gp = go.data_ptr<T>();
  // The blend's backward: member row r's prediction gradient is w_r · grad_out[query of r].
  const auto member_grads = [&](int64_t lo, int64_t hi, TileOutputs& outs) {
    at::Tensor grad = outs.at(0, lo, hi, out_dim);
    T* g = grad.data_ptr<T>();
    for (int64_t r = lo; r < hi; ++r) {
      const T* src = gp + (r / kMembers) * out_dim;
      for (int64_t c = 0; c < out_dim; ++c) g[(r - lo) * out_dim + c] = weight[r] * src[c];
    }
    return grad;
  };
  return mlp_backward_tiles(mlp, rows, in, record, member_grads, input_backward, input_like, grad_w,
                            grad_b);
}

// dst[j] += src[j] for j < width: a gathered row's gradient into its map row.
template <typename T>
void add_row(T* dst, const T* src, int64_t width) {
  for (int64_t j = 0; j < width; ++j) dst[j] += src[j];
}

// LIIF's first layer on member rows: x = act(proj[pixel] + w_rc·inputs + b0), summed in
// ik::liif::first_layer's order, with w_rc read column-wise (`w_cols`: w_rcᵀ, (4, D)) so
// the loop over channels runs over contiguous memory.
template <typename T>
InputTile liif_first_layer(const at::Tensor& proj, const at::Tensor& w_cols, const at::Tensor& b0,
                           const Ensemble& e, bool relu) {
  return [&proj, &w_cols, &b0, &e, relu](int64_t lo, int64_t hi, at::Tensor x) {
    const int64_t d = proj.size(3);
    const T* pp = proj.data_ptr<T>();
    const T* w = w_cols.data_ptr<T>();
    const T* bias = b0.data_ptr<T>();
    const int64_t* idx = e.index.data_ptr<int64_t>();
    const T* in = e.inputs.data_ptr<T>();
    T* xp = x.data_ptr<T>();
    for (int64_t r = lo; r < hi; ++r) {
      const T* row = pp + idx[r] * d;
      const T* c = in + r * kCoordInputs;
      T* out = xp + (r - lo) * d;
      for (int64_t j = 0; j < d; ++j) {
        T z = bias[j];
        for (int k = 0; k < kCoordInputs; ++k) z += w[k * d + j] * c[k];
        z += row[j];
        out[j] = (relu && z < T(0)) ? T(0) : z;  // NaN stays NaN, as in torch.relu
      }
    }
  };
}

// sin and cos of π·phi (ik::lte::phase_angle) of member rows lo..hi into `sin` and `cos`
// (hi - lo, m; rows contiguous, the row stride free), a row at a time while its angles are
// in L1.
template <typename T>
void tile_sin_cos(const at::Tensor& freq, const at::Tensor& phase, const Ensemble& e, int64_t lo,
                  int64_t hi, const at::Tensor& sin, const at::Tensor& cos) {
  const int64_t width = freq.size(3), m = width / 2;
  TORCH_INTERNAL_ASSERT(sin.stride(1) == 1 && cos.stride(1) == 1);
  const T* fp = freq.data_ptr<T>();
  const T* pw = phase.data_ptr<T>();
  const int64_t* idx = e.index.data_ptr<int64_t>();
  const T* in = e.inputs.data_ptr<T>();
  std::vector<T> angle(m);
  for (int64_t r = lo; r < hi; ++r) {
    cpu::lte_member_sin_cos(fp + idx[r] * width, pw, in + r * kCoordInputs, 1, m, angle.data(),
                            sin.data_ptr<T>() + (r - lo) * sin.stride(0),
                            cos.data_ptr<T>() + (r - lo) * cos.stride(0));
  }
}

// LTE's Fourier features of member rows: x = coef[pixel] ⊙ [cos πphi, sin πphi]
// (ik::lte::fourier_feature): sin and cos into x's halves, then the coefficients.
template <typename T>
InputTile lte_features(const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase,
                       const Ensemble& e) {
  return [&coef, &freq, &phase, &e](int64_t lo, int64_t hi, at::Tensor x) {
    const int64_t width = coef.size(3), m = width / 2;
    tile_sin_cos<T>(freq, phase, e, lo, hi, x.narrow(1, m, m), x.narrow(1, 0, m));
    const T* cp = coef.data_ptr<T>();
    const int64_t* idx = e.index.data_ptr<int64_t>();
    T* xp = x.data_ptr<T>();
    for (int64_t r = lo; r < hi; ++r) {
      const T* c = cp + idx[r] * width;
      T* row = xp + (r - lo) * width;
      for (int64_t j = 0; j < width; ++j) row[j] *= c[j];
    }
  };
}

}  // namespace

at::Tensor liif_forward_tiles_cpu(const at::Tensor& proj, const at::Tensor& w_rc,
                                  const at::Tensor& b0, const Mlp& rest, const Ensemble& e,
                                  std::vector<at::Tensor>* record) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor w_cols = w_rc.t().contiguous();
  const bool relu = !rest.weights.empty();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(proj.scalar_type(), "liif_forward_tiles_cpu", [&] {
    out = members_forward<scalar_t>(rest, e, proj.size(3), proj.options(),
                                    liif_first_layer<scalar_t>(proj, w_cols, b0, e, relu), record);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> liif_backward_tiles_cpu(
    const at::Tensor& proj, const at::Tensor& w_rc, const at::Tensor& b0, const Mlp& rest,
    const Ensemble& e, const std::vector<at::Tensor>& record, const at::Tensor& grad_out,
    std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t d = proj.size(3);
  const bool relu = !rest.weights.empty();
  std::vector<at::Tensor> sums;
  AT_DISPATCH_FLOATING_TYPES(proj.scalar_type(), "liif_backward_tiles_cpu", [&] {
    // sums: the projection's rows (B*h*w, D), w_rcᵀ (4, D) (so the loop over channels
    // runs over contiguous memory), b0 (D).
    const auto backward = [&](int64_t lo, int64_t hi, at::Tensor grad, at::Tensor* acc) {
      const int64_t* idx = e.index.data_ptr<int64_t>();
      const scalar_t* in = e.inputs.data_ptr<scalar_t>();
      const scalar_t* x = record[0].data_ptr<scalar_t>();
      scalar_t* g = grad.data_ptr<scalar_t>();
      scalar_t* map = acc[0].data_ptr<scalar_t>();
      scalar_t* w_cols = acc[1].data_ptr<scalar_t>();
      scalar_t* bias = acc[2].data_ptr<scalar_t>();
      // One pass per member row: the gradient of the first layer's pre-activation (ReLU's
      // derivative from the recorded output), added into its LR pixel's row, the bias
      // and the coordinate columns.
      for (int64_t r = lo; r < hi; ++r) {
        scalar_t* gr = g + (r - lo) * d;
        if (relu) {
          const scalar_t* xr = x + r * d;
          for (int64_t j = 0; j < d; ++j) gr[j] = xr[j] > scalar_t(0) ? gr[j] : scalar_t(0);
        }
        add_row(map + idx[r] * d, gr, d);
        add_row(bias, gr, d);
        const scalar_t* c = in + r * kCoordInputs;
        for (int k = 0; k < kCoordInputs; ++k) {
          scalar_t* wk = w_cols + k * d;
          const scalar_t ck = c[k];
          for (int64_t j = 0; j < d; ++j) wk[j] += gr[j] * ck;
        }
      }
    };
    sums = members_backward<scalar_t>(rest, e, d, record, grad_out, backward,
                                      {at::empty({proj.numel() / d, d}, proj.options()),
                                       at::empty({kCoordInputs, d}, proj.options()), b0},
                                      grad_w, grad_b);
  });
  return {sums[0].view(proj.sizes()), sums[1].t().contiguous(), sums[2]};
}

at::Tensor lte_forward_tiles_cpu(const at::Tensor& coef, const at::Tensor& freq,
                                 const at::Tensor& phase, const Mlp& imnet, const Ensemble& e,
                                 std::vector<at::Tensor>* record) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "lte_forward_tiles_cpu", [&] {
    out = members_forward<scalar_t>(imnet, e, coef.size(3), coef.options(),
                                    lte_features<scalar_t>(coef, freq, phase, e), record);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_backward_tiles_cpu(
    const at::Tensor& coef, const at::Tensor& freq, const at::Tensor& phase, const Mlp& imnet,
    const Ensemble& e, const std::vector<at::Tensor>& record, const at::Tensor& grad_out,
    std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t width = coef.size(3), m = width / 2;
  std::vector<at::Tensor> sums;
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "lte_backward_tiles_cpu", [&] {
    // sums: coef's and freq's rows (B*h*w, 2m) and the phase weight (m, 2).
    const auto backward = [&](int64_t lo, int64_t hi, at::Tensor grad, at::Tensor* acc) {
      const at::Tensor sin_cos = at::empty({hi - lo, 2, m}, grad.options());
      tile_sin_cos<scalar_t>(freq, phase, e, lo, hi, sin_cos.select(1, 0), sin_cos.select(1, 1));
      const scalar_t* sc = sin_cos.data_ptr<scalar_t>();
      const scalar_t* cp = coef.data_ptr<scalar_t>();
      const int64_t* idx = e.index.data_ptr<int64_t>();
      const scalar_t* in = e.inputs.data_ptr<scalar_t>();
      const scalar_t* g = grad.data_ptr<scalar_t>();
      scalar_t* coef_map = acc[0].data_ptr<scalar_t>();
      scalar_t* freq_map = acc[1].data_ptr<scalar_t>();
      scalar_t* phase_sum = acc[2].data_ptr<scalar_t>();
      std::vector<scalar_t> row(2 * width);  // one member's coef and freq gradients
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t pixel = idx[r] * width;
        const scalar_t* x = in + r * kCoordInputs;
        const scalar_t* sin = sc + (r - lo) * 2 * m;
        const scalar_t* cos = sin + m;
        for (int64_t i = 0; i < m; ++i) {
          // d loss / d phi_i; phi's cell term is phase·(scaled cell), whose weight's
          // gradient is Σ_rows g_phi ⊗ scaled cell.
          const scalar_t g_phi = lte::fourier_pair_backward<scalar_t>(
              i, m, cp + pixel, sin[i], cos[i], x, g + (r - lo) * width, row.data(),
              row.data() + width);
          phase_sum[2 * i] += g_phi * x[2];
          phase_sum[2 * i + 1] += g_phi * x[3];
        }
        add_row(coef_map + pixel, row.data(), width);
        add_row(freq_map + pixel, row.data() + width, width);
      }
    };
    const at::Tensor map_like = at::empty({coef.numel() / width, width}, coef.options());
    sums = members_backward<scalar_t>(imnet, e, width, record, grad_out, backward,
                                      {map_like, map_like, phase}, grad_w, grad_b);
  });
  return {sums[0].view(coef.sizes()), sums[1].view(freq.sizes()), sums[2]};
}

}  // namespace liif
}  // namespace ik
