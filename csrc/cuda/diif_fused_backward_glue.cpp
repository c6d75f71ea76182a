// Tensor glue of the fused DIIF backward (csrc/diif_fused_backward.h): packs the stages'
// layers into the kernels' zero-padded chains, runs the fine then the coarse kernel on
// the tensors' stream, and forms every weight gradient as a GEMM over the per-row buffers
// they write.  Compiled in CUDA builds and in the emulated build.
#include <ATen/ATen.h>

#include <vector>

#include "../cuda_glue.h"
#include "../diif_fused.h"
#include "../diif_fused_backward.h"
#include "../poison.h"
#include "diif_fused_backward_cuda.h"
#include "tile_sizes.h"

namespace ik {
namespace diif {
namespace {

constexpr const char* kOp = "implicit_kernels::diif_decode_backward";

void check_launch(cudaError_t err, const char* step) { cuda::check_launch(err, kOp, step); }

// A stage's layers as the kernels take them: widths padded, parameters zero-padded and
// packed (ChainShape), and the unpadded widths.
struct PackedChain {
  ChainShape shape;
  std::vector<int64_t> width;
  at::Tensor weights, biases;

  ChainParams params() const { return {weights.data_ptr(), biases.data_ptr()}; }
};

// Layers (weights[j]: (out, in), biases[j]: (out,)); a layer without bias (undefined)
// gets zeros.
PackedChain pack_chain(const std::vector<at::Tensor>& weights,
                       const std::vector<at::Tensor>& biases) {
  PackedChain c;
  c.shape.layers = static_cast<int>(weights.size());
  c.width.push_back(weights.front().size(1));
  for (const auto& w : weights) c.width.push_back(w.size(0));
  for (size_t j = 0; j < c.width.size(); ++j) {
    c.shape.width[j] = static_cast<int>(cuda::padded_width(c.width[j]));
  }
  std::vector<at::Tensor> w_parts, b_parts;
  for (size_t j = 0; j < weights.size(); ++j) {
    const int64_t in = c.shape.width[j], out = c.shape.width[j + 1];
    w_parts.push_back(cuda::zero_padded(weights[j], {out, in}).view(-1));
    b_parts.push_back(biases[j].defined() ? cuda::zero_padded(biases[j], {out})
                                          : at::zeros({out}, weights[j].options()));
  }
  c.weights = at::cat(w_parts);
  c.biases = at::cat(b_parts);
  return c;
}

// The (rows, width) blocks of a chain's per-row buffers, unpadded: layer j's input and its
// output gradient (the last layer's only `with_last`).
struct LayerBlocks {
  at::Tensor act, grad;
};

std::vector<LayerBlocks> layer_blocks(const PackedChain& c, const at::Tensor& acts,
                                      const at::Tensor& grads, int64_t rows, bool with_last) {
  std::vector<LayerBlocks> out;
  int64_t act = 0, grad = 0;
  for (int j = 0; j < c.shape.layers; ++j) {
    const int64_t in = c.shape.width[j], w_out = c.shape.width[j + 1];
    LayerBlocks b;
    b.act = acts.narrow(0, act, rows * in).view({rows, in}).narrow(1, 0, c.width[j]);
    if (with_last || j + 1 < c.shape.layers) {
      b.grad = grads.narrow(0, grad, rows * w_out).view({rows, w_out}).narrow(1, 0, c.width[j + 1]);
    }
    out.push_back(b);
    act += rows * in;
    grad += rows * w_out;
  }
  return out;
}

// dW = gradᵀ·act and db = Σ_rows grad of the chain's first `layers` layers.
void layer_gradients(const std::vector<LayerBlocks>& blocks, size_t layers,
                     std::vector<at::Tensor>* grad_w, std::vector<at::Tensor>* grad_b) {
  grad_w->clear();
  grad_b->clear();
  for (size_t j = 0; j < layers; ++j) {
    grad_w->push_back(at::mm(blocks[j].grad.t(), blocks[j].act));
    grad_b->push_back(blocks[j].grad.sum(0));
  }
}

}  // namespace

bool fused_backward_applies(const Stages& st, const CornerLayer& first) {
  return runs_cuda_kernels(first.corner_proj) && fused_forward_fits(st, first.corner_proj.size(-1));
}

at::Tensor stages_backward_fused(const Stages& st, const CornerLayer& first, const Slices& sl,
                                 const Dims& dims, const at::Tensor& g, const at::Tensor& grad_out,
                                 StageGrads* grads) {
  const cuda::DeviceGuard guard(g.device());
  const cudaStream_t stream = cuda::stream_of(g);
  const auto type = st.fine_wh.scalar_type();
  const auto acc = accumulate_type(type);
  const DType dtype = cuda::dtype_of(type, kOp);
  const int64_t n = sl.pixels.size(0), rows = sl.coords.size(0);
  const int64_t df = st.fine_wh.size(0), width = first.corner_proj.size(-1);
  const auto options = g.options();

  // The fine stage, from z = blend(G) back to grad_z and grad_G.
  const PackedChain fine = pack_chain(st.fine.weights, st.fine.biases);
  const at::Tensor grad = grad_out.reshape({n, -1}).contiguous();
  const at::Tensor fine_acts = empty_poisoned({chain_act_count(fine.shape, n)}, options);
  const at::Tensor fine_grads = empty_poisoned({chain_grad_count(fine.shape, n, true)}, options);
  const int64_t z_width = fine.shape.width[0];
  const at::Tensor grad_z = empty_poisoned({n, z_width}, options);
  const at::Tensor grad_g = at::zeros({rows, z_width}, options.dtype(acc));
  const at::Tensor g_padded = cuda::zero_padded(g, {rows, z_width});
  const at::Tensor wd = cuda::zero_padded(st.fine_wd, {z_width, 2});
  const at::Tensor b0 = cuda::zero_padded(st.fine_b0, {z_width});
  const FineBackwardCall fine_call{sl.pixels.data_ptr<int64_t>(),
                                   sl.slice_of.data_ptr<int64_t>(),
                                   n,
                                   rows,
                                   dims,
                                   g_padded.data_ptr(),
                                   wd.data_ptr(),
                                   b0.data_ptr(),
                                   grad.data_ptr(),
                                   grad.size(1),
                                   fine_acts.data_ptr(),
                                   fine_grads.data_ptr(),
                                   grad_z.data_ptr(),
                                   grad_g.data_ptr()};
  check_launch(launch_fine_backward(fine_call, fine.shape, fine.params(), dtype, stream),
               "fine_backward");

  // The coarse stage and fine_wh (its chain's last layer), back to the first pre-activation.
  std::vector<at::Tensor> coarse_w = st.coarse.weights, coarse_b = st.coarse.biases;
  coarse_w.push_back(st.fine_wh);
  coarse_b.emplace_back();
  const PackedChain coarse = pack_chain(coarse_w, coarse_b);
  const at::Tensor coarse_acts = empty_poisoned({chain_act_count(coarse.shape, rows)}, options);
  const at::Tensor coarse_grads =
      empty_poisoned({chain_grad_count(coarse.shape, rows, false)}, options);
  const at::Tensor grad_pre = empty_poisoned({rows, width}, options);
  const int64_t pre_width = coarse.shape.width[0];
  const at::Tensor w_coord = cuda::zero_padded(first.w_coord, {pre_width, kCoordInputs});
  const at::Tensor coarse_b0 = cuda::zero_padded(first.b0, {pre_width});
  const CoarseBackwardCall coarse_call{first.corner_proj.data_ptr(),
                                       first.corner_proj.numel() / width,
                                       width,
                                       sl.corners.data_ptr<int64_t>(),
                                       sl.coords.data_ptr(),
                                       rows,
                                       w_coord.data_ptr(),
                                       coarse_b0.data_ptr(),
                                       grad_g.data_ptr(),
                                       coarse_acts.data_ptr(),
                                       coarse_grads.data_ptr(),
                                       grad_pre.data_ptr()};
  check_launch(launch_coarse_backward(coarse_call, coarse.shape, coarse.params(), dtype, stream),
               "coarse_backward");

  // Weight gradients.
  const auto fine_blocks = layer_blocks(fine, fine_acts, fine_grads, n, true);
  layer_gradients(fine_blocks, fine_blocks.size(), &grads->fine_w, &grads->fine_b);
  const at::Tensor gz = grad_z.narrow(1, 0, df);
  grads->fine_b0 = gz.sum(0);
  const at::Tensor offsets = std::get<0>(offset_weights_cuda(sl.pixels, dims, acc));
  grads->fine_wd = at::mm(gz.t().to(acc), offsets).to(type);
  const auto coarse_blocks = layer_blocks(coarse, coarse_acts, coarse_grads, rows, false);
  layer_gradients(coarse_blocks, coarse_blocks.size() - 1, &grads->coarse_w, &grads->coarse_b);
  grads->fine_wh = at::mm(grad_g.narrow(1, 0, df).t().to(type), coarse_blocks.back().act);
  return grad_pre;
}

}  // namespace diif
}  // namespace ik
