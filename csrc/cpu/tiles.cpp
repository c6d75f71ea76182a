// Generic pieces of the CPU operators that run their dense layers in tiles (tiles.h).
#include "tiles.h"

#include <ATen/Dispatch.h>

#include <tuple>
#include <utility>

#include "../library.h"
#include "../poison.h"
#include "avx2_clone.h"
#include "tile_gemm.h"

namespace ik {

namespace {

// c = act(c + bias) on a contiguous (rows, cols) tile in one pass (NaN stays NaN, as in
// torch.relu); no bias when `bias` is null.  (AVX2 clones: passes over a tile in L2.)
template <typename T>
IK_AVX2_CLONE void bias_act(T* c, const T* bias, int64_t rows, int64_t cols, bool relu) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = c + r * cols;
    if (bias != nullptr) {
      for (int64_t j = 0; j < cols; ++j) row[j] += bias[j];
    }
    if (relu) {
      for (int64_t j = 0; j < cols; ++j) row[j] = row[j] < T(0) ? T(0) : row[j];
    }
  }
}

// The backward of bias_act on a gradient tile g (rows, cols): g = 0 where the ReLU's output
// `out` is not positive (as PyTorch; none when `out` is null), and Σ_rows g added into
// `bias_sum` (cols), in one pass.
template <typename T>
IK_AVX2_CLONE void bias_act_backward(T* g, const T* out, T* bias_sum, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = g + r * cols;
    if (out != nullptr) {
      const T* o = out + r * cols;
      for (int64_t j = 0; j < cols; ++j) row[j] = o[j] > T(0) ? row[j] : T(0);
    }
    for (int64_t j = 0; j < cols; ++j) bias_sum[j] += row[j];
  }
}

}  // namespace

void linear_tile(const at::Tensor& a, const at::Tensor& w, const at::Tensor& packed,
                 const at::Tensor& bias, bool relu, at::Tensor c) {
  if (packed.defined() && a.scalar_type() == at::kFloat && a.stride(1) == 1 && c.stride(1) == 1 &&
      (!bias.defined() || bias.is_contiguous())) {
    tile_gemm(a.data_ptr<float>(), a.stride(0), a.size(0), a.size(1), packed.data_ptr<float>(),
              c.size(1), bias.defined() ? bias.data_ptr<float>() : nullptr, relu,
              c.data_ptr<float>(), c.stride(0));
    return;
  }
  // The GEMM alone, then bias and ReLU in one pass: addmm_out would first broadcast the
  // bias into c, a strided copy that costs a sixth of a 256-wide GEMM.
  at::mm_out(c, a, w.t());
  if (!bias.defined() && !relu) return;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "ik_linear_tile", [&] {
    bias_act<scalar_t>(c.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                       c.size(0), c.size(1), relu);
  });
}

at::Tensor TileOutputs::at(size_t i, int64_t lo, int64_t hi, int64_t cols) {
  if (record != nullptr && i < record->size()) return (*record)[i].narrow(0, lo, hi - lo);
  at::Tensor& s = scratch[i % 2];
  if (!s.defined()) s = at::empty({rows, width}, options);
  return s.view(-1).narrow(0, 0, (hi - lo) * cols).view({hi - lo, cols});
}

at::Tensor mlp_tile(const Mlp& mlp, const std::vector<TileWeight>& layers, at::Tensor x,
                    TileOutputs& outs, size_t first, int64_t lo, int64_t hi,
                    const at::Tensor& last) {
  const size_t n = mlp.weights.size();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = mlp.weights[i];
    at::Tensor y = (i + 1 == n && last.defined()) ? last.narrow(0, lo, hi - lo)
                                                  : outs.at(first + i, lo, hi, w.size(0));
    linear_tile(x, layers[i], mlp.biases[i], i + 1 < n || mlp.relu_last, y);
    x = y;
  }
  return x;
}

TileWeight tile_weight(const at::Tensor& w) { return {w, pack_tile_weight(w)}; }

std::vector<TileWeight> tile_layers(const Mlp& mlp) {
  std::vector<TileWeight> layers;
  for (const auto& w : mlp.weights) layers.push_back(tile_weight(w));
  return layers;
}

namespace {

// The operator tile_linear (csrc/ops.cpp): linear_tile on a whole matrix.
std::tuple<at::Tensor, bool> tile_linear_op(const at::Tensor& a, const at::Tensor& w,
                                            const c10::optional<at::Tensor>& bias, bool relu) {
  TORCH_CHECK(a.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "tile_linear: a and w must be float32, got ", a.scalar_type(), " and ",
              w.scalar_type());
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && a.size(1) == w.size(1),
              "tile_linear: a (rows, in) and w (out, in) expected, got ", a.sizes(), " and ",
              w.sizes());
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  TORCH_CHECK(
      !b.defined() || (b.scalar_type() == at::kFloat && b.dim() == 1 && b.size(0) == w.size(0)),
      "tile_linear: bias must be float32 (out,)");
  const at::Tensor wc = w.contiguous(), packed = pack_tile_weight(wc);
  at::Tensor c = empty_poisoned({a.size(0), w.size(0)}, a.options());
  linear_tile(a.contiguous(), wc, packed, b, relu, c);
  return {c, packed.defined()};
}

}  // namespace

int64_t widest(const Mlp& mlp, int64_t in) {
  int64_t w = in;
  for (const auto& x : mlp.weights) w = std::max(w, x.size(0));
  return w;
}

std::vector<at::Tensor> record_for(const Mlp& mlp, int64_t rows, int64_t in,
                                   const at::TensorOptions& options, bool but_last) {
  std::vector<at::Tensor> rec = {empty_poisoned({rows, in}, options)};
  const size_t kept = mlp.weights.size() - (but_last && !mlp.weights.empty() ? 1 : 0);
  for (size_t i = 0; i < kept; ++i) {
    rec.push_back(empty_poisoned({rows, mlp.weights[i].size(0)}, options));
  }
  return rec;
}

ThreadSums::ThreadSums(std::vector<at::Tensor> like)
    : like_(std::move(like)), slots_(at::get_num_threads()) {}

std::vector<at::Tensor>& ThreadSums::mine() {
  std::vector<at::Tensor>& slot = slots_.at(at::get_thread_num());
  if (slot.empty()) {
    for (const auto& t : like_) slot.push_back(at::zeros_like(t));
  }
  return slot;
}

std::vector<at::Tensor> ThreadSums::sum() {
  std::vector<at::Tensor> total;
  for (const auto& slot : slots_) {
    if (slot.empty()) continue;
    if (total.empty()) {
      total = slot;
    } else {
      for (size_t i = 0; i < slot.size(); ++i) total[i].add_(slot[i]);
    }
  }
  if (total.empty()) {  // no tile ran
    for (const auto& t : like_) total.push_back(at::zeros_like(t));
  }
  return total;
}

at::Tensor mlp_tile_backward(const Mlp& mlp, const std::vector<TileWeight>& back, at::Tensor grad,
                             size_t slot, const std::vector<at::Tensor>& record, int64_t lo,
                             int64_t hi, TileOutputs& scratch, std::vector<at::Tensor>& sums,
                             size_t first) {
  for (size_t i = mlp.weights.size(); i-- > 0;) {
    const at::Tensor& w = mlp.weights[i];
    // ReLU's derivative from its output, in place on the scratch gradient, and the bias
    // gradient, in one pass.
    const bool relu = i + 1 < mlp.weights.size() || mlp.relu_last;
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "ik_mlp_tile_backward", [&] {
      bias_act_backward<scalar_t>(
          grad.data_ptr<scalar_t>(),
          relu ? record[i + 1].narrow(0, lo, hi - lo).data_ptr<scalar_t>() : nullptr,
          sums[first + 2 * i + 1].data_ptr<scalar_t>(), hi - lo, grad.size(1));
    });
    sums[first + 2 * i].addmm_(grad.t(), record[i].narrow(0, lo, hi - lo));
    at::Tensor next = scratch.at(++slot, lo, hi, w.size(1));
    linear_tile(grad, back[i], at::Tensor(), false, next);
    grad = next;
  }
  return grad;
}

std::vector<at::Tensor> mlp_grad_like(const Mlp& mlp) {
  std::vector<at::Tensor> like;
  for (size_t i = 0; i < mlp.weights.size(); ++i) {
    like.push_back(mlp.weights[i]);
    like.push_back(mlp.biases[i]);
  }
  return like;
}

std::vector<at::Tensor> mlp_backward_tiles(const Mlp& mlp, int64_t rows, int64_t in,
                                           const std::vector<at::Tensor>& record,
                                           const TileGrad& grad_of,
                                           const TileInputBackward& input_backward,
                                           const std::vector<at::Tensor>& input_like,
                                           std::vector<at::Tensor>& grad_w,
                                           std::vector<at::Tensor>& grad_b) {
  std::vector<at::Tensor> like = mlp_grad_like(mlp);
  const size_t first = like.size();
  like.insert(like.end(), input_like.begin(), input_like.end());
  ThreadSums sums(like);
  std::vector<TileWeight> back;  // each weight as the layer weight of grad · w
  for (const auto& w : mlp.weights) back.push_back(tile_weight(w.t()));
  for_each_tile(rows, widest(mlp, in), record.front().options(), nullptr,
                [&](int64_t lo, int64_t hi, TileOutputs& outs) {
                  std::vector<at::Tensor>& acc = sums.mine();
                  at::Tensor grad = grad_of(lo, hi, outs);
                  grad = mlp_tile_backward(mlp, back, grad, 0, record, lo, hi, outs, acc, 0);
                  input_backward(lo, hi, grad, acc.data() + first);
                });
  std::vector<at::Tensor> total = sums.sum();
  grad_w.clear();
  grad_b.clear();
  for (size_t i = 0; i < first / 2; ++i) {
    grad_w.push_back(total[2 * i]);
    grad_b.push_back(total[2 * i + 1]);
  }
  return std::vector<at::Tensor>(total.begin() + first, total.end());
}

IK_LIBRARY_IMPL(CPU, m) { m.impl("tile_linear", &tile_linear_op); }

}  // namespace ik
